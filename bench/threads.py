"""Where xrayd's CPU goes at a fixed rate, thread by thread:
``.venv/bin/python -m bench.threads [--rate 1000] [--duration 30] [--repeat 1]``.

Starts the sink and xrayd (``-m 64``), sends 1 KB segments at ``--rate`` for ``--duration``
seconds, and reads from ``/proc/<pid>/task/<tid>/`` of the daemon and of its helper process:
CPU time (``schedstat``, nanoseconds), voluntary and involuntary context switches (each
voluntary one is a sleep, i.e. one wake-up later). Prints per thread: CPU % of a core, wake-ups
per second, CPU µs per wake-up; and the total CPU per segment and per upload call.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.loadgen import Load, compiled_sender
from bench.run import SAFE_ENV, XRAYD, SinkProcess, free_udp_tcp_port


@dataclass
class TaskSample:
    name: str
    cpu_ns: int
    voluntary: int
    involuntary: int


def tasks(pid: int) -> dict[tuple[int, int], TaskSample]:
    """Every thread of ``pid`` and its descendants, by (process, thread id)."""
    out = {}
    for each in procstat.tree(pid):
        try:
            tids = os.listdir(f"/proc/{each}/task")
        except OSError:
            continue
        for tid in tids:
            base = Path(f"/proc/{each}/task/{tid}")
            try:
                name = (base / "comm").read_text().strip()
                cpu_ns = int((base / "schedstat").read_text().split()[0])
                status = dict(line.split(":\t", 1) for line in
                              (base / "status").read_text().splitlines() if ":\t" in line)
            except (OSError, ValueError):
                continue
            label = name if each == pid else f"helper:{name}"
            out[(each, int(tid))] = TaskSample(
                label, cpu_ns, int(status.get("voluntary_ctxt_switches", 0)),
                int(status.get("nonvoluntary_ctxt_switches", 0)))
    return out


def measure(rate: float, duration: float, binary, args) -> dict:
    sink = SinkProcess()
    port = free_udp_tcp_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    command = XRAYD.format(python=shlex.quote(sys.executable), udp=f"127.0.0.1:{port}",
                           tcp=f"127.0.0.1:{port}", sink=sink.url)
    log = open(workdir / "xrayd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(shlex.split(command) + args.extra, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, **SAFE_ENV},
                            cwd=workdir)
    try:
        deadline = time.monotonic() + 20
        while not procstat.udp_port_bound(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Warm-up: the helper (if any) starts, connections open, imports finish.
        sink.reset(10**9)
        Load(port, rate, int(rate * 3), [1024], 1, seq0=10**8, binary=binary).wait(60)
        time.sleep(2)
        sink.reset(int(rate * duration), latency=True)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                 "--threads", "-r", "1000", "-f", "raw", "-o", args.py_spy, "-p",
                 str(proc.pid), "-d", str(int(duration))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.perf:
            spy = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "4000", "-g", "-o", args.perf,
                 "-p", str(proc.pid), "--", "sleep", str(int(duration))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, cpu0 = tasks(proc.pid), procstat.cpu_seconds(proc.pid)
        started = time.monotonic()
        result = Load(port, rate, int(rate * duration), [1024], 1, binary=binary).wait(
            duration * 4 + 60)
        if spy is not None:
            spy.wait(60)
        # Up to the batch age after the last datagram, the daemon still works on this load.
        time.sleep(1.5)
        elapsed = time.monotonic() - started
        after, cpu1 = tasks(proc.pid), procstat.cpu_seconds(proc.pid)
        stats = sink.stats()
        calls = stats.get("requests", 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sink.stop()
    rows = []
    total_ns = 0
    for key, end in after.items():
        start = before.get(key, TaskSample(end.name, 0, 0, 0))
        cpu = end.cpu_ns - start.cpu_ns
        wakes = end.voluntary - start.voluntary
        total_ns += cpu
        rows.append((end.name, key[1], cpu / 1e9 / elapsed * 100, wakes / elapsed,
                     (end.involuntary - start.involuntary) / elapsed,
                     cpu / 1e3 / wakes if wakes else 0.0))
    return {"rate": rate, "elapsed": elapsed, "sent": result.sent,
            "delivered": stats.get("unique", 0), "calls": calls, "rows": rows,
            "total_cpu_s": total_ns / 1e9, "proc_cpu_s": cpu1 - cpu0,
            "latency": stats.get("latency_ms", {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--py-spy", metavar="FILE",
                        help="also sample the daemon with py-spy (raw format) into FILE; "
                             "py-spy must be installed in this environment")
    parser.add_argument("--perf", metavar="FILE",
                        help="also record the daemon with perf (cpu-clock, call graphs)")
    parser.add_argument("extra", nargs="*", help="extra xrayd arguments (after --)")
    args = parser.parse_args(argv)
    binary = compiled_sender()
    for _ in range(args.repeat):
        load = procstat.load_average()
        m = measure(args.rate, args.duration, binary, args)
        print(f"\nrate {m['rate']:,.0f}/s for {m['elapsed']:.1f} s: sent {m['sent']:,}, "
              f"delivered {m['delivered']:,}; load average {load} -> "
              f"{procstat.load_average()}")
        print(f"{'thread':<22}{'tid':>8}{'CPU %':>8}{'wake/s':>9}{'preempt/s':>10}"
              f"{'µs/wake':>9}")
        for name, tid, pct, wakes, preempt, per_wake in sorted(m["rows"], key=lambda r: -r[2]):
            if pct < 0.005 and wakes < 0.05:
                continue
            print(f"{name:<22}{tid:>8}{pct:>8.2f}{wakes:>9.1f}{preempt:>10.1f}{per_wake:>9.0f}")
        pct = m["total_cpu_s"] / m["elapsed"] * 100
        per_segment = m["total_cpu_s"] / max(1, m["delivered"]) * 1e6
        print(f"total: {pct:.2f} % of a core (schedstat; /proc stat ticks: "
              f"{m['proc_cpu_s'] / m['elapsed'] * 100:.2f} %), {per_segment:.1f} CPU-µs per "
              f"segment" + (f", {m['total_cpu_s'] / m['calls'] * 1e6:.0f} CPU-µs per call "
                            f"({m['calls']} calls)" if m["calls"] else "")
              + (f"; latency p50 {m['latency'].get('p50', 0):.1f} ms p99 "
                 f"{m['latency'].get('p99', 0):.1f} ms" if m["latency"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
