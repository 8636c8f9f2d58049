"""The outbound proxy (-p / ProxyAddress / HTTPS_PROXY, NO_PROXY): uploads and the TCP proxy's
sampling calls go through a real forward proxy on loopback, or around it."""

from __future__ import annotations

import http.client
import socket
import subprocess

import pytest

from conftest import datagram, free_port, free_udp_tcp_port, send_udp, wait_until
from fakes.http_proxy import HttpProxy
from fakes.xray_upstream import XRayUpstream
from xrayd import aws

SEGMENT = ('{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"defdfd9912dc5a56",'
           '"start_time":1461096053.37518,"end_time":1461096053.4042,"name":"via-proxy"}')


@pytest.fixture
def upstream():
    server = XRayUpstream()
    yield server
    server.stop()


@pytest.fixture
def tls_upstream(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = XRayUpstream(tls=(str(cert), str(key)))
    yield server
    server.stop()


@pytest.fixture
def forward_proxy():
    server = HttpProxy()
    yield server
    server.stop()


def run_traffic(start_xrayd, upstream, args, env=None):
    udp, tcp = free_udp_tcp_port(), free_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{tcp}", "-l", "debug",
                          "--endpoint", upstream.url, *args], env=env,
                         ready="Starting proxy http server")

    def tcp_up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", tcp), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(tcp_up, what="TCP proxy")
    send_udp(udp, datagram(SEGMENT))
    conn = http.client.HTTPConnection("127.0.0.1", tcp, timeout=15)
    conn.request("POST", "/GetSamplingRules", body=b"{}")
    assert conn.getresponse().status == 200
    wait_until(lambda: upstream.requests("/TraceSegments"), what="upload")
    return daemon


@pytest.mark.parametrize("how", ["flag", "HTTPS_PROXY"])
def test_uploads_and_sampling_calls_go_through_the_proxy(start_xrayd, upstream, forward_proxy,
                                                         how):
    args, env = (["-p", forward_proxy.url], None) if how == "flag" else \
        ([], {"HTTPS_PROXY": forward_proxy.url})
    run_traffic(start_xrayd, upstream, args, env)
    seen = forward_proxy.seen()
    assert ("POST", upstream.url + "/TraceSegments") in seen
    assert ("POST", upstream.url + "/GetSamplingRules") in seen
    for request in upstream.seen:
        assert request.verdict.ok, request.verdict  # the signature survives the proxy


def test_https_through_a_connect_tunnel_with_no_verify_ssl(start_xrayd, tls_upstream,
                                                           forward_proxy):
    run_traffic(start_xrayd, tls_upstream, ["-p", forward_proxy.url, "--no-verify-ssl"])
    tunnels = [target for method, target in forward_proxy.seen() if method == "CONNECT"]
    assert tunnels and set(tunnels) == {f"127.0.0.1:{tls_upstream.port}"}
    for request in tls_upstream.seen:
        assert request.verdict.ok, request.verdict
    assert {s.path for s in tls_upstream.seen} >= {"/TraceSegments", "/GetSamplingRules"}


def test_tls_is_verified_by_default(start_xrayd, tls_upstream):
    udp, tcp = free_udp_tcp_port(), free_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{tcp}",
                          "--endpoint", tls_upstream.url])
    conn = http.client.HTTPConnection("127.0.0.1", tcp, timeout=15)
    conn.request("POST", "/GetSamplingRules", body=b"{}")
    assert conn.getresponse().status == 502  # the self-signed certificate is refused
    assert tls_upstream.seen == []
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in daemon.output)


def test_no_proxy_bypasses_it(start_xrayd, upstream, forward_proxy):
    run_traffic(start_xrayd, upstream, ["-p", forward_proxy.url],
                {"NO_PROXY": "localhost,127.0.0.1"})
    assert forward_proxy.seen() == []
    assert upstream.requests("/GetSamplingRules")


@pytest.mark.parametrize("bad", ["http://[%10::1]", "http://%41:8080/", "http://a b.com/",
                                 "host:3128"])
def test_bad_proxy_url_exits_1(start_xrayd, bad):
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-p", bad], ready=None)
    assert daemon.wait(timeout=20) == 1
    assert "Bad proxy URL: " in daemon.output


def test_proxy_address_precedence():
    assert aws.proxy_url("", {"HTTPS_PROXY": "http://env:3128"}) == "http://env:3128"
    assert aws.proxy_url("https://127.0.0.1:8888", {"HTTPS_PROXY": "http://env:3128"}) == \
        "https://127.0.0.1:8888"
    assert aws.proxy_url("", {}) == ""
    assert aws.proxy_for("https://xray.us-east-1.amazonaws.com", "http://p:1",
                         {"NO_PROXY": ".amazonaws.com"}) == ""
    assert aws.proxy_for("https://xray.us-east-1.amazonaws.com", "http://p:1",
                         {"no_proxy": "example.com"}) == "http://p:1"
