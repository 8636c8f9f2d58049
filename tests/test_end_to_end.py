"""The daemon as a process between a real SDK and a real X-Ray API (moto server)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from aws_xray_sdk.core import AWSXRayRecorder
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

from conftest import datagram, free_udp_tcp_port, send_udp, wait_until

HEADER = b'{"format":"json","version":1}'


class RecordingEmitter(UDPEmitter):
    """The SDK's own emitter, remembering each datagram it sends."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.sent: list[bytes] = []

    def _send_data(self, data: str) -> None:
        self.sent.append(data.encode("utf-8"))
        super()._send_data(data)


def write_config(tmp_path: Path, port: int, endpoint: str, extra: str = "") -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"Endpoint: {endpoint}\nRegion: us-east-1\nSocket:\n  UDPAddress: 127.0.0.1:{port}\n"
        f"  TCPAddress: 127.0.0.1:{port}\nLogging:\n  LogLevel: debug\n{extra}Version: 2\n"
    )
    return path


def trace_id() -> str:
    return f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"


def segment(tid: str, n: int, **extra) -> bytes:
    now = time.time()
    doc = {"trace_id": tid, "id": f"{n:016x}", "name": "svc", "start_time": now,
           "end_time": now + 0.01, **extra}
    return json.dumps(doc).encode()


def documents_at(moto, trace_ids: list[str]) -> dict[str, list[str]]:
    client = moto.xray()
    found: dict[str, list[str]] = {}
    for i in range(0, len(trace_ids), 5):
        answer = client.batch_get_traces(TraceIds=trace_ids[i:i + 5])
        for trace in answer["Traces"]:
            found[trace["Id"]] = [s["Document"] for s in trace["Segments"]]
    return found


def summary_counts(output: str) -> dict[str, int]:
    line = re.search(r"Shutdown summary: (.*)", output)
    assert line, output
    counts = {}
    for part in line.group(1).split(", "):
        name, _, value = part.rpartition(" ")
        counts[name] = int(value)
    return counts


