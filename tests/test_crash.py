"""Crash safety: SIGKILL while the daemon is uploading its spool; after a restart every segment
it had accepted reaches moto server (at least once; duplicates are counted and reported)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from conftest import wait_until
from fakes.fault_upstream import FaultUpstream, Phase
from fakes.harness import send_at_rate, sequence_number, trace_of
from test_faults import start_daemon


def moto_documents(moto, run: str, count: int) -> Counter[int]:
    client = moto.xray()
    traces = sorted({trace_of(n, run) for n in range(count)})
    seen: Counter[int] = Counter()
    for i in range(0, len(traces), 5):
        answer = client.batch_get_traces(TraceIds=traces[i:i + 5])
        for trace in answer["Traces"]:
            for seg in trace["Segments"]:
                seen[sequence_number(seg["Document"].encode())] += 1
    return seen


@pytest.mark.slow
def test_sigkill_while_replaying_then_restart_delivers_everything(moto, start_xrayd, tmp_path):
    count, run = 3000, "c1"
    # The way to moto goes through a fault upstream: down first, so everything is spooled.
    gate = FaultUpstream([Phase(float("inf"), "error")], forward_to=moto.url).start()
    spool_dir = tmp_path / "spool"
    try:
        first = start_daemon(start_xrayd, gate.url, spool_dir)
        sent = send_at_rate(first.port, 0, count, 1500, run=run)
        wait_until(lambda: first.metrics()["xrayd_spool_segments"] == sent, timeout=60,
                   what="everything spooled")
        assert first.metrics()["xrayd_segments_accepted_total"] == sent
        # The backend comes back, slowly: the daemon is busy replaying when it is killed.
        gate.set_mode("ok", delay=0.05)
        wait_until(lambda: gate.record.accepted >= 500, timeout=60, what="replay under way")
        first.daemon.proc.send_signal(signal.SIGKILL)
        first.daemon.proc.wait(10)
        before_kill = gate.record.accepted
    finally:
        gate.stop()
    assert 0 < before_kill < sent

    second = start_daemon(start_xrayd, moto.url, spool_dir)
    recovered = second.metrics()["xrayd_spool_recovered_segments_total"]
    assert 0 < recovered <= sent - before_kill + 50 * 8  # at most the batches in flight twice
    wait_until(lambda: second.metrics()["xrayd_spool_segments"] == 0, timeout=60,
               what="spool replayed after the restart")
    seen = moto_documents(moto, run, sent)
    missing = set(range(sent)) - set(seen)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"\ncrash test: {sent} accepted, {before_kill} delivered before SIGKILL, "
          f"{int(recovered)} recovered from the spool, {len(missing)} missing, "
          f"{duplicates} duplicates")
    assert not missing
    assert set(seen) == set(range(sent))
