"""Soak benchmark: --duration seconds (default 600) at --rate segments/s (default 5,000) into
xrayd, uploading to a local X-Ray API (the fault upstream in "ok" mode, verifying every SigV4
signature). Samples the daemon's resident memory every --sample seconds and checks that every
segment arrived exactly once.

    .venv/bin/python bench/soak.py [--duration 600] [--rate 5000] [--sample 10] [--spool]

Prints the memory curve and the totals; exit status 1 when a segment was lost."""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _reliability import Checklist, Daemon, load_average
from fakes.fault_upstream import FaultUpstream
from fakes.harness import outcome_totals, scrape, send_at_rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--memory-mb", type=int, default=32)
    parser.add_argument("--spool", action="store_true", help="also configure a spool")
    args = parser.parse_args()

    count = int(args.duration * args.rate)
    checklist = Checklist()
    upstream = FaultUpstream(sink=checklist, keep_docs=False).start()
    curve: list[tuple[float, float, float, float]] = []  # (t, RSS MiB, queued, load1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ["-m", str(args.memory_mb)]
        if args.spool:
            extra += ["--spool-dir", str(work / "spool")]
        daemon = Daemon(upstream.url, work, extra)
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            import os

            while True:
                queued = scrape(daemon.admin).get("xrayd_queue_segments", 0.0)
                curve.append((time.monotonic() - started, daemon.rss_mib(), queued,
                              os.getloadavg()[0]))
                if stop.wait(args.sample):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        sent = send_at_rate(daemon.port, 0, count, args.rate)
        send_seconds = time.monotonic() - started
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = outcome_totals(scrape(daemon.admin))
            terminal = sum(counts[k] for k in ("sent", "unprocessed", "failed", "spilled",
                                               "dropped"))
            if counts["queued"] == 0 and counts["in_flight_batches"] == 0 and (
                    terminal + counts["spooled_now"] == counts["accepted"]):
                break
            time.sleep(0.5)
        stop.set()
        sampler.join()
        samples = scrape(daemon.admin)
        code = daemon.stop()
    upstream.stop()
    received = checklist.unique
    print(f"load average at end: {load_average()}")
    print("  t (s)   RSS (MiB)   queued segments   load1")
    for t, rss, queued, load in curve:
        print(f"{t:7.0f}   {rss:9.1f}   {queued:15.0f}   {load:5.2f}")
    warm = [rss for t, rss, _, _ in curve if t >= min(60.0, args.duration / 4)]
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]
    growth = (sum(last) / len(last) - sum(first) / len(first)) if warm else 0.0
    print(f"soak {args.duration:.0f} s at {args.rate:.0f} segments/s: sent {sent} in "
          f"{send_seconds:.1f} s (actual rate {sent / send_seconds:.0f}/s); daemon accepted "
          f"{counts['accepted']:.0f}; API received {received} unique (+{checklist.duplicates} "
          f"duplicates); lost {sent - received}")
    print(f"counters: sent {counts['sent']:.0f}, failed {counts['failed']:.0f}, spilled "
          f"{counts['spilled']:.0f}, dropped {counts['dropped']:.0f}, rejected "
          f"{sum(v for k, v in samples.items() if k.startswith('xrayd_datagrams_rejected')):.0f}"
          f"; upstream requests {upstream.record.requests} (bad signatures "
          f"{upstream.record.bad_signatures}); daemon exit {code}")
    if warm:
        print(f"RSS after warm-up: min {min(warm):.1f} MiB, max {max(warm):.1f} MiB, mean of "
              f"last third - mean of first third {growth:+.1f} MiB")
    return 1 if sent != received else 0


if __name__ == "__main__":
    raise SystemExit(main())