def test_sdk_segments_reach_the_api_byte_for_byte(moto, start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    cfg = write_config(tmp_path, port, moto.url)
    daemon = start_xrayd(["-c", str(cfg)])

    emitter = RecordingEmitter(f"127.0.0.1:{port}")
    recorder = AWSXRayRecorder()
    recorder.configure(service="checkout", sampling=False, emitter=emitter,
                       context_missing="LOG_ERROR", plugins=(), streaming_threshold=30)
    tids = []
    for n in range(3):
        seg = recorder.begin_segment(f"checkout-{n}")
        tids.append(seg.trace_id)
        seg.put_annotation("customer", f"c-{n}")
        seg.put_annotation("vip", n % 2 == 0)
        seg.put_metadata("cart", {"items": [1, 2, 3], "note": "naïve ☕"}, "shop")
        seg.put_http_meta("method", "POST")
        seg.put_http_meta("url", "http://shop.example/checkout")
        sub = recorder.begin_subsegment("charge-card", "remote")
        sub.put_annotation("amount", 12.5)
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            sub.add_exception(exc, __import__("traceback").extract_stack())
        recorder.end_subsegment()
        with recorder.in_subsegment("render") as render:
            render.put_metadata("template", "receipt.html")
        seg.put_http_meta("status", 402)
        recorder.end_segment()
    # A trace with more than 30 subsegments: the SDK streams them as separate documents.
    seg = recorder.begin_segment("bulk")
    tids.append(seg.trace_id)
    for i in range(35):
        recorder.begin_subsegment(f"step-{i}")
        recorder.end_subsegment()
    recorder.end_segment()

    sent_bodies: dict[str, list[str]] = {}
    for data in emitter.sent:
        header, _, body = data.partition(b"\n")
        assert header == HEADER
        sent_bodies.setdefault(json.loads(body)["trace_id"], []).append(body.decode())
    assert sum(len(v) for v in sent_bodies.values()) > 4  # streaming produced extra documents

    def all_arrived():
        found = documents_at(moto, tids)
        return found if all(len(found.get(t, [])) == len(sent_bodies[t]) for t in tids) else None

    found = wait_until(all_arrived, timeout=20, interval=0.3, what="documents at moto")
    for tid in tids:
        assert sorted(found[tid]) == sorted(sent_bodies[tid])
    assert "card declined" in "".join(found[tids[0]])

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    counts = summary_counts(daemon.output)
    total = len(emitter.sent)
    assert counts["datagrams received"] == total
    assert counts["segments_sent"] == total
    assert counts["rejected"] == 0


def test_bad_input_is_counted_and_valid_traffic_around_it_delivered(moto, start_xrayd,
                                                                    tmp_path):
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-c", str(write_config(tmp_path, port, moto.url)), "-l", "info"])
    tid = trace_id()
    garbage = os.urandom(2000)
    bad = [
        b"",  # empty
        b"no newline at all",
        HEADER + b"\n",  # nothing after the header
        b"not json\n{}",
        b'{"format":"xml","version":1}\n{}',
        b'{"format":"json","version":2}\n{}',
        b'{"format":"json","version":"1"}\n{}',
        b'{"format":"json","version":1.0}\n{}',
        HEADER + b'\n{"secret":"\xff\xfe\xfd"}',
        b"\n" * 3,
    ]
    big = datagram(b'{"trace_id":"%s","id":"%016x","name":"big","start_time":1,"end_time":2,'
                   b'"metadata":{"default":{"pad":"' % (tid.encode(), 1000))
    big += b"x" * (65507 - len(big) - 4) + b'"}}}'
    assert len(big) == 65507
    valid = [datagram(segment(tid, n)) for n in range(20)]
    payloads = [valid[0], *bad, valid[1], big, *valid[2:10]]
    flood = [garbage[i:i + 100 + i] for i in range(0, 1500, 3)]
    payloads += flood + valid[10:]
    send_udp(port, *payloads)
    documents = wait_until(lambda: (d := documents_at(moto, [tid]).get(tid)) and len(d) == 21
                           and d, timeout=20, interval=0.3, what="valid documents")
    assert len(documents) == 21
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    output = daemon.output
    counts = summary_counts(output)
    flood_rejected = len(flood)
    assert counts["datagrams received"] == len(payloads)
    assert counts["accepted"] == 21
    assert counts["rejected"] == len(bad) + flood_rejected
    assert counts["rejected[empty_datagram]"] == 1
    assert counts["rejected[body_not_utf8]"] == 1
    assert counts["rejected[header_wrong_version]"] == 3
    assert counts["segments_sent"] == 21
    # No document contents in the log at the default level, and warnings are rate-limited.
    assert "secret" not in output and "not json" not in output
    warn_lines = [line for line in output.splitlines() if "[Warn]" in line]
    assert len(warn_lines) <= 10


def test_sigterm_uploads_everything_buffered(moto, start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-c", str(write_config(tmp_path, port, moto.url))])
    tid = trace_id()
    send_udp(port, *[datagram(segment(tid, n)) for n in range(120)])
    # Well inside the 1 s batch age: the open batch is still buffered when the signal comes.
    wait_until(lambda: "processor" in daemon.output or True, timeout=1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=25) == 0
    assert "Got shutdown signal: terminated" in daemon.output
    assert len(documents_at(moto, [tid])[tid]) == 120
    assert summary_counts(daemon.output)["segments_sent"] == 120


def test_ipv6_intake(moto, start_xrayd, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-b", f"[::1]:{port}", "--endpoint", moto.url, "-n", "us-east-1",
                          "-t", f"127.0.0.1:{port}"])
    tid = trace_id()
    send_udp(port, datagram(segment(tid, 1)), host="::1")
    wait_until(lambda: documents_at(moto, [tid]).get(tid), timeout=10, what="ipv6 document")
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0
    assert "Got shutdown signal: interrupt" in daemon.output


class HangingServer:
    """Accepts TCP connections and never answers: a backend that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_second_signal_exits_at_once(start_xrayd, tmp_path):
    server = HangingServer()
    try:
        port = free_udp_tcp_port()
        daemon = start_xrayd(["-c", str(write_config(tmp_path, port, server.url))])
        send_udp(port, *[datagram(segment(trace_id(), n)) for n in range(60)])
        wait_until(lambda: server.conns, timeout=10, what="an upload to start")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("Got shutdown signal")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 1
        assert time.monotonic() - started < 5
        assert "second shutdown signal" in daemon.output
    finally:
        server.close()


def test_udp_port_in_use_is_fatal(start_xrayd, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-n", "us-east-1"], ready=None)
        assert daemon.wait() == 1
    assert f"listen udp 127.0.0.1:{port}: bind: Address already in use" in daemon.output


def test_no_region_is_fatal(start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    # Local mode falls back to the SDK default region: neither variable may be set.
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-o"],
                         env={"AWS_REGION": "", "AWS_DEFAULT_REGION": ""}, ready=None)
    assert daemon.wait() == 1
    assert "[Error] Cannot fetch region variable from config file" in daemon.output


def test_too_little_buffer_memory_is_fatal(start_xrayd):
    daemon = start_xrayd(["-m", "2", "-b", "127.0.0.1:0"], ready=None)
    assert daemon.wait() == 1
    assert "Not enough Buffers Memory Allocated. Min Buffers Memory required: 3 MB." in (
        daemon.output)


def test_log_file_and_startup_lines(moto, start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    log = tmp_path / "logs" / "xray.log"
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-n", "eu-west-1", "--endpoint", moto.url,
                          "-m", "16", "-f", str(log)], ready=None)
    wait_until(lambda: log.exists() and "Ready: receiving" in log.read_text(), what="log file")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    text = log.read_text()
    for line in ("[Info] Initializing AWS X-Ray daemon",
                 "[Info] Using buffer memory limit of 16 MB",
                 "[Info] 256 segment buffers allocated", "[Info] Using region: eu-west-1"):
        assert line in text
    assert "[Debug]" not in text  # prod level
    assert daemon.output == ""  # nothing on stdout when logging to a file


def udp_backlog(port: int) -> int:
    """Bytes waiting in the kernel receive queue of the UDP socket bound to ``port``."""
    with open("/proc/net/udp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no UDP socket on port {port}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_flood_faster_than_the_backend(moto, start_xrayd, tmp_path):
    """3 MB budget, a flood of 1 KB segments far faster than moto accepts them."""
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-c", str(write_config(tmp_path, port, moto.url)), "-m", "3",
                          "-l", "info"])
    pid = daemon.proc.pid
    time.sleep(0.5)
    idle = rss_bytes(pid)
    peak = [idle]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    flood_tid = trace_id()
    body = segment(flood_tid, 0, metadata={"default": {"pad": "x" * 850}})
    payload = datagram(body)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for _ in range(1000):
                sock.sendto(payload, ("127.0.0.1", port))
            sent += 1000
    try:
        # Still responsive: once it has read the backlog the kernel held, a new trace is
        # delivered.
        wait_until(lambda: udp_backlog(port) == 0, timeout=30, what="the socket backlog read")
        after = trace_id()
        send_udp(port, *[datagram(segment(after, n)) for n in range(5)])
        wait_until(lambda: len(documents_at(moto, [after]).get(after, [])) == 5, timeout=60,
                   interval=0.5, what="segments sent after the flood")
    finally:
        stop.set()
        sampler.join()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=40) == 0
    counts = summary_counts(daemon.output)
    spilled = counts.get("segments_spilled[evicted_oldest]", 0) + counts.get(
        "segments_spilled[dropped_new]", 0)
    assert spilled > 0, counts
    assert "Spilling over" in daemon.output or "Segment dropped" in daemon.output
    accounted = (counts["segments_sent"] + spilled + counts.get("segments_dropped[shutdown]", 0)
                 + sum(v for k, v in counts.items() if k.startswith("segments_failed")))
    assert counts["accepted"] == accounted
    assert counts["datagrams received"] <= sent + 5
    growth = peak[0] - idle
    print(f"sent {sent}, received {counts['datagrams received']}, spilled {spilled}, "
          f"idle RSS {idle >> 20} MiB, peak growth {growth / 2**20:.1f} MiB")
    assert growth < (3 + 30) * 2**20, f"RSS grew {growth / 2**20:.1f} MiB with a 3 MB budget"


def test_sighup_reopens_the_log_file(start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    log = tmp_path / "xray.log"
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-n", "us-east-1", "-f", str(log)],
                         ready=None)
    wait_until(lambda: log.exists() and "Ready: receiving" in log.read_text(), what="log")
    log.rename(tmp_path / "xray.log.old")  # what logrotate does
    daemon.signal(signal.SIGHUP)
    wait_until(log.exists, what="reopened log file")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "Got shutdown signal: terminated" in log.read_text()
    assert "Got shutdown signal" not in (tmp_path / "xray.log.old").read_text()
