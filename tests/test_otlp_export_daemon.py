"""OTLP export beside the X-Ray upload, with real peers: an app instrumented with the real
aws-xray-sdk sends to xrayd (a subprocess), which uploads to moto server and exports the same
traces as OTLP/HTTP to a strict receiver (tests/fakes/otlp_receiver.py) that verifies SigV4 from
the raw request; a 30-second outage of the receiver loses nothing and does not hold up the X-Ray
upload; offline mode exports beside the store."""

from __future__ import annotations

import signal
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from conftest import free_port, free_udp_tcp_port, wait_until
from fakes.harness import scrape, send_at_rate, trace_of
from fakes.otlp_receiver import OtlpReceiver
from offline_support import recorder, start_offline, xray_client

SECRETS = {"AKIDTESTTESTTEST": "test-secret-key"}
ERROR = Status.StatusCode.STATUS_CODE_ERROR


@pytest.fixture
def receiver():
    server = OtlpReceiver().start()
    yield server
    server.stop()


def attrs(item) -> dict:
    out = {}
    for kv in item.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def start_normal(start_xrayd, moto_url: str, receiver: OtlpReceiver, *extra: str):
    port = free_udp_tcp_port()
    admin = free_port()
    daemon = start_xrayd(
        ["-o", "-n", "us-east-1", "--endpoint", moto_url, "-b", f"127.0.0.1:{port}",
         "-t", f"127.0.0.1:{port}", "--admin-address", f"127.0.0.1:{admin}", "-l", "info",
         "--otlp-endpoint", f"{receiver.url}/v1/traces", *extra])
    return daemon, port, f"http://127.0.0.1:{admin}"


def sdk_traces(port: int) -> list[str]:
    """Two traces from the real SDK: a server segment with a remote call that failed with a 503
    and a local subsegment that raised; the trace ids."""
    rec = recorder(f"127.0.0.1:{port}")
    trace_ids = []
    for n in range(2):
        seg = rec.begin_segment(f"checkout-{n}")
        trace_ids.append(seg.trace_id)
        seg.put_http_meta("method", "POST")
        seg.put_http_meta("url", "http://shop.example/checkout")
        seg.put_annotation("customer", f"c-{n}")
        seg.put_metadata("cart", {"items": [1, 2]}, "shop")
        sub = rec.begin_subsegment("payments", "remote")
        sub.put_http_meta("method", "GET")
        sub.put_http_meta("url", "http://payments.internal/charge")
        sub.put_http_meta("status", 503)
        rec.end_subsegment()
        try:
            with rec.in_subsegment("render"):
                raise ValueError("template missing")
        except ValueError:
            pass
        seg.put_http_meta("status", 500)
        rec.end_segment()
    return trace_ids


def check_sdk_spans(receiver: OtlpReceiver, trace_ids: list[str]) -> None:
    spans = {}
    for resource, span in receiver.spans():
        spans[(span.trace_id.hex(), span.name)] = (resource, span)
    for n, trace_id in enumerate(trace_ids):
        otel_id = trace_id[2:10] + trace_id[11:]
        resource, root = spans[(otel_id, f"checkout-{n}")]
        assert resource["service.name"] == f"checkout-{n}"
        assert resource["telemetry.sdk.name"] == "X-Ray for Python"
        assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
        assert root.parent_span_id == b""
        assert root.status.code == ERROR  # 500
        a = attrs(root)
        assert a["http.request.method"] == "POST"
        assert a["http.response.status_code"] == 500
        assert a["customer"] == f"c-{n}"
        assert '"items":[1,2]' in a["aws.xray.metadata.shop"]
        _, call = spans[(otel_id, "payments")]
        assert call.kind == Span.SpanKind.SPAN_KIND_CLIENT
        assert call.parent_span_id == root.span_id
        assert call.status.code == ERROR
        assert attrs(call)["http.response.status_code"] == 503
        assert attrs(call)["url.full"] == "http://payments.internal/charge"
        _, render = spans[(otel_id, "render")]
        assert render.kind == Span.SpanKind.SPAN_KIND_INTERNAL
        assert render.parent_span_id == root.span_id
        assert render.status.code == ERROR and render.status.message == "template missing"
        (event,) = render.events
        assert attrs(event)["exception.type"] == "ValueError"


def test_sdk_segments_reach_xray_and_a_sigv4_otlp_receiver(moto, start_xrayd, receiver):
    receiver.secrets = SECRETS
    daemon, port, admin = start_normal(start_xrayd, moto.url, receiver,
                                       "--otlp-sigv4-region", "us-east-1")
    trace_ids = sdk_traces(port)
    wait_until(lambda: len(receiver.spans()) >= 6, timeout=20, what="spans at the receiver")
    client = moto.xray()
    wait_until(lambda: len(client.batch_get_traces(TraceIds=trace_ids)["Traces"]) == 2,
               timeout=20, what="traces at moto")
    assert receiver.problems == []
    assert all(r.verdict.ok and r.verdict.service == "xray" and r.verdict.region == "us-east-1"
               for r in receiver.requests)
    check_sdk_spans(receiver, trace_ids)
    metrics = scrape(admin)
    assert metrics['xrayd_exporter_segments_sent_total{exporter="otlp"}'] == 2
    assert metrics['xrayd_exporter_segments_sent_total{exporter="xray"}'] == 2
    assert metrics['xrayd_otlp_spans_converted_total{exporter="otlp"}'] == 6
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "Shutdown summary: exporter otlp: sent 2, failed 0, queued 0" in daemon.output
    assert "Shutdown summary: exporter xray: sent 2, failed 0, queued 0" in daemon.output


