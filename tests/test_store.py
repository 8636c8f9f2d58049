"""The trace store's writer: what it keeps, merges, rejects and removes."""

from __future__ import annotations

import os
import sqlite3
import time

import orjson
import pytest

from xrayd.store import parse_helper, queries, schema
from xrayd.store import writer as writer_module
from xrayd.store.extract import CALL_FIELDS, parse
from xrayd.store.merge import merge
from xrayd.store.writer import Retention, StoreWriter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def doc(i: int, start: float, **extra) -> bytes:
    return orjson.dumps({"name": "svc", "id": f"{i:016x}",
                         "trace_id": f"1-{int(start):08x}-{i:024x}", "start_time": start,
                         "end_time": start + 0.1, **extra})


def test_default_path_follows_xdg():
    assert schema.default_path({"XDG_DATA_HOME": "/x"}) == "/x/xrayd/traces.db"
    assert schema.default_path({"HOME": "/home/u"}) == "/home/u/.local/share/xrayd/traces.db"


def test_database_is_wal(tmp_path):
    writer = StoreWriter(str(tmp_path / "a" / "t.db"))
    assert writer.write([doc(1, 1000.0)]) == []
    conn = schema.connect(writer.path, readonly=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.close()
    assert oct(os.stat(tmp_path / "a").st_mode & 0o777) == "0o700"


def test_rejections_carry_the_service_codes(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    bad = [b"[1, 2]", b'{"name": "x"}', b'{"id": "a", "trace_id": "nope", "name": "n"}',
           b'{"id": "a", "trace_id": "1-5f000000-000000000000000000000001", "name": "n", '
           b'"start_time": 1}',
           b'{"id": "a", "trace_id": "1-5f000000-000000000000000000000001", "name": "n", '
           b'"start_time": 1, "in_progress": true, "type": "subsegment"}']
    codes = [(r.id, r.code) for r in writer.write(bad)]
    assert codes == [("", "InvalidSegment"), ("", "MissingId"), ("a", "InvalidTraceId"),
                     ("a", "InvalidSegment"), ("a", "InvalidSegment")]
    conn = schema.connect(writer.path, readonly=True)
    assert len(queries.rejected(conn)) == 5
    assert queries.stats(conn)["traces"] == 0
    writer.close()


def test_out_of_order_in_progress_document_does_not_replace_the_final_one(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    final = doc(1, 1000.0)
    started = orjson.dumps({**orjson.loads(final), "in_progress": True, "end_time": None})
    started = orjson.dumps({k: v for k, v in orjson.loads(started).items() if v is not None})
    writer.write([final])
    writer.write([started])
    # In one batch (one multi-row statement), in either order.
    other = orjson.loads(final)
    other["trace_id"] = other["trace_id"][:-1] + "e"
    other_final = orjson.dumps(other)
    other_started = orjson.dumps({**{k: v for k, v in other.items() if k != "end_time"},
                                  "in_progress": True})
    writer.write([other_started, other_final])
    other["trace_id"] = other["trace_id"][:-1] + "d"
    writer.write([orjson.dumps(other), orjson.dumps(
        {**{k: v for k, v in other.items() if k != "end_time"}, "in_progress": True})])
    conn = schema.connect(writer.path, readonly=True)
    summaries = queries.trace_summaries(conn, 0, 2000)["TraceSummaries"]
    assert len(summaries) == 3
    for summary in summaries:
        assert summary["IsPartial"] is False and summary["Duration"] == pytest.approx(0.1)
    writer.close()


def test_retention_by_age(tmp_path):
    clock = Clock(100_000.0)
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1), clock=clock)
    writer.write([doc(1, 90_000.0)])
    clock.now = 100_000.0 + 1800
    writer.write([doc(2, 101_000.0), b"junk"])
    clock.now = 100_000.0 + 3601  # the first trace was stored more than an hour ago
    assert writer.apply_retention() == 1
    conn = schema.connect(writer.path, readonly=True)
    ids = [s["Id"] for s in queries.trace_summaries(conn, 0, 200_000)["TraceSummaries"]]
    assert ids == [f"1-{101000:08x}-{2:024x}"]
    assert len(queries.rejected(conn)) == 1
    writer.close()


def test_retention_by_size_removes_the_oldest(tmp_path):
    clock = Clock(1000.0)
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1000, max_bytes=2_000_000),
                         clock=clock)
    padding = "x" * 2000
    for batch in range(20):
        clock.now = 1000.0 + batch
        writer.write([doc(batch * 50 + i, 1000.0 + batch, metadata={"default": {"p": padding}})
                      for i in range(50)])
    assert writer.used_bytes() > 2_000_000
    removed = writer.apply_retention()
    assert removed > 0
    assert writer.used_bytes() <= 2_000_000
    conn = schema.connect(writer.path, readonly=True)
    kept = queries.trace_summaries(conn, 0, 5000, page_size=1000)["TraceSummaries"]
    assert len(kept) == 1000 - removed
    newest_removed = max(int(s["Id"][-24:], 16) for s in kept)
    assert newest_removed == 999  # the newest are kept
    writer.close()


