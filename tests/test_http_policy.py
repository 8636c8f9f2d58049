"""The HTTP servers' policy against DNS rebinding and cross-site requests (server/policy.py):
Host, Origin, Sec-Fetch-Site and Content-Type. Pure checks, then the offline daemon over real
sockets with the exact headers chromium sends, then real headless chromium on a page of
another origin (issue 11, item 6)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time

import pytest

from conftest import free_port
from offline_support import start_offline, xray_client
from xrayd.server.policy import (
    AWS_JSON,
    HostAllowList,
    RequestPolicy,
    api_policy,
    is_loopback_name,
)
from xrayd.server.threaded import Request


@pytest.mark.parametrize("listen, allowed, host, ok", [
    ("127.0.0.1:2000", "", "127.0.0.1:2000", True),
    ("127.0.0.1:2000", "", "localhost:2000", True),
    ("127.0.0.1:2000", "", "LOCALHOST.:2000", True),
    ("127.0.0.1:2000", "", "app.localhost:2000", True),
    ("127.0.0.1:2000", "", "127.5.6.7", True),
    ("127.0.0.1:2000", "", "[::1]:2000", True),
    ("127.0.0.1:2000", "", "evil.example:2000", False),
    ("127.0.0.1:2000", "", "localhost.evil.example", False),
    ("127.0.0.1:2000", "", "10.1.2.3:2000", False),
    ("127.0.0.1:2000", "", "", False),
    ("10.1.2.3:2000", "", "10.1.2.3:2000", True),
    ("10.1.2.3:2000", "", "10.1.2.4:2000", False),
    ("0.0.0.0:2000", "", "10.1.2.4:2000", True),  # any IP literal: rebinding needs a name
    ("[::]:2000", "", "[fd00::5]:2000", True),
    ("0.0.0.0:2000", "", "xrayd.svc:2000", False),
    ("0.0.0.0:2000", "xrayd.svc, other", "XRAYD.svc:2000", True),
    ("0.0.0.0:2000", ".cluster.local", "xrayd.ns.cluster.local:2000", True),
    ("0.0.0.0:2000", ".cluster.local", "cluster.local.evil:2000", False),
    ("127.0.0.1:2000", "*", "anything.example", True),
])
def test_host_allow_list(listen, allowed, host, ok):
    assert HostAllowList.for_address(listen, allowed).allows(host) is ok


def request(method: str = "POST", **headers: str) -> Request:
    return Request(method, "/CreateSamplingRule",
                   [(k.replace("_", "-"), v) for k, v in headers.items()], b"{}")


@pytest.mark.parametrize("req, status", [
    (request(Host="127.0.0.1:2000"), None),
    (request(Host="127.0.0.1:2000", Content_Type="application/x-amz-json-1.1"), None),
    (request(Host="127.0.0.1:2000", Content_Type="application/x-amz-json-1.0"), None),
    (request(Host="127.0.0.1:2000", Content_Type="Application/JSON; charset=utf-8"), None),
    (request(Host="127.0.0.1:2000", Origin="http://127.0.0.1:2000",
             Content_Type="application/json", Sec_Fetch_Site="same-origin"), None),
    (request(Host="localhost:2000", Origin="http://localhost:2000"), None),
    (request("GET", Host="127.0.0.1:2000", Content_Type="text/plain"), None),
    (request(Host="127.0.0.1:2000", Content_Type="text/plain;charset=UTF-8"), 415),
    (request(Host="127.0.0.1:2000", Content_Type="application/x-www-form-urlencoded"), 415),
    (request(Host="127.0.0.1:2000", Content_Type="multipart/form-data; boundary=x"), 415),
    (request(Host="127.0.0.1:2000", Origin="http://localhost:8000"), 403),
    (request(Host="127.0.0.1:2000", Origin="http://127.0.0.1:2001"), 403),
    (request(Host="127.0.0.1:2000", Origin="https://127.0.0.1:2000"), 403),
    (request(Host="127.0.0.1:2000", Origin="null"), 403),
    (request("GET", Host="127.0.0.1:2000", Origin="http://evil.example"), 403),
    (request("GET", Host="127.0.0.1:2000", Sec_Fetch_Site="cross-site"), 403),
    (request("GET", Host="127.0.0.1:2000", Sec_Fetch_Site="cross-site",  # a link followed
             Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document"), None),
    (request("GET", Host="127.0.0.1:2000", Sec_Fetch_Site="cross-site",  # framed
             Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="iframe"), 403),
    (request(Host="127.0.0.1:2000", Sec_Fetch_Site="cross-site",  # a form posted
             Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document"), 403),
    (request(Host="evil.example:2000", Origin="http://evil.example:2000"), 421),
])
def test_request_policy(req, status):
    refusal = api_policy("127.0.0.1:2000").check(req)
    assert (refusal.status if refusal else None) == status


def test_policy_parts_are_options():
    anything = request(Host="evil.example", Origin="http://x", Content_Type="text/plain")
    assert RequestPolicy(None, False, None).check(anything) is None
    assert RequestPolicy(None, False, AWS_JSON).check(anything).status == 415


# What Debian's headless chromium 150 sent for fetch(url, {method: "POST", mode: "no-cors",
# body: "{}"}) from a page at http://localhost:<port>/ (captured from a raw socket; the page's
# port replaced by 8000; Host and Content-Length are added per request).
CHROMIUM_NO_CORS = (
    "Connection: keep-alive\r\n"
    'sec-ch-ua-platform: "Linux"\r\n'
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/150.0.0.0 Safari/537.36\r\n"
    'sec-ch-ua: "Not;A=Brand";v="8", "Chromium";v="150"\r\n'
    "Content-Type: text/plain;charset=UTF-8\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "Accept: */*\r\n"
    "Origin: http://localhost:8000\r\n"
    "Sec-Fetch-Site: cross-site\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Dest: empty\r\n"
    "Referer: http://localhost:8000/\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
)
RULE = {"SamplingRule": {"RuleName": "evil", "ResourceARN": "*", "Priority": 1,
                         "FixedRate": 1.0, "ReservoirSize": 1, "ServiceName": "*",
                         "ServiceType": "*", "Host": "*", "HTTPMethod": "*", "URLPath": "*",
                         "Version": 1}}
TO_ZERO = {"SamplingRuleUpdate": {"RuleName": "Default", "FixedRate": 0.0}}


def raw_post(port: int, path: str, body: bytes, head: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
    for line in head.strip("\r\n").split("\r\n"):
        name, _, value = line.partition(": ")
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, json.loads(data) if data else {}


def rule_names(port: int) -> dict[str, float]:
    records = xray_client(port).get_sampling_rules()["SamplingRuleRecords"]
    return {r["SamplingRule"]["RuleName"]: r["SamplingRule"]["FixedRate"] for r in records}


def test_cross_site_requests_with_chromium_headers_are_refused(start_xrayd, tmp_path):
    daemon, port, _store = start_offline(start_xrayd, tmp_path)
    own = f"Host: 127.0.0.1:{port}\r\n"
    before = rule_names(port)
    cases = [
        # As chromium sends it: refused for its Origin (and Sec-Fetch-Site).
        ("/CreateSamplingRule", RULE, own + CHROMIUM_NO_CORS, 403),
        ("/UpdateSamplingRule", TO_ZERO, own + CHROMIUM_NO_CORS, 403),
        # Without Origin and Sec-Fetch-*: still refused for text/plain.
        ("/CreateSamplingRule", RULE, own + "Content-Type: text/plain;charset=UTF-8\r\n", 415),
        ("/CreateSamplingRule", RULE,
         own + "Content-Type: application/x-www-form-urlencoded\r\n", 415),
        # DNS rebinding: the page's own origin, but a Host that is not this machine's.
        ("/CreateSamplingRule", RULE,
         f"Host: rebind.example:{port}\r\nOrigin: http://rebind.example:{port}\r\n"
         "Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\n", 421),
    ]
    for path, body, head, status in cases:
        answer_status, answer = raw_post(port, path, json.dumps(body).encode(), head)
        assert answer_status == status, (path, head)
        assert answer["__type"] and answer["message"]
    assert rule_names(port) == before
    daemon.wait_for("refused")


def test_sdk_requests_without_content_type_or_body_still_work(start_xrayd, tmp_path):
    """ecosystem.md 5.5: the Go SDK sends {"NextToken": null} without Content-Type, ADOT
    Python's sampler no body; botocore sends its own type."""
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    own = f"Host: 127.0.0.1:{port}\r\n"
    assert raw_post(port, "/GetSamplingRules", b'{"NextToken": null}', own)[0] == 200
    assert raw_post(port, "/GetSamplingRules", b"",
                    own + "Content-Type: application/json\r\n")[0] == 200
    statistics = {"SamplingStatisticsDocuments": [{
        "RuleName": "Default", "ClientID": "0" * 24, "RequestCount": 1, "BorrowCount": 0,
        "SampledCount": 1, "Timestamp": time.time()}]}
    status, answer = raw_post(port, "/SamplingTargets", json.dumps(statistics).encode(),
                              f"Host: localhost:{port}\r\n")
    assert status == 200 and "SamplingTargetDocuments" in answer
    client = xray_client(port)
    client.create_sampling_rule(**RULE)
    assert "evil" in rule_names(port)


