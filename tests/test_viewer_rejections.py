"""The Rejected view's server side without a browser: the daemon's ring of recent rejections
(safe truncated previews, a rate limit that keeps a flood cheap, a bounded size), the UDP
reader recording what it refuses, and the viewer routes merging them with the store's refused
documents and counting per intake."""

from __future__ import annotations

import base64
import json
import socket
import time

import grpc
import orjson
import pytest

from conftest import free_port
from test_otlp_receivers import (  # noqa: F401  (pipeline: the OTLP intake fixture)
    one_span_request,
    pipeline,
    raw_grpc_export,
)
from xrayd import logs
from xrayd.protocol import Reason
from xrayd.receivers.otlp_grpc import OtlpGrpcReceiver
from xrayd.receivers.otlp_intake import stats_count
from xrayd.receivers.udp import UdpReceiver
from xrayd.rejections import RecentRejections, intake_counts, preview
from xrayd.server.threaded import Request
from xrayd.server.viewer_routes import routes
from xrayd.server.xray_api import StoreReader
from xrayd.stats import OTEL_REQUESTS_REJECTED, OTEL_SEGMENTS, OTEL_SPANS_REJECTED, Stats
from xrayd.store.writer import Retention, StoreWriter

HEADER = b'{"format": "json", "version": 1}\n'


def test_preview_escapes_control_characters_and_cuts_long_input():
    raw = b"\x00\x1b[31m<b>\xff\xfe\n\x7f" + "\u2028".encode() + b"x" * 500
    shown = preview(raw)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" for c in shown)
    assert shown.startswith("\\x00\\x1b[31m<b>\\xff\\xfe\\x0a\\x7f\\u2028xxx")
    assert shown.endswith(f"… ({len(raw)} bytes)") and len(shown) < 260
    assert preview(b"short {json") == "short {json" and preview(None) == ""


def test_recording_is_rate_limited_per_second_and_bounded():
    now = [100.0]
    recent = RecentRejections(capacity=30, per_second=20, clock=lambda: now[0],
                              wall=lambda: now[0])
    kept = [recent.record("xray", "header_not_json", "bad", b"x" * 10_000) for _ in range(100)]
    assert kept.count(True) == 20 and recent.not_kept == 80
    assert all(len(r["Document"]) < 260 for r in recent.rows)  # a preview, not the input
    now[0] += 1.0
    for i in range(20):
        recent.record("otlp-http", "bad_protobuf", f"n{i}")
    rows = recent.recent(500)
    assert len(rows) == 30  # the oldest went
    assert [r["Reason"] for r in rows[:2]] == ["n19", "n18"]  # newest first
    assert rows[-1]["Intake"] == "xray" and recent.recent(1)[0]["Intake"] == "otlp-http"


