"""Reliability benchmark: an X-Ray API outage of --outage seconds (default 60) under a steady
--rate (default 1,000 segments/s), with the spool configured; counts what reached the API.

    .venv/bin/python bench/outage.py [--outage 60] [--rate 1000] [--no-spool]

The outage is 503s for the first half, then connection resets, then hanging connections (each
a third of the second half). Prints the figures; exit status 1 when a segment was lost with a
spool configured."""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _reliability import Checklist, Daemon, load_average
from fakes.fault_upstream import FaultUpstream, Phase
from fakes.harness import outcome_totals, scrape, send_at_rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument("--no-spool", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=64)
    parser.add_argument("--fault", choices=["mixed", "throttle"], default="mixed",
                        help="mixed: 503s, resets, hangs, 500s; throttle: 429 ThrottledException")
    args = parser.parse_args()

    half = args.outage / 2
    schedule = [Phase(args.before, "ok"), Phase(half, "error", status=503),
                Phase(half / 3, "reset"), Phase(half / 3, "hang", hang_seconds=3.0),
                Phase(half / 3, "error", status=500), Phase(float("inf"), "ok")]
    if args.fault == "throttle":
        schedule = [Phase(args.before, "ok"), Phase(args.outage, "throttle"),
                    Phase(float("inf"), "ok")]
    checklist = Checklist()
    upstream = FaultUpstream(schedule, sink=checklist, keep_docs=False).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ["-m", str(args.memory_mb)]
        if not args.no_spool:
            extra += ["--spool-dir", str(work / "spool")]
        daemon = Daemon(upstream.url, work, extra)
        upstream.restart_schedule()
        count = int(args.rate * (args.before + args.outage + args.after))
        peak = {"spool": 0.0, "rss": 0.0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                peak["spool"] = max(peak["spool"], scrape(daemon.admin).get(
                    "xrayd_spool_segments", 0.0))
                peak["rss"] = max(peak["rss"], daemon.rss_mib())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        sent = send_at_rate(daemon.port, 0, count, args.rate)
        send_seconds = time.monotonic() - started
        recovered_at = args.before + args.outage
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            counts = outcome_totals(scrape(daemon.admin))
            terminal = sum(counts[k] for k in ("sent", "unprocessed", "failed", "spilled",
                                               "dropped"))
            if counts["queued"] == 0 and counts["in_flight_batches"] == 0 and (
                    counts["spooled_now"] == 0) and terminal == counts["accepted"]:
                break
            time.sleep(0.5)
        settled = time.monotonic() - started
        stop.set()
        samples = scrape(daemon.admin)
        code = daemon.stop()
    upstream.stop()
    received = checklist.unique
    lost = sent - received
    print(f"load average at start/end: {load_average()}")
    faulty = sum(n for mode, n in upstream.record.by_mode.items() if mode != "ok")
    print(f"calls during the {args.fault} window: {faulty} ({faulty / args.outage:.1f}/s; "
          f"the load needs {args.rate / 50:.0f} calls/s)")
    print(f"outage ({args.fault}) {args.outage:.0f} s at {args.rate:.0f} segments/s, spool "
          f"{'off' if args.no_spool else 'on'}: sent {sent} in {send_seconds:.1f} s; daemon "
          f"accepted {counts['accepted']:.0f}; API received {received} unique "
          f"(+{checklist.duplicates} duplicates); lost {lost}")
    print(f"counters: sent {counts['sent']:.0f}, failed {counts['failed']:.0f}, spilled "
          f"{counts['spilled']:.0f}, dropped {counts['dropped']:.0f}, unprocessed "
          f"{counts['unprocessed']:.0f}; spooled "
          f"{samples.get('xrayd_segments_spooled_total', 0):.0f}, replayed "
          f"{samples.get('xrayd_segments_replayed_total', 0):.0f}; peak spool depth "
          f"{peak['spool']:.0f}; peak RSS {peak['rss']:.1f} MiB")
    print(f"everything settled {settled - recovered_at:.1f} s after the API recovered; "
          f"upstream requests {upstream.record.requests} "
          f"(bad signatures {upstream.record.bad_signatures}); daemon exit {code}")
    unexplained = lost - (counts["failed"] + counts["spilled"] + counts["dropped"]
                          + counts["unprocessed"])
    print(f"loss not explained by the counters: {unexplained:.0f}")
    if unexplained:
        return 1
    return 1 if (lost and not args.no_spool) else 0


if __name__ == "__main__":
    raise SystemExit(main())
