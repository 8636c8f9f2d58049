"""Every outbound request path against the strict X-Ray fake (fakes/xray_upstream.py), directly
and through the strict outbound HTTP proxy (fakes/http_proxy.py): PutTraceSegments sent
in-process and by the forked helper (exporters/offload.py), PutTelemetryRecords, and the TCP
sampling proxy. Both fakes judge the raw bytes received: each request must be framed once
(one Content-Length, no Transfer-Encoding with it), name each header once, and carry a SigV4
signature that holds for the header lines as received."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator

import orjson
import pytest

from conftest import free_port
from fakes.http_proxy import HttpProxy
from fakes.xray_upstream import Seen, XRayUpstream, sampling_rule
from xrayd import aws
from xrayd.exporters import xray
from xrayd.exporters.xray import XRayExporter
from xrayd.logs import RateLimitedLog
from xrayd.server.proxy import SigningProxy

DOCS = [b'{"id":"%016x","name":"strict","trace_id":"1-5759e988-bd862e3fe1be46a994272793",'
        b'"start_time":1,"end_time":2}' % i for i in range(3)]


@pytest.fixture
def upstream() -> Iterator[XRayUpstream]:
    server = XRayUpstream()
    server.rules = [sampling_rule("Default", "*", 0.05, 1, 10000)]
    yield server
    server.stop()


@pytest.fixture(params=["direct", "outbound-proxy"])
def route(request, monkeypatch) -> Iterator[HttpProxy | None]:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "direct":
        yield None
        return
    proxy = HttpProxy()
    yield proxy
    proxy.stop()


def context(upstream: XRayUpstream, route: HttpProxy | None) -> aws.AwsContext:
    return aws.create_context("us-east-1", upstream.url, False, route.url if route else "")


def assert_strictly_accepted(upstream: XRayUpstream, route: HttpProxy | None, path: str,
                             calls: int) -> list[Seen]:
    seen = upstream.requests(path)
    assert len(seen) == calls, [s.verdict for s in upstream.seen]
    for request in seen:
        assert request.status == 200 and request.verdict.ok, request.verdict
        names = [name.lower() for name, _ in request.lines]
        assert len(names) == len(set(names)), request.lines
        assert names.count("content-length") == 1 and "transfer-encoding" not in names
    if route is not None:
        assert route.refused == []
        assert route.seen().count(("POST", upstream.url + path)) == calls
    return seen


def exporter_for(upstream: XRayUpstream, route: HttpProxy | None, offload: bool,
                 monkeypatch) -> tuple[XRayExporter, int]:
    """An exporter and the PutTraceSegments calls it made: with ``offload``, as many as it
    takes to have the helper process running, so that the next call goes through it."""
    monkeypatch.setattr(xray, "OFFLOAD_CALLS_PER_SECOND", 1)  # two calls in a second
    exporter = XRayExporter(context(upstream, route), pool_size=1, offload=offload)
    calls = 0
    while offload and calls < 40:
        assert exporter.put(DOCS) == []
        calls += 1
        helper = exporter._helper
        if helper is not None and helper.ready.wait(10) and helper.usable:
            break
    assert (exporter._helper is not None and exporter._helper.usable) == offload
    return exporter, calls


@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "helper"])
def test_put_trace_segments(upstream, route, offload, monkeypatch):
    exporter, calls = exporter_for(upstream, route, offload, monkeypatch)
    try:
        assert exporter.put(DOCS) == []  # through the helper process with offload
    finally:
        exporter.close()
    seen = assert_strictly_accepted(upstream, route, "/TraceSegments", calls + 1)
    assert seen[-1].json()["TraceSegmentDocuments"] == [d.decode() for d in DOCS]


@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "helper"])
def test_put_telemetry_records(upstream, route, offload, monkeypatch):
    exporter, _calls = exporter_for(upstream, route, offload, monkeypatch)
    body = orjson.dumps({"TelemetryRecords": [{"Timestamp": 1700000000.0,
                                               "SegmentsReceivedCount": 1}],
                         "EC2InstanceId": "", "Hostname": "h", "ResourceARN": ""})
    try:
        exporter.send("/TelemetryRecords", body)
    finally:
        exporter.close()
    seen = assert_strictly_accepted(upstream, route, "/TelemetryRecords", 1)
    assert seen[0].body == body


def test_sampling_proxy(upstream, route):
    signing = SigningProxy(context(upstream, route), upstream.url,
                           RateLimitedLog(logging.getLogger("xrayd-test-outbound")))
    server = signing.server(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        for path, body in (("/GetSamplingRules", b"{}"),
                           ("/SamplingTargets", b'{"SamplingStatisticsDocuments":[]}')):
            conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=15)
            conn.request("POST", path, body=body,
                         headers={"Content-Type": "application/json", "X-Custom": "a"})
            answer = conn.getresponse()
            assert answer.status == 200, answer.read()
            json.loads(answer.read())
            conn.close()
            assert_strictly_accepted(upstream, route, path, 1)
    finally:
        server.stop()
        signing.close()
