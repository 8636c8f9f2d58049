"""Filter expressions: parsing (pure) and their meaning, checked against a real store."""

from __future__ import annotations

import re
import time

import orjson
import pytest

from xrayd.store import queries, schema
from xrayd.store.filters import MAX_EXPRESSION, FilterError, compile_filter, parse, tokenize
from xrayd.store.writer import StoreWriter


def test_tokens():
    kinds = [(t.kind, t.value) for t in tokenize('annotation.k >= -1.5 AND service("a \\"b\\"")')]
    assert kinds == [("ident", "annotation.k"), ("op", ">="), ("num", -1.5), ("ident", "AND"),
                     ("ident", "service"), ("op", "("), ("str", 'a "b"'), ("op", ")"),
                     ("end", None)]


@pytest.mark.parametrize("text", [
    "", "bogus", "annotation.k ==", "service(", "service(name", "responsetime > \"x\"",
    "error AND", "(fault", "annotation.bad-key = 1", "http.url CONTAINS 5",
    "annotation.k > true", "fault = maybe", "x" * 3000, "annotation.k = 1 ) ",
])
def test_bad_expressions(text):
    with pytest.raises(FilterError):
        parse(text)


def test_parameters_are_bound_not_inlined():
    sql, params = compile_filter("annotation.k = \"'; DROP TABLE traces; --\"")
    assert "DROP" not in sql and params == ["k", "s", "'; DROP TABLE traces; --"]


@pytest.fixture
def store(tmp_path):
    writer = StoreWriter(str(tmp_path / "t.db"))
    now = time.time()
    docs = []
    specs = [
        # name, annotations, http status, url, method, duration, flags, user
        ("web", {"user": "bob", "tier": 1, "vip": True}, 200, "http://a/cart", "GET", 0.1, {},
         "bob"),
        ("web", {"user": "alice", "tier": 2}, 500, "http://a/pay", "POST", 2.5,
         {"fault": True}, None),
        ("api", {"user": "bob", "tier": 3, "vip": False}, 429, "http://b/x", "GET", 0.7,
         {"error": True, "throttle": True}, "carol"),
        ("worker", {}, None, None, None, 1.2, {"error": True}, None),
    ]
    for i, (name, notes, status, url, method, duration, flags, user) in enumerate(specs):
        doc = {"name": name, "id": f"{i:016x}", "trace_id": f"1-{int(now):08x}-{i:024x}",
               "start_time": now - i, "end_time": now - i + duration, "annotations": notes,
               **flags}
        if status:
            doc["http"] = {"request": {"method": method, "url": url},
                           "response": {"status": status}}
        if user:
            doc["user"] = user
        docs.append(orjson.dumps(doc))
    assert writer.write(docs) == []
    conn = schema.connect(writer.path, readonly=True)
    yield conn, now
    conn.close()
    writer.close()


@pytest.mark.parametrize("expression, expected", [
    ('annotation.user = "bob"', {0, 2}),
    ('annotation.user != "bob"', {1}),
    ("annotation.tier > 1", {1, 2}),
    ("annotation.tier <= 1 OR annotation.tier >= 3", {0, 2}),
    ("annotation.vip", {0, 2}),  # the guide: "annotation is set"
    ("!annotation.vip", {1, 3}),
    ("annotation.vip = false", {2}),
    ("annotation[tier] = 2", {1}),
    ('annotation.user CONTAINS "li"', {1}),
    ('annotation.user BEGINSWITH "b"', {0, 2}),
    ('service("web")', {0, 1}),
    ('!service("web")', {2, 3}),
    ('service("web") && responsetime > 1', {1}),
    ("duration >= 1 AND duration < 2", {3}),
    ("error", {2, 3}),
    ("fault", {1}),
    ("throttle", {2}),
    ("ok", {0}),
    ("fault = false AND NOT error", {0}),
    ("http.status = 500", {1}),
    ("http.status >= 400", {1, 2}),
    ('http.url CONTAINS "/pa"', {1}),
    ('http.url ENDSWITH "cart" OR http.method = "POST"', {0, 1}),
    ('user = "carol"', {2}),
    ('(error OR fault) AND annotation.user = "bob"', {2}),
    ('name = "worker"', {3}),
    ("partial", set()),
])
def test_filters_select_the_right_traces(store, expression, expected):
    conn, now = store
    found = queries.trace_summaries(conn, now - 60, now + 60, expression)["TraceSummaries"]
    assert {int(s["Id"][-24:], 16) for s in found} == expected


@pytest.fixture
def guide_store(tmp_path):
    from test_xray_reference import corpus

    writer = StoreWriter(str(tmp_path / "guide.db"))
    assert writer.write([orjson.dumps(doc) for doc in corpus()]) == []
    conn = schema.connect(writer.path, readonly=True)
    yield conn
    conn.close()
    writer.close()


def test_sql_and_documents_agree_on_every_guide_example(guide_store):
    """The SQL (sure/maybe) and the evaluation on the documents give the same traces."""
    from test_xray_reference import EXAMPLES, NOW

    conn = guide_store
    rows = conn.execute("SELECT pk, trace_id, documents FROM traces").fetchall()
    models = [queries.trace_model(conn, pk, tid, docs) for pk, tid, docs in rows]
    for expression, _expected in EXAMPLES:
        node = parse(expression)
        by_documents = {m.id for m in models if node.match(m)}
        sql = node.sql()
        sure = {row[0] for row in conn.execute(
            f"SELECT trace_id FROM traces t WHERE {sql.sure}", sql.sure_params)}
        maybe = {row[0] for row in conn.execute(
            f"SELECT trace_id FROM traces t WHERE {sql.maybe}", sql.maybe_params)}
        assert sure <= by_documents <= maybe, expression
        found = queries.trace_summaries(conn, NOW - 60, NOW + 60, expression)["TraceSummaries"]
        assert {s["Id"] for s in found} == by_documents, expression


