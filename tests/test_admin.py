"""The admin endpoint: liveness, readiness and Prometheus metrics read from Stats."""

from __future__ import annotations

import pytest

from conftest import free_port
from fakes.harness import scrape, status
from xrayd import stats as names
from xrayd.admin import Sources, make_server
from xrayd.protocol import Reason
from xrayd.stats import Stats


@pytest.fixture
def admin():
    servers = []

    def start(sources: Sources) -> str:
        server = make_server(f"127.0.0.1:{free_port()}", sources)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.bound[1]}"

    yield start
    for server in servers:
        server.stop()


def test_health_readiness_and_metrics(admin):
    stats = Stats()
    intake = stats.intake()
    intake.received, intake.accepted = 10, 8
    intake.rejected[Reason.NO_SEPARATOR] = 2
    stats.add(names.SEGMENTS_SENT, 5)
    stats.add(names.SEGMENTS_FAILED, 2, label="http_5xx")
    stats.add(names.SEGMENTS_SPILLED, 1, label="evicted_oldest")
    stats.add(names.UPLOAD_ERRORS, 3, label="timeout")
    stats.add(names.PROXY_REQUESTS, 4, label="200")
    stats.upload_latency.observe(0.003)
    stats.upload_latency.observe(0.3)
    state = {"open": True, "ready": (True, "")}
    sources = Sources(stats, lambda: state["open"], lambda: state["ready"],
                      queue_depth=lambda: (1000, 7, 2), spool_depth=lambda: (50, 4096, 1),
                      upload_rate_limit=lambda: 12.5)
    url = admin(sources)
    assert status(url + "/healthz") == 200
    assert status(url + "/readyz") == 200
    samples = scrape(url)
    assert samples["xrayd_datagrams_received_total"] == 10
    assert samples["xrayd_segments_accepted_total"] == 8
    assert samples['xrayd_datagrams_rejected_total{reason="missing_header_separator"}'] == 2
    assert samples["xrayd_segments_sent_total"] == 5
    assert samples['xrayd_segments_failed_total{class="http_5xx"}'] == 2
    assert samples['xrayd_segments_spilled_total{kind="evicted_oldest"}'] == 1
    assert samples['xrayd_backend_errors_total{class="timeout"}'] == 3
    assert samples['xrayd_proxy_requests_total{status="200"}'] == 4
    assert samples['xrayd_upload_duration_seconds_bucket{le="0.005"}'] == 1
    assert samples['xrayd_upload_duration_seconds_bucket{le="+Inf"}'] == 2
    assert samples["xrayd_upload_duration_seconds_count"] == 2
    assert samples["xrayd_upload_duration_seconds_sum"] == pytest.approx(0.303)
    assert samples["xrayd_queue_segments"] == 7 and samples["xrayd_batches_in_flight"] == 2
    assert samples["xrayd_spool_segments"] == 50 and samples["xrayd_spool_files"] == 1
    assert samples["xrayd_upload_rate_limit"] == 12.5
    assert samples["xrayd_backend_up"] == 1

    state["ready"] = (False, "backend unavailable")
    assert status(url + "/readyz") == 503
    assert scrape(url)["xrayd_backend_up"] == 0
    state["ready"] = (True, "")
    state["open"] = False
    assert status(url + "/readyz") == 503
    assert status(url + "/healthz") == 200


def test_two_instances_keep_their_own_numbers(admin):
    first, second = Stats(), Stats()
    first.add(names.SEGMENTS_SENT, 1)
    second.add(names.SEGMENTS_SENT, 2)
    urls = [admin(Sources(s, lambda: True, lambda: (True, ""))) for s in (first, second)]
    assert [scrape(u)["xrayd_segments_sent_total"] for u in urls] == [1, 2]
    assert status(urls[0] + "/nothing") == 404


def test_proxy_requests_are_counted_by_status(start_xrayd):
    import http.client

    from conftest import free_udp_tcp_port, wait_until
    from fakes.xray_upstream import XRayUpstream

    upstream = XRayUpstream()
    try:
        udp, tcp, admin_port = free_udp_tcp_port(), free_port(), free_port()
        start_xrayd(["-b", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{tcp}", "--endpoint",
                     upstream.url, "--admin-address", f"127.0.0.1:{admin_port}"],
                    ready="Starting proxy http server")
        url = f"http://127.0.0.1:{admin_port}"

        def post(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", tcp, timeout=15)
            conn.request("POST", path, body=b"{}")
            return conn.getresponse().status

        from test_proxy import tcp_ready

        wait_until(lambda: tcp_ready(tcp), what="TCP proxy")
        assert [post("/GetSamplingRules"), post("/GetSamplingRules"), post("/nope")] == [
            200, 200, 404]
        samples = scrape(url)
        assert samples['xrayd_proxy_requests_total{status="200"}'] == 2
        assert samples['xrayd_proxy_requests_total{status="404"}'] == 1
    finally:
        upstream.stop()


def test_methods_head_and_405(admin):
    import http.client
    from urllib.parse import urlsplit

    url = admin(Sources(Stats(), lambda: True, lambda: (True, "")))
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(url).port, timeout=5)
    conn.request("HEAD", "/healthz")
    answer = conn.getresponse()
    assert answer.status == 200 and answer.read() == b""
    conn.request("POST", "/metrics", body=b"x")
    answer = conn.getresponse()
    assert answer.status == 405 and answer.getheader("Allow") == "GET,HEAD"
    answer.read()
    conn.request("POST", "/metrics", body=b"x" * 2000)  # the admin endpoint takes no bodies
    assert conn.getresponse().status == 413
