"""The service graph kept by settled minute (store/graph_cache.py) answers as the graph read
afresh from the store does, and forgets a minute when its traces change."""

from __future__ import annotations

import random

import orjson
import pytest

from xrayd.store import graph, graph_rows, schema
from xrayd.store.graph_cache import GraphCache
from xrayd.store.writer import Retention, StoreWriter

T0 = 1_600_000_020.0  # the start of a minute


def trace(rng: random.Random, start: float, fault: bool = False) -> list[bytes]:
    trace_id = f"1-{int(start):08x}-{rng.getrandbits(96):024x}"
    call = {"id": f"{rng.getrandbits(64):016x}", "name": "api", "namespace": "remote",
            "start_time": start + 0.01, "end_time": start + 0.01 + rng.random() / 10}
    web = {"id": f"{rng.getrandbits(64):016x}", "trace_id": trace_id, "name": "web",
           "start_time": start, "end_time": start + 0.2, "subsegments": [
               call, {"id": f"{rng.getrandbits(64):016x}", "name": "S3", "namespace": "aws",
                      "start_time": start + 0.15, "end_time": start + 0.18, "fault": fault}]}
    api = {"id": f"{rng.getrandbits(64):016x}", "trace_id": trace_id, "name": "api",
           "parent_id": call["id"], "start_time": start + 0.02, "end_time": start + 0.05,
           "origin": "AWS::ECS::Container"}
    return [orjson.dumps(web), orjson.dumps(api)]


def normal(services: list[dict]) -> dict:
    """Services by name, edges by target name (reference ids differ with merge order)."""
    refs = {s["ReferenceId"]: s["Name"] for s in services}
    found = {}
    for s in services:
        s = dict(s)
        s.pop("ReferenceId")
        s["Edges"] = {refs[e["ReferenceId"]]: {k: v for k, v in e.items() if k != "ReferenceId"}
                      for e in s["Edges"]}
        found[s["Name"]] = s
    return found


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "t.db")
    writer = StoreWriter(path, retention=Retention(hours=1e9))
    conn = schema.connect(path, readonly=True)
    yield writer, conn
    conn.close()
    writer.close()


def test_kept_minutes_answer_as_the_store_does(store):
    writer, conn = store
    rng = random.Random(3)
    for i in range(300):  # five minutes of traces, 1 a second
        writer.write(trace(rng, T0 + i, fault=i % 7 == 0))
    cache = GraphCache(clock=lambda: T0 + 3600)
    start, end = T0 + 5.5, T0 + 290.25  # partial minutes at both ends
    fresh = normal(graph_rows.build_between(conn, start, end))
    first = cache.build(conn, start, end)
    assert len(cache) == 3  # the whole minutes inside the range
    assert normal(first.services()) == fresh
    again = cache.build(conn, start, end)
    assert normal(again.services()) == fresh
    # a period series from kept minutes equals one from the store
    for period in (60, 120):
        kept = again.nodes["web", ""].requests.by_period(period)
        read = graph_rows.fill(graph.Graph(), graph_rows.select(conn, start, end)).nodes[
            "web", ""].requests.by_period(period)
        assert {k: v.shape() for k, v in kept.items()} == {k: v.shape() for k, v in read.items()}


def test_a_new_document_of_a_kept_minute_is_seen(store):
    writer, conn = store
    rng = random.Random(4)
    docs = [trace(rng, T0 + 60 + i) for i in range(30)]
    for pair in docs:
        writer.write(pair[:1])  # web only: api's calls look uninstrumented
    cache = GraphCache(clock=lambda: T0 + 3600)
    before = normal(cache.build(conn, T0, T0 + 300).services())
    assert before["api"]["Type"] == "remote"
    writer.write([pair[1] for pair in docs])  # api's segments arrive late
    after = normal(cache.build(conn, T0, T0 + 300).services())
    assert after["api"]["Type"] == "AWS::ECS::Container"
    assert after == normal(graph_rows.build_between(conn, T0, T0 + 300))


def test_recent_minutes_are_read_afresh_and_not_kept(store):
    writer, conn = store
    rng = random.Random(5)
    for i in range(120):
        writer.write(trace(rng, T0 + i))
    cache = GraphCache(clock=lambda: T0 + 100, settle=300)
    answer = cache.build(conn, T0 - 20, T0 + 200)
    assert len(cache) == 0
    assert normal(answer.services()) == normal(graph_rows.build_between(conn, T0 - 20, T0 + 200))


def test_minutes_emptied_by_retention_are_forgotten(store):
    writer, conn = store
    rng = random.Random(6)
    for i in range(180):
        writer.write(trace(rng, T0 + i))
    cache = GraphCache(clock=lambda: T0 + 3600)
    cache.build(conn, T0 - 20, T0 + 200)
    assert len(cache) == 3
    oldest = conn.execute("SELECT min(pk) FROM traces").fetchone()[0]
    writer.conn.execute("DELETE FROM segments WHERE tpk < ?", (oldest + 90,))
    writer.conn.execute("DELETE FROM traces WHERE pk < ?", (oldest + 90,))
    answer = cache.build(conn, T0 - 20, T0 + 200)
    assert normal(answer.services()) == normal(graph_rows.build_between(conn, T0 - 20, T0 + 200))
    assert answer.nodes["web", ""].requests.stats().total == 90


def test_a_groups_graph_is_kept_by_minute_apart_from_the_plain_graph(tmp_path):
    """GetServiceGraph with a GroupName through the API object: the group's settled minutes are
    kept under its filter, answer as the group's traces read afresh do, and an UpdateGroup of
    the filter is seen at once."""
    from xrayd.sampling.engine import SamplingEngine
    from xrayd.server.xray_api import StoreReader, XRayApi

    path = str(tmp_path / "t.db")
    writer = StoreWriter(path, retention=Retention(hours=1e9))
    reader = StoreReader(path)
    api = XRayApi(writer, reader, SamplingEngine())
    api.graphs = GraphCache(clock=lambda: T0 + 3600)
    try:
        rng = random.Random(8)
        for i in range(240):
            writer.write(trace(rng, T0 + i, fault=i % 4 == 0))
        writer.flush()
        api.groups.create({"GroupName": "faults", "FilterExpression": 'service("S3") { fault }'})
        body = {"StartTime": T0, "EndTime": T0 + 240, "GroupName": "faults"}

        def web_total() -> int:
            services = api.get_service_graph(body)["Services"]
            return {s["Name"]: s["SummaryStatistics"]["TotalCount"] for s in services}["web"]

        assert web_total() == 60
        assert len(api.graphs) == 4  # the group's four minutes
        plain = api.get_service_graph({"StartTime": T0, "EndTime": T0 + 240})["Services"]
        assert {s["Name"]: s["SummaryStatistics"]["TotalCount"] for s in plain}["web"] == 240
        assert len(api.graphs) == 8
        assert web_total() == 60  # from kept minutes
        api.groups.update({"GroupName": "faults", "FilterExpression": "ok"})
        assert web_total() == 240  # the root segments are all OK
    finally:
        reader.close()
        api.groups.close()
        writer.close()
