"""The exporter's fast paths (docs/benchmarks.md): kept-alive direct connections, and signing and
sending in a forked helper process under load. The strict X-Ray fake (fakes/xray_upstream.py)
judges every request from the raw bytes received and checks its SigV4 signature with botocore,
as the service would, and counts connections."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from botocore.credentials import Credentials

from fakes.xray_upstream import XRayUpstream
from xrayd import aws
from xrayd.exporters import xray
from xrayd.exporters.xray import UploadError, XRayExporter

ACCESS_KEY = "AKIDTESTTESTTEST"


class Endpoint:
    """What the tests ask of the X-Ray endpoint, read from the strict fake's record."""

    def __init__(self) -> None:
        self.fake = XRayUpstream()
        self.url = self.fake.url

    @property
    def documents(self) -> list[str]:
        return [doc for seen in self.fake.requests("/TraceSegments") if seen.verdict.ok
                for doc in seen.json()["TraceSegmentDocuments"]]

    @property
    def bad_signatures(self) -> int:
        return sum(1 for seen in self.fake.seen if not seen.verdict.ok)

    @property
    def connections(self) -> int:
        return self.fake.connections


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.fake.stop()


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
    assert endpoint.connections == 1


def test_a_connection_closed_by_the_server_is_replaced(endpoint):
    endpoint.fake.close_after_response = True
    exporter = exporter_for(endpoint.url, offload=False)
    try:
        for i in range(3):
            assert exporter.put(docs(1, f"c{i}")) == []
    finally:
        exporter.close()
    assert len(endpoint.documents) == 3
    assert endpoint.connections == 3


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
