"""A bad value in one document or span costs that document or span, never a thread of the
daemon: real xrayd subprocesses, real UDP, the strict OTLP receiver fake."""

from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import datagram, send_udp, wait_until
from fakes.otlp_receiver import OtlpReceiver
from offline_support import start_offline


@pytest.fixture
def receiver():
    server = OtlpReceiver().start()
    yield server
    server.stop()


def segment(n: int, **extra) -> bytes:
    doc = {"trace_id": f"1-{int(time.time()):08x}-{n:024x}", "id": f"{n:016x}",
           "name": f"svc-{n}", "start_time": time.time() - 1, "end_time": time.time(), **extra}
    return datagram(json.dumps(doc))


def test_a_segment_the_otlp_exporter_cannot_convert_does_not_stop_the_export(
        start_xrayd, tmp_path, receiver):
    daemon, port, _ = start_offline(start_xrayd, tmp_path, "--otlp-endpoint",
                                    f"{receiver.url}/v1/traces", "--concurrency", "2")
    bad = {"http": {"response": {"content_length": "\u00b2"}}}
    send_udp(port, segment(1, **bad), segment(2, **bad))
    time.sleep(0.3)
    send_udp(port, *(segment(n) for n in range(10, 15)))
    wait_until(lambda: {s.name for _, s in receiver.spans()} >= {f"svc-{n}" for n in
                                                                   range(10, 15)},
               timeout=20, what="the good segments' spans at the receiver")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(15)
    assert "Exception in thread" not in daemon.output
    assert "segments_dropped[shutdown]" not in daemon.output
