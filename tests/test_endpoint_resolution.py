"""The X-Ray endpoint the daemon resolves with botocore's rule set (aws.xray_api_endpoint) is the
one a botocore client would use, for the settings that change it."""

from __future__ import annotations

import pytest

from xrayd import aws

REGIONS = ("us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "us-iso-east-1",
           "us-isob-east-1")


@pytest.mark.parametrize("env", [
    {},
    {"AWS_USE_FIPS_ENDPOINT": "true"},
    {"AWS_USE_DUALSTACK_ENDPOINT": "true"},
    {"AWS_ENDPOINT_URL_XRAY": "http://127.0.0.1:5000"},
    {"AWS_ENDPOINT_URL": "http://127.0.0.1:5001"},
    {"AWS_ENDPOINT_URL": "http://127.0.0.1:5001", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
])
def test_same_endpoint_as_a_botocore_client(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for region in REGIONS:
        if "AWS_USE_DUALSTACK_ENDPOINT" in env and region.startswith("us-iso"):
            continue  # the client's legacy table and the rule set differ there (see the docs)
        session = aws.new_session()
        expected = session.create_client("xray", region_name=region).meta.endpoint_url
        assert aws.xray_api_endpoint(session, region) == expected, (env, region)


def test_context_uses_it(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_XRAY", "http://127.0.0.1:5002/")
    assert aws.create_context("eu-west-1", "", False, "").endpoint == "http://127.0.0.1:5002"
    monkeypatch.delenv("AWS_ENDPOINT_URL_XRAY")
    assert aws.create_context("eu-west-1", "", False, "").endpoint == \
        "https://xray.eu-west-1.amazonaws.com"
