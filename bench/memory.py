"""Memory of the daemon: idle, at the peak of an overload that fills the memory budget, and
after the queue has drained. ``.venv/bin/python -m bench.memory [--blast-count N] [--daemon ...]``

Idle is measured 5 s after start-up (after the start-up probe's documents were delivered). The
overload is the suite's saturation trial (senders as fast as possible, 1 KB segments, far more
than the daemon can upload to the sink, so the budget fills and spills). RSS is summed over the
daemon's processes (a forked helper's pages shared with the daemon count twice); PSS counts
shared pages once. Each figure is printed per process too. The 70 s figure comes after the
upload helper's idle exit (30 s without calls).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench import procstat
from bench.loadgen import SIZES, compiled_sender
from bench.run import XRAYD, Bench, SinkProcess, parse_args, progress


def own(pid: int) -> dict:
    """One process's (not its tree's) RSS, PSS and private memory, MB."""
    fields = {"Rss:": 0, "Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name = line.split(None, 1)[0]
            if name in fields:
                fields[name] = int(line.split()[1])
    except OSError:
        pass
    return {"pid": pid, "rss_mb": round(fields["Rss:"] / 1024, 1),
            "pss_mb": round(fields["Pss:"] / 1024, 1),
            "private_mb": round((fields["Private_Clean:"] + fields["Private_Dirty:"]) / 1024, 1)}


def snapshot(pid: int) -> dict:
    processes = [own(each) for each in procstat.tree(pid)]
    return {"rss_mb": round(procstat.rss_bytes(pid) / 2**20, 1),
            "pss_mb": round(procstat.pss_bytes(pid) / 2**20, 1), "processes": processes}


class PeakSampler:
    """Per-process peaks (RSS, PSS, private) every 0.1 s, the daemon and its helper apart."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peaks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for each in procstat.tree(self.pid):
                now = own(each)
                peak = self.peaks.setdefault(each, dict(now))
                for key in ("rss_mb", "pss_mb", "private_mb"):
                    peak[key] = max(peak[key], now[key])

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        return list(self.peaks.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(["--quick", "--no-search", *(argv or [])])
    command = args.daemon[0].split("=", 1)[1] if args.daemon else XRAYD
    load = procstat.load_average()
    sink = SinkProcess()
    bench = Bench("xrayd", command, args, sink, compiled_sender())
    out: dict = {"command": command, "load_before": load}
    try:
        out["startup"] = bench.start()
        time.sleep(5)
        assert bench.proc is not None
        out["idle"] = snapshot(bench.proc.pid)
        progress(f"idle: {out['idle']}")
        sampler = PeakSampler(bench.proc.pid)
        trial = bench.trial(0, args.duration, SIZES["1k"])
        out["overload"] = trial.summary()
        out["overload_peaks_by_process"] = sampler.stop()
        for wait, delay in ((0, 0), (5, 5), (15, 10), (70, 55)):
            time.sleep(delay)
            out[f"after_drain_{wait}s"] = snapshot(bench.proc.pid)
            progress(f"{wait} s after the drain: {out[f'after_drain_{wait}s']}")
    finally:
        bench.stop()
        sink.stop()
    out["load_after"] = procstat.load_average()
    overload = out["overload"]
    print(f"idle: RSS {out['idle']['rss_mb']} MB, PSS {out['idle']['pss_mb']} MB")
    print(f"overload peak: RSS {overload['rss_peak_mb']} MB (summed over "
          f"{overload['processes']} processes), PSS {overload['pss_peak_mb']} MB; delivered "
          f"{overload['delivered']:,} of {overload['sent']:,}")
    peaks = out["overload_peaks_by_process"]
    print("  peaks by process (RSS, PSS, private MB): "
          f"{[(p['rss_mb'], p['pss_mb'], p['private_mb']) for p in peaks]}")
    for wait in (0, 5, 15, 70):
        shot = out[f"after_drain_{wait}s"]
        print(f"{wait:>2} s after the drain: RSS {shot['rss_mb']} MB, PSS {shot['pss_mb']} MB "
              f"{[(p['rss_mb'], p['pss_mb'], p['private_mb']) for p in shot['processes']]}")
    print(f"load average before {load}, after {out['load_after']}")
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
