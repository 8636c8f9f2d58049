"""The TCP signing proxy (server/proxy.py), against the real aws-xray-sdk and a fake X-Ray
endpoint that checks every SigV4 signature with botocore."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from conftest import free_port, free_udp_tcp_port, wait_until
from fakes.xray_upstream import Fault, XRayUpstream, sampling_rule
from xrayd.server import proxy


@pytest.fixture
def upstream() -> Iterator[XRayUpstream]:
    server = XRayUpstream()
    yield server
    server.stop()


def tcp_ready(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_proxying(start_xrayd, upstream_url: str, env: dict[str, str] | None = None,
                   extra: list[str] | None = None):
    udp, tcp = free_udp_tcp_port(), free_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{tcp}", "-l", "debug",
                          "--endpoint", upstream_url, *(extra or [])], env=env,
                         ready="Starting proxy http server")
    wait_until(lambda: tcp_ready(tcp), what="TCP proxy")
    return daemon, udp, tcp


def post(port: int, path: str, body: bytes | None, headers: dict[str, str] | None = None,
         conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("POST", path, body=body, headers=headers or {})
    answer = conn.getresponse()
    return answer.status, answer.read()


def test_sdk_centralized_sampling_through_the_proxy(start_xrayd, upstream):
    from aws_xray_sdk.core import AWSXRayRecorder

    upstream.rules = [
        sampling_rule("muted", "muted-svc", fixed_rate=0.0, reservoir=0, priority=1),
        sampling_rule("Default", "*", fixed_rate=1.0, reservoir=0, priority=10000),
    ]
    daemon, udp, tcp = start_proxying(start_xrayd, upstream.url)
    recorder = AWSXRayRecorder()
    recorder.configure(daemon_address=f"tcp:127.0.0.1:{tcp} udp:127.0.0.1:{udp}",
                       sampling=True, context_missing="LOG_ERROR")
    recorder.begin_segment("loud-svc")  # starts the SDK's pollers
    recorder.end_segment()
    cache = recorder.sampler._cache
    wait_until(lambda: len(cache.rules) == 2, what="rules fetched through the proxy")

    for name in ("muted-svc", "loud-svc", "muted-svc", "loud-svc"):
        recorder.begin_segment(name)
        recorder.end_segment()
    wait_until(lambda: upstream.requests("/TraceSegments"), what="segments uploaded")
    recorder.sampler._target_poller._do_work()  # the SDK's own SamplingTargets call, now
    assert upstream.requests("/SamplingTargets")

    uploaded = [json.loads(doc)["name"] for seen in upstream.requests("/TraceSegments")
                for doc in seen.json()["TraceSegmentDocuments"]]
    assert "muted-svc" not in uploaded
    assert uploaded.count("loud-svc") >= 2
    for path in ("/GetSamplingRules", "/SamplingTargets", "/TraceSegments"):
        for seen in upstream.requests(path):
            assert seen.verdict.ok, (path, seen.verdict)
            assert seen.verdict.access_key == "AKIDTESTTESTTEST"
            assert seen.verdict.service == "xray" and seen.verdict.region == "us-east-1"
    targets = upstream.requests("/SamplingTargets")[0].json()["SamplingStatisticsDocuments"]
    assert {doc["RuleName"] for doc in targets} >= {"muted", "Default"}
    muted = next(rule for rule in cache.rules if rule.name == "muted")
    assert muted.reservoir._quota == 0  # the target the upstream answered was applied
    assert "Received request on HTTP Proxy server : /GetSamplingRules" in daemon.output


@pytest.mark.parametrize("body,headers", [
    (b"{}", {"Content-Type": "application/json"}),
    (b'{"NextToken": null}', {}),  # Go SDK: no Content-Type
    (None, {"Content-Type": "application/json"}),  # ADOT Python: no body
])
def test_sdk_request_shapes_are_signed_and_forwarded(start_xrayd, upstream, body, headers):
    upstream.rules = [sampling_rule("Default", "*", 0.05, 1, 10000)]
    _daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    status, answer = post(tcp, "/GetSamplingRules", body, headers)
    assert status == 200, answer
    assert json.loads(answer)["SamplingRuleRecords"][0]["SamplingRule"]["RuleName"] == "Default"
    seen = upstream.requests("/GetSamplingRules")[-1]
    assert seen.verdict.ok, seen.verdict
    assert seen.body == (body or b"")
    # Everything the upstream received was signed, except User-Agent (never signed by SigV4)
    # and the framing, which the transport sets after signing (as botocore's clients do).
    unsigned = {k.lower() for k in seen.headers} - set(seen.verdict.signed_headers)
    assert unsigned <= {"user-agent", "authorization", "content-length"}, unsigned
    names = [name.lower() for name, _ in seen.lines]
    assert len(names) == len(set(names)), seen.lines  # each header once on the wire


def test_keep_alive_and_hop_by_hop_headers(start_xrayd, upstream):
    _daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", tcp, timeout=15)
    for _ in range(3):
        status, _ = post(tcp, "/SamplingTargets", b'{"SamplingStatisticsDocuments":[]}',
                         {"Connection": "keep-alive, X-Private", "X-Private": "secret",
                          "Keep-Alive": "timeout=5", "Authorization": "Bearer nope"},
                         conn=conn)
        assert status == 200
    conn.close()
    for seen in upstream.requests("/SamplingTargets"):
        assert seen.verdict.ok
        names = {k.lower() for k in seen.headers}
        assert not names & {"x-private", "keep-alive"}
        assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")


def test_hardening_404_413_405(start_xrayd, upstream):
    daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    for path in ("/TraceSegments", "/CreateSamplingRule", "/", "/GetSamplingRules/../x"):
        status, _answer = post(tcp, path, b"{}")
        assert status == 404, path
    status, _ = post(tcp, "/GetSamplingRules", b"x" * (proxy.MAX_BODY_BYTES + 1))
    assert status == 413
    conn = http.client.HTTPConnection("127.0.0.1", tcp, timeout=15)
    conn.request("GET", "/GetSamplingRules")
    assert conn.getresponse().status == 405
    assert upstream.seen == []  # nothing refused reached the upstream
    assert "is not a sampling API path" in daemon.output


def test_no_credentials_answers_503_and_forwards_nothing(start_xrayd, upstream):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url, env=env)
    status, answer = post(tcp, "/GetSamplingRules", b"{}")
    assert status == 503
    error = json.loads(answer)
    assert error["__type"] == "NoCredentials"
    assert "Unable to retrieve credentials" in error["message"]
    assert upstream.seen == []
    wait_until(lambda: "Unable to retrieve credentials" in daemon.output)


def test_upstream_failures_answer_502_and_504(start_xrayd, upstream):
    refused = f"http://127.0.0.1:{free_port()}"
    daemon, _udp, tcp = start_proxying(start_xrayd, refused)
    status, _ = post(tcp, "/GetSamplingRules", b"{}")
    assert status == 502
    wait_until(lambda: "http: proxy error" in daemon.output)


def test_upstream_errors_pass_through(start_xrayd, upstream):
    upstream.fault = Fault(status=429)
    _daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    status, answer = post(tcp, "/GetSamplingRules", b"{}")
    assert status == 429 and b"InjectedFault" in answer


def test_tcp_bind_failure_is_not_fatal(start_xrayd, upstream):
    udp = free_udp_tcp_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{port}",
                              "--endpoint", upstream.url], ready="proxy http server failed")
        assert daemon.proc.poll() is None


def test_non_loopback_bind_warns(start_xrayd, upstream):
    udp, tcp = free_udp_tcp_port(), free_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"0.0.0.0:{tcp}",
                          "--endpoint", upstream.url], ready="Starting proxy http server")
    assert "not a loopback address" in daemon.output


@pytest.mark.parametrize("region,endpoint", [
    ("us-west-1", "https://xray.us-west-1.amazonaws.com"),
    ("cn-north-1", "https://xray.cn-north-1.amazonaws.com.cn"),
    ("cn-northwest-1", "https://xray.cn-northwest-1.amazonaws.com.cn"),
    ("us-gov-east-1", "https://xray.us-gov-east-1.amazonaws.com"),
    ("us-iso-east-1", "https://xray.us-iso-east-1.c2s.ic.gov"),
    ("us-isob-east-1", "https://xray.us-isob-east-1.sc2s.sgov.gov"),
])
def test_endpoint_table(region, endpoint):
    from xrayd.aws import xray_endpoint_for

    assert xray_endpoint_for(region) == endpoint
    assert xray_endpoint_for(region, "http://127.0.0.1:4000/some/path") == \
        "http://127.0.0.1:4000"


def test_hop_by_hop_stripping_is_pure():
    headers = {"Connection": "close, X-A", "X-A": "1", "X-B": "2", "Host": "127.0.0.1:2000",
               "Transfer-Encoding": "chunked", "X-Amz-Date": "old"}
    assert proxy.request_headers(headers) == {"X-B": "2"}


def test_upstream_timeout_answers_504(upstream):
    """In-process, with a short upstream timeout (the daemon's is 10 s)."""
    import logging

    from xrayd import aws
    from xrayd.logs import RateLimitedLog

    upstream.fault = Fault(hang=5)
    context = aws.create_context("us-east-1", upstream.url, False, "")
    signing = proxy.SigningProxy(context, upstream.url,
                                 RateLimitedLog(logging.getLogger("xrayd-test-proxy")),
                                 timeout=0.5)
    server = signing.server(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        status, answer = post(server.bound[1], "/GetSamplingRules", b"{}")
    finally:
        server.stop()
        signing.close()
    assert status == 504 and json.loads(answer)["__type"] == "GatewayTimeout"
    assert upstream.requests("/GetSamplingRules")[0].verdict.ok


def test_chunked_and_expect_continue_bodies_are_forwarded_signed(start_xrayd, upstream):
    _daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    with socket.create_connection(("127.0.0.1", tcp), timeout=15) as sock:
        sock.sendall(b"POST /GetSamplingRules HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: "
                     b"chunked"
                     b"\r\nContent-Type: application/json\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n")
        answer = b""
        while b"SamplingRuleRecords" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"POST /SamplingTargets HTTP/1.1\r\nHost: localhost\r\nContent-Length: 35\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b'{"SamplingStatisticsDocuments": []}')
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
    rules, targets = upstream.requests("/GetSamplingRules")[0], upstream.requests(
        "/SamplingTargets")[0]
    assert rules.body == b"{}" and rules.verdict.ok
    assert targets.body == b'{"SamplingStatisticsDocuments": []}' and targets.verdict.ok
    assert "expect" not in {k.lower() for k in targets.headers}


def test_forwarded_sampling_calls_are_framed_once_and_pass_a_strict_upstream(start_xrayd,
                                                                             upstream):
    """Issue 11 item 1: the proxy's signed headers and the transport both put Content-Length
    on the request; an upstream that judges the bytes it received refused every call."""
    upstream.rules = [sampling_rule("Default", "*", 0.05, 1, 10000)]
    _daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url)
    for path, body in (("/GetSamplingRules", b"{}"),
                       ("/SamplingTargets", b'{"SamplingStatisticsDocuments":[]}')):
        status, answer = post(tcp, path, body, {"Content-Type": "application/json",
                                                "Content-Length": str(len(body))})
        assert status == 200, answer
        seen = upstream.requests(path)[-1]
        assert seen.verdict.ok, seen.verdict
        framing = [(n, v) for n, v in seen.lines if n.lower() == "content-length"]
        assert framing == [("Content-Length", str(len(body)))]
