"""The service graph of traces in a real store file, for the shapes the API tests do not send:
subsegments sent as their own documents, segments still in progress, parents inside and outside
the trace."""

from __future__ import annotations

import orjson
import pytest

from xrayd.store import graph_rows, schema
from xrayd.store.writer import StoreWriter

TRACE = "1-5f000000-0123456789abcdef01234567"
T0 = 1_600_000_000.0


def doc(**fields) -> bytes:
    return orjson.dumps({"trace_id": TRACE, **fields})


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "t.db")
    writer = StoreWriter(path)
    conn = schema.connect(path, readonly=True)

    def services(*docs: bytes) -> dict[str, dict]:
        assert writer.write(list(docs)) == []
        found = graph_rows.build_between(conn, T0 - 10, T0 + 10)
        named = {s["Name"]: s for s in found}
        refs = {s["ReferenceId"]: s["Name"] for s in found}
        for s in found:
            s["_to"] = {refs[e["ReferenceId"]]: e["SummaryStatistics"] for e in s["Edges"]}
        return named

    yield services
    conn.close()
    writer.close()


def test_a_call_sent_as_its_own_subsegment_document_links_caller_and_callee(store):
    nodes = store(
        doc(id="a000000000000001", name="web", start_time=T0, end_time=T0 + 1),
        doc(id="c000000000000001", type="subsegment", parent_id="a000000000000001",
            name="api", namespace="remote", start_time=T0 + 0.1, end_time=T0 + 0.6,
            fault=True),
        doc(id="b000000000000001", parent_id="c000000000000001", name="api",
            start_time=T0 + 0.2, end_time=T0 + 0.5),
    )
    assert nodes["api"]["Root"] is False and nodes["web"]["Root"] is True
    assert set(nodes["web"]["_to"]) == {"api"}
    # the edge is the calling subsegment's view (its fault, its 0.5 s); api itself did fine
    assert nodes["web"]["_to"]["api"]["FaultStatistics"]["TotalCount"] == 1
    assert nodes["web"]["_to"]["api"]["TotalResponseTime"] == pytest.approx(0.5)
    assert nodes["api"]["SummaryStatistics"]["FaultStatistics"]["TotalCount"] == 0
    assert set(nodes["client"]["_to"]) == {"web"}


def test_a_segment_under_a_plain_subsegment_of_its_caller_is_not_a_root(store):
    nodes = store(
        doc(id="a000000000000002", name="web", start_time=T0, end_time=T0 + 1),
        doc(id="d000000000000002", type="subsegment", parent_id="a000000000000002",
            name="work", start_time=T0 + 0.1, end_time=T0 + 0.9),
        doc(id="b000000000000002", parent_id="d000000000000002", name="jobs",
            start_time=T0 + 0.2, end_time=T0 + 0.4),
    )
    assert nodes["jobs"]["Root"] is False
    assert set(nodes["web"]["_to"]) == {"jobs"}
    assert set(nodes["client"]["_to"]) == {"web"}


def test_in_progress_segments_are_seen_and_not_counted(store):
    nodes = store(
        doc(id="a000000000000003", name="web", start_time=T0, in_progress=True,
            subsegments=[{"id": "c000000000000003", "name": "DynamoDB", "namespace": "aws",
                          "start_time": T0 + 0.1, "in_progress": True}]),
    )
    web = nodes["web"]
    assert web["SummaryStatistics"]["TotalCount"] == 0
    assert web["ResponseTimeHistogram"] == [] and web["DurationHistogram"] == []
    assert web["StartTime"] == T0
    assert nodes["DynamoDB"]["SummaryStatistics"]["TotalCount"] == 0
    assert nodes["client"]["_to"]["web"]["TotalCount"] == 0


def test_a_segment_without_origin_has_no_type(store):
    nodes = store(doc(id="a000000000000004", name="plain", start_time=T0, end_time=T0 + 1))
    assert "Type" not in nodes["plain"]
    assert nodes["plain"]["State"] == "active"
