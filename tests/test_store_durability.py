"""Offline mode counts a document as sent only once it is committed: failed commits are retried
and then counted as failed, one daemon writes a store, a store deleted or corrupted under a
running daemon is reported, and the store's files are private."""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import stat
import time

import orjson
import pytest

from conftest import datagram, free_udp_tcp_port, send_udp, wait_until
from offline_support import start_offline, xray_client
from xrayd import logs
from xrayd import stats as names
from xrayd.batcher import Batch, Batcher
from xrayd.exporters.local import LocalExporter
from xrayd.retry import RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.stats import Stats
from xrayd.store import schema
from xrayd.store import writer as writer_module
from xrayd.store.writer import StoreGone, StoreWriter
from xrayd.uploader import Uploader

FAIL_TRIGGER = ("CREATE TRIGGER refuse BEFORE INSERT ON segments "
                "BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END")


def doc(i: int, start: float) -> bytes:
    return orjson.dumps({"name": "svc", "id": f"{i:016x}",
                         "trace_id": f"1-{int(start):08x}-{i:024x}", "start_time": start,
                         "end_time": start + 0.1})


def uploader_for(writer: StoreWriter, stats: Stats, sleep=lambda s: None) -> Uploader:
    queue = SegmentQueue(Batcher(budget=10**7), clock=time.monotonic)
    return Uploader(queue, LocalExporter(writer), stats, logs.RateLimitedLog(logs.get_logger()),
                    concurrency=1, policy=RetryPolicy(max_attempts=3), sleep=sleep)


def stopped_counts(daemon) -> dict[str, int]:
    """Stop the daemon; the counters of its shutdown summary."""
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    line = [x for x in daemon.output.splitlines() if "Shutdown summary:" in x][-1]
    return {name: int(n) for name, n in re.findall(r"(\w+(?:\[\w+\])?) (\d+)", line)}


