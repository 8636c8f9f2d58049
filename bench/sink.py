"""A fast X-Ray API sink for the throughput suite: answers PutTraceSegments (and
PutTelemetryRecords) on kept-alive HTTP/1.1 connections, in one epoll loop, and counts
the benchmark's documents exactly by the ``bench-<seq>-<sent ns>`` name each one carries.

It accepts SigV4-signed requests but does NOT verify the signatures (a benchmark sink must not
be the bottleneck; the test suite checks signing against moto and botocore). Every call answers
200 with no unprocessed segments.

Control paths (plain GET/POST from the orchestrator on the same port):
``POST /bench/reset?expect=N&latency=1`` starts a phase (N sequence numbers, latencies kept or
not); ``GET /bench/stats`` returns the phase's counts as JSON.

Run: ``python -m bench.sink PORT`` (prints ``listening <port>`` once ready).
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import threading
import time
from array import array
from urllib.parse import parse_qs, urlsplit

NAME = re.compile(rb"bench-(\d+)-(\d+)")
OK_SEGMENTS = b'{"UnprocessedTraceSegments":[]}'


class Phase:
    def __init__(self, expect: int = 0, latency: bool = False) -> None:
        self.expect = expect
        self.seen = bytearray(expect)
        self.keep_latency = latency
        self.latencies = array("q")
        self.documents = 0
        self.unique = 0
        self.duplicates = 0
        self.out_of_range = 0
        self.requests = 0
        self.body_bytes = 0
        self.first_ns = 0
        self.last_ns = 0
        self.started_ns = time.monotonic_ns()


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase = Phase()
        self.telemetry_calls = 0

    def record(self, body: bytes, arrived: int) -> None:
        found = NAME.findall(body)
        with self.lock:
            phase = self.phase
            phase.requests += 1
            phase.body_bytes += len(body)
            if not found:
                return
            if not phase.first_ns:
                phase.first_ns = arrived
            phase.last_ns = arrived
            phase.documents += len(found)
            seen, expect = phase.seen, phase.expect
            latencies = phase.latencies if phase.keep_latency else None
            for seq_text, sent_text in found:
                seq = int(seq_text)
                if seq >= expect:
                    phase.out_of_range += 1
                elif seen[seq]:
                    phase.duplicates += 1
                else:
                    seen[seq] = 1
                    phase.unique += 1
                if latencies is not None:
                    latencies.append(arrived - int(sent_text))

    def reset(self, expect: int, latency: bool) -> None:
        with self.lock:
            self.phase = Phase(expect, latency)

    def stats(self) -> dict:
        with self.lock:
            p = self.phase
            lat = sorted(p.latencies)
        out = {k: getattr(p, k) for k in ("expect", "documents", "unique", "duplicates",
                                           "out_of_range", "requests", "body_bytes", "first_ns",
                                           "last_ns", "started_ns")}
        out["telemetry_calls"] = self.telemetry_calls
        if lat:
            out["latency_ms"] = {
                "n": len(lat),
                "p50": lat[len(lat) // 2] / 1e6,
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6,
                "max": lat[-1] / 1e6,
            }
        return out

    def answer(self, method: str, target: str, body: bytes, arrived: int) -> tuple[int, bytes]:
        path = urlsplit(target).path
        if path == "/TraceSegments":
            self.record(body, arrived)
            return 200, OK_SEGMENTS
        if path == "/TelemetryRecords":
            self.telemetry_calls += 1
            return 200, b"{}"
        if path == "/bench/reset":
            query = parse_qs(urlsplit(target).query)
            self.reset(int(query.get("expect", ["0"])[0]), query.get("latency", ["0"])[0] == "1")
            return 200, b"{}"
        if path == "/bench/stats":
            return 200, json.dumps(self.stats()).encode()
        return 404, b'{"message":"not found"}'


def parse_requests(buf: bytearray, sink: Sink) -> bytes:
    """Answer every complete request at the head of ``buf`` (removing them); the responses."""
    out = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = bytes(buf[:end]).split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            break  # the body is not all here yet
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        status, payload = sink.answer(method, target, body, time.monotonic_ns())
        reason = b"OK" if status == 200 else b"Not Found"
        out.append(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.1\r\n"
            b"x-amzn-RequestId: bench\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, len(payload), payload)
        )
    return b"".join(out)


def needs_continue(buf: bytearray) -> bool:
    end = buf.find(b"\r\n\r\n")
    return end >= 0 and b"\r\nexpect: 100-continue" in bytes(buf[:end]).lower()


def main(argv: list[str]) -> int:
    """One thread, one epoll loop for every connection: no GIL hand-overs between connection
    threads (which cost more than the requests themselves)."""
    port = int(argv[0]) if argv else 0
    sink = Sink()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, None)
    print(f"listening {server.getsockname()[1]}", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                conn, _ = server.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn, buf = key.fileobj, key.data
            try:
                chunk = conn.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(conn)
                conn.close()
                continue
            buf += chunk
            try:
                answer = parse_requests(buf, sink)
                if not answer and needs_continue(buf):
                    answer = b"HTTP/1.1 100 Continue\r\n\r\n"
                if answer:
                    conn.sendall(answer)
            except (OSError, ValueError):
                selector.unregister(conn)
                conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