def calls(record):
    return [dict(zip(CALL_FIELDS, call, strict=True)) for call in record.calls]


def test_extract_indexes_nested_subsegments():
    record = parse(orjson.dumps({
        "name": "web", "id": "a" * 16, "trace_id": "1-5f000000-000000000000000000000001",
        "start_time": 1, "end_time": 2, "annotations": {"a": 1},
        "subsegments": [{"name": "DynamoDB", "id": "b" * 16, "namespace": "aws",
                         "start_time": 1.1, "end_time": 1.2, "throttle": True, "error": True,
                         "annotations": {"table": "t"},
                         "subsegments": [{"name": "inner", "id": "c" * 16, "start_time": 1.1,
                                          "end_time": 1.15, "fault": True}]}],
    }))
    assert record.annotations == [("a", 1), ("table", "t")]
    assert (record.error, record.fault, record.throttle) == (True, True, True)
    assert [(c["name"], c["namespace"], c["owner_id"]) for c in calls(record)] == [
        ("DynamoDB", "aws", "a" * 16)]


def test_merge_attaches_in_any_order():
    segment = {"id": "s", "name": "root", "start_time": 0, "subsegments": [
        {"id": "p", "name": "placeholder", "start_time": 1, "in_progress": True}]}
    child = {"id": "c", "parent_id": "p", "name": "child", "start_time": 2}
    done = {"id": "p", "parent_id": "s", "name": "placeholder", "start_time": 1, "end_time": 3}
    orphan = {"id": "o", "parent_id": "nowhere", "name": "orphan", "start_time": 1}
    merged, left = merge([segment], [child, done, orphan])
    assert left == [orphan]
    [placeholder] = merged[0]["subsegments"]
    assert placeholder["end_time"] == 3
    assert [s["name"] for s in placeholder["subsegments"]] == ["child"]


def test_extract_reads_odd_documents_as_orjson_does():
    # Integers past 64 bits are floats to orjson; a subsegment that is not an object is skipped
    # (the typed decoder refuses such a document, and the store reads it with orjson).
    plain = parse(
        b'{"name":"web","id":"aaaaaaaaaaaaaaaa","trace_id":"1-5f000000-000000000000000000000001",'
        b'"start_time":1,"end_time":2,"http":{"response":{"status":1180591620717411303424}},'
        b'"annotations":{"big":1180591620717411303424,"small":-9223372036854775808}}')
    assert plain.annotations == [("big", float(2**70)), ("small", -(2**63))]
    assert plain.http_status is None
    record = parse(
        b'{"name":"web","id":"aaaaaaaaaaaaaaaa","trace_id":"1-5f000000-000000000000000000000001",'
        b'"start_time":1,"end_time":2,"http":{"response":{"status":1180591620717411303424}},'
        b'"annotations":{"big":1180591620717411303424,"small":-9223372036854775808},'
        b'"subsegments":[1,"x",{"name":"S3","id":"bbbbbbbbbbbbbbbb","namespace":"aws",'
        b'"start_time":1.5,"fault":true}]}')
    assert record.annotations == [("big", float(2**70)), ("small", -(2**63))]
    assert record.http_status is None
    assert record.fault is True
    assert [(c["name"], c["start"], c["end"], c["fault"]) for c in calls(record)] == [
        ("S3", 1.5, None, 1)]


