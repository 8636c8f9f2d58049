"""Fuzzing the filter language and the trace model: any text parses or fails with FilterError;
what parses compiles to SQL that SQLite accepts and evaluates on any trace; a trace of any
shape that the store accepts gives a summary. FUZZ_EXAMPLES scales the runs (docs/fuzzing.md)."""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xrayd.store import schema
from xrayd.store.filters import FilterError, parse
from xrayd.store.summary import Trace

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0"))
PIECES = [
    "service", "edge", "id", "name:", "type:", "account.id:", "annotation.a", "annotation[b]",
    "rootcause.fault.service", "rootcause.error.entity", "rootcause.responsetime.entity",
    "rootcause.fault.exception", "rootcause.json", "group.name", "ok", "error", "fault",
    "throttle", "partial", "inferred", "root", "remote", "first", "last", "index", "coverage",
    "responsetime", "duration", "http.status", "http.url", "http.useragent", "user", "name",
    "type", "message", "AND", "OR", "NOT", "and", "&&", "||", "!", "=", "!=", "<", ">=",
    "CONTAINS", "BEGINSWITH", "(", ")", "{", "}", "[", "]", ",", '"x"', '"AWS::Lambda"', '""',
    "1", "-2.5", "1e3", "true", "false", "#", "\\", "'",
]


def examples(default: int) -> settings:
    return settings(max_examples=SCALE or default, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


ENTITY = st.deferred(lambda: st.fixed_dictionaries({
    "name": st.sampled_from(["a", "b", "A", ""]),
    "id": st.sampled_from(["1" * 16, "2" * 16, "3" * 16, "4" * 16]),
}, optional={
    "namespace": st.sampled_from(["aws", "remote", 3, None]),
    "fault": st.sampled_from([True, False, 1, "yes"]), "error": st.booleans(),
    "throttle": st.booleans(), "start_time": st.sampled_from([0, 1.5, "x", None]),
    "end_time": st.sampled_from([1, 2.5, None, []]), "in_progress": st.booleans(),
    "parent_id": st.sampled_from(["1" * 16, "3" * 16, None, 5]),
    "cause": st.one_of(st.text(max_size=3), st.fixed_dictionaries({"exceptions": st.one_of(
        st.lists(st.one_of(st.none(), st.fixed_dictionaries(
            {"type": st.text(max_size=3), "message": st.integers()})), max_size=2),
        st.integers())})),
    "http": st.one_of(st.none(), st.fixed_dictionaries({"request": st.one_of(
        st.integers(), st.fixed_dictionaries({"url": st.one_of(st.text(max_size=4),
                                                                st.integers())}))})),
    "annotations": st.dictionaries(st.sampled_from(["a", "b"]), st.one_of(
        st.integers(-3, 3), st.text(max_size=2), st.booleans(), st.none(), st.lists(st.none()))),
    "aws": st.one_of(st.integers(), st.fixed_dictionaries({}, optional={
        "table_name": st.text(max_size=2), "account_id": st.integers(),
        "ec2": st.one_of(st.text(), st.fixed_dictionaries({"instance_id": st.integers()}))})),
    "user": st.one_of(st.text(max_size=2), st.integers()),
    "subsegments": st.one_of(st.integers(), st.lists(st.one_of(ENTITY, st.none()),
                                                     max_size=2)),
}))


CONN = schema.connect(":memory:")


@examples(300)
@given(st.lists(st.sampled_from(PIECES), max_size=25), st.lists(ENTITY, max_size=4),
       st.lists(ENTITY, max_size=2))
def test_any_expression_parses_or_fails_clearly_and_runs(pieces, segments, orphans):
    conn = CONN
    text = " ".join(pieces)
    try:
        node = parse(text, {"g": "fault", "h": 'group.name = "h"'}.get)
    except FilterError:
        return
    sql = node.sql()
    conn.execute(f"EXPLAIN SELECT ({sql.sure}) FROM traces t WHERE {sql.maybe}",
                 (*sql.sure_params, *sql.maybe_params))
    node.match(Trace("1-00000000-" + "0" * 24, segments, orphans, 1))


@examples(150)
@given(st.lists(ENTITY, max_size=5), st.lists(ENTITY, max_size=3))
def test_a_trace_of_any_shape_has_a_summary(segments, orphans):
    summary = Trace("1-00000000-" + "0" * 24, segments, orphans, 2).summary(0.0)
    orjson.dumps(summary)
    assert summary["Revision"] == 2