def test_a_failed_commit_is_retried_and_counted_sent_only_once_committed(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    stats = Stats()
    other = sqlite3.connect(writer.path, isolation_level=None)
    other.execute(FAIL_TRIGGER)  # a real SQLite error inside the writer's transaction
    sent_at_retry = []

    def sleep(_seconds: float) -> None:  # the uploader's wait before its retry
        sent_at_retry.append(stats.get(names.SEGMENTS_SENT))
        other.execute("DROP TRIGGER IF EXISTS refuse")

    now = time.time()
    uploader_for(writer, stats, sleep).deliver(Batch([doc(1, now), doc(2, now)], 100))
    assert sent_at_retry == [0]  # the failed attempt counted nothing as sent
    assert stats.get(names.SEGMENTS_SENT) == 2
    assert stats.get(names.SEGMENTS_RETRIED) == 2
    assert stats.get(names.SEGMENTS_FAILED) == 0
    assert other.execute("SELECT count(*) FROM segments").fetchone()[0] == 2
    writer.close()


def test_what_cannot_be_committed_is_counted_and_logged_as_failed(tmp_path, caplog):
    writer = StoreWriter(str(tmp_path / "t.db"))
    stats = Stats()
    sqlite3.connect(writer.path, isolation_level=None).execute(FAIL_TRIGGER)
    caplog.set_level(logging.INFO, logger="xrayd")
    uploader_for(writer, stats).deliver(Batch([doc(1, time.time())], 50))
    assert stats.get(names.SEGMENTS_SENT) == 0
    assert stats.by_label(names.SEGMENTS_FAILED) == {"store_error": 1}
    assert stats.get(names.UPLOAD_ERRORS) == 3  # every attempt
    assert "injected: disk full" in caplog.text
    assert "1 segments dropped after 3 attempts" in caplog.text
    writer.close()


def test_store_files_are_created_private_and_existing_ones_made_so(tmp_path):
    path = tmp_path / "t.db"
    writer = StoreWriter(str(path))
    writer.write([doc(1, time.time())])
    for name in ("t.db", "t.db-wal", "t.db-shm", "t.db.lock"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    writer.close()
    for name in ("t.db", "t.db-wal", "t.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    StoreWriter(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_second_writer_on_the_same_store_is_refused_until_the_first_closes(tmp_path):
    path = str(tmp_path / "t.db")
    first = StoreWriter(path)
    held = f"in use by another xrayd \\(pid {os.getpid()}\\)"
    with pytest.raises(schema.StoreLocked, match=held):
        StoreWriter(path)
    first.close()
    StoreWriter(path).close()


def test_a_deleted_store_file_is_reported_and_nothing_more_counts_as_sent(tmp_path, caplog,
                                                                          monkeypatch):
    monkeypatch.setattr(writer_module, "FILE_CHECK_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="xrayd")
    writer = StoreWriter(str(tmp_path / "t.db"))
    now = time.time()
    assert writer.write([doc(1, now)]) == []
    os.unlink(writer.path)
    with pytest.raises(StoreGone):
        writer.write([doc(2, now)])
    assert "t.db was deleted while xrayd was running" in caplog.text
    stats = Stats()
    uploader_for(writer, stats).deliver(Batch([doc(3, now)], 50))
    assert stats.get(names.SEGMENTS_SENT) == 0
    assert stats.by_label(names.SEGMENTS_FAILED) == {"store_gone": 1}
    assert stats.get(names.UPLOAD_ERRORS) == 1  # not retried: it cannot get better
    writer.close()


def send_documents(port: int, count: int, first: int = 0) -> list[str]:
    now = time.time()
    docs = [doc(first + i, now) for i in range(count)]
    send_udp(port, *[datagram(d) for d in docs])
    return [orjson.loads(d)["trace_id"] for d in docs]


def stored_traces(port: int, trace_ids: list[str]) -> int:
    client = xray_client(port)
    return sum(len(client.batch_get_traces(TraceIds=trace_ids[i:i + 5])["Traces"])
               for i in range(0, len(trace_ids), 5))


def test_two_daemons_on_one_store_the_second_exits_1_and_nothing_is_lost(start_xrayd, tmp_path):
    first, port, store = start_offline(start_xrayd, tmp_path)
    other = free_udp_tcp_port()
    second = start_xrayd(["--offline", "--store", str(store), "-b", f"127.0.0.1:{other}",
                          "-t", f"127.0.0.1:{other}", "-l", "info"], ready=None)
    assert second.wait(15) == 1
    assert f"is in use by another xrayd (pid {first.proc.pid})" in second.output
    trace_ids = send_documents(port, 30)
    wait_until(lambda: stored_traces(port, trace_ids) == 30, what="30 traces stored")
    counts = stopped_counts(first)
    assert counts["segments_sent"] == 30
    assert not any(k.startswith("segments_failed") for k in counts)


def test_a_daemon_whose_commits_fail_counts_them_failed_not_sent(start_xrayd, tmp_path):
    daemon, port, store = start_offline(start_xrayd, tmp_path)
    sqlite3.connect(store, isolation_level=None).execute(FAIL_TRIGGER)
    send_documents(port, 5)
    daemon.wait_for("5 segments dropped after", timeout=30)
    counts = stopped_counts(daemon)
    assert counts.get("segments_sent", 0) == 0
    assert counts["segments_failed[store_error]"] == 5
    assert "injected: disk full" in daemon.output


def test_a_store_corrupted_under_the_daemon_is_logged_and_counted(start_xrayd, tmp_path):
    daemon, port, store = start_offline(start_xrayd, tmp_path)
    trace_ids = send_documents(port, 200)
    wait_until(lambda: stored_traces(port, trace_ids[:5]) == 5, what="first traces stored")
    daemon.wait_for("Successfully sent batch of 200 segments")
    # Garbage over every page but the first, then a write by another connection so that the
    # daemon's page cache is dropped and its next commit reads the damaged pages.
    other = sqlite3.connect(store, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(store)
    with open(store, "r+b") as handle:
        handle.seek(schema.PAGE_SIZE)
        handle.write(os.urandom(size - schema.PAGE_SIZE))
    other.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION}")
    send_documents(port, 3, first=1000)
    daemon.wait_for("3 segments dropped after", timeout=30)
    assert "database disk image is malformed" in daemon.output
    counts = stopped_counts(daemon)
    assert counts["segments_sent"] == 200
    assert counts["segments_failed[store_error]"] == 3


def test_a_store_deleted_under_the_daemon_is_reported(start_xrayd, tmp_path):
    daemon, port, store = start_offline(start_xrayd, tmp_path)
    trace_ids = send_documents(port, 2)
    wait_until(lambda: stored_traces(port, trace_ids) == 2, what="2 traces stored")
    os.unlink(store)
    time.sleep(writer_module.FILE_CHECK_SECONDS)
    send_documents(port, 4, first=100)
    daemon.wait_for("4 segments dropped after", timeout=30)
    assert "was deleted while xrayd was running" in daemon.output
    counts = stopped_counts(daemon)
    assert counts["segments_sent"] == 2
    assert counts["segments_failed[store_gone]"] == 4