def test_group_references_go_through_the_resolver(guide_store):
    from test_xray_reference import NOW, TRACES

    groups = {"high_response_time": "responseTime > 3",
              "arn:aws:xray:us-east-1:000000000000:group/slow/1": "duration > 5",
              "loop": 'group.name = "loop"'}

    def find(expression):
        answer = queries.trace_summaries(guide_store, NOW - 60, NOW + 60, expression,
                                         groups=groups.get)
        return {s["Id"] for s in answer["TraceSummaries"]}

    # The guide's example: requests in the group (responseTime > 3) whose user is alice.
    assert find('group.name = "high_response_time" AND user = "alice"') == {TRACES["slow"]}
    assert find('group.arn = "arn:aws:xray:us-east-1:000000000000:group/slow/1"') == {
        TRACES["slow"], TRACES["async"]}
    assert TRACES["slow"] not in find('group.name != "high_response_time"')
    with pytest.raises(FilterError, match="No group 'nope'"):
        find('group.name = "nope"')
    with pytest.raises(FilterError, match="more than 4 deep"):
        find('group.name = "loop"')
    with pytest.raises(FilterError, match="groups are not available"):
        parse('group.name = "x"')


@pytest.mark.parametrize("text, message", [
    ("(" * 40 + "ok" + ")" * 40, "nested too deeply"),
    ("NOT " * 40 + "ok", "nested too deeply"),
    ("!" * 1000 + "ok", "nested too deeply"),
    ("root", "applies only in service()"),
    ("coverage > 1", "applies only in rootcause.responsetime.entity"),
    ('service("a") { annotation.x = 1 }', "cannot be used inside"),
    ("rootcause.responsetime.exception { name = \"x\" }", "no exceptions"),
    ("rootcause.fault.bogus", "Expected rootcause."),
    ("id(name: \"a\")", "not supported here"),
    ("http.status CONTAINS 5", "does not apply to the number keyword"),
])
def test_clear_errors(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        parse(text)


@pytest.mark.parametrize("text", [
    "ok " * 666, "ok||" * 499 + "ok", "!ok&&" * 399 + "ok", "annotation.a = 1 OR " * 99 + "ok",
    'service("a") { fault } ' * 90, "(" * 32 + "ok" + ")" * 32,
])
def test_the_longest_flat_expressions_run(store, text):
    """Within the length limit, chains of any length compile to SQL SQLite accepts (no
    "Expression tree is too large") and evaluate without deep recursion."""
    conn, now = store
    answer = queries.trace_summaries(conn, now - 60, now + 60, text[:MAX_EXPRESSION])
    assert answer["TracesProcessedCount"] == 4


def test_trace_keys_matching_for_a_groups_graph(guide_store):
    from test_xray_reference import NOW, TRACES

    conn = guide_store
    ids = dict(conn.execute("SELECT pk, trace_id FROM traces"))

    def keys(expression, **limits):
        return [ids[k] for k in queries.trace_keys_matching(conn, NOW - 60, NOW + 60,
                                                            expression, **limits)]

    assert set(keys("rootcause.fault.service { name = \"Auth\" } OR responsetime > 5")) == {
        TRACES["auth"], TRACES["slow"]}
    assert len(keys("ok", limit=3)) == 3
    # Two checked on their documents at most: root causes are not in SQL.
    assert len(keys("rootcause.responsetime.entity { coverage > 0 }", max_checked=2)) == 2
    with pytest.raises(FilterError):
        keys("service(")


def test_a_call_that_a_segment_continues_is_not_a_service(tmp_path):
    """X-Ray draws the downstream segment's node, not one for the call subsegment that led to
    it; an uncontinued call is an inferred node with the call's flags."""
    writer = StoreWriter(str(tmp_path / "t.db"))
    now = time.time()
    tid = f"1-{int(now):08x}-{1:024x}"
    front = {"name": "front", "id": "a" * 16, "trace_id": tid, "start_time": now,
             "end_time": now + 1, "subsegments": [
                 {"name": "backend.local", "id": "b" * 16, "namespace": "remote",
                  "start_time": now, "end_time": now + 0.5, "fault": True},
                 {"name": "Caf\u00c9", "id": "e" * 16, "namespace": "remote",
                  "start_time": now, "end_time": now + 0.5, "error": True}]}
    back = {"name": "backend", "id": "c" * 16, "trace_id": tid, "parent_id": "b" * 16,
            "start_time": now, "end_time": now + 0.4}
    assert writer.write([orjson.dumps(front), orjson.dumps(back)]) == []
    conn = schema.connect(writer.path, readonly=True)
    for expression, found in (('service("backend.local")', False),
                              ('service("backend.local") { fault }', False),
                              ('service("BACKEND")', True), ('service("backend") { fault }', False),
                              ('service("caf\u00c9") { error }', True),
                              ('service("CAF\u00e9")', False),  # only ASCII letters fold
                              ("service() { fault }", False), ("service() { error }", True)):
        node = parse(expression)
        assert node.sql().is_exact, expression
        answer = queries.trace_summaries(conn, now - 10, now + 10, expression)
        assert bool(answer["TraceSummaries"]) is found, expression
        model = queries.trace_model(conn, 1, tid, 2)
        assert node.match(model) is found, expression
    conn.close()
    writer.close()
