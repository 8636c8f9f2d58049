"""The OTLP/HTTP and OTLP/gRPC receivers in-process on loopback, fed by the real OpenTelemetry
exporters and by raw requests (judged from the bytes answered), and the UDP reader's
T1S/T1U/M1 handling."""

from __future__ import annotations

import base64
import gzip
import logging
import socket
import threading
import urllib.error
import urllib.request
import zlib
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind

from conftest import free_port, wait_until
from xrayd.logs import RateLimitedLog
from xrayd.receivers.otlp_grpc import OtlpGrpcReceiver
from xrayd.receivers.otlp_http import make_server
from xrayd.receivers.otlp_intake import OtlpIntake, stats_count
from xrayd.stats import (
    OTEL_METRICS,
    OTEL_REQUESTS_REJECTED,
    OTEL_SEGMENTS,
    OTEL_SPANS_REJECTED,
    OTEL_SPANS_UNSAMPLED,
    Stats,
)


class Sink:
    """The segment queue's put_many, keeping what it is given."""

    def __init__(self) -> None:
        self.docs: list[bytes] = []
        self.lock = threading.Lock()

    def put_many(self, docs: list[bytes]):
        with self.lock:
            self.docs.extend(docs)
        return None


@pytest.fixture
def pipeline():
    sink, stats = Sink(), Stats()
    free = {"bytes": 10**9}
    intake = OtlpIntake(sink.put_many, lambda spill: None,
                        RateLimitedLog(logging.getLogger("test-otlp")),
                        free_bytes=lambda: free["bytes"])
    return sink, stats, intake, free


@pytest.fixture
def http_receiver(pipeline):
    sink, stats, intake, free = pipeline
    server = make_server(f"127.0.0.1:{free_port()}", intake, stats_count(stats.add))
    server.start()
    yield f"http://127.0.0.1:{server.bound[1]}", sink, stats, free
    server.stop()


@pytest.fixture
def grpc_receiver(pipeline):
    sink, stats, intake, free = pipeline
    receiver = OtlpGrpcReceiver(f"127.0.0.1:{free_port()}", intake, stats_count(stats.add))
    receiver.start()
    yield f"127.0.0.1:{receiver.bound[1]}", sink, stats, free
    receiver.stop(0)


