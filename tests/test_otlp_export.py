"""The OTLP exporter (exporters/otlp.py, otlp_settings.py) against a strict OTLP/HTTP receiver
that judges the raw bytes (tests/fakes/otlp_receiver.py): settings, request bodies, answers,
SigV4, metrics forwarding."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from unittest.mock import patch

import pytest
from botocore.credentials import Credentials
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from conftest import free_port, wait_until
from fakes.otlp_receiver import OtlpReceiver
from xrayd.delivery import Unprocessed, UploadError, retry_after_seconds
from xrayd.exporters.otlp import (
    OtlpExporter,
    classify_answer,
    request_body,
    wrap_resource_spans,
)
from xrayd.exporters.otlp_settings import (
    OtlpConfigError,
    exports_to_itself,
    parse_headers,
    resolve_settings,
)
from xrayd.otel.segments_to_spans import Report, convert

TRACE = "1-5759e988-bd862e3fe1be46a994272793"
SECRETS = {"AKIDTESTTESTTEST": "test-secret-key"}


def segment(n: int, **extra) -> bytes:
    doc = {"trace_id": TRACE, "id": f"{n + 1:016x}", "name": "svc", "start_time": 1.0,
           "end_time": 2.0, **extra}
    return json.dumps(doc).encode()


class Counts:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    def __call__(self, name: str, amount: int, label: str) -> None:
        self.seen[(name, label)] = self.seen.get((name, label), 0) + amount


@pytest.fixture
def receiver():
    server = OtlpReceiver().start()
    yield server
    server.stop()


# -- settings ----------------------------------------------------------------------------------


def test_settings_precedence_and_paths():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom"}
    assert resolve_settings("", "", {}) is None
    assert resolve_settings("off", "", env) is None
    flag = resolve_settings("http://flag:4318", "", env)
    assert flag.traces_url == "http://flag:4318/v1/traces"  # no path: the OTLP one
    assert flag.metrics_url == "http://flag:4318/v1/metrics"
    assert resolve_settings("", "", env).traces_url == "http://traces:9999/custom"
    generic = resolve_settings("", "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert generic.traces_url == "http://c:4318/v1/traces"
    assert generic.metrics_url == "http://c:4318/v1/metrics"
    signed = resolve_settings("", "eu-west-1", {})
    assert signed.traces_url == "https://xray.eu-west-1.amazonaws.com/v1/traces"
    assert signed.metrics_url == "" and signed.sigv4_region == "eu-west-1"
    timed = resolve_settings("http://h/v1/traces", "", {"OTEL_EXPORTER_OTLP_TIMEOUT": "2500"})
    assert timed.timeout == 2.5


@pytest.mark.parametrize("bad", ["ftp://x/v1/traces", "not a url", "http://user:pw@h/v1/traces"])
def test_bad_endpoints_are_refused(bad):
    with pytest.raises(OtlpConfigError):
        resolve_settings(bad, "", {})


def test_headers_from_the_environment():
    headers, warnings = parse_headers("api-key=a%20b, x-team = one ,broken,=v,bad name=1")
    assert headers == {"api-key": "a b", "x-team": "one"}
    assert len(warnings) == 3
    settings = resolve_settings("http://h/v1/traces", "us-east-1", {
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=x,k=1,content-type=text/plain",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "k=2"})
    assert settings.headers == {"k": "2"}
    assert any("authorization" in w for w in settings.warnings)
    assert any("content-type" in w for w in settings.warnings)


def test_retry_after_values():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now_epoch=1445412470.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now_epoch=1445412490.0) == 0.0


@pytest.mark.parametrize(("status", "retriable"), [
    (400, False), (401, False), (404, False), (413, False), (408, True), (429, True),
    (500, False), (502, True), (503, True), (504, True)])
def test_answers_are_classified_as_the_otlp_specification_says(status, retriable):
    error = classify_answer(status, {"retry-after": "3"}, b"")
    assert error.retriable is retriable
    assert error.retry_after == (3.0 if retriable else None)
    assert error.status == status


# -- request bodies ----------------------------------------------------------------------------


def test_request_body_is_one_export_request_of_converted_and_passed_through_spans():
    passed = ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="otel-span")])])
    items = [segment(0), b"{broken", wrap_resource_spans(passed.SerializeToString()),
             segment(1, subsegments=[{"id": "00000000000000aa", "name": "child",
                                      "start_time": 1.1, "end_time": 1.2}])]
    report = Report()
    body, count = request_body(items, report)
    assert count == 3
    request = ExportTraceServiceRequest.FromString(body)
    assert request.SerializeToString() == body
    assert [len(rs.scope_spans[0].spans) for rs in request.resource_spans] == [1, 1, 2]
    assert request.resource_spans[1] == passed  # unchanged
    assert request.resource_spans[0] == convert(segment(0), Report())
    assert report.documents == 1 and report.skipped == {"document:json": 1}


# -- against the receiver ----------------------------------------------------------------------


def credentials():
    return Credentials("AKIDTESTTESTTEST", "test-secret-key").get_frozen_credentials()


def exporter_for(receiver: OtlpReceiver, region: str = "", counts=None) -> OtlpExporter:
    settings = resolve_settings(receiver.url + "/v1/traces", region, {
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=t1"})
    return OtlpExporter(settings, credentials if region else None, counts or Counts())


def test_put_sends_gzip_protobuf_with_the_configured_headers(receiver):
    counts = Counts()
    exporter = exporter_for(receiver, counts=counts)
    try:
        assert exporter.put([segment(0), segment(1), b"[]"]) == [
            Unprocessed("", "OtlpUnconvertibleDocument", "gave no span for OTLP export")]
        assert exporter.put([segment(2)]) == []  # on the kept-alive connection
    finally:
        exporter.close()
    assert receiver.problems == []
    assert len(receiver.requests) == 2
    first = receiver.requests[0]
    assert first.headers["x-tenant"] == "t1"
    assert first.headers["user-agent"].startswith("xrayd/")
    names = [s.span_id.hex() for _, s in receiver.spans()]
    assert names == [f"{n + 1:016x}" for n in range(3)]
    assert counts.seen[("otlp_spans_converted", "")] == 3
    assert counts.seen[("otlp_documents_unconverted", "not_an_object")] == 1


def test_sigv4_signature_verified_from_the_raw_request(receiver):
    receiver.secrets = SECRETS
    exporter = exporter_for(receiver, region="us-west-2")
    try:
        exporter.put([segment(0)])
    finally:
        exporter.close()
    assert receiver.problems == []
    (seen,) = receiver.requests
    assert seen.verdict.ok and seen.verdict.service == "xray"
    assert seen.verdict.region == "us-west-2"
    assert {"host", "x-amz-date"} <= set(seen.verdict.signed_headers)


def test_a_wrong_secret_is_refused_by_the_verifier(receiver):
    receiver.secrets = {"AKIDTESTTESTTEST": "another-secret"}
    exporter = exporter_for(receiver, region="us-west-2")
    try:
        with pytest.raises(UploadError) as caught:
            exporter.put([segment(0)])
    finally:
        exporter.close()
    assert caught.value.status == 400 and not caught.value.retriable
    assert receiver.problems == ["signature: signature mismatch"]


def test_unavailable_with_retry_after_and_partial_success(receiver):
    counts = Counts()
    exporter = exporter_for(receiver, counts=counts)
    try:
        receiver.status, receiver.retry_after = 503, "4"
        with pytest.raises(UploadError) as caught:
            exporter.put([segment(0)])
        assert caught.value.retriable and caught.value.retry_after == 4.0
        receiver.status, receiver.retry_after, receiver.partial_rejected = 200, "", 1
        [refused] = exporter.put([segment(0), segment(1)])
        assert refused.error_code == "OtlpPartialSuccessRejected"
    finally:
        exporter.close()
    assert counts.seen[("otlp_spans_rejected", "")] == 1


def test_a_closed_port_is_a_retriable_connection_error():
    settings = resolve_settings(f"http://127.0.0.1:{free_port()}/v1/traces", "", {})
    exporter = OtlpExporter(settings)
    try:
        with pytest.raises(UploadError) as caught:
            exporter.put([segment(0)])
    finally:
        exporter.close()
    assert caught.value.retriable and caught.value.error_class == "connection_refused"


def test_metrics_requests_are_forwarded_to_v1_metrics(receiver):
    counts = Counts()
    exporter = exporter_for(receiver, counts=counts)
    request = ExportMetricsServiceRequest()
    request.resource_metrics.add().scope_metrics.add().metrics.add(name="m1")
    try:
        assert exporter.forward_metrics(request.SerializeToString())
        wait_until(lambda: counts.seen.get(("otlp_metrics_forwarded", "")) == 1, timeout=10)
    finally:
        exporter.close()
    (seen,) = receiver.requests
    assert seen.path == "/v1/metrics"
    assert ExportMetricsServiceRequest.FromString(seen.body) == request
    assert gzip.decompress(seen.raw.split(b"\r\n\r\n", 1)[1]) == seen.body


def test_without_a_metrics_endpoint_metrics_are_counted_as_dropped():
    settings = resolve_settings("", "us-east-1", {})
    counts = Counts()
    exporter = OtlpExporter(settings, lambda: None, counts)
    assert not exporter.forward_metrics(b"")
    assert counts.seen == {("otlp_metrics_dropped", "no_metrics_endpoint"): 1}


@pytest.fixture
def tls_receiver(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = OtlpReceiver(tls=(str(cert), str(key)), secrets=SECRETS).start()
    yield server
    server.stop()


def test_https_with_verification_refuses_an_unknown_certificate(tls_receiver):
    exporter = OtlpExporter(resolve_settings(tls_receiver.url + "/v1/traces", "", {}))
    try:
        with pytest.raises(UploadError) as caught:
            exporter.put([segment(0)])
    finally:
        exporter.close()
    assert caught.value.retriable and "certificate" in str(caught.value).lower()
    assert tls_receiver.requests == []


def test_https_signed_without_verification(tls_receiver):
    settings = resolve_settings(tls_receiver.url + "/v1/traces", "us-east-1", {},
                                verify=False)
    exporter = OtlpExporter(settings, credentials)
    try:
        exporter.put([segment(0)])
    finally:
        exporter.close()
    assert tls_receiver.problems == []
    (seen,) = tls_receiver.requests
    assert seen.verdict.ok


@pytest.mark.parametrize(("head", "problem"), [
    (b"Content-Type: application/x-protobuf\r\nContent-Type: application/x-protobuf\r\n",
     "header Content-Type sent twice"),
    (b"Transfer-Encoding: chunked\r\n", "chunked/transfer-encoded request"),
    (b"Content-Type: application/json\r\n", "content type 'application/json'"),
])
def test_the_receiver_judges_the_raw_request(receiver, head, problem):
    """The fake is strict: what a careless client could send is refused, not tolerated."""
    import socket

    body = gzip.compress(ExportTraceServiceRequest().SerializeToString())
    if b"Content-Type" not in head:
        head += b"Content-Type: application/x-protobuf\r\n"
    request = (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\n" + head
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    assert receiver.problems == [problem]


def test_through_an_outbound_proxy_with_the_signature_intact(receiver):
    from dataclasses import replace

    from fakes.http_proxy import HttpProxy

    proxy = HttpProxy()
    receiver.secrets = SECRETS
    try:
        settings = replace(resolve_settings(receiver.url + "/v1/traces", "us-east-1", {}),
                           proxy=proxy.url)
        exporter = OtlpExporter(settings, credentials)
        try:
            exporter.put([segment(0)])
        finally:
            exporter.close()
        assert ("POST", receiver.url + "/v1/traces") in proxy.seen()
    finally:
        proxy.stop()
    assert receiver.problems == []
    (seen,) = receiver.requests
    assert seen.verdict.ok


def test_documents_without_spans_are_counted_and_logged(receiver, caplog):
    from xrayd.logs import RateLimitedLog, get_logger

    counts = Counts()
    settings = resolve_settings(receiver.url + "/v1/traces", "", {})
    exporter = OtlpExporter(settings, counts=counts, logs=RateLimitedLog(get_logger()))
    no_trace = json.dumps({"id": "0000000000000001", "name": "x", "start_time": 1}).encode()
    with caplog.at_level("WARNING", logger=get_logger().name):
        try:
            assert exporter.put([no_trace, segment(0)]) == [Unprocessed(
                "0000000000000001", "OtlpUnconvertibleDocument", "gave no span for OTLP export")]
        finally:
            exporter.close()
    assert counts.seen[("otlp_documents_unconverted", "trace_id")] == 1
    assert "1 segment documents gave no span for OTLP export (no usable trace_id)" in caplog.text
    assert len(receiver.spans()) == 1


def test_a_request_too_large_for_the_receiver_is_sent_again_in_halves(receiver):
    counts = Counts()
    exporter = exporter_for(receiver, counts=counts)
    import hashlib

    def blob(n: int) -> str:  # hex digests: they do not compress away
        return "".join(hashlib.sha256(f"{n}-{i}".encode()).hexdigest() for i in range(40))

    docs = [segment(n, metadata={"default": {"blob": blob(n)}}) for n in range(8)]
    sizes = []
    for half in (docs, docs[:4], docs[:2]):
        body, _ = request_body(half, Report())
        sizes.append(len(gzip.compress(body)))
    receiver.max_body = sizes[2] + 50  # two documents fit, four do not
    try:
        assert exporter.put(docs) == []
    finally:
        exporter.close()
    assert receiver.problems == []
    assert len(receiver.requests) == 4
    assert sorted(s.span_id.hex() for _, s in receiver.spans()) == [
        f"{n + 1:016x}" for n in range(8)]
    assert counts.seen[("otlp_requests_split", "")] == 3
    assert counts.seen[("otlp_spans_converted", "")] == 8  # counted once


@pytest.mark.parametrize(("url", "receiver", "loops"), [
    ("http://localhost:4318/v1/traces", ("127.0.0.1", 4318), True),
    ("http://127.0.0.1:4318/v1/traces", ("", 4318), True),
    ("http://[::1]:4318/v1/traces", ("127.0.0.1", 4318), False),  # another socket
    ("http://[::1]:4318/v1/traces", ("::", 4318), True),
    ("http://2130706433:4318/v1/traces", ("127.0.0.1", 4318), True),  # 127.0.0.1 as a number
    ("http://127.1:4318/v1/traces", ("localhost", 4318), True),
    ("http://192.0.2.1:4318/v1/traces", ("127.0.0.1", 4318), False),
    ("http://192.0.2.1:4318/v1/traces", ("0.0.0.0", 4318), False),
    ("http://localhost:4319/v1/traces", ("127.0.0.1", 4318), False),
    ("https://localhost/v1/traces", ("127.0.0.1", 443), True),
    ("http://localhost:4318/v1/traces", None, False),
])
def test_export_to_the_daemons_own_receiver_is_recognised(url, receiver, loops):
    assert exports_to_itself(url, receiver) is loops


def test_offline_daemon_ignores_an_environment_endpoint_that_is_its_own_receiver(tmp_path):
    from xrayd.config import Config
    from xrayd.daemon import Daemon

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}
    daemon = Daemon(Config(offline=True))
    with patch.dict(os.environ, env):
        assert daemon._otlp_settings() is None
    explicit = Daemon(Config(offline=True, otlp_endpoint="http://127.0.0.1:4318/v1/traces"))
    with pytest.raises(ValueError, match="loop"):
        explicit._otlp_settings()
    other = Daemon(Config(offline=True, otlp_endpoint="http://127.0.0.1:4318/v1/traces",
                          otlp_http_address="127.0.0.1:14318"))
    assert other._otlp_settings() is not None


def test_the_upload_loop_counts_unconverted_and_refused_documents_unprocessed(receiver):
    from xrayd import stats as names
    from xrayd.batcher import Batch, Batcher
    from xrayd.logs import RateLimitedLog, get_logger
    from xrayd.segment_queue import SegmentQueue
    from xrayd.stats import Stats
    from xrayd.uploader import Uploader

    stats = Stats()
    exporter = exporter_for(receiver)
    uploader = Uploader(SegmentQueue(Batcher(budget=10**6), clock=lambda: 0.0), exporter, stats,
                        RateLimitedLog(get_logger()), concurrency=1, sleep=lambda s: None)
    try:
        uploader.deliver(Batch([segment(0), b"{broken", segment(1)], 0))
        receiver.partial_rejected = 1
        uploader.deliver(Batch([segment(2), segment(3)], 0))
    finally:
        exporter.close()
    assert stats.get(names.SEGMENTS_SENT) == 3
    assert stats.get(names.SEGMENTS_UNPROCESSED, "OtlpUnconvertibleDocument") == 1
    assert stats.get(names.SEGMENTS_UNPROCESSED, "OtlpPartialSuccessRejected") == 1