def test_allowed_hosts_lets_the_operator_name_more_hosts(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path,
                                          "--allowed-hosts", "xrayd.internal,other")
    body = b"{}"
    assert raw_post(port, "/GetSamplingRules", body, f"Host: xrayd.internal:{port}\r\n")[0] == 200
    assert raw_post(port, "/GetSamplingRules", body, f"Host: third:{port}\r\n")[0] == 421


class AttackerPage(http.server.BaseHTTPRequestHandler):
    """A page of another origin that tries what issue 11 saw work against 3f3fc9f."""

    target = ""

    def do_GET(self) -> None:
        target = self.target
        rule, zero = json.dumps(RULE), json.dumps(TO_ZERO)
        document = json.dumps({"TraceSegmentDocuments": [json.dumps({
            "name": "injected", "id": "0123456789abcdef",
            "trace_id": "1-5f000000-0123456789abcdef01234567",
            "start_time": 1.0, "end_time": 2.0})]})
        page = f"""<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" enctype="text/plain" target="sink"
      action="{target}/TraceSegments"><input name='{document[:-2]}' value='"]}}'></form>
<script>
const go = (path, body) => fetch("{target}" + path,
    {{method: "POST", mode: "no-cors", body}}).catch(e => null);
Promise.all([
  go("/CreateSamplingRule", {json.dumps(rule)}),
  go("/UpdateSamplingRule", new Blob([{json.dumps(zero)}])),
  go("/TraceSegments", {json.dumps(document)}),
]).then(() => {{ document.getElementById("f").submit(); document.title = "sent"; }});
</script></body></html>"""
        data = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_chromium_on_another_origin_cannot_change_rules_or_inject_traces(start_xrayd,
                                                                          tmp_path):
    from test_viewer_browser import LAUNCH_FLAGS, ensure_chromium

    daemon, port, _store = start_offline(start_xrayd, tmp_path)
    before = rule_names(port)
    page_port = free_port()
    handler = type("Page", (AttackerPage,), {"target": f"http://127.0.0.1:{port}"})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=ensure_chromium(), headless=True,
                args=[*LAUNCH_FLAGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"])
            page = browser.new_page()
            seen: list[str] = []
            page.on("request", lambda r: seen.append(r.url))
            page.goto(f"http://localhost:{page_port}/")
            page.wait_for_function("document.title === 'sent'", timeout=15000)
            page.wait_for_timeout(500)  # the form's navigation in the iframe
            attempts = [url for url in seen if f":{port}/" in url]
            assert len(attempts) >= 4  # the browser did send them
            assert rule_names(port) == before  # no rule created, Default still at its rate
            traces = xray_client(port).get_trace_summaries(StartTime=0, EndTime=4e9)
            assert traces["TraceSummaries"] == []
            # DNS rebinding: the daemon's port under a name that resolves to 127.0.0.1.
            answer = page.goto(f"http://rebind.test:{port}/")
            assert answer is not None and answer.status == 421
            browser.close()
    finally:
        site.shutdown()
    daemon.wait_for("refused")


def test_the_signing_proxy_refuses_cross_site_requests_and_forwards_sdk_ones(start_xrayd):
    """Normal mode: the daemon's TCP proxy (real daemon, strict fake X-Ray upstream)."""
    from fakes.xray_upstream import XRayUpstream
    from test_proxy import start_proxying

    upstream = XRayUpstream()
    try:
        daemon, _udp, tcp = start_proxying(start_xrayd, upstream.url,
                                           extra=["--allowed-hosts", "xray-daemon"])
        own = f"Host: 127.0.0.1:{tcp}\r\n"
        assert raw_post(tcp, "/GetSamplingRules", b"{}", own + CHROMIUM_NO_CORS)[0] == 403
        assert raw_post(tcp, "/GetSamplingRules", b"{}",
                        own + "Content-Type: text/plain\r\n")[0] == 415
        assert raw_post(tcp, "/GetSamplingRules", b"{}", f"Host: evil:{tcp}\r\n")[0] == 421
        assert upstream.requests("/GetSamplingRules") == []  # nothing was signed or sent
        assert raw_post(tcp, "/GetSamplingRules", b'{"NextToken": null}', own)[0] == 200
        assert raw_post(tcp, "/GetSamplingRules", b"{}", f"Host: xray-daemon:{tcp}\r\n"
                        "Content-Type: application/json\r\n")[0] == 200
        assert len(upstream.requests("/GetSamplingRules")) == 2
        daemon.wait_for("refused")
    finally:
        upstream.stop()


def test_allowed_hosts_flag_and_config_key():
    from xrayd import flags
    from xrayd.config import config_from_document

    assert config_from_document({"Version": 2, "AllowedHosts": "a, .b"}).allowed_hosts == "a, .b"
    assert flags.settings_from(flags.parse(["--allowed-hosts", "x,y"])) == {
        "allowed_hosts": "x,y"}


def test_loopback_names_for_the_proxys_listen_warning():
    assert is_loopback_name("127.0.0.1") and is_loopback_name("::1")
    assert is_loopback_name("localhost")
    assert not is_loopback_name("0.0.0.0") and not is_loopback_name("")
