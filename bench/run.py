"""The throughput suite: ``.venv/bin/python -m bench.run [--quick] [--daemon NAME=COMMAND ...]``.

For each daemon under test (xrayd by default; any daemon speaking the protocol can be given as a
command line with placeholders) it measures, against the same load generator and sink:

* start-up: exec to UDP port bound, exec to first document delivered (a probe sends 2,000
  datagrams/s from exec until the sink has a document);
* idle: resident memory and CPU;
* fixed rates (1,000 and 10,000 segments/s): CPU, memory, send-to-sink latency p50/p99;
* the highest rate with zero loss over ``--duration`` seconds (search: up from ``--start-rate``
  by x1.5 until a loss, then bisection), and a saturation run (senders as fast as possible).

Prints a table and writes JSON to bench/results/. Placeholders in a daemon command:
{udp} host:port of UDP, {udp_port}, {tcp} host:port of TCP, {sink} the sink's URL, {python} this
interpreter, {workdir} a scratch directory (e.g. for a cfg.yaml).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.loadgen import SIZES, Load, build_datagram, compiled, compiled_sender

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# The tests' safe environment (dummy credentials, no instance metadata) and loopback port helper.
from conftest import SAFE_ENV, free_udp_tcp_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
XRAYD = "{python} -m xrayd -b {udp} -t {tcp} --endpoint {sink} -n us-east-1 -m 64"


def progress(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


class SinkProcess:
    """The sink: bench/sink.c when gcc is there (BENCH_PYTHON_SINK=1 forces bench/sink.py)."""

    def __init__(self, cache: Path | None = None) -> None:
        binary = compiled(HERE / "sink.c", cache, "BENCH_PYTHON_SINK")
        command = [str(binary), "0"] if binary else [sys.executable, "-m", "bench.sink", "0"]
        self.kind = "c" if binary else "python"
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        line = self.proc.stdout.readline().split() if self.proc.stdout else []
        if len(line) != 2 or line[0] != "listening":
            raise RuntimeError(f"the sink did not start: {line}")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def reset(self, expect: int, latency: bool = False) -> None:
        self._call("POST", f"/bench/reset?expect={expect}&latency={int(latency)}")

    def stats(self) -> dict:
        return self._call("GET", "/bench/stats")

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class RssSampler:
    """The peak resident memory (RSS summed, and PSS) of a process tree, sampled every
    ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.pss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, procstat.rss_bytes(self.pid))
            self.pss_peak = max(self.pss_peak, procstat.pss_bytes(self.pid))

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return (max(self.peak, procstat.rss_bytes(self.pid)),
                max(self.pss_peak, procstat.pss_bytes(self.pid)))


@dataclass
class Trial:
    rate: float  # target, segments/s; 0 = as fast as possible
    sizes: list[int]
    duration: float
    sent: int = 0
    send_seconds: float = 0.0
    delivered: int = 0
    duplicates: int = 0
    kernel_drops: int = 0  # system-wide RcvbufErrors during the trial
    daemon_cpu: float = 0.0
    sink_cpu: float = 0.0
    rss_peak: int = 0
    pss_peak: int = 0
    processes: int = 1
    latency_ms: dict = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    @property
    def delivered_rate(self) -> float:
        return self.delivered / self.send_seconds if self.send_seconds else 0.0

    def summary(self) -> dict:
        per100k = self.daemon_cpu / self.delivered * 1e5 if self.delivered else None
        return {
            "target_rate": self.rate, "sizes": self.sizes, "duration": self.duration,
            "sent": self.sent, "send_seconds": round(self.send_seconds, 3),
            "send_rate": round(self.send_rate), "delivered": self.delivered,
            "delivered_rate": round(self.delivered_rate),
            "delivered_mb_s": round(
                self.delivered_rate * sum(self.sizes) / len(self.sizes) / 1e6, 2),
            "lost": self.lost,
            "loss_pct": round(100 * self.lost / self.sent, 4) if self.sent else 0,
            "duplicates": self.duplicates, "kernel_drops_systemwide": self.kernel_drops,
            "daemon_cpu_s": round(self.daemon_cpu, 3),
            "daemon_cpu_pct_of_core": round(100 * self.daemon_cpu / self.send_seconds, 2)
            if self.send_seconds else None,
            "cpu_s_per_100k": round(per100k, 3) if per100k is not None else None,
            "sink_cpu_s": round(self.sink_cpu, 3),
            "rss_peak_mb": round(self.rss_peak / 2**20, 1),
            "pss_peak_mb": round(self.pss_peak / 2**20, 1), "processes": self.processes,
            "latency_ms": self.latency_ms,
        }


