"""-r / RoleARN: AssumeRole through botocore against moto server's STS, uploads signed with
the assumed credentials, and the fall-back to the partition's primary STS region."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.request

import pytest

from conftest import datagram, free_udp_tcp_port, send_udp, wait_until
from fakes.sigv4 import verify
from fakes.sts import ISSUED_KEY, ISSUED_SECRET, FakeSts
from fakes.xray_upstream import XRayUpstream
from xrayd import aws

ROLE = "arn:aws:iam::210987654321:role/xray-writer"
SEGMENT = ('{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"defdfd9912dc5a56",'
           '"start_time":1461096053.37518,"end_time":1461096053.4042,"name":"role-test"}')


@pytest.fixture
def upstream():
    server = XRayUpstream()
    yield server
    server.stop()


def assumed_roles(moto) -> list[dict]:
    data = json.loads(urllib.request.urlopen(moto.url + "/moto-api/data.json").read())
    return (data.get("sts") or {}).get("AssumedRole") or []


def test_uploads_and_proxy_use_the_assumed_role(moto, upstream, start_xrayd):
    port = free_udp_tcp_port()
    daemon = start_xrayd(
        ["-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "-r", ROLE, "-n", "eu-west-1",
         "--endpoint", upstream.url, "-l", "debug"],
        env={"AWS_ENDPOINT_URL_STS": moto.url})
    send_udp(port, datagram(SEGMENT))
    wait_until(lambda: upstream.requests("/TraceSegments"), what="upload")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("POST", "/GetSamplingRules", body=b"{}")
    conn.getresponse().read()
    roles = assumed_roles(moto)
    assert len(roles) == 1
    assert roles[0]["role_arn"] == ROLE and roles[0]["session_name"] == "xray-daemon"
    upstream.secrets[roles[0]["access_key_id"]] = roles[0]["secret_access_key"]

    # Verified with the assumed role's secret (the fake learnt it from moto only now).
    for path in ("/TraceSegments", "/GetSamplingRules"):
        [seen] = upstream.requests(path)
        assert seen.headers["Authorization"].split("Credential=")[1].startswith(
            roles[0]["access_key_id"] + "/")
        assert seen.headers["X-Amz-Security-Token"] == roles[0]["session_token"]
        url = f"http://{seen.headers['Host']}{path}"
        assert verify("POST", url, seen.headers, seen.body, upstream.secrets).ok
    assert "STS Endpoint : " in daemon.output


def test_regional_sts_disabled_falls_back_to_primary_region(upstream, start_xrayd):
    sts = FakeSts(disabled={"eu-south-1"}, secrets={"AKIDTESTTESTTEST": "test-secret-key"})
    upstream.secrets[ISSUED_KEY] = ISSUED_SECRET
    try:
        port = free_udp_tcp_port()
        daemon = start_xrayd(
            ["-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "-r", ROLE,
             "-n", "eu-south-1", "--endpoint", upstream.url, "-l", "debug"],
            env={"AWS_ENDPOINT_URL_STS": sts.url})
        send_udp(port, datagram(SEGMENT))
        wait_until(lambda: upstream.requests("/TraceSegments"), what="upload")
    finally:
        sts.stop()
    assert [c["region"] for c in sts.calls] == ["eu-south-1", "us-east-1"]
    assert all(c["ok"] and c["RoleSessionName"] == "xray-daemon" for c in sts.calls)
    seen = upstream.requests("/TraceSegments")[0]
    assert seen.verdict.ok and seen.verdict.access_key == ISSUED_KEY
    assert seen.verdict.region == "eu-south-1"  # X-Ray calls stay in the daemon's region
    assert "fetched from STS primary region endpoint instead of regional endpoint" in \
        daemon.output


@pytest.mark.parametrize("region,primary", [
    ("cn-northwest-1", "cn-north-1"), ("us-gov-east-1", "us-gov-west-1"),
    ("ap-east-1", "us-east-1")])
def test_partition_primary_regions(monkeypatch, region, primary):
    sts = FakeSts(disabled={region}, secrets={"AKIDTESTTESTTEST": "test-secret-key"})
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
    try:
        role = aws.AssumedRole(aws.new_session(), ROLE, region, logging.getLogger("t"))
        creds = role.fetch()
    finally:
        sts.stop()
    assert creds["access_key"] == ISSUED_KEY
    assert [c["region"] for c in sts.calls] == [region, primary]


def test_sts_uses_the_regional_endpoint_by_default():
    session = aws.new_session()
    client = session.create_client("sts", region_name="eu-west-1")
    assert client.meta.endpoint_url == "https://sts.eu-west-1.amazonaws.com"
    client = session.create_client("sts", region_name="cn-north-1")
    assert client.meta.endpoint_url == "https://sts.cn-north-1.amazonaws.com.cn"