def test_service_names_and_annotations_are_stored_exactly(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    names = ["web", "caf\u00e9 \U0001f600", "a\x00b", 'q"\\\n', 'x",web', 'web":1,"x', "we"]
    docs = [orjson.dumps({"name": name, "id": f"{i:016x}",
                          "trace_id": f"1-5f000000-{i:024x}", "start_time": 1, "end_time": 2,
                          "annotations": {"k": name, "ok": True, "n": 0.1 + i}})
            for i, name in enumerate(names)]
    assert writer.write(docs[:1]) == []  # a batch without a NUL, then one with
    assert writer.write(docs[1:]) == []
    conn = schema.connect(writer.path, readonly=True)
    for i, name in enumerate(names):  # service("name") finds exactly the trace named so
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        found = queries.trace_summaries(conn, 0, 10, f'service("{escaped}")')["TraceSummaries"]
        assert [s["Id"] for s in found] == [f"1-5f000000-{i:024x}"], name
    notes = conn.execute("SELECT key, typ, val FROM annotations").fetchall()
    assert sorted(notes) == sorted([("k", "s", name) for name in names]
                                   + [("ok", "b", 1)] * len(names)
                                   + [("n", "n", 0.1 + i) for i in range(len(names))])
    writer.close()


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    other = sqlite3.connect(tmp_path / "v9.db")
    other.execute("PRAGMA user_version=9")
    other.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 9"):
        schema.connect(str(tmp_path / "v9.db"))


@pytest.mark.parametrize("in_helper", [False, True], ids=["in-process", "parse-helper"])
def test_trace_keys_stay_consistent_across_pipelined_batches(tmp_path, monkeypatch, in_helper):
    """Documents of one trace spread over many batches (queued without waiting, so one batch
    is parsed while the previous one is written), with a key cache that keeps being cleared
    and retention deleting some traces in between: every row points at its own trace."""
    if in_helper:
        monkeypatch.setattr(parse_helper, "MIN_BATCH", 1)
    monkeypatch.setattr(writer_module, "PK_CACHE_SIZE", 3)
    monkeypatch.setattr(writer_module, "MAX_RECORDS_PER_COMMIT", 7)
    now = [1000.0]
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1), clock=lambda: now[0])

    def doc(trace: int, seg: int, start: float) -> bytes:
        return orjson.dumps({"name": f"svc{trace % 3}", "id": f"{trace:08x}{seg:08x}",
                             "trace_id": f"1-5f000000-{trace:024x}", "start_time": start,
                             "end_time": start + 1, "annotations": {"t": trace}})

    for round_ in range(4):
        for batch in range(12):
            writer.write([doc(t, round_ * 100 + batch, 10.0 * round_ + t)
                          for t in range(batch % 5, batch % 5 + 6)], wait=False)
        assert writer.flush(30)
        if round_ == 1:  # traces that start before 1000 - 3600 + 12 go; they come back later
            now[0] = 3600.0 + 12.0
            writer.enforce_retention_now()
            check = schema.connect(writer.path, readonly=True)
            deadline = time.monotonic() + 30
            while check.execute("SELECT count(*) FROM traces").fetchone()[0]:
                assert time.monotonic() < deadline, "retention did not run"
                time.sleep(0.05)
            check.close()
    conn = schema.connect(writer.path, readonly=True)
    orphans = conn.execute("SELECT count(*) FROM segments WHERE tpk NOT IN "
                           "(SELECT pk FROM traces)").fetchone()[0]
    assert orphans == 0
    assert conn.execute("SELECT count(*) FROM annotations a JOIN traces t ON t.pk = a.tpk "
                        "WHERE a.val != CAST(substr(t.trace_id, 12) AS INTEGER)"
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM annotations WHERE tpk NOT IN "
                        "(SELECT pk FROM traces)").fetchone()[0] == 0
    for trace_id, documents, stored in conn.execute(
            "SELECT trace_id, documents, (SELECT count(*) FROM segments WHERE tpk = t.pk) "
            "FROM traces t"):
        assert documents == stored, trace_id
    assert writer.failed_commits == 0
    writer.close()


