"""The exporter's fast paths (docs/benchmarks.md): kept-alive direct connections, and signing and
sending in a forked helper process under load. A small X-Ray endpoint checks every request's
SigV4 signature with botocore, as the service would, and counts connections."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import threading

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from xrayd import aws
from xrayd.exporters import xray
from xrayd.exporters.xray import UploadError, XRayExporter

ACCESS_KEY, SECRET_KEY = "AKIDTESTTESTTEST", "test-secret-key"


class SigningCheckedXRay(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.documents: list[str] = []
        self.bad_signatures = 0
        self.connections: set[tuple] = set()
        self.close_after_response = False
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SigningCheckedXRay

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.signature_valid(body)
        with self.server.lock:
            self.server.connections.add(self.client_address)
            if ok:
                self.server.documents += orjson.loads(body)["TraceSegmentDocuments"]
            else:
                self.server.bad_signatures += 1
        answer = b'{"UnprocessedTraceSegments":[]}' if ok else (
            b'{"__type":"InvalidSignatureException","message":"bad signature"}')
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(answer)))
        if self.server.close_after_response:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def signature_valid(self, body: bytes) -> bool:
        """Recompute the signature over the signed headers with botocore."""
        authorization = self.headers.get("Authorization", "")
        try:
            signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
            scope = authorization.split("Credential=")[1].split(",")[0].split("/")
        except IndexError:
            return False
        headers = {name: self.headers[name] for name in signed if name != "host"}
        request = AWSRequest(method="POST", url=self.server.url + self.path, data=body,
                             headers=headers)
        request.context["timestamp"] = self.headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), scope[3], scope[2])
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request)
        return scope[0] == ACCESS_KEY and authorization.endswith(f"Signature={expected}")


@pytest.fixture
def endpoint():
    server = SigningCheckedXRay()
    yield server
    server.shutdown()
    server.server_close()


def exporter_for(url: str, offload: bool) -> XRayExporter:
    context = aws.create_context("us-east-1", url, False, "")
    return XRayExporter(context, pool_size=2, offload=offload)


def docs(n: int, tag: str) -> list[bytes]:
    return [b'{"id":"%s-%d","name":"s\xc3\xa9g","trace_id":"1-x"}' % (tag.encode(), i)
            for i in range(n)]


def test_direct_calls_are_signed_and_share_one_kept_alive_connection(endpoint):
    exporter = exporter_for(endpoint.url, offload=False)
    try:
        for i in range(5):
            assert exporter.put(docs(3, f"b{i}")) == []
    finally:
        exporter.close()
    assert endpoint.bad_signatures == 0
    assert endpoint.documents == [d.decode() for i in range(5) for d in docs(3, f"b{i}")]
    assert len(endpoint.connections) == 1


def test_a_connection_closed_by_the_server_is_replaced(endpoint):
    endpoint.close_after_response = True
    exporter = exporter_for(endpoint.url, offload=False)
    try:
        for i in range(3):
            assert exporter.put(docs(1, f"c{i}")) == []
    finally:
        exporter.close()
    assert len(endpoint.documents) == 3
    assert len(endpoint.connections) == 3


def test_under_load_the_helper_process_signs_and_sends(endpoint, monkeypatch):
    monkeypatch.setattr(xray, "OFFLOAD_CALLS_PER_SECOND", 3)
    exporter = exporter_for(endpoint.url, offload=True)
    try:
        sent = []
        for i in range(40):
            batch = docs(2, f"h{i}")
            assert exporter.put(batch) == []
            sent += batch
            if exporter._helper is not None:
                exporter._helper.ready.wait(10)
        helper = exporter._helper
        assert helper is not None and helper.usable
        before = len(endpoint.documents)
        assert exporter.put(docs(2, "last")) == []  # through the helper
        assert len(endpoint.documents) == before + 2
        wrong = Credentials(ACCESS_KEY, "wrong").get_frozen_credentials()
        exporter.aws.credentials = lambda: wrong  # type: ignore[method-assign]
        with pytest.raises(UploadError) as error:  # an API error, classified in the daemon
            exporter.put(docs(1, "bad"))
        assert error.value.status == 403 and error.value.code == "InvalidSignatureException"
    finally:
        exporter.close()
    assert endpoint.bad_signatures == 1
    assert endpoint.documents[:len(sent)] == [d.decode() for d in sent]
    with pytest.raises(ProcessLookupError):  # closing the exporter ended (and reaped) it
        os.kill(helper.pid, 0)


def test_transport_errors_are_classified_in_process_and_in_the_helper(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    for offload in (False, True):
        monkeypatch.setattr(xray, "OFFLOAD_CALLS_PER_SECOND", 2)
        exporter = exporter_for(f"http://127.0.0.1:{port}", offload=offload)
        try:
            for _ in range(6):
                with pytest.raises(UploadError) as error:
                    exporter.put(docs(1, "x"))
                assert error.value.error_class == "connection_refused"
                assert error.value.retriable
                if exporter._helper is not None:
                    exporter._helper.ready.wait(10)
            assert (exporter._helper is not None and exporter._helper.usable) == offload
        finally:
            exporter.close()


def test_when_the_helper_dies_uploads_continue_in_process(endpoint, monkeypatch):
    monkeypatch.setattr(xray, "OFFLOAD_CALLS_PER_SECOND", 3)
    exporter = exporter_for(endpoint.url, offload=True)
    try:
        for i in range(10):
            exporter.put(docs(1, f"w{i}"))
            if exporter._helper is not None:
                exporter._helper.ready.wait(10)
        helper = exporter._helper
        assert helper is not None and helper.usable
        os.kill(helper.pid, signal.SIGKILL)
        os.waitpid(helper.pid, 0)
        for i in range(5):
            assert exporter.put(docs(1, f"after{i}")) == []
        assert not helper.usable
    finally:
        exporter.close()
    assert [d for d in endpoint.documents if "after" in d] == [
        d.decode() for i in range(5) for d in docs(1, f"after{i}")]