def run_app(exporter, service: str = "shop") -> str:
    """A server span with a client and an internal child that raises; the X-Ray trace id."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              id_generator=AwsXRayIdGenerator())
    results = []

    class Recording:
        def export(self, spans):
            result = exporter.export(spans)
            results.append(result)
            return result

        def shutdown(self):
            exporter.shutdown()

        def force_flush(self, timeout_millis=0):
            return True

    provider.add_span_processor(SimpleSpanProcessor(Recording()))
    tracer = provider.get_tracer("shop.app")
    with tracer.start_as_current_span(
            "GET /items", kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "url.scheme": "http",
                        "server.address": "shop.local", "url.path": "/items",
                        "http.response.status_code": 500,
                        "user_agent.original": "test-agent"}) as root:
        trace_id = root.get_span_context().trace_id.to_bytes(16, "big").hex()
        with tracer.start_as_current_span(
                "GET", kind=SpanKind.CLIENT,
                attributes={"url.full": "http://backend.local/stock", "http.request.method":
                            "GET", "http.response.status_code": 200}):
            pass
        try:
            with tracer.start_as_current_span("compute"):
                raise ValueError("out of stock")
        except ValueError:
            pass
    provider.shutdown()
    assert results and all(r is SpanExportResult.SUCCESS for r in results), results
    return f"1-{trace_id[:8]}-{trace_id[8:]}"


def check_documents(docs: list[dict], trace_id: str) -> None:
    by_name = {d["name"]: d for d in docs}
    assert set(by_name) == {"shop", "backend.local", "compute"}
    root = by_name["shop"]
    assert all(d["trace_id"] == trace_id for d in docs)
    assert "parent_id" not in root
    assert root["http"]["request"]["url"] == "http://shop.local/items"
    assert root["http"]["response"]["status"] == 500 and root["fault"] is True
    for child in ("backend.local", "compute"):
        assert by_name[child]["parent_id"] == root["id"]
        assert by_name[child]["type"] == "subsegment"
    exception = by_name["compute"]["cause"]["exceptions"][0]
    assert exception["type"] == "ValueError" and exception["message"] == "out of stock"
    assert exception["stack"][0]["label"] == "run_app"


def test_standard_http_exporter(http_receiver):
    url, sink, stats, _ = http_receiver
    trace_id = run_app(HttpExporter(endpoint=url + "/v1/traces"))
    check_documents([orjson.loads(d) for d in sink.docs], trace_id)
    assert stats.get(OTEL_SEGMENTS, "otlp-http") == 3


def test_standard_http_exporter_with_gzip(http_receiver):
    from opentelemetry.exporter.otlp.proto.http import Compression

    url, sink, _, _ = http_receiver
    trace_id = run_app(HttpExporter(endpoint=url + "/v1/traces", compression=Compression.Gzip))
    check_documents([orjson.loads(d) for d in sink.docs], trace_id)


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
def test_standard_grpc_exporter(grpc_receiver, compression):
    address, sink, stats, _ = grpc_receiver
    trace_id = run_app(GrpcExporter(endpoint=address, insecure=True, compression=compression))
    check_documents([orjson.loads(d) for d in sink.docs], trace_id)
    assert stats.get(OTEL_SEGMENTS, "otlp-grpc") == 3


def post(url: str, body: bytes, content_type: str = "application/x-protobuf",
         **headers: str) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def one_span_request(trace_id: bytes = bytes.fromhex("6b12e7b695d23dc8d904c0be5d3e6eae"),
                     span_id: bytes = b"\x01" * 8, count: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(count):
        scope.spans.add(name="op", trace_id=trace_id,
                        span_id=span_id if count == 1 else (i + 1).to_bytes(8, "big"),
                        kind=2, start_time_unix_nano=1, end_time_unix_nano=2)
    return request


def test_partial_success_for_spans_with_bad_ids(http_receiver):
    url, sink, stats, _ = http_receiver
    request = one_span_request()
    request.resource_spans[0].scope_spans[0].spans.add(name="no-id", trace_id=b"\x01" * 16)
    request.resource_spans[0].scope_spans[0].spans.add(name="short", trace_id=b"\x01" * 15,
                                                        span_id=b"\x02" * 8)
    status, headers, body = post(url + "/v1/traces", request.SerializeToString())
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(body)
    assert answer.partial_success.rejected_spans == 2
    assert "no-id" in answer.partial_success.error_message
    assert len(sink.docs) == 1
    assert stats.by_label(OTEL_SPANS_REJECTED) == {"otlp-http:bad_span_id": 1,
                                                   "otlp-http:bad_trace_id": 1}


def test_json_body_and_json_answer(http_receiver):
    url, sink, _, _ = http_receiver
    body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":'
            b'"6b12e7b695d23dc8d904c0be5d3e6eae","spanId":"1111111111111111","name":"op",'
            b'"kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1","endTimeUnixNano":"2"},'
            b'{"traceId":"6b12e7b695d23dc8d904c0be5d3e6eae","name":"no-id"}]}]}]}')
    status, headers, answer = post(url + "/v1/traces", body, "application/json; charset=utf-8")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert orjson.loads(answer)["partialSuccess"]["rejectedSpans"] == "1"
    assert orjson.loads(sink.docs[0])["id"] == "1111111111111111"


@pytest.mark.parametrize(("body", "content_type", "extra", "status", "reason"), [
    (b"\xff\xfe garbage", "application/x-protobuf", {}, 400, "bad_protobuf"),
    (b"{not json", "application/json", {}, 400, "bad_json"),
    (b"abc", "text/plain", {}, 415, "bad_content_type"),
    (b"abc", "application/x-protobuf", {"Content-Encoding": "br"}, 415,
     "bad_content_encoding"),
    (b"not gzip", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400, "bad_gzip"),
])
def test_bad_requests(http_receiver, body, content_type, extra, status, reason):
    url, sink, stats, _ = http_receiver
    got, _, answer = post(url + "/v1/traces", body, content_type, **extra)
    assert got == status
    if status == 400:  # a google.rpc.Status: code 3 (INVALID_ARGUMENT) and a message
        assert answer[:2] in (b"\x08\x03", b'{"')
    assert stats.by_label(OTEL_REQUESTS_REJECTED) == {f"otlp-http:{reason}": 1}
    assert not sink.docs
    # The receiver still works afterwards.
    assert post(url + "/v1/traces", one_span_request().SerializeToString())[0] == 200


def test_gzip_bomb_gets_413_and_nothing_else_is_lost(http_receiver):
    url, sink, stats, _ = http_receiver
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush()
    status, _, _ = post(url + "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert status == 413
    assert stats.by_label(OTEL_REQUESTS_REJECTED) == {"otlp-http:too_large": 1}
    body = gzip.compress(one_span_request().SerializeToString())
    assert post(url + "/v1/traces", body, **{"Content-Encoding": "gzip"})[0] == 200
    assert len(sink.docs) == 1


def test_ten_thousand_spans_in_one_request(http_receiver):
    url, sink, _, _ = http_receiver
    status, _, body = post(url + "/v1/traces", one_span_request(count=10_000).SerializeToString())
    assert status == 200 and not ExportTraceServiceResponse.FromString(body).HasField(
        "partial_success")
    assert len(sink.docs) == 10_000


def test_wrong_path_and_method(http_receiver):
    url, _, _, _ = http_receiver
    assert post(url + "/v1/logs", b"")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/v1/traces", timeout=5)
    assert info.value.code == 405


def test_full_budget_answers_503_with_retry_after(http_receiver):
    url, sink, stats, free = http_receiver
    free["bytes"] = 100
    status, headers, _ = post(url + "/v1/traces", one_span_request().SerializeToString())
    assert status == 503 and headers["Retry-After"] == "1"
    assert not sink.docs and stats.by_label(OTEL_REQUESTS_REJECTED) == {"otlp-http:busy": 1}
    free["bytes"] = 10**9
    assert post(url + "/v1/traces", one_span_request().SerializeToString())[0] == 200


def raw_grpc_export(address: str, body: bytes) -> bytes:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        return call(body, timeout=10)


def test_grpc_garbage_busy_and_partial_success(grpc_receiver):
    address, sink, stats, free = grpc_receiver
    with pytest.raises(grpc.RpcError) as info:
        raw_grpc_export(address, b"\xff\xfe garbage")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    free["bytes"] = 100
    with pytest.raises(grpc.RpcError) as info:
        raw_grpc_export(address, one_span_request().SerializeToString())
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    free["bytes"] = 10**9
    request = one_span_request()
    request.resource_spans[0].scope_spans[0].spans.add(name="bad", trace_id=b"\x01" * 16,
                                                        span_id=b"\x01" * 4)
    answer = ExportTraceServiceResponse.FromString(
        raw_grpc_export(address, request.SerializeToString()))
    assert answer.partial_success.rejected_spans == 1
    assert len(sink.docs) == 1
    assert stats.by_label(OTEL_REQUESTS_REJECTED) == {"otlp-grpc:bad_protobuf": 1,
                                                      "otlp-grpc:busy": 1}


def test_grpc_message_over_the_limit(pipeline):
    sink, stats, intake, _ = pipeline
    receiver = OtlpGrpcReceiver(f"127.0.0.1:{free_port()}", intake, stats_count(stats.add),
                                max_message=1000)
    receiver.start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            raw_grpc_export(f"127.0.0.1:{receiver.bound[1]}",
                            one_span_request(count=100).SerializeToString())
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not sink.docs
    finally:
        receiver.stop(0)


def test_grpc_port_taken_raises_oserror(pipeline):
    _, stats, intake, _ = pipeline
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        receiver = OtlpGrpcReceiver(f"127.0.0.1:{holder.getsockname()[1]}", intake,
                                    stats_count(stats.add))
        with pytest.raises(OSError):
            receiver.start()


# -- the UDP reader: T1S / T1U / M1 -------------------------------------------------------------


@pytest.fixture
def udp_receiver(pipeline):
    from xrayd.receivers.udp import UdpReceiver, bind_udp

    sink, stats, intake, _ = pipeline
    metrics: list[bytes] = []
    intake.metrics_sink = None
    sock = bind_udp("127.0.0.1:0")
    counters = stats.intake()
    receiver = UdpReceiver(sock, lambda d: sink.put_many([d]), counters, lambda s: None,
                           RateLimitedLog(logging.getLogger("test-udp")),
                           put_many=sink.put_many, pace=False, otlp=intake)
    receiver.start()
    yield sock.getsockname()[1], sink, stats, intake, metrics
    receiver.stop()


def test_adot_udp_exporter_spans_are_converted(udp_receiver):
    from amazon.opentelemetry.distro.otlp_udp_exporter import OTLPUdpSpanExporter

    port, sink, stats, _, _ = udp_receiver
    trace_id = run_app(OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}"))
    wait_until(lambda: len(sink.docs) == 3, what="3 documents")
    check_documents([orjson.loads(d) for d in sink.docs], trace_id)
    assert stats.intake_by_source() == {"xray": 0, "otlp-udp": 3, "otlp-http": 0,
                                        "otlp-grpc": 0}


def test_unsampled_spans_are_counted_not_sent(udp_receiver):
    from amazon.opentelemetry.distro.otlp_udp_exporter import OTLPUdpSpanExporter

    port, sink, stats, _, _ = udp_receiver
    run_app(OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}", sampled=False))
    wait_until(lambda: stats.get(OTEL_SPANS_UNSAMPLED, "otlp-udp") == 3, what="3 unsampled")
    assert not sink.docs


def test_metrics_forwarded_to_the_sink_or_dropped(udp_receiver):
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    port, _, stats, intake, _ = udp_receiver
    payload = ExportMetricsServiceRequest()
    payload.resource_metrics.add().scope_metrics.add().metrics.add(name="requests")
    raw = payload.SerializeToString()
    datagram = b'{"format":"json","version":1}\nM1' + base64.b64encode(raw)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(datagram, ("127.0.0.1", port))
        wait_until(lambda: stats.get(OTEL_METRICS, "dropped_no_exporter") == 1, what="dropped")
        forwarded: list[bytes] = []
        intake.metrics_sink = forwarded.append
        sender.sendto(datagram, ("127.0.0.1", port))
        wait_until(lambda: forwarded, what="forwarded metrics")
    assert forwarded == [raw] and stats.get(OTEL_METRICS, "forwarded") == 1


def test_bad_otlp_datagrams_are_rejected_with_reasons_and_valid_ones_kept(udp_receiver):
    from xrayd.protocol import Reason

    port, sink, stats, _, _ = udp_receiver
    header = b'{"format":"json","version":1}\n'
    good = base64.b64encode(one_span_request().SerializeToString())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for payload in (b"T1S" + good[:-3], b"T1S" + base64.b64encode(b"\xff\xfe garbage"),
                        b"M1" + base64.b64encode(b"\xff\xfe garbage"), b"T1S" + good,
                        b'{"id":"x"}'):
            sender.sendto(header + payload, ("127.0.0.1", port))
    wait_until(lambda: len(sink.docs) == 2, what="2 documents")
    assert stats.rejected() == {Reason.OTLP_BAD_BASE64: 1, Reason.OTLP_BAD_PROTOBUF: 2}
    assert stats.intake_by_source()["xray"] == 1
    assert stats.intake_by_source()["otlp-udp"] == 1


# -- conversion in worker processes ---------------------------------------------------------------


@pytest.fixture
def pool():
    from xrayd.otel.spans_to_segments import Options
    from xrayd.receivers.convert_workers import ConvertPool

    workers = ConvertPool(Options(), size=1, log=logging.getLogger("test-pool"))
    yield workers
    workers.close()


def test_worker_pool_converts_like_the_daemon_itself(pool):
    from xrayd.otel.decode import traces_from_protobuf
    from xrayd.otel.spans_to_segments import Options, convert_request

    request = one_span_request(count=2000)
    request.resource_spans[0].scope_spans[0].spans.add(name="bad", trace_id=b"\x01" * 16)
    body = request.SerializeToString()
    local = convert_request(traces_from_protobuf(body), Options())
    pooled = pool.convert(body, False, False)
    assert pool._started == 1  # a worker did it
    assert pooled.documents == local.documents and len(pooled.documents) == 2000
    assert pooled.rejected == local.rejected == {"bad_span_id": 1}
    assert pooled.spans == 2001 and pooled.messages == local.messages
    assert pool.convert(gzip.compress(body), False, True).documents == local.documents


def test_worker_pool_decode_errors_and_bombs(pool):
    from xrayd.otel.decode import DecodeError, TooLarge

    with pytest.raises(DecodeError) as info:
        pool.convert(b"\xff\xfe" * 20_000, False, False)
    assert info.value.reason == "bad_protobuf"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(64)) + compressor.flush()
    with pytest.raises(TooLarge):
        pool.convert(bomb, False, True, limit=1 << 20)
    assert len(pool.convert(one_span_request(count=500).SerializeToString(), False,
                            False).documents) == 500


def test_a_dead_worker_falls_back_to_in_process_conversion(pool):
    body = one_span_request(count=500).SerializeToString()
    assert len(pool.convert(body, False, False).documents) == 500
    [worker] = pool._all
    worker.process.kill()
    worker.process.wait()
    assert len(pool.convert(body, False, False).documents) == 500  # in-process, after a log
    assert len(pool.convert(body, False, False).documents) == 500  # a new worker
    assert pool._all and pool._all[0] is not worker


def test_t1s_datagrams_converted_off_the_reader_thread(pipeline):
    from xrayd.receivers.udp import UdpReceiver, bind_udp

    sink, stats, _, _ = pipeline
    intake = OtlpIntake(sink.put_many, lambda spill: None,
                        RateLimitedLog(logging.getLogger("test-otlp")), workers=1,
                        backlog_threads=2, shared_count=stats_count(stats.add))
    sock = bind_udp("127.0.0.1:0")
    receiver = UdpReceiver(sock, lambda d: sink.put_many([d]), stats.intake(), lambda s: None,
                           RateLimitedLog(logging.getLogger("test-udp")),
                           put_many=sink.put_many, pace=False, otlp=intake)
    receiver.start()
    header = b'{"format":"json","version":1}\nT1S'
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(200):
                request = one_span_request(span_id=(i + 1).to_bytes(8, "big"))
                sender.sendto(header + base64.b64encode(request.SerializeToString()),
                              ("127.0.0.1", sock.getsockname()[1]))
        wait_until(lambda: stats.received == 200, what="200 datagrams read")
    finally:
        receiver.stop()
        intake.close()  # converts what still waits
    assert len(sink.docs) == 200
    assert {orjson.loads(d)["id"] for d in sink.docs} == {
        (i + 1).to_bytes(8, "big").hex() for i in range(200)}
    assert stats.intake_by_source()["otlp-udp"] == 200 and stats.accepted == 0


def test_body_over_the_limit_gets_413_before_it_is_read(pipeline):
    _, stats, intake, _ = pipeline
    server = make_server(f"127.0.0.1:{free_port()}", intake, stats_count(stats.add),
                         max_body=1000)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.bound[1]}/v1/traces"
        status, _, answer = post(url, bytes(2000))
        assert status == 413 and answer.startswith(b"\x08\x03")
        assert stats.by_label(OTEL_REQUESTS_REJECTED) == {"otlp-http:too_large": 1}
        assert post(url, one_span_request().SerializeToString())[0] == 200
    finally:
        server.stop()