def test_a_failed_commit_is_rolled_back_and_later_batches_still_line_up(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))

    def doc(seg: int) -> bytes:
        return orjson.dumps({"name": "web", "id": f"{seg:016x}", "start_time": 1.0 + seg,
                             "trace_id": "1-5f000000-00000000000000000000000a",
                             "end_time": 2.0 + seg, "annotations": {"n": seg}})

    real = writer._segments.execute
    calls = []

    def failing_once(conn, params):
        calls.append(1)
        if len(calls) == 1:  # after the trace row went in: the ROLLBACK must take it out
            raise sqlite3.OperationalError("disk I/O error")
        real(conn, params)

    writer._segments.execute = failing_once
    with pytest.raises(sqlite3.OperationalError):
        writer.write([doc(1)])
    assert writer.failed_commits == 1
    assert writer.write([doc(1), doc(2)]) == []
    assert writer.write([doc(3)]) == []
    conn = schema.connect(writer.path, readonly=True)
    assert conn.execute("SELECT count(*), sum(documents) FROM traces").fetchone() == (1, 3)
    assert conn.execute("SELECT count(*) FROM segments WHERE tpk = "
                        "(SELECT pk FROM traces)").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM annotations WHERE tpk = "
                        "(SELECT pk FROM traces)").fetchone()[0] == 3
    writer.close()


def test_a_reopened_store_finds_the_traces_it_already_has(tmp_path):
    now = time.time()  # within the default retention

    def doc(seg: int) -> bytes:
        return orjson.dumps({"name": "web", "id": f"{seg:016x}", "start_time": now + seg,
                             "end_time": now + seg + 1, "parent_id": "a" * 16 if seg else None,
                             "trace_id": f"1-{int(now):08x}-00000000000000000000000a"})

    first = StoreWriter(str(tmp_path / "t.db"))
    assert first.write([doc(0)]) == []
    first.close()
    second = StoreWriter(str(tmp_path / "t.db"))
    assert second.write([doc(1)]) == []
    second.close()
    conn = schema.connect(str(tmp_path / "t.db"), readonly=True)
    assert conn.execute("SELECT count(*), max(documents) FROM traces").fetchone() == (1, 2)
    assert conn.execute("SELECT count(DISTINCT tpk) FROM segments").fetchone() == (1,)


def test_a_version_3_store_is_migrated(tmp_path):
    path = str(tmp_path / "v3.db")
    writer = StoreWriter(path)
    now = time.time()
    docs = [orjson.dumps({"name": "web", "id": f"{i:016x}", "start_time": now, "end_time": now + 1,
                          "trace_id": f"1-{int(now):08x}-{i:024x}", "annotations": {"n": i}})
            for i in range(3)]
    assert writer.write(docs) == []
    writer.close()
    old = sqlite3.connect(path)  # as version 3 had it: no buckets
    old.executescript("""
        CREATE TABLE a3 (key TEXT NOT NULL, typ TEXT NOT NULL, val NOT NULL,
                         tpk INTEGER NOT NULL, PRIMARY KEY (key, typ, val, tpk)) WITHOUT ROWID;
        INSERT INTO a3 SELECT key, typ, val, tpk FROM annotations;
        DROP TABLE annotations;
        ALTER TABLE a3 RENAME TO annotations;
        PRAGMA user_version=3;
    """)
    old.close()
    conn = schema.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    assert sorted(conn.execute("SELECT bucket, key, typ, val FROM annotations")) == [
        (0, "n", "n", 0.0), (0, "n", "n", 1.0), (0, "n", "n", 2.0)]
    found = queries.trace_summaries(conn, now - 10, now + 10, "annotation.n = 1")
    assert [s["Id"] for s in found["TraceSummaries"]] == [f"1-{int(now):08x}-{1:024x}"]


