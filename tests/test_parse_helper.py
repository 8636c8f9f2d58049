"""The parse helper process builds exactly the rows the writer builds itself, and the writer
carries on in-process when the helper is not there or fails."""

from __future__ import annotations

import orjson
import pytest

from xrayd.store import parse_helper, schema
from xrayd.store import writer as writer_module
from xrayd.store.parse_helper import ParseHelper
from xrayd.store.rows import build
from xrayd.store.writer import StoreWriter


def doc(i: int, **extra) -> bytes:
    return orjson.dumps({
        "name": f"svc{i % 3}", "id": f"{i:016x}", "trace_id": f"1-5f000000-{i // 2:024x}",
        "start_time": 1.0 + i, "end_time": 2.0 + i, "annotations": {"n": i, "ok": i % 2 == 0},
        "http": {"request": {"method": "GET", "url": f"http://x/{i}"},
                 "response": {"status": 200 + i % 3}},
        "subsegments": [{"id": f"{i + 10**6:016x}", "name": "DynamoDB", "namespace": "aws",
                         "start_time": 1.5 + i, "end_time": 1.7 + i, "fault": i % 5 == 0}],
        **extra})


def jobs(start: int, count: int) -> list[tuple[list[bytes], float]]:
    bad = [b"{not json", orjson.dumps({"id": "a" * 16, "name": "x", "start_time": 1})]
    docs = [doc(i) for i in range(start, start + count)]
    return [(docs[:count // 2] + bad, 100.0), (docs[count // 2:], 101.0)]


def same(built, expected) -> None:
    rows, rejected = built
    want_rows, want_rejected = expected
    assert rows.as_tuple() == want_rows.as_tuple()
    assert rejected == want_rejected


@pytest.fixture
def eager(monkeypatch):
    """Every batch large enough for the helper."""
    monkeypatch.setattr(parse_helper, "MIN_BATCH", 1)


def test_the_helper_builds_what_the_writer_builds(eager):
    errors: list[str] = []
    helper = ParseHelper(on_error=errors.append)
    try:
        batches = [jobs(i * 40, 40) for i in range(3)]
        tickets = [helper.submit(batch) for batch in batches]  # several in flight at once
        assert helper.process is not None and all(t.remote for t in tickets)
        for ticket, batch in zip(tickets, batches, strict=True):
            same(helper.result(ticket), build(batch))
        assert errors == [] and helper.failures == 0
    finally:
        helper.close()


def test_a_dead_helper_is_replaced_by_parsing_in_process(eager):
    errors: list[str] = []
    now = [0.0]
    helper = ParseHelper(clock=lambda: now[0], on_error=errors.append)
    try:
        first = helper.submit(jobs(0, 20))
        same(helper.result(first), build(jobs(0, 20)))
        helper.process.kill()
        helper.process.wait()
        lost = helper.submit(jobs(20, 20))  # sent to a dead process
        same(helper.result(lost), build(jobs(20, 20)))
        assert helper.failures == 1 and len(errors) == 1 and "parse helper failed" in errors[0]
        assert helper.process is None
        now[0] += 1.0  # within the retry delay: in-process, no new helper
        assert not helper.submit(jobs(40, 20)).remote and helper.process is None
        now[0] += parse_helper.RETRY_SECONDS
        again = helper.submit(jobs(60, 20))
        assert again.remote and helper.process is not None
        same(helper.result(again), build(jobs(60, 20)))
    finally:
        helper.close()


def test_small_batches_stay_in_process_and_an_idle_helper_stops(monkeypatch):
    monkeypatch.setattr(parse_helper, "MIN_BATCH", 30)
    now = [0.0]
    helper = ParseHelper(clock=lambda: now[0])
    try:
        assert not helper.submit(jobs(0, 10)).remote and helper.process is None
        large = helper.submit(jobs(0, 40))
        assert large.remote and helper.process is not None
        same(helper.result(large), build(jobs(0, 40)))
        process = helper.process
        now[0] += parse_helper.IDLE_SECONDS - 1
        assert helper.submit(jobs(0, 10)).remote  # the helper still runs: it is used
        helper.result(helper.submit(jobs(0, 10)))
        now[0] += 2
        assert not helper.submit(jobs(0, 10)).remote and helper.process is None
        assert process.wait(5) == 0  # it ended at the end of its input
    finally:
        helper.close()


def test_the_store_through_the_helper(tmp_path, eager, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_RECORDS_PER_COMMIT", 7)
    writer = StoreWriter(str(tmp_path / "t.db"))
    try:
        for start in range(0, 60, 12):
            writer.write([doc(i) for i in range(start, start + 12)], wait=False)
        rejected = writer.write([b"[1]", doc(60)])
        assert [r.code for r in rejected] == ["InvalidSegment"]
        assert writer.flush(30)
        assert writer._helper.process is not None
    finally:
        writer.close()
    conn = schema.connect(str(tmp_path / "t.db"), readonly=True)
    assert conn.execute("SELECT count(*) FROM segments").fetchone() == (61,)
    assert conn.execute("SELECT count(*) FROM traces").fetchone() == (31,)
    assert conn.execute("SELECT count(*) FROM segments s JOIN traces t ON t.pk = s.tpk "
                        "WHERE substr(t.trace_id, 12) != printf('%024x', "
                        "CAST(s.start - 1 AS INTEGER) / 2)").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM rejected").fetchone() == (1,)
    for seg_id, stored in conn.execute("SELECT id, doc FROM segments"):
        assert orjson.loads(stored)["id"] == seg_id  # each row has its own document