def receiver(recent: RecentRejections | None) -> tuple[UdpReceiver, Stats, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stats = Stats()
    return (UdpReceiver(sock, lambda body: None, stats.intake(), lambda spill: None,
                        logs.RateLimitedLog(logs.get_logger()), rejections=recent), stats, sock)


def test_udp_reader_keeps_examples_of_a_flood_and_counts_it_all():
    recent = RecentRejections(per_second=5, clock=lambda: 0.0)
    udp, stats, sock = receiver(recent)
    try:
        flood = [b"not a header\x00" + bytes([i % 256]) * 40 for i in range(2000)]
        otlp = HEADER + b"T1S" + base64.b64encode(b"x")
        good = HEADER + json.dumps({"name": "ok"}).encode()
        bodies: list[bytes] = []
        assert udp._check([otlp, *flood, good], bodies)
        assert bodies == [good[len(HEADER):]]
        rejected = stats.rejected()
        assert rejected[Reason.HEADER_NOT_JSON] + rejected[Reason.NO_SEPARATOR] == 2000
        assert recent.not_kept == 2001 - 5 and len(recent.rows) == 5
        first, *rest = recent.recent(10)[::-1]
        # Without an OTLP intake wired, a T1S payload is refused as such, against otlp-udp.
        assert (first["Intake"], first["ErrorCode"]) == ("otlp-udp", "otlp_payload_unsupported")
        assert all(r["Intake"] == "xray" and "\\x00" in r["Document"] for r in rest)
        assert intake_counts(stats)["xray"] == {"accepted": 0, "rejected": 2000}
        assert intake_counts(stats)["otlp-udp"]["rejected"] == 1
    finally:
        sock.close()


def test_rejected_route_merges_the_store_and_the_daemon_and_counts_per_intake(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1, max_bytes=10**8))
    reader = StoreReader(writer.path)
    try:
        writer.write([b"{not json"])
        time.sleep(0.01)
        recent = RecentRejections()
        recent.record("otlp-http", "bad_protobuf", "400: not an OTLP message", b"\x08\xff<x>")
        stats = Stats()
        stats.intake().rejected[Reason.OTLP_BAD_BASE64] += 2
        stats.add(OTEL_SEGMENTS, 7, label="otlp-http")
        stats.add(OTEL_REQUESTS_REJECTED, 1, label="otlp-http:bad_protobuf")
        stats.add(OTEL_SPANS_REJECTED, 3, label="otlp-grpc:bad_span_id")
        handle = routes(reader, {"store": writer.path}, stats=stats, rejections=recent)
        answer = handle(Request("GET", "/api/rejected", [("Host", "127.0.0.1")], b""))
        rows = orjson.loads(answer.body)["Rejected"]
        assert [(r["Intake"], r["ErrorCode"]) for r in rows] == [
            ("otlp-http", "bad_protobuf"), ("store", "InvalidSegment")]
        assert rows[0]["Document"] == "\\x08\\xff<x>" and rows[1]["Document"] == "{not json"
        info = orjson.loads(handle(Request("GET", "/api/stats", [], b"")).body)
        assert info["intake"] == {
            "xray": {"accepted": 0, "rejected": 0},
            "otlp-udp": {"accepted": 0, "rejected": 2},
            "otlp-http": {"accepted": 7, "rejected": 1},
            "otlp-grpc": {"accepted": 0, "rejected": 3}}
        assert info["rejections_not_kept"] == 0
        # Without the daemon's parts (a reader of the store alone): the store's rows only.
        alone = routes(reader, {})(Request("GET", "/api/rejected?limit=5", [], b""))
        assert [r["Intake"] for r in orjson.loads(alone.body)["Rejected"]] == ["store"]
    finally:
        reader.close()
        writer.close()


def test_otlp_grpc_garbage_and_rejected_spans_are_recorded(pipeline):  # noqa: F811
    _sink, stats, intake, _free = pipeline
    intake.rejections = recent = RecentRejections()
    receiver = OtlpGrpcReceiver(f"127.0.0.1:{free_port()}", intake, stats_count(stats.add))
    receiver.start()
    try:
        address = f"127.0.0.1:{receiver.bound[1]}"
        with pytest.raises(grpc.RpcError):
            raw_grpc_export(address, b"\xff\xfe garbage")
        request = one_span_request()
        request.resource_spans[0].scope_spans[0].spans.add(name="bad", trace_id=b"\x01" * 16,
                                                            span_id=b"\x01" * 4)
        raw_grpc_export(address, request.SerializeToString())
    finally:
        receiver.stop(0)
    spans, garbage = recent.recent(10)
    assert (garbage["Intake"], garbage["Document"]) == ("otlp-grpc", "\\xff\\xfe garbage")
    assert garbage["ErrorCode"] == "bad_protobuf"
    assert spans["Intake"] == "otlp-grpc" and "1 of 2 spans rejected" in spans["Reason"]
    assert intake_counts(stats)["otlp-grpc"] == {"accepted": 1, "rejected": 2}
