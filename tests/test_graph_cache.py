"""The service graph kept by settled minute (store/graph_cache.py) answers as the graph read
afresh from the store does, and forgets a minute when its traces change."""

from __future__ import annotations

import random
import threading

import orjson
import pytest

from xrayd.store import graph, graph_rows, schema
from xrayd.store.graph_cache import GraphCache, Warmer
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


class CountedStop(threading.Event):
    """A stop event that is set after ``waits`` waits (none of which sleeps)."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.waits = waits

    def wait(self, timeout: float | None = None) -> bool:
        self.waits -= 1
        if self.waits < 0:
            self.set()
        return self.is_set()


def test_the_warmer_reads_once_then_only_while_graphs_are_asked_for():
    now = [0.0]
    calls = []
    warmer = Warmer(lambda: calls.append(now[0]), delay=5, every=60, idle=3600,
                    clock=lambda: now[0])
    warmer.run(CountedStop(4))
    assert calls == [0.0]  # at start only: nobody asked for a graph
    warmer.asked()
    calls.clear()
    warmer.run(CountedStop(3))
    assert len(calls) == 3
    now[0] = 3601.0  # the last graph was asked for more than an hour ago
    calls.clear()
    warmer.run(CountedStop(3))
    assert calls == [3601.0]


def test_the_warmer_ends_when_the_reader_is_closed():
    def closed() -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    stop = CountedStop(100)
    Warmer(closed, delay=0).run(stop)
    assert stop.waits == 99  # returned after the first read


def test_a_warmed_cache_answers_the_first_graph_from_kept_minutes(tmp_path):
    from xrayd.sampling.engine import SamplingEngine
    from xrayd.server.xray_api import StoreReader, XRayApi

    path = str(tmp_path / "t.db")
    writer = StoreWriter(path, retention=Retention(hours=1e9))
    reader = StoreReader(path)
    api = XRayApi(writer, reader, SamplingEngine())
    api.graphs = GraphCache(clock=lambda: T0 + 3600 + 600)
    try:
        rng = random.Random(9)
        for i in range(3600, 3900):  # five minutes of traces, ten minutes before the clock
            writer.write(trace(rng, T0 + i))
        writer.flush()
        api.warm_graph()
        assert len(api.graphs) == 60  # the hour's whole minutes, empty ones too
        warmed = {m: id(g) for m, g in api.graphs._kept[None].items() if g.graph.nodes}
        assert len(warmed) == 5
        body = {"StartTime": T0 + 3600, "EndTime": T0 + 3600 + 600}
        services = api.get_service_graph(body)["Services"]
        assert {m: id(g) for m, g in api.graphs._kept[None].items() if g.graph.nodes} == warmed
        fresh = reader.run(graph_rows.build_between, T0 + 3600, T0 + 4200)
        assert normal(services) == normal(fresh)
    finally:
        reader.close()
        api.groups.close()
        writer.close()


def test_new_traces_are_added_to_kept_minutes_and_replaced_rows_seen(store):
    """New traces of a kept minute are added to it (it stays kept); an in-progress segment
    completed in place, or sent again in progress with a new call, drops its minute."""
    writer, conn = store
    rng = random.Random(10)
    for i in range(0, 120, 2):
        writer.write(trace(rng, T0 + i))
    trace_id = f"1-{int(T0):08x}-{rng.getrandbits(96):024x}"
    base = {"id": "00000000000000aa", "trace_id": trace_id, "name": "slow",
            "start_time": T0 + 30}
    writer.write([orjson.dumps({**base, "in_progress": True})])
    writer.flush()
    cache = GraphCache(clock=lambda: T0 + 3600)
    cache.build(conn, T0, T0 + 120)
    kept = dict(cache._kept[None])
    assert len(kept) == 2
    for i in range(1, 120, 2):  # more traces of both minutes, arriving late
        writer.write(trace(rng, T0 + i))
    writer.flush()
    answer = cache.build(conn, T0, T0 + 120)
    assert normal(answer.services()) == normal(graph_rows.build_between(conn, T0, T0 + 120))
    assert answer.nodes["web", ""].requests.stats().total == 120
    assert {m: id(k) for m, k in cache._kept[None].items()} == {m: id(k) for m, k in
                                                                  kept.items()}
    assert answer.nodes["slow", ""].requests.stats().total == 0  # in progress: not counted

    call = {"id": "00000000000000bb", "name": "S3", "namespace": "aws", "start_time": T0 + 31,
            "end_time": T0 + 32}
    writer.write([orjson.dumps({**base, "in_progress": True, "subsegments": [call]})])
    writer.flush()
    answer = cache.build(conn, T0, T0 + 120)
    assert ("slow", "S3") in {(node.name, answer_node.name) for node in answer.nodes.values()
                              for answer_node in answer.nodes.values()
                              if answer_node.ref in node.edges}
    writer.write([orjson.dumps({**base, "end_time": T0 + 40, "subsegments": [call]})])
    writer.flush()
    answer = cache.build(conn, T0, T0 + 120)
    assert answer.nodes["slow", ""].requests.stats().total == 1
    assert normal(answer.services()) == normal(graph_rows.build_between(conn, T0, T0 + 120))


def test_a_trace_moved_to_an_earlier_minute_leaves_its_kept_minute(store):
    """A downstream segment stored first starts the trace in one minute; its root, stored
    later, starts it in the minute before: both minutes are read again."""
    writer, conn = store
    rng = random.Random(11)
    writer.write(trace(rng, T0 - 300))  # the store's oldest minute is never kept
    web, api = trace(rng, T0 + 59.9)
    api_doc = orjson.loads(api)
    api_doc["start_time"] = T0 + 60.5  # in the next minute
    api_doc["end_time"] = T0 + 60.6
    writer.write([orjson.dumps(api_doc)])
    writer.flush()
    cache = GraphCache(clock=lambda: T0 + 3600)
    first = cache.build(conn, T0, T0 + 120)
    assert first.nodes["api", "AWS::ECS::Container"].root  # its parent not yet received
    writer.write([web])
    writer.flush()
    answer = cache.build(conn, T0, T0 + 120)
    assert normal(answer.services()) == normal(graph_rows.build_between(conn, T0, T0 + 120))
    assert answer.nodes["api", "AWS::ECS::Container"].requests.stats().total == 1