@pytest.mark.slow
def test_receiver_down_for_30_seconds_loses_nothing_and_does_not_hold_up_xray(
        moto, start_xrayd, receiver, tmp_path):
    receiver.stop()  # down from the start; the port stays ours to start it again
    _daemon, port, admin = start_normal(start_xrayd, moto.url, receiver, "--spool-dir",
                                        str(tmp_path / "spool"), "--spool-fsync-ms", "200")
    down_at = time.monotonic()
    count, run = 2000, "a1"
    sent = send_at_rate(port, 1, count, 100, run=run)  # 20 s of traffic into the outage
    trace_ids = sdk_traces(port)
    # Everything reaches the X-Ray API while the OTLP receiver is still down (it comes back
    # only after this wait).
    wait_until(lambda: scrape(admin).get(
        'xrayd_exporter_segments_sent_total{exporter="xray"}') == sent + 2,
        timeout=30, interval=0.2, what="every segment at moto")
    metrics = scrape(admin)
    assert metrics['xrayd_exporter_up{exporter="otlp"}'] == 0
    assert metrics['xrayd_exporter_spool_segments{exporter="otlp"}'] > 0
    assert metrics.get('xrayd_exporter_segments_failed_total{class="connection_refused",'
                       'exporter="otlp"}', 0) == 0
    assert (tmp_path / "spool" / "otlp").is_dir()
    assert not list((tmp_path / "spool").glob("*.spool"))  # the X-Ray API's spool: unused
    client = moto.xray()
    sample = [trace_of(n, run) for n in (1, 1000, count)]
    assert len(client.batch_get_traces(TraceIds=sample)["Traces"]) == 3
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    receiver.start()
    wait_until(lambda: len({s.span_id for _, s in receiver.spans()}) >= sent + 6,
               timeout=60, interval=0.3, what="every span at the receiver after the outage")
    ids = {s.span_id.hex() for _, s in receiver.spans()}
    assert {f"{n:016x}" for n in range(1, sent + 1)} <= ids
    check_sdk_spans(receiver, trace_ids)
    assert receiver.problems == []
    wait_until(lambda: scrape(admin)['xrayd_exporter_spool_segments{exporter="otlp"}'] == 0,
               timeout=10, what="the OTLP spool emptied")
    metrics = scrape(admin)
    assert metrics['xrayd_exporter_segments_spooled_total{exporter="otlp"}'] > 0
    assert metrics['xrayd_exporter_segments_sent_total{exporter="otlp"}'] == sent + 2


def test_offline_mode_exports_beside_the_store(start_xrayd, tmp_path, receiver):
    daemon, port, _ = start_offline(start_xrayd, tmp_path, "--otlp-endpoint",
                                    f"{receiver.url}/v1/traces")
    trace_ids = sdk_traces(port)
    wait_until(lambda: len(receiver.spans()) >= 6, timeout=20, what="spans at the receiver")
    client = xray_client(port)
    found = wait_until(lambda: client.batch_get_traces(TraceIds=trace_ids)["Traces"],
                       timeout=20, what="traces in the store")
    assert {t["Id"] for t in found} == set(trace_ids)
    check_sdk_spans(receiver, trace_ids)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "Shutdown summary: exporter local: sent 2" in daemon.output
    assert "Shutdown summary: exporter otlp: sent 2" in daemon.output


def test_bad_otlp_endpoint_is_a_start_up_error(start_xrayd, tmp_path):
    daemon = start_xrayd(["-o", "-n", "us-east-1", "-b", f"127.0.0.1:{free_udp_tcp_port()}",
                          "--otlp-endpoint", "ftp://nowhere/v1/traces"], ready=None)
    assert daemon.wait(30) == 1
    assert "is not an http:// or https:// URL" in daemon.output


def test_standard_environment_variables_turn_export_on(moto, start_xrayd, receiver):
    port = free_udp_tcp_port()
    start_xrayd(["-o", "-n", "us-east-1", "--endpoint", moto.url, "-b", f"127.0.0.1:{port}",
                 "-t", f"127.0.0.1:{port}", "-l", "info"],
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                     "OTEL_EXPORTER_OTLP_HEADERS": "x-scope-orgid=tenant-1"})
    trace_ids = sdk_traces(port)
    wait_until(lambda: len(receiver.spans()) >= 6, timeout=20, what="spans at the receiver")
    assert all(r.headers["x-scope-orgid"] == "tenant-1" for r in receiver.requests)
    assert {s.trace_id.hex() for _, s in receiver.spans()} == {
        t[2:10] + t[11:] for t in trace_ids}
