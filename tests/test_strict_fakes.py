"""The strict test fakes themselves (fakes/raw_http.py, fakes/sigv4.py): what a strict front end
refuses is refused from the raw bytes, and a SigV4 signature is checked against the header lines
as received, duplicates joined with "," as AWS joins them. Without this, a lenient fake would
let a framing bug through (issue 11 item 1)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fakes.raw_http import parse_head
from fakes.sigv4 import verify
from fakes.xray_upstream import XRayUpstream

ACCESS_KEY, SECRET = "AKIDTESTTESTTEST", "test-secret-key"
BODY = b'{"SamplingStatisticsDocuments":[]}'


@pytest.fixture
def upstream() -> Iterator[XRayUpstream]:
    server = XRayUpstream()
    yield server
    server.stop()


def signed_lines(host: str, body: bytes = BODY, extra: dict[str, str] | None = None
                 ) -> list[tuple[str, str]]:
    """Header lines of a request signed by botocore (Content-Length not signed, as botocore's
    clients sign)."""
    request = AWSRequest(method="POST", url=f"http://{host}/SamplingTargets", data=body,
                         headers={"Content-Type": "application/json", **(extra or {})})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), "xray", "us-east-1").add_auth(request)
    return [("Host", host), *request.headers.items()]


def exchange(port: int, head_lines: list[tuple[str, str]], body: bytes = BODY) -> bytes:
    head = "POST /SamplingTargets HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in head_lines) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"}" in answer.partition(b"\r\n\r\n")[2]:
                break
    return answer


def test_a_well_formed_signed_request_is_accepted(upstream):
    host = f"127.0.0.1:{upstream.port}"
    answer = exchange(upstream.port, [*signed_lines(host), ("Content-Length", str(len(BODY)))])
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[-1].verdict.ok


@pytest.mark.parametrize("framing,why", [
    ([("Content-Length", "34"), ("Content-Length", "34")], "duplicate Content-Length"),
    ([("Content-Length", "34"), ("Transfer-Encoding", "chunked")], "both Content-Length"),
    ([("Content-Length", "34, 34")], "bad Content-Length"),
    ([("Transfer-Encoding", "gzip, chunked")], "unsupported Transfer-Encoding"),
])
def test_duplicate_or_conflicting_framing_is_refused_with_400(upstream, framing, why):
    host = f"127.0.0.1:{upstream.port}"
    answer = exchange(upstream.port, [*signed_lines(host), *framing])
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    assert why in upstream.seen[-1].verdict.reason
    assert upstream.seen[-1].status == 400


@pytest.mark.parametrize("head,why", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\nContent-Length: 0", "obs-fold"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 0", "malformed header line"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0", "Host"),
    (b"POST / HTTP/1.1\r\nContent-Length: 0", "Host"),
    (b"POST  / HTTP/1.1\r\nHost: a", "malformed request line"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\nX-B: 2", "bare CR, LF"),
])
def test_malformed_heads_are_refused(head, why):
    assert why in parse_head(head).problem


def test_a_well_formed_head_keeps_its_lines_as_received():
    request = parse_head(b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nX-A:  1 \r\nx-a: 2\r\n"
                         b"Content-Length: 0")
    assert request.problem == ""
    assert request.lines == [("Host", "a"), ("X-A", "1"), ("x-a", "2"),
                             ("Content-Length", "0")]
    assert request.values("X-A") == ["1", "2"] and request.path == "/p"


def test_signature_is_checked_against_the_lines_as_received():
    host = "127.0.0.1:2000"
    url = f"http://{host}/SamplingTargets"
    secrets = {ACCESS_KEY: SECRET}
    # Content-Length signed once, received twice: the canonical request has "34,34" (403).
    lines = signed_lines(host, extra={"Content-Length": "34"})
    assert verify("POST", url, lines, BODY, secrets).ok
    doubled = [*lines, ("Content-Length", "34")]
    verdict = verify("POST", url, doubled, BODY, secrets)
    assert not verdict.ok and verdict.reason == "signature mismatch"
    # A value signed as "a,b" arrives as two lines "a" and "b": the same canonical header.
    joined = signed_lines(host, extra={"X-Amz-Meta": "a,b"})
    split = [line for line in joined if line[0] != "X-Amz-Meta"]
    split += [("X-Amz-Meta", "a"), ("x-amz-meta", "b")]
    assert verify("POST", url, split, BODY, secrets).ok
    # A changed body, an unknown key and a second Authorization are refused.
    assert verify("POST", url, lines, BODY + b" ", secrets).reason == "signature mismatch"
    assert verify("POST", url, lines, BODY, {}).reason == "unknown access key"
    authorization = next(v for k, v in lines if k == "Authorization")
    assert not verify("POST", url, [*lines, ("authorization", authorization)], BODY,
                      secrets).ok
