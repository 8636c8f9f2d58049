"""exporters/signing.py: botocore's SigV4Auth on the light request object signs exactly what it
signs on botocore's own AWSRequest, and the receiving side (botocore again) accepts it."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

from xrayd.exporters.signing import Signer


@pytest.fixture
def fixed_time(monkeypatch):
    import datetime

    from botocore import auth

    moment = datetime.datetime(2026, 11, 25, 12, 0, 0)
    monkeypatch.setattr(auth, "get_current_datetime", lambda: moment)


@pytest.mark.parametrize("endpoint", [
    "https://xray.us-east-1.amazonaws.com", "http://127.0.0.1:2000", "https://example.com:8443",
    "https://vpce-1.xray.eu-west-1.vpce.amazonaws.com/prefix",
])
@pytest.mark.parametrize("token", [None, "session-token"])
def test_same_signature_as_an_awsrequest(fixed_time, endpoint, token):
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", token)
    url = endpoint + "/TraceSegments"
    headers = {"Content-Type": "application/json", "X-Amzn-Xray-Timestamp": "1.000000000",
               "User-Agent": "xrayd/test"}
    body = b'{"TraceSegmentDocuments":["{}"]}'
    reference = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, "xray", "eu-west-1").add_auth(reference)

    signer = Signer(endpoint, "eu-west-1")
    signed = signer.sign(url, headers, body, credentials)

    assert signed["Authorization"] == reference.headers["Authorization"]
    assert signed["X-Amz-Date"] == reference.headers["X-Amz-Date"]
    assert signed.get("X-Amz-Security-Token") == reference.headers.get("X-Amz-Security-Token")
    assert "Host" in signed and headers.items() <= signed.items()
    assert "Host" not in headers  # the caller's dict is left alone


def test_host_is_what_botocore_derives_from_the_url():
    assert Signer("https://xray.us-east-1.amazonaws.com", "us-east-1").host == (
        "xray.us-east-1.amazonaws.com")
    assert Signer("https://xray.us-east-1.amazonaws.com:443", "us-east-1").host == (
        "xray.us-east-1.amazonaws.com")
    assert Signer("http://127.0.0.1:2000", "us-east-1").host == "127.0.0.1:2000"


def test_new_credentials_are_used_at_once(fixed_time):
    signer = Signer("https://xray.us-east-1.amazonaws.com", "us-east-1")
    url = "https://xray.us-east-1.amazonaws.com/TraceSegments"
    first = signer.sign(url, {}, b"{}", ReadOnlyCredentials("AKID1", "s1", None))
    again = signer.sign(url, {}, b"{}", ReadOnlyCredentials("AKID1", "s1", None))
    rotated = signer.sign(url, {}, b"{}", ReadOnlyCredentials("AKID2", "s2", "t"))
    assert first["Authorization"] == again["Authorization"]
    assert "Credential=AKID2/" in rotated["Authorization"]
    assert rotated["X-Amz-Security-Token"] == "t"
    # What the service does: recompute the signature from the request with botocore.
    check = AWSRequest(method="POST", url=url, data=b"{}",
                       headers={"X-Amz-Date": rotated["X-Amz-Date"],
                                "X-Amz-Security-Token": "t"})
    check.context["timestamp"] = rotated["X-Amz-Date"]
    verifier = SigV4Auth(Credentials("AKID2", "s2", "t"), "xray", "us-east-1")
    expected = verifier.signature(
        verifier.string_to_sign(check, verifier.canonical_request(check)), check)
    assert rotated["Authorization"].endswith(f"Signature={expected}")