class Bench:
    def __init__(self, name: str, command: str, args: argparse.Namespace, sink: SinkProcess,
                 binary: Path | None) -> None:
        self.name, self.template, self.args, self.sink, self.binary = (
            name, command, args, sink, binary)
        self.port = free_udp_tcp_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.log_path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.proc: subprocess.Popen | None = None
        self.seq = 0

    def command(self) -> list[str]:
        text = self.template.format(
            udp=f"127.0.0.1:{self.port}", udp_port=self.port, tcp=f"127.0.0.1:{self.port}",
            sink=self.sink.url, python=shlex.quote(sys.executable), workdir=self.workdir,
        )
        return shlex.split(text)

    # -- start-up -----------------------------------------------------------------------------

    def start(self) -> dict:
        self.sink.reset(1_000_000)
        command = self.command()
        log = open(self.log_path, "wb")  # noqa: SIM115
        stop_probe = threading.Event()
        started = time.monotonic_ns()
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **SAFE_ENV}, cwd=self.workdir)
        probe = threading.Thread(target=self._probe, args=(stop_probe,), daemon=True)
        probe.start()
        bound_ns = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if procstat.udp_port_bound(self.port):
                bound_ns = time.monotonic_ns()
                break
            time.sleep(0.001)
        first_ns = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            first_ns = self.sink.stats()["first_ns"]
            if first_ns:
                break
            time.sleep(0.005)
        stop_probe.set()
        probe.join()
        if self.proc.poll() is not None or not bound_ns or not first_ns:
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
        self.settle()
        return {"port_bound_ms": round((bound_ns - started) / 1e6, 1),
                "first_document_ms": round((first_ns - started) / 1e6, 1)}

    def _probe(self, stop: threading.Event) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            seq = 0
            while not stop.is_set():
                sock.sendto(build_datagram(1024, seq, time.monotonic_ns()),
                            ("127.0.0.1", self.port))
                seq += 1
                time.sleep(0.0005)

    def settle(self, quiet: float = 2.5, limit: float = 30.0) -> dict:
        """Wait until the sink has had no new document for ``quiet`` seconds; its stats."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            stats = self.sink.stats()
            if stats["documents"] != last:
                last, since = stats["documents"], time.monotonic()
            elif time.monotonic() - since >= quiet:
                return stats
            time.sleep(0.1)
        return self.sink.stats()

    def idle(self, seconds: float) -> dict:
        assert self.proc is not None
        cpu0 = procstat.cpu_seconds(self.proc.pid)
        time.sleep(seconds)
        cpu = procstat.cpu_seconds(self.proc.pid) - cpu0
        return {"rss_mb": round(procstat.rss_bytes(self.proc.pid) / 2**20, 1),
                "pss_mb": round(procstat.pss_bytes(self.proc.pid) / 2**20, 1),
                "processes": len(procstat.tree(self.proc.pid)),
                "cpu_pct_of_core": round(100 * cpu / seconds, 2), "seconds": seconds}

    # -- load ---------------------------------------------------------------------------------

    def trial(self, rate: float, duration: float, sizes: list[int],
              latency: bool = False) -> Trial:
        assert self.proc is not None
        count = int(rate * duration) if rate else int(self.args.blast_count)
        trial = Trial(rate, sizes, duration)
        self.sink.reset(count, latency)
        pid = self.proc.pid
        cpu0, sink0 = procstat.cpu_seconds(pid), self.sink.cpu()
        drops0 = procstat.udp_receive_errors()
        sampler = RssSampler(pid)
        load = Load(self.port, rate, count, sizes, self.args.senders, binary=self.binary)
        try:
            result = load.wait(timeout=duration * 4 + 60 if rate else 600)
        finally:
            load.kill()
        stats = self.settle(quiet=2.5)
        trial.processes = len(procstat.tree(pid))
        trial.rss_peak, trial.pss_peak = sampler.stop()
        trial.daemon_cpu = procstat.cpu_seconds(pid) - cpu0
        trial.sink_cpu = self.sink.cpu() - sink0
        trial.kernel_drops = procstat.udp_receive_errors() - drops0
        trial.sent, trial.send_seconds = result.sent, result.seconds
        trial.delivered, trial.duplicates = stats["unique"], stats["duplicates"]
        trial.latency_ms = stats.get("latency_ms", {})
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited during the trial; see {self.log_path}")
        progress(f"  {self.name}: rate {rate:>9,.0f}/s sent {trial.sent:,} at "
                 f"{trial.send_rate:,.0f}/s, delivered {trial.delivered:,} "
                 f"(lost {trial.lost:,}), cpu {trial.daemon_cpu:.2f}s, "
                 f"rss {trial.rss_peak / 2**20:.0f} MB pss {trial.pss_peak / 2**20:.0f} MB"
                 + (f", p50 {trial.latency_ms['p50']:.1f} ms p99 {trial.latency_ms['p99']:.1f} ms"
                    if trial.latency_ms else ""))
        return trial

    def search(self, duration: float, size: list[int]) -> tuple[float, list[Trial]]:
        """The highest target rate with zero loss: x1.5 steps up, then bisection to 5 %."""
        trials: list[Trial] = []

        def passes(rate: float) -> bool:
            """A trial at this rate: nothing lost and the senders kept the rate."""
            trial = self.trial(rate, duration, size)
            trials.append(trial)
            return trial.lost == 0 and trial.send_rate >= 0.97 * rate

        good, bad = 0.0, 0.0
        rate = self.args.start_rate
        while rate <= self.args.max_rate:
            if not passes(rate):
                bad = rate
                break
            good = rate
            rate *= 1.5
        if not bad:
            return good, trials
        if not good:
            rate = bad
            while not good and rate > 2000:
                rate = rate / 2
                if passes(rate):
                    good = rate
                else:
                    bad = rate
        while good and bad / good > 1.05:
            rate = round((good + bad) / 2, -2)
            if passes(rate):
                good = rate
            else:
                bad = rate
        return good, trials

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def run(self) -> dict:
        args = self.args
        size = SIZES[args.size]
        out: dict = {"name": self.name, "command": shlex.join(self.command())}
        progress(f"{self.name}: starting ({out['command']})")
        try:
            out["startup"] = self.start()
            progress(f"  {self.name}: port bound after {out['startup']['port_bound_ms']} ms, "
                     f"first document after {out['startup']['first_document_ms']} ms")
            out["idle"] = self.idle(args.idle)
            progress(f"  {self.name}: idle {out['idle']['rss_mb']} MB, "
                     f"{out['idle']['cpu_pct_of_core']} % of a core")
            out["fixed"] = [self.trial(r, args.duration, size, latency=True).summary()
                            for r in args.fixed_rates]
            if not args.no_search:
                best, trials = self.search(args.duration, size)
                out["zero_loss_rate"] = best
                out["search"] = [t.summary() for t in trials]
            if not args.no_blast:
                out["saturation"] = self.trial(0, args.duration, size).summary()
            out["idle_after"] = self.idle(args.idle)
        finally:
            self.stop()
            out["exit_code"] = self.proc.returncode if self.proc else None
        return out


def bare_loop_rate(seconds: float, senders: int, binary: Path | None) -> dict:
    """A bare Python blocking recv_into loop, blasted: its received datagrams/s (the yardstick
    the CI regression check compares xrayd against)."""
    from bench.bare import BareReceiver

    with BareReceiver() as bare:
        started = time.monotonic()
        load = Load(bare.port, 0, int(1e9), [1024], senders, binary=binary)
        time.sleep(seconds)
        load.kill()
        elapsed = time.monotonic() - started
        received = bare.count()
    return {"received": received, "rate": round(received / elapsed)}


def fmt(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def table(results: dict) -> str:
    rows = []
    for d in results["daemons"]:
        fixed = {f["target_rate"]: f for f in d.get("fixed", [])}
        best = d.get("zero_loss_rate")
        best_trial = None
        for t in d.get("search", []):
            if t["target_rate"] == best:
                best_trial = t
        sat = d.get("saturation") or {}
        row = {"daemon": d["name"]}
        row["zero-loss rate (seg/s)"] = fmt(best)
        row["zero-loss MB/s"] = fmt(best_trial["delivered_mb_s"], digits=1) if best_trial else "-"
        row["saturated delivered/s"] = fmt(sat.get("delivered_rate"))
        for rate in (1000, 10000):
            f = fixed.get(rate)
            if f:
                row[f"CPU % core @{rate // 1000}k/s"] = fmt(f["daemon_cpu_pct_of_core"], digits=2)
                row[f"CPU s/100k @{rate // 1000}k/s"] = fmt(f["cpu_s_per_100k"], digits=2)
        if best_trial:
            row["CPU s/100k @zero-loss"] = fmt(best_trial["cpu_s_per_100k"], digits=2)
        if sat:
            row["CPU s/100k saturated"] = fmt(sat.get("cpu_s_per_100k"), digits=2)
        row["RSS idle MB"] = fmt(d.get("idle", {}).get("rss_mb"), digits=1)
        peaks = [t["rss_peak_mb"] for t in d.get("fixed", []) + d.get("search", [])
                 + ([sat] if sat else [])]
        row["RSS peak MB (any rate)"] = fmt(max(peaks) if peaks else None, digits=1)
        pss = [t["pss_peak_mb"] for t in d.get("fixed", []) + d.get("search", [])
               + ([sat] if sat else [])]
        row["PSS peak MB (any rate)"] = fmt(max(pss) if pss else None, digits=1)
        for rate in (1000, 10000):
            f = fixed.get(rate)
            if f and f["latency_ms"]:
                row[f"latency p50/p99 @{rate // 1000}k/s (ms)"] = (
                    f"{f['latency_ms']['p50']:.1f} / {f['latency_ms']['p99']:.1f}")
        s = d.get("startup", {})
        row["exec→port bound (ms)"] = fmt(s.get("port_bound_ms"), digits=1)
        row["exec→first document (ms)"] = fmt(s.get("first_document_ms"), digits=1)
        rows.append(row)
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    width = max(len(k) for k in keys)
    lines = ["| " + "metric".ljust(width) + " | " + " | ".join(r["daemon"] for r in rows) + " |",
             "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(r["daemon"]) + 2) for r in rows)
             + "|"]
    for key in keys[1:]:
        lines.append("| " + key.ljust(width) + " | "
                     + " | ".join(str(r.get(key, "-")).rjust(len(r["daemon"])) for r in rows)
                     + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon", action="append", default=[], metavar="NAME=COMMAND",
                        help=f"a daemon to measure (repeatable); default xrayd={XRAYD!r}")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of sending per trial (default 30)")
    parser.add_argument("--quick", action="store_true",
                        help="5 s trials, 2 s idle: a quick look, not the reference figures")
    parser.add_argument("--size", choices=sorted(SIZES), default="1k",
                        help="segment size (default 1k; mix: 0.5-16 KB, mostly 1 KB)")
    parser.add_argument("--senders", type=int, default=2, help="sender processes (default 2)")
    parser.add_argument("--fixed-rates", type=float, nargs="*", default=[1000, 10000])
    parser.add_argument("--start-rate", type=float, default=40000)
    parser.add_argument("--max-rate", type=float, default=400000)
    parser.add_argument("--blast-count", type=float, default=3e6,
                        help="datagrams sent in the saturation run (default 3,000,000)")
    parser.add_argument("--idle", type=float, default=5.0, help="idle measurement seconds")
    parser.add_argument("--no-search", action="store_true", help="skip the zero-loss search")
    parser.add_argument("--no-blast", action="store_true", help="skip the saturation run")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the bare Python receive loop yardstick")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 5.0)
        args.idle = min(args.idle, 2.0)
        args.blast_count = min(args.blast_count, 1e6)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    daemons = [d.split("=", 1) for d in args.daemon] or [["xrayd", XRAYD]]
    binary = compiled_sender()
    load = procstat.load_average()
    progress(f"sender: {'C (sendmmsg)' if binary else 'Python'} x{args.senders}; "
             f"load average {load}")
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_before": load},
        "settings": {k: v for k, v in vars(args).items()},
        "sender": "c" if binary else "python",
        "daemons": [],
    }
    if not args.no_baseline:
        results["bare_loop"] = bare_loop_rate(min(args.duration, 5.0), args.senders, binary)
        progress(f"bare Python recv_into loop: {results['bare_loop']['rate']:,} datagrams/s")
    sink = SinkProcess()
    results["sink"] = sink.kind
    progress(f"sink: {sink.kind} ({sink.url})")
    try:
        for name, command in daemons:
            bench = Bench(name, command, args, sink, binary)
            results["daemons"].append(bench.run())
    finally:
        sink.stop()
    results["machine"]["load_after"] = procstat.load_average()
    path = RESULTS / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nload average before {load}, after {results['machine']['load_after']}; "
          f"{'C' if binary else 'Python'} sender x{args.senders}, {results['sink']} sink; "
          f"trials of "
          f"{args.duration:g} s; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
