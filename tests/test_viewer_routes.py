"""The viewer's server side without a browser: the service map's layered layout (grandalf), the
response-time distribution of a filter, and the routes' answers (CSP, /trace/<id> redirect,
errors in the API's JSON shape)."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from xrayd.server import viewer_layout
from xrayd.server.threaded import Request
from xrayd.server.viewer_routes import distribution, routes, sorted_summaries
from xrayd.server.xray_api import StoreReader
from xrayd.store import schema
from xrayd.store.filters import FilterError
from xrayd.store.writer import StoreWriter


def overlaps(a: dict, b: dict) -> bool:
    return (abs(a["x"] - b["x"]) * 2 < a["w"] + b["w"]
            and abs(a["y"] - b["y"]) * 2 < a["h"] + b["h"])


def check_drawing(sizes, edges) -> dict:
    drawing = viewer_layout.layout(sizes, edges)
    boxes = drawing["nodes"]
    assert set(boxes) == set(sizes)
    names = sorted(boxes)
    assert not [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                if overlaps(boxes[a], boxes[b])]
    for box in boxes.values():
        assert box["x"] - box["w"] / 2 >= 0 and box["x"] + box["w"] / 2 <= drawing["width"]
        assert box["y"] - box["h"] / 2 >= 0 and box["y"] + box["h"] / 2 <= drawing["height"]
    for route in drawing["edges"]:
        start, end = boxes[route["from"]], boxes[route["to"]]
        for point, box in ((route["points"][0], start), (route["points"][-1], end)):
            # on the box's border
            on_x = abs(abs(point[0] - box["x"]) - box["w"] / 2) < 0.5
            on_y = abs(abs(point[1] - box["y"]) - box["h"] / 2) < 0.5
            assert on_x or on_y, (route, box)
    return drawing


def test_two_roots_are_layered_left_to_right():
    sizes = {n: (90 + 7 * len(n), 50) for n in
             ["client", "web", "batch", "orders", "payments", "reports", "db"]}
    edges = [("client", "web"), ("client", "batch"), ("web", "orders"), ("batch", "orders"),
             ("batch", "reports"), ("orders", "payments"), ("orders", "db"),
             ("payments", "db")]
    boxes = check_drawing(sizes, edges)["nodes"]
    for a, b in edges:
        assert boxes[a]["x"] < boxes[b]["x"], (a, b)


def test_cycles_self_calls_and_unconnected_parts():
    sizes = {n: (120, 40) for n in "abcdefg"}
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "d"), ("e", "f"), ("a", "b")]
    drawing = check_drawing(sizes, edges)
    assert len(drawing["edges"]) == 4  # the self call and the duplicate are not drawn


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_never_overlap(seed):
    rng = random.Random(seed)
    count = rng.randint(2, 40)
    sizes = {f"n{i}": (rng.randint(40, 260), rng.randint(30, 70)) for i in range(count)}
    edges = [(f"n{rng.randrange(count)}", f"n{rng.randrange(count)}")
             for _ in range(rng.randint(0, count * 2))]
    check_drawing(sizes, edges)


@pytest.mark.parametrize("body", [
    [], {"nodes": 1}, {"nodes": [{"id": 3}]}, {"nodes": [{"id": "a", "w": "wide", "h": 3}]},
    {"nodes": [{"id": "a", "w": 1, "h": 1}], "edges": [{"from": "a", "to": "zz"}]},
    {"nodes": [{"id": str(i), "w": 1, "h": 1} for i in range(viewer_layout.MAX_NODES + 1)]},
])
def test_bad_layout_requests_are_refused(body):
    with pytest.raises(viewer_layout.LayoutError):
        viewer_layout.parse(body)


@pytest.fixture
def store(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    now = time.time()
    docs = []
    for i in range(20):
        doc = {"name": "slow" if i >= 15 else "fast", "id": f"{i:016x}",
               "trace_id": f"1-{int(now):08x}-{i:024x}", "start_time": now - 1,
               "end_time": now - 1 + (0.01, 0.07, 0.12, 0.2)[i // 5]}
        docs.append(orjson.dumps(doc))
    docs.append(orjson.dumps({"name": "open", "id": "f" * 16, "in_progress": True,
                              "trace_id": f"1-{int(now):08x}-{'f' * 24}", "start_time": now}))
    assert writer.write(docs) == []
    yield writer, now
    writer.close()


def test_distribution_counts_response_times_of_the_filter(store):
    writer, now = store
    conn = schema.connect(writer.path, readonly=True)
    try:
        everything = distribution(conn, now - 60, now + 60, None, bins=4)
        assert everything["total"] == 20  # the trace in progress has no response time
        assert [b["count"] for b in everything["bins"]] == [5, 5, 5, 5]
        assert everything["bins"][-1]["to"] == pytest.approx(0.2)
        slow = distribution(conn, now - 60, now + 60, 'service("slow")', bins=5)
        assert slow["total"] == 5 and slow["max"] == pytest.approx(0.2)
        ranged = distribution(conn, now - 60, now + 60, "responsetime >= 0.05 AND "
                              "responsetime <= 0.1", bins=5)
        assert ranged["total"] == 5
        with pytest.raises(FilterError):
            distribution(conn, now - 60, now + 60, "annotation.x = ")
    finally:
        conn.close()


def get(handle, target: str, method: str = "GET", body: bytes = b""):
    return handle(Request(method, target, [("Host", "127.0.0.1")], body))


def test_routes_answer_with_csp_redirects_and_json_errors(store):
    writer, now = store
    reader = StoreReader(writer.path)
    try:
        handle = routes(reader, {"store": writer.path})
        page = get(handle, "/")
        headers = dict(page.headers)
        assert page.status == 200 and b'<script type="module" src="/viewer/viewer.js">' in page.body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert b"<script>" not in page.body  # nothing inline for the policy to forbid
        script = get(handle, "/viewer/viewer.js")
        assert script.content_type.startswith("text/javascript")
        assert "Content-Security-Policy" in dict(script.headers)
        trace = get(handle, "/trace/1-5f84c7a1-3c5fb4c2a3e4a0d4a1b2c3d4")
        assert trace.status == 302
        assert dict(trace.headers)["Location"] == "/#/trace/1-5f84c7a1-3c5fb4c2a3e4a0d4a1b2c3d4"
        assert get(handle, "/trace/<script>") is None
        assert get(handle, "/viewer/../viewer_routes.py") is None
        bad = get(handle, f"/api/distribution?start={now - 60}&end={now}&filter=annotation.x%20=")
        assert bad.status == 400
        assert orjson.loads(bad.body)["__type"] == "InvalidRequestException"
        assert get(handle, "/api/distribution?start=x&end=1").status == 400
        good = get(handle, f"/api/distribution?start={now - 60}&end={now + 60}")
        assert orjson.loads(good.body)["total"] == 20
        layout = get(handle, "/api/layout", "POST", orjson.dumps(
            {"nodes": [{"id": "a", "w": 80, "h": 30}, {"id": "b", "w": 80, "h": 30}],
             "edges": [{"from": "a", "to": "b"}]}))
        assert set(orjson.loads(layout.body)["nodes"]) == {"a", "b"}
        assert get(handle, "/api/layout", "POST", b"{not json").status == 400
        stats = orjson.loads(get(handle, "/api/stats").body)
        assert stats["traces"] == 21 and stats["rejected_by_code"] == {}
    finally:
        reader.close()


def test_sorted_pages_cover_the_whole_query(store):
    """Sorting by response time or duration orders every trace of the query, page by page,
    with the summaries GetTraceSummaries gives (in-progress traces last)."""
    writer, now = store
    conn = schema.connect(writer.path, readonly=True)
    try:
        first = sorted_summaries(conn, now - 60, now + 60, None, "response", False, page=8)
        second = sorted_summaries(conn, now - 60, now + 60, None, "response", False,
                                  offset=first["NextOffset"], page=8)
        last = sorted_summaries(conn, now - 60, now + 60, None, "response", False,
                                offset=second["NextOffset"], page=8)
        assert "NextOffset" not in last and first["TracesProcessedCount"] == 21
        rows = [*first["TraceSummaries"], *second["TraceSummaries"], *last["TraceSummaries"]]
        assert len(rows) == 21 and rows[-1]["Id"].endswith("f" * 24)  # in progress: last
        times = [r["ResponseTime"] for r in rows[:-1]]
        assert times == sorted(times) and times[0] < times[-1]
        slow = sorted_summaries(conn, now - 60, now + 60, 'service("slow")', "duration", True)
        assert [r["Duration"] for r in slow["TraceSummaries"]] == pytest.approx([0.2] * 5)
        newest = sorted_summaries(conn, now - 60, now + 60, None, "start", True, page=1)
        assert newest["TraceSummaries"][0]["Id"].endswith("f" * 24)
    finally:
        conn.close()
    reader = StoreReader(writer.path)
    try:
        handle = routes(reader, {})
        good = get(handle, f"/api/sorted?start={now - 60}&end={now + 60}&sort=response:desc")
        answer = orjson.loads(good.body)
        assert answer["TraceSummaries"][0]["ResponseTime"] == pytest.approx(0.2)
        for query in ("sort=name:asc", "sort=response", "sort=response:asc&offset=-1",
                      "sort=response:asc&filter=annotation.x%20="):
            bad = get(handle, f"/api/sorted?start={now - 60}&end={now + 60}&{query}")
            assert bad.status == 400, query
            assert orjson.loads(bad.body)["__type"] == "InvalidRequestException"
    finally:
        reader.close()
