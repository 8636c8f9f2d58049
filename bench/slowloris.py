"""The TCP server under a slowloris attack: ``.venv/bin/python -m bench.slowloris
[--per-address 300] [--addresses 30] [--requests 200]``.

Starts ``xrayd --offline`` on free ports, then measures (docs/operations.md, "Threat model"):

- the time to refuse a connection: connections over the per-address limit (64) from one
  address, each sending a request and reading the 503 to the end, one after the other;
- a normal client's answer times (a new connection and ``POST /GetSamplingRules`` each) alone,
  then while ``--per-address`` connections from 127.0.0.2 and as many spread over
  ``--addresses`` other loopback addresses trickle request heads a byte every 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# The tests' safe environment (dummy credentials, no instance metadata) and port helpers.
from conftest import SAFE_ENV, free_udp_tcp_port, wait_until


def start_daemon(workdir: str) -> tuple[subprocess.Popen, int]:
    port = free_udp_tcp_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "xrayd", "--offline", "--store", f"{workdir}/traces.db",
         "-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "-l", "error"],
        env={**os.environ, **SAFE_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    wait_until(ready, timeout=30, what="xrayd --offline")
    return daemon, port


def normal_request(port: int) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/GetSamplingRules", body=b"{}",
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    if answer.status != 200:
        raise RuntimeError(f"normal client got {answer.status}")
    return time.perf_counter() - started


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
            f"({len(ms)} requests)")


def refusal_times(port: int, count: int) -> list[float]:
    held = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
            for _ in range(64)]
    time.sleep(0.5)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port),
                                      source_address=("127.0.0.3", 0)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 503 "):
            raise RuntimeError(f"expected a 503, got {answer[:40]!r}")
        times.append(time.perf_counter() - started)
    for sock in held:
        sock.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-address", type=int, default=300)
    parser.add_argument("--addresses", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        daemon, port = start_daemon(workdir)
        try:
            print("refusing a connection over the per-address limit:",
                  summary(refusal_times(port, 500)))
            print("normal client, alone:",
                  summary([normal_request(port) for _ in range(args.requests)]))
            sources = (["127.0.0.2"] * args.per_address
                       + [f"127.0.1.{i % args.addresses + 1}" for i in range(args.per_address)])
            attackers = []
            for source in sources:
                sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
                sock.setblocking(False)
                attackers.append(sock)
            stop = threading.Event()

            def drip() -> None:
                while not stop.is_set():
                    for sock in attackers:
                        with contextlib.suppress(OSError):
                            sock.send(b"G")
                    stop.wait(0.1)

            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
            time.sleep(1)
            times = [normal_request(port) for _ in range(args.requests)]
            print(f"normal client, {len(sources)} trickling connections:", summary(times))
            stop.set()
            dripper.join()
            for sock in attackers:
                sock.close()
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