def test_annotation_filters_search_every_bucket(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "BUCKET_BITS", 1)  # two traces a bucket
    clock = Clock(5000.0)
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1), clock=clock)
    for i in range(10):
        writer.write([doc(i, 1000.0 + 100 * i, annotations={"k": "x", "i": i})])
    conn = schema.connect(writer.path, readonly=True)
    assert conn.execute("SELECT count(DISTINCT bucket) FROM annotations").fetchone() == (6,)
    found = queries.trace_summaries(conn, 0, 10_000, 'annotation.k = "x"', page_size=100)
    assert len(found["TraceSummaries"]) == 10
    found = queries.trace_summaries(conn, 0, 10_000, "annotation.i >= 7", page_size=100)
    assert len(found["TraceSummaries"]) == 3
    clock.now = 1000.0 + 3600 + 450  # traces 0-4 are past the hour
    assert writer.apply_retention() == 5
    assert conn.execute("SELECT count(*) FROM annotations").fetchone() == (10,)
    found = queries.trace_summaries(conn, 0, 10_000, 'annotation.k = "x"', page_size=100)
    assert len(found["TraceSummaries"]) == 5
    writer.close()


@pytest.mark.parametrize("in_helper", [False, True], ids=["in-process", "parse-helper"])
def test_a_document_the_parser_chokes_on_fails_alone(tmp_path, monkeypatch, in_helper):
    if in_helper:
        monkeypatch.setattr(parse_helper, "MIN_BATCH", 1)
    writer = StoreWriter(str(tmp_path / "t.db"))
    deep = (b'{"id":"aaaaaaaaaaaaaaaa","trace_id":"1-5f000000-000000000000000000000009",'
            b'"name":"n","start_time":1,"end_time":2,"x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    huge_status = doc(2, 1000.0, http={"response": {"status": 2**63}})
    rejected = writer.write([doc(1, 1000.0), deep, huge_status])
    assert [(r.id, r.code) for r in rejected] == [("", "InvalidSegment")]
    assert writer.write([doc(3, 1000.0)]) == []  # the writer carries on
    conn = schema.connect(writer.path, readonly=True)
    assert conn.execute("SELECT count(*) FROM segments").fetchone() == (3,)
    assert conn.execute("SELECT http_status FROM traces WHERE trace_id LIKE '%2'").fetchone() == (
        None,)
    writer.close()


def test_retention_removes_every_value_a_trace_had(tmp_path):
    clock = Clock(1000.0)
    writer = StoreWriter(str(tmp_path / "t.db"), Retention(hours=1), clock=clock)
    trace = "1-5f000000-000000000000000000000001"
    for seg, value in enumerate([1, 2]):  # the trace row's JSON keeps only the last value
        writer.write([orjson.dumps({"name": "a", "id": f"{seg:016x}", "trace_id": trace,
                                    "start_time": 1000.0, "end_time": 1001.0,
                                    "annotations": {"k": value}})])
    clock.now = 1000.0 + 7200
    assert writer.apply_retention() == 1
    conn = schema.connect(writer.path, readonly=True)
    assert conn.execute("SELECT count(*) FROM annotations").fetchone() == (0,)
    writer.close()


def test_a_trace_from_a_clock_ahead_keeps_its_key_across_a_restart(tmp_path):
    now = time.time()
    future = "1-ffffffff-000000000000000000000001"

    def seg(n: int) -> bytes:
        return orjson.dumps({"name": "a", "id": f"{n:016x}", "trace_id": future,
                             "start_time": now, "end_time": now + 1})

    first = StoreWriter(str(tmp_path / "t.db"))
    assert first.write([seg(1)]) == []
    first.close()
    second = StoreWriter(str(tmp_path / "t.db"))
    assert second._keys.horizon <= int(now) + 1  # live traffic still needs no look-up
    assert second.write([seg(2)]) == []
    second.close()
    conn = schema.connect(str(tmp_path / "t.db"), readonly=True)
    assert conn.execute("SELECT count(*), max(documents) FROM traces").fetchone() == (1, 2)
    assert conn.execute("SELECT count(DISTINCT tpk) FROM segments").fetchone() == (1,)


def test_a_version_4_store_gets_own_and_root_flags(tmp_path):
    path = str(tmp_path / "v4.db")
    writer = StoreWriter(path)
    now = time.time()
    tid = f"1-{int(now):08x}-{7:024x}"
    root = {"name": "web", "id": "a" * 16, "trace_id": tid, "start_time": now,
            "end_time": now + 1, "http": {"request": {"method": "GET", "url": "http://w/"},
                                          "response": {"status": 200}},
            "subsegments": [{"name": "S3", "id": "b" * 16, "start_time": now,
                             "end_time": now + 0.5, "namespace": "aws", "fault": True}]}
    child = {"name": "api", "id": "c" * 16, "trace_id": tid, "parent_id": "d" * 16,
             "start_time": now, "end_time": now + 0.2, "error": True,
             "http": {"request": {"method": "POST", "url": "http://api/"},
                      "response": {"status": 404}}}
    assert writer.write([orjson.dumps(child), orjson.dumps(root)]) == []
    writer.close()
    old = sqlite3.connect(path)  # as version 4 had it: flags of anywhere, HTTP of any document
    old.executescript("""
        UPDATE segments SET fault = 1 WHERE name = 'web';
        UPDATE traces SET error = 1, fault = 1, http_method = 'POST', http_url = 'http://api/',
                          http_status = 404;
        PRAGMA user_version=4;
    """)
    old.close()
    conn = schema.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    assert sorted(conn.execute("SELECT name, error, fault, throttle FROM segments")) == [
        ("api", 1, 0, 0), ("web", 0, 0, 0)]
    assert conn.execute("SELECT error, fault, http_method, http_url, http_status "
                        "FROM traces").fetchone() == (0, 0, "GET", "http://w/", 200)
    for expression, found in (("fault", []), ("ok", [tid]), ('http.method = "POST"', []),
                              ('service("web") { fault }', [])):
        answer = queries.trace_summaries(conn, now - 10, now + 10, expression)
        assert [s["Id"] for s in answer["TraceSummaries"]] == found, expression


@pytest.mark.parametrize("odd", [5, {"id": "x"}, [None], "text", [5, None, "s"], None])
def test_merge_survives_subsegments_of_any_shape(odd):
    segment = {"id": "a" * 16, "trace_id": "1-5f000000-" + "1" * 24, "start_time": 1.0,
               "subsegments": odd}
    in_progress = {"id": "b" * 16, "parent_id": "a" * 16, "start_time": 2.0, "subsegments": odd,
                   "in_progress": True}
    complete = {"id": "b" * 16, "parent_id": "a" * 16, "start_time": 2.0, "end_time": 3.0,
                "subsegments": odd}
    odd_parent = {"id": "c" * 16, "parent_id": ["a" * 16], "start_time": 2.0}
    merged, orphans = merge([segment], [in_progress, complete, odd_parent])
    assert merged == [segment]
    assert orphans == [odd_parent]
    (attached,) = [s for s in segment["subsegments"] if isinstance(s, dict) and
                   s.get("id") == "b" * 16]
    assert attached["end_time"] == 3.0
