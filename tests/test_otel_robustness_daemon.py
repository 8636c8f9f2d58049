"""A bad value in one document or span costs that document or span, never a thread of the
daemon: real xrayd subprocesses, real UDP, the strict OTLP receiver fake."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import datagram, free_port, send_udp, wait_until
from fakes.otlp_receiver import OtlpReceiver
from offline_support import start_offline, xray_client
from test_otlp_receivers import post

EPOCH = int(time.time())  # the trace ids' time part


@pytest.fixture
def receiver():
    server = OtlpReceiver().start()
    yield server
    server.stop()


def segment(n: int, **extra) -> bytes:
    doc = {"trace_id": f"1-{int(time.time()):08x}-{n:024x}", "id": f"{n:016x}",
           "name": f"svc-{n}", "start_time": time.time() - 1, "end_time": time.time(), **extra}
    return datagram(json.dumps(doc))


def test_a_segment_the_otlp_exporter_cannot_convert_does_not_stop_the_export(
        start_xrayd, tmp_path, receiver):
    daemon, port, _ = start_offline(start_xrayd, tmp_path, "--otlp-endpoint",
                                    f"{receiver.url}/v1/traces", "--concurrency", "2")
    bad = {"http": {"response": {"content_length": "\u00b2"}}}
    send_udp(port, segment(1, **bad), segment(2, **bad))
    time.sleep(0.3)
    send_udp(port, *(segment(n) for n in range(10, 15)))
    wait_until(lambda: {s.name for _, s in receiver.spans()} >= {f"svc-{n}" for n in
                                                                   range(10, 15)},
               timeout=20, what="the good segments' spans at the receiver")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(15)
    assert "Exception in thread" not in daemon.output
    assert "segments_dropped[shutdown]" not in daemon.output


def t1s(request) -> bytes:
    return datagram(b"T1S" + base64.b64encode(request.SerializeToString()))


def server_span_request(n: int, status_code: str | None = None):
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = f"otel-{n}"
    span = rs.scope_spans.add().spans.add(
        name=f"GET /{n}", kind=Span.SPAN_KIND_SERVER,
        trace_id=bytes.fromhex(f"{EPOCH:08x}{n:024x}"), span_id=n.to_bytes(8, "big"),
        start_time_unix_nano=time.time_ns() - 10**9, end_time_unix_nano=time.time_ns())
    if status_code is not None:
        span.attributes.add(key="http.status_code").value.string_value = status_code
    return request


def xray_id(n: int) -> str:
    return f"1-{EPOCH:08x}-{n:024x}"


def test_spans_with_odd_values_on_udp_and_http_cost_nothing_else(start_xrayd, tmp_path):
    http_port = free_port()
    daemon, port, _ = start_offline(start_xrayd, tmp_path, "--otlp-http-address",
                                    f"127.0.0.1:{http_port}", "--otlp-grpc-address", "off")
    send_udp(port, t1s(server_span_request(1, "\u00b2")), t1s(server_span_request(2, "\u00b2")))
    time.sleep(0.3)
    send_udp(port, *(t1s(server_span_request(n)) for n in range(10, 13)))
    client = xray_client(port)
    ids = [xray_id(n) for n in (1, 2, 10, 11, 12)]
    wait_until(lambda: len(client.batch_get_traces(TraceIds=ids)["Traces"]) == 5, timeout=15,
               what="every T1S span in the store")
    status, _, body = post(f"http://127.0.0.1:{http_port}/v1/traces",
                           server_span_request(20, "\u00b2").SerializeToString())
    assert status == 200, body
    assert not ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
    wait_until(lambda: client.batch_get_traces(TraceIds=[xray_id(20)])["Traces"], timeout=10,
               what="the OTLP/HTTP span in the store")
    assert "Exception in thread" not in daemon.output


def test_a_request_larger_than_the_whole_budget_is_413_not_503_forever(start_xrayd, tmp_path):
    http_port = free_port()
    daemon, _port, _ = start_offline(start_xrayd, tmp_path, "-m", "16", "--otlp-http-address",
                                    f"127.0.0.1:{http_port}", "--otlp-grpc-address", "off")
    big = ExportTraceServiceRequest()
    spans = big.resource_spans.add().scope_spans.add().spans
    trace = bytes.fromhex(f"{EPOCH:08x}{99:024x}")
    for n in range(60_000):  # about 400 bytes a document: 24 MB, over the 16 MiB budget
        span = spans.add(name=f"op-{n}", kind=Span.SPAN_KIND_SERVER, trace_id=trace,
                         span_id=(n + 1).to_bytes(8, "big"), start_time_unix_nano=time.time_ns(),
                         end_time_unix_nano=time.time_ns())
        span.attributes.add(key="http.url").value.string_value = f"http://shop.example/{n:0100}"
    url = f"http://127.0.0.1:{http_port}/v1/traces"
    status, headers, body = post(url, big.SerializeToString())
    assert status == 413, (status, body[:200])
    assert b"more than the whole memory budget" in body
    assert "Retry-After" not in headers
    # one that fits is taken
    status, _, _ = post(url, server_span_request(30).SerializeToString())
    assert status == 200
    assert "over_budget" in daemon.output or "whole memory budget" in daemon.output


def producer_request(n: int):
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (("service.name", f"orders-{n}"), ("deployment.environment", "prod"),
                       ("team", "payments")):
        rs.resource.attributes.add(key=key).value.string_value = value
    scope = rs.scope_spans.add()
    scope.scope.name = "my.instrumentation"
    span = scope.spans.add(
        name=f"publish orders-{n}", kind=Span.SPAN_KIND_PRODUCER,
        trace_id=bytes.fromhex(f"{EPOCH:08x}{n:024x}"), span_id=n.to_bytes(8, "big"),
        parent_span_id=(n + 1000).to_bytes(8, "big"),
        start_time_unix_nano=time.time_ns() - 10**9, end_time_unix_nano=time.time_ns())
    span.attributes.add(key="messaging.system").value.string_value = "kafka"
    span.attributes.add(key="order.items").value.int_value = 3
    span.attributes.add(key="custom.flag").value.bool_value = True
    return request


def test_otel_spans_are_exported_as_they_came_and_stored_converted(
        start_xrayd, tmp_path, receiver):
    import grpc

    http_port, grpc_port = free_port(), free_port()
    _daemon, port, _ = start_offline(
        start_xrayd, tmp_path, "--otlp-endpoint", f"{receiver.url}/v1/traces",
        "--otlp-http-address", f"127.0.0.1:{http_port}",
        "--otlp-grpc-address", f"127.0.0.1:{grpc_port}")
    sent = {n: producer_request(n) for n in (41, 42, 43)}
    send_udp(port, t1s(sent[41]))
    status, _, _ = post(f"http://127.0.0.1:{http_port}/v1/traces", sent[42].SerializeToString())
    assert status == 200
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ExportTraceServiceResponse.FromString)
        export(sent[43], timeout=10)

    def arrived():
        found = {}
        for request in receiver.trace_requests():
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        found[int.from_bytes(span.span_id, "big")] = rs
        return found if set(sent) <= set(found) else None

    found = wait_until(arrived, timeout=20, what="the three spans at the OTLP receiver")
    for n, request in sent.items():
        assert found[n] == request.resource_spans[0]  # kind, name, attributes, resource, scope
    client = xray_client(port)
    traces = wait_until(lambda: (t := client.batch_get_traces(
        TraceIds=[xray_id(n) for n in sent])["Traces"]) and len(t) == 3 and t,
        timeout=15, what="the converted segments in the store")
    stored = {json.loads(s["Document"])["id"] for t in traces for s in t["Segments"]}
    assert stored == {f"{n:016x}" for n in sent}
    assert len(receiver.spans()) == 3  # once each: not converted to a segment and back too
    assert receiver.problems == []


def test_batches_in_flight_when_the_drain_ends_are_spooled(start_xrayd, tmp_path):
    import socket

    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    spool = tmp_path / "spool"
    try:
        daemon, port, _ = start_offline(
            start_xrayd, tmp_path, "--otlp-endpoint",
            f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces", "--spool-dir", str(spool),
            "--drain-seconds", "4", "--concurrency", "2")
        send_udp(port, *(segment(n) for n in range(100, 300)))
        time.sleep(2)  # the OTLP lane's batches are out (past the batch age), unanswered
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(20)
    finally:
        silent.close()
    summary = [line for line in daemon.output.splitlines() if "exporter otlp:" in line]
    assert summary and "spooled now 200" in summary[-1], daemon.output[-2000:]
