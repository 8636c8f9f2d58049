"""PutTelemetryRecords: the pure record/queue logic with an injected clock, the error classes
against a fault-injecting upstream, and records arriving at moto server from a running daemon."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request

import pytest

from conftest import datagram, free_port, free_udp_tcp_port, send_udp, wait_until
from fakes.xray_upstream import Fault, XRayUpstream
from xrayd import aws, telemetry
from xrayd import stats as names
from xrayd.config import Config
from xrayd.exporters.xray import UploadError, XRayExporter
from xrayd.protocol import Reason
from xrayd.stats import Stats

LOG = logging.getLogger("xrayd-test-telemetry")
SEGMENT = ('{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"%016x",'
           '"start_time":1461096053.37518,"end_time":1461096053.4042,"name":"tele"}')


class Sender:
    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.fail_with: UploadError | None = None

    def __call__(self, path: str, body: bytes) -> bytes:
        assert path == "/TelemetryRecords"
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(json.loads(body))
        return b"{}"


def cycle_with(stats: Stats, sender: Sender, clock: list[float]) -> telemetry.TelemetryCycle:
    identity = telemetry.Identity("host-1", "i-1", "arn:aws:ec2:r")
    return telemetry.TelemetryCycle(stats, sender, identity, LOG, now=lambda: clock[0])


def test_skipped_until_the_first_datagram_then_every_cycle(caplog):
    stats, sender, clock = Stats(), Sender(), [1000.0]
    cycle = cycle_with(stats, sender, clock)
    with caplog.at_level(logging.DEBUG, LOG.name):
        cycle.cycle()
    assert sender.calls == [] and "Skipped telemetry data as no segments found" in caplog.text
    intake = stats.intake()
    intake.received, intake.accepted = 5, 4
    intake.rejected[Reason.NO_SEPARATOR] += 1
    stats.add(names.SEGMENTS_SENT, 3)
    stats.add(names.SEGMENTS_UNPROCESSED, 1, label="InvalidId")
    stats.add(names.SEGMENTS_SPILLED, 2, label="dropped_new")
    stats.add(names.UPLOAD_ERRORS, 2, label="http_5xx")
    stats.add(names.UPLOAD_ERRORS, 1, label="no_credentials")
    clock[0] = 1060.0
    cycle.cycle()
    body = sender.calls[-1]
    assert (body["Hostname"], body["EC2InstanceId"], body["ResourceARN"]) == \
        ("host-1", "i-1", "arn:aws:ec2:r")
    [record] = body["TelemetryRecords"]
    assert record["Timestamp"] == 1060.0
    assert record["SegmentsReceivedCount"] == 5
    assert record["SegmentsSentCount"] == 3
    assert record["SegmentsRejectedCount"] == 2  # invalid datagram + unprocessed entry
    assert record["SegmentsSpilloverCount"] == 2
    assert record["BackendConnectionErrors"]["HTTPCode5XXCount"] == 2
    assert sum(record["BackendConnectionErrors"].values()) == 2
    # Differences of monotonic totals: the next minute starts from zero, nothing was reset.
    intake.received += 1
    cycle.cycle()
    [record] = sender.calls[-1]["TelemetryRecords"]
    assert record["SegmentsReceivedCount"] == 1 and record["SegmentsSentCount"] == 0
    assert stats.received == 6 and stats.get(names.SEGMENTS_SENT) == 3
    # Once a datagram arrived, records keep coming even when everything is zero.
    cycle.cycle()
    assert sender.calls[-1]["TelemetryRecords"][0]["SegmentsReceivedCount"] == 0


def test_queue_of_30_ten_per_call_requeue_on_failure(caplog):
    stats, sender, clock = Stats(), Sender(), [0.0]
    stats.intake().received = 1
    cycle = cycle_with(stats, sender, clock)
    sender.fail_with = UploadError("HTTP 503", "http_5xx", True, 503)
    with caplog.at_level(logging.DEBUG, LOG.name):
        for minute in range(35):
            clock[0] = 60.0 * minute
            cycle.cycle()
    assert "Telemetry Buffers truncated" in caplog.text
    assert "Failed to send telemetry 10 record(s). Re-queue records." in caplog.text
    assert len(cycle.queue) == 30
    assert stats.get(names.TELEMETRY_ERRORS, "http_5xx") == 35
    sender.fail_with = None
    clock[0] = 60.0 * 35
    cycle.cycle()  # 30 queued + 1 new; the oldest dropped, 30 sent in 3 calls
    assert [len(c["TelemetryRecords"]) for c in sender.calls] == [10, 10, 10]
    stamps = [r["Timestamp"] for c in sender.calls for r in c["TelemetryRecords"]]
    assert stamps == sorted(stamps) and stamps[-1] == 60.0 * 35
    # The failures are counted in the records themselves (one per failed call).
    errors = sum(r["BackendConnectionErrors"]["HTTPCode5XXCount"]
                 for c in sender.calls for r in c["TelemetryRecords"])
    assert errors == 30  # the failures counted in the 30 kept records (1 each)


def test_partial_failure_requeues_the_failed_chunk_and_later_ones():
    stats, clock = Stats(), [0.0]
    stats.intake().received = 1
    calls: list[int] = []

    def send(path: str, body: bytes) -> bytes:
        calls.append(len(json.loads(body)["TelemetryRecords"]))
        if len(calls) == 2:
            raise UploadError("timed out", "timeout", True)
        return b"{}"

    cycle = telemetry.TelemetryCycle(stats, send, telemetry.Identity(), LOG,
                                     now=lambda: clock[0])
    for minute in range(25):
        clock[0] = minute
        cycle.close_record()
    cycle.flush()
    assert calls == [10, 10]
    assert len(cycle.queue) == 15
    assert next(r["Timestamp"] for r in cycle.queue) == 10


@pytest.fixture
def upstream():
    server = XRayUpstream()
    yield server
    server.stop()


def unknown_host_resolver(monkeypatch, name: str) -> None:
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == name:  # answered here: no DNS query leaves the machine
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("fault,field", [
    ("5xx", "HTTPCode5XXCount"),
    ("4xx", "HTTPCode4XXCount"),
    ("hang", "TimeoutCount"),
    ("refused", "ConnectionRefusedCount"),
    ("unknown-host", "UnknownHostCount"),
])
def test_error_classes_against_a_faulty_upstream(fault, field, upstream, monkeypatch):
    endpoint = upstream.url
    if fault == "5xx":
        upstream.fault = Fault(status=500)
    elif fault == "4xx":
        upstream.fault = Fault(status=400)
    elif fault == "hang":
        upstream.fault = Fault(hang=6)
    elif fault == "refused":
        endpoint = f"http://127.0.0.1:{free_port()}"
    else:
        unknown_host_resolver(monkeypatch, "xray.unknown-host.test")
        endpoint = "http://xray.unknown-host.test:80"
    exporter = XRayExporter(aws.create_context("us-east-1", endpoint, False, ""), 1)
    stats, sender_ok = Stats(), Sender()
    stats.intake().received = 1
    cycle = telemetry.TelemetryCycle(stats, exporter.send, telemetry.Identity(), LOG)
    with pytest.raises(UploadError) as failed:  # a PutTraceSegments upload, counted as the
        exporter.put([b"{}"])                    # uploader counts it
    stats.add(names.UPLOAD_ERRORS, label=failed.value.error_class)
    cycle.cycle()  # PutTelemetryRecords fails too, and is counted
    assert len(cycle.queue) == 1
    cycle.send = sender_ok
    cycle.cycle()
    records = [r for c in sender_ok.calls for r in c["TelemetryRecords"]]
    counted = {k: sum(r["BackendConnectionErrors"][k] for r in records)
               for k in telemetry.ERROR_ORDER}
    assert counted[field] == 2, counted
    assert sum(counted.values()) == 2
    exporter.close()


def moto_telemetry(moto) -> list[dict]:
    data = json.loads(urllib.request.urlopen(moto.url + "/moto-api/data.json").read())
    return (data.get("xray") or {}).get("TelemetryRecords") or []


def test_records_reach_moto_from_a_running_daemon(moto, monkeypatch):
    from xrayd.daemon import Daemon

    monkeypatch.setenv("AWS_HOSTNAME", "tele-host")
    monkeypatch.setenv("AWS_INSTANCE_ID", "i-tele")
    port = free_udp_tcp_port()
    config = Config(udp_address=f"127.0.0.1:{port}", tcp_address=f"127.0.0.1:{port}",
                    endpoint=moto.url, region="us-east-1", resource_arn="arn:aws:ec2:x")
    daemon = Daemon(config, telemetry_interval=0.3)
    daemon.start()
    try:
        send_udp(port, *(datagram(SEGMENT % i) for i in range(3)))
        wait_until(lambda: moto_telemetry(moto), what="telemetry at moto")
    finally:
        daemon.stop(drain_seconds=5)
    stored = moto_telemetry(moto)
    assert stored[0]["hostname"] == "tele-host" and stored[0]["instance_id"] == "i-tele"
    assert stored[0]["resource_arn"] == "arn:aws:ec2:x"
    # Delivery is at least once: a call that timed out on a busy machine is sent again.
    records = list({r["Timestamp"]: r for entry in stored for r in entry["records"]}.values())
    assert sum(r["SegmentsReceivedCount"] for r in records) == 3
    assert sum(r["SegmentsSentCount"] for r in records) == 3


def test_uploads_and_telemetry_failures_counted_by_a_running_daemon(upstream):
    from xrayd.daemon import Daemon

    upstream.fault = Fault(status=503)
    port = free_udp_tcp_port()
    config = Config(udp_address=f"127.0.0.1:{port}", tcp_address=f"127.0.0.1:{port}",
                    endpoint=upstream.url, region="us-east-1", local_mode=True)
    daemon = Daemon(config, telemetry_interval=0.3)
    daemon.start()
    try:
        send_udp(port, datagram(SEGMENT % 1))
        wait_until(lambda: upstream.requests("/TelemetryRecords"), what="a telemetry call")
        wait_until(lambda: daemon.stats.get(names.SEGMENTS_FAILED), what="upload given up")
        upstream.fault = None
        wait_until(lambda: any(s.status == 200 for s in upstream.requests("/TelemetryRecords")),
                   what="records delivered")
    finally:
        daemon.stop(drain_seconds=5)
    failed_trace_calls = len(upstream.requests("/TraceSegments"))
    failed_telemetry_calls = daemon.stats.get(names.TELEMETRY_ERRORS, "http_5xx")
    assert failed_trace_calls >= 1 and failed_telemetry_calls >= 1
    delivered = [s for s in upstream.requests("/TelemetryRecords") if s.status == 200]
    records = [r for s in delivered for r in s.json()["TelemetryRecords"]]
    counted = sum(r["BackendConnectionErrors"]["HTTPCode5XXCount"] for r in records)
    assert counted == failed_trace_calls + failed_telemetry_calls
    assert daemon.stats.get(names.UPLOAD_ERRORS, "http_5xx") == failed_trace_calls


def test_a_last_record_is_sent_at_shutdown(moto):
    from xrayd.daemon import Daemon

    port = free_udp_tcp_port()
    config = Config(udp_address=f"127.0.0.1:{port}", tcp_address=f"127.0.0.1:{port}",
                    endpoint=moto.url, region="us-east-1", local_mode=True)
    daemon = Daemon(config, telemetry_interval=3600)  # no periodic cycle during the test
    daemon.start()
    try:
        send_udp(port, datagram(SEGMENT % 7))
        wait_until(lambda: daemon.stats.get(names.SEGMENTS_SENT) == 1, what="upload")
        assert moto_telemetry(moto) == []
    finally:
        daemon.stop(drain_seconds=5)
    [stored] = moto_telemetry(moto)
    [record] = stored["records"]
    assert record["SegmentsReceivedCount"] == 1 and record["SegmentsSentCount"] == 1
