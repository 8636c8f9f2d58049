"""Fault injection: the daemon as a process, uploading to a fault-injecting X-Ray API that checks
SigV4 signatures, scripted per time window (5xx, throttling, hangs, resets, partial
UnprocessedTraceSegments). Outcomes are read from the daemon's /metrics and from what the
upstream received."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from conftest import free_port, free_udp_tcp_port, wait_until
from fakes.fault_upstream import FaultUpstream, Phase
from fakes.harness import outcome_totals, scrape, send_at_rate, sequence_number, status, total
from xrayd import spool as spool_format


@pytest.fixture
def upstream():
    started = []

    def start(*phases: Phase, **kwargs) -> FaultUpstream:
        server = FaultUpstream(list(phases) or None, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Run:
    def __init__(self, daemon, port: int, admin: str) -> None:
        self.daemon, self.port, self.admin = daemon, port, admin

    def metrics(self) -> dict[str, float]:
        return scrape(self.admin)


def start_daemon(start_xrayd, endpoint: str, spool_dir: Path | None = None,
                 extra: list[str] | None = None, port: int | None = None) -> Run:
    port = port or free_udp_tcp_port()
    admin_port = free_port()
    args = ["-o", "-n", "us-east-1", "--endpoint", endpoint, "-b", f"127.0.0.1:{port}",
            "-t", f"127.0.0.1:{port}", "--admin-address", f"127.0.0.1:{admin_port}",
            "-m", "32", "-l", "info"]
    if spool_dir is not None:
        args += ["--spool-dir", str(spool_dir), "--spool-fsync-ms", "200"]
    daemon = start_xrayd(args + (extra or []), ready="Ready: receiving segments")
    return Run(daemon, port, f"http://127.0.0.1:{admin_port}")


def settled(run: Run, accepted: int):
    """Wait until every accepted document has a terminal outcome or sits in the spool."""

    def done():
        counts = outcome_totals(run.metrics())
        terminal = sum(counts[k] for k in ("sent", "unprocessed", "failed", "spilled", "dropped"))
        if counts["accepted"] == accepted and counts["queued"] == 0 and (
                counts["in_flight_batches"] == 0) and terminal + counts["spooled_now"] == accepted:
            return counts
        return None

    return done


def received_numbers(up: FaultUpstream) -> list[int]:
    return [sequence_number(d) for d in list(up.docs)]


@pytest.mark.slow
def test_throttling_window_slows_uploads_and_loses_nothing(upstream, start_xrayd):
    up = upstream(Phase(1.0, "ok"), Phase(1.5, "throttle"), Phase(float("inf"), "ok"))
    run = start_daemon(start_xrayd, up.url)
    up.restart_schedule()
    sent = send_at_rate(run.port, 0, 1500, 500)
    counts = wait_until(settled(run, sent), timeout=60, interval=0.3, what="all settled")
    samples = run.metrics()
    assert counts["sent"] == sent, counts
    assert sorted(received_numbers(up)) == list(range(sent))
    assert up.record.by_mode.get("throttle", 0) > 0
    assert samples['xrayd_backend_errors_total{class="http_4xx"}'] > 0
    assert total(samples, "xrayd_segments_retried_total") > 0
    assert up.record.bad_signatures == 0


def test_partial_unprocessed_transient_retried_permanent_counted(upstream, start_xrayd):
    up = upstream(Phase(1.5, "partial", unprocessed_code="InternalFailure"),
                  Phase(1.5, "partial", unprocessed_code="InvalidTraceId", unprocessed_every=5),
                  Phase(float("inf"), "ok"))
    run = start_daemon(start_xrayd, up.url)
    up.restart_schedule()
    sent = send_at_rate(run.port, 0, 1500, 500)
    counts = wait_until(settled(run, sent), timeout=60, interval=0.3, what="all settled")
    samples = run.metrics()
    refused = samples.get('xrayd_segments_unprocessed_total{code="InvalidTraceId"}', 0)
    final = total(samples, "xrayd_segments_unprocessed_total")
    # The permanent refusals are final; the transient InternalFailure refusals were retried and
    # arrived, unless the refusals outlasted the retries (rare: jitter can pack 6 attempts into
    # the 1.5 s window), which is counted as retries_exhausted. Nothing else is lost, nothing
    # arrives twice.
    assert refused > 0
    assert final == refused + samples.get(
        'xrayd_segments_unprocessed_total{code="retries_exhausted"}', 0)
    numbers = received_numbers(up)
    assert len(numbers) == len(set(numbers))
    assert counts["sent"] == len(numbers) == sent - final
    assert up.record.refused > refused  # the InternalFailure ones were refused, then retried


@pytest.mark.slow
def test_outage_with_spool_loses_nothing(upstream, start_xrayd, tmp_path):
    """A 10 s outage (503s, then connection resets, then hangs) at 1,000 segments/s; the full
    60 s version is bench/outage.py."""
    up = upstream(Phase(1.0, "ok"), Phase(4.0, "error", status=503), Phase(3.0, "reset"),
                  Phase(3.0, "hang", hang_seconds=3.0), Phase(float("inf"), "ok"))
    run = start_daemon(start_xrayd, up.url, tmp_path / "spool")
    up.restart_schedule()
    readiness = []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.5):
            readiness.append(status(run.admin + "/readyz"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sent = send_at_rate(run.port, 0, 13_000, 1000)
        counts = wait_until(settled(run, sent), timeout=120, interval=0.5, what="all settled")
        wait_until(lambda: run.metrics()["xrayd_spool_segments"] == 0, timeout=60,
                   what="spool empty")
        # Ready again once a call has succeeded with the breaker closed (the watcher's last
        # sample may come before that on a slow machine).
        wait_until(lambda: status(run.admin + "/readyz") == 200, timeout=30, interval=0.5,
                   what="ready again")
    finally:
        stop.set()
        watcher.join()
    samples = run.metrics()
    numbers = received_numbers(up)
    assert sorted(set(numbers)) == list(range(sent)), f"lost {sent - len(set(numbers))}"
    assert total(samples, "xrayd_segments_sent_total") == sent
    assert total(samples, "xrayd_segments_spooled_total") > 0
    assert total(samples, "xrayd_segments_replayed_total") == total(
        samples, "xrayd_segments_spooled_total")
    for name in ("failed", "spilled", "dropped", "unprocessed"):
        assert counts[name] == 0, (name, counts)
    assert 503 in readiness  # not ready while the backend was down
    assert up.record.bad_signatures == 0


@pytest.mark.slow
def test_outage_without_spool_drops_exactly_what_the_counters_say(upstream, start_xrayd):
    up = upstream(Phase(0.5, "ok"), Phase(20.0, "error", status=500), Phase(float("inf"), "ok"))
    run = start_daemon(start_xrayd, up.url)
    up.restart_schedule()
    sent = send_at_rate(run.port, 0, 1500, 1000)
    counts = wait_until(settled(run, sent), timeout=60, interval=0.3, what="all settled")
    numbers = received_numbers(up)
    assert len(numbers) == len(set(numbers))
    assert counts["sent"] == len(numbers)
    lost = sent - len(numbers)
    assert lost > 0  # the outage outlasted the retries
    assert counts["failed"] + counts["spilled"] + counts["dropped"] + counts["unprocessed"] == lost
    assert counts["failed"] == run.metrics()['xrayd_segments_failed_total{class="http_5xx"}']


def test_access_denied_is_logged_once_with_the_fix(upstream, start_xrayd):
    up = upstream(Phase(float("inf"), "deny"))
    run = start_daemon(start_xrayd, up.url)
    sent = send_at_rate(run.port, 0, 600, 300)
    counts = wait_until(settled(run, sent), timeout=30, interval=0.3, what="all settled")
    assert counts["failed"] == sent
    assert run.daemon.output.count("To fix: allow xray:PutTraceSegments") == 1


@pytest.mark.slow
def test_sigterm_spools_what_cannot_be_sent_and_a_restart_delivers_it(upstream, start_xrayd,
                                                                      tmp_path):
    up = upstream(Phase(float("inf"), "hang", hang_seconds=10.0))
    spool_dir = tmp_path / "spool"
    run = start_daemon(start_xrayd, up.url, spool_dir, extra=["--drain-seconds", "6"])
    sent = send_at_rate(run.port, 0, 800, 800)
    wait_until(lambda: run.metrics()["xrayd_segments_accepted_total"] == sent, timeout=10)
    run.daemon.signal(signal.SIGTERM)
    assert run.daemon.wait(30) == 0
    output = run.daemon.output
    assert "Got shutdown signal: terminated" in output
    on_disk = []
    for path in sorted(spool_dir.glob("*.spool")):
        on_disk += spool_format.decode(path.read_bytes()).docs
    assert sorted(map(sequence_number, on_disk)) == list(range(sent))

    up.set_mode("ok")
    again = start_daemon(start_xrayd, up.url, spool_dir)
    wait_until(lambda: len(up.docs) >= sent, timeout=60, what="replay after restart")
    samples = again.metrics()
    assert samples["xrayd_spool_recovered_segments_total"] == sent
    assert sorted(received_numbers(up)) == list(range(sent))


def test_unusable_spool_directory_is_a_startup_error(start_xrayd, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    daemon = start_xrayd(["-o", "-n", "us-east-1", "-b", "127.0.0.1:0", "-t", "127.0.0.1:0",
                          "--spool-dir", str(blocker / "spool")], ready=None)
    assert daemon.wait(30) == 1
    assert f"Cannot use spool directory {blocker / 'spool'}" in daemon.output


@pytest.mark.slow
def test_full_spool_drops_the_oldest_and_counts_them(upstream, start_xrayd, tmp_path):
    up = upstream(Phase(0.3, "ok"), Phase(4.0, "error", status=503), Phase(float("inf"), "ok"))
    run = start_daemon(start_xrayd, up.url, tmp_path / "spool", extra=["--spool-max-mb", "1"])
    up.restart_schedule()
    sent = send_at_rate(run.port, 0, 3000, 1000)
    wait_until(lambda: run.metrics()["xrayd_spool_segments"] == 0, timeout=60)
    counts = wait_until(settled(run, sent), timeout=60, interval=0.3, what="all settled")
    samples = run.metrics()
    numbers = set(received_numbers(up))
    lost = set(range(sent)) - numbers
    dropped = samples['xrayd_segments_dropped_total{reason="spool_full"}']
    assert dropped > 0
    assert len(lost) == dropped + counts["spilled"] + counts["failed"]
    # The oldest spooled data went first: the newest documents all arrived.
    assert set(range(sent - 800, sent)) <= numbers
