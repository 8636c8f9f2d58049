"""A service graph from the store's rows: the segment rows of the traces asked for (indexed
columns, and a segment's own flags from its document when its row has one set), a trace at a
time. Roots: segments with no parent, or a parent that is not in the trace."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from xrayd.store.graph import CLIENT, OK, Graph, Node, outcome
from xrayd.store.summary import inferred_node

MAX_PARENT_HOPS = 64
CHUNK = 500

# A segment row as read: (tpk, id, parent_id, kind, name, origin, start, end, calls JSON,
# own flags, the trace's duration, the row's key, when it was received). The row's flags
# include its subsegments'; only when one is set are the segment's own read from its document
# (a JSON array [error, fault, throttle]).
COLUMNS = ("s.tpk, s.id, s.parent_id, s.kind, s.name, s.origin, s.start, s.end, s.calls, "
            "CASE WHEN s.kind = 'segment' AND (s.error OR s.fault OR s.throttle) "
            "THEN json_extract(CAST(s.doc AS TEXT), '$.error', '$.fault', '$.throttle') END, "
            "t.end - t.start, s.pk, s.received")


def _own(flags: str | None) -> int:
    if not flags:
        return OK
    try:
        error, fault, throttle = orjson.loads(flags)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return OK
    return outcome(error is True, fault is True, throttle is True)


def _callee(call: list) -> tuple[str, str]:
    """(name, type) of the node a call makes when no segment answers it (stored with the call;
    calls stored by earlier versions name the service only)."""
    if len(call) > 10:
        return call[9], call[10]
    return inferred_node(call[2], call[3], None, False)


def _add_single(graph: Graph, row: tuple) -> bool:
    """A trace of one segment document whose calls are all its own (the common case), without
    the id bookkeeping of ``add_trace``; False when the trace is not of that shape."""
    tpk, seg_id, _p, kind_, name, origin, start, end, calls, flags, duration, *_ = row
    if kind_ != "segment":
        return False
    parsed = orjson.loads(calls) if calls else ()
    for call in parsed:
        if call[1] != seg_id:
            return False
    node = graph.node(name, origin or "")
    if node.first is None:
        node.first = (tpk, seg_id)
    node.root = True
    kind = _own(flags)
    graph.request(node, start, end, kind, duration)
    graph.call(graph.node(*CLIENT, inferred=True), node, start, end, kind)
    for call in parsed:
        target = graph.node(*_callee(call), inferred=True)
        kind = outcome(call[6] == 1, call[7] == 1, call[8] == 1)
        graph.request(target, call[4], call[5], kind)
        graph.call(node, target, call[4], call[5], kind)
    return True


def add_trace(graph: Graph, rows: Sequence[tuple]) -> None:
    """Add one trace's segment rows to ``graph``."""
    if len(rows) == 1 and _add_single(graph, rows[0]):
        return
    owner: dict[str, Node] = {}
    parents: dict[str, str | None] = {}
    calls: dict[str, list] = {}
    segments = []
    for row in rows:
        if row[3] == "segment":
            node = owner[row[1]] = graph.node(row[4], row[5] or "")
            if node.first is None:
                node.first = (row[0], row[1])
            segments.append(row)
        else:
            parents[row[1]] = row[2]
        if row[8]:
            for call in orjson.loads(row[8]):
                calls[call[0]] = call

    def owner_of(entity_id: str | None) -> Node | None:
        for _ in range(MAX_PARENT_HOPS):
            if entity_id is None:
                return None
            found = owner.get(entity_id)
            if found is not None:
                return found
            call = calls.get(entity_id)
            entity_id = parents.get(entity_id) if call is None else call[1]
        return None

    answered: set[str] = set()
    for _t, seg_id, parent_id, _k, _n, _o, start, end, _c, flags, duration, *_ in segments:
        node = owner[seg_id]
        kind = _own(flags)
        graph.request(node, start, end, kind, duration)
        call = calls.get(parent_id) if parent_id is not None else None
        if call is not None:
            answered.add(parent_id)
            source = owner_of(call[1])
            if source is not None:
                graph.call(source, node, call[4], call[5],
                           outcome(call[6] == 1, call[7] == 1, call[8] == 1))
            continue
        source = owner_of(parent_id) if parent_id in owner or parent_id in parents else None
        if source is None:  # entered the trace here: no parent, or one this store never got
            node.root = True
            graph.call(graph.node(*CLIENT, inferred=True), node, start, end, kind)
        elif source is not node:
            graph.call(source, node, start, end, kind)
    for call_id, call in calls.items():
        if call_id in answered:
            continue
        source = owner_of(call[1])
        if source is None:
            continue
        target = graph.node(*_callee(call), inferred=True)
        kind = outcome(call[6] == 1, call[7] == 1, call[8] == 1)
        graph.request(target, call[4], call[5], kind)
        graph.call(source, target, call[4], call[5], kind)


def _by_trace(rows: Iterable[tuple]) -> Iterable[list[tuple]]:
    """Rows with a trace's rows together, a trace at a time."""
    current: list[tuple] = []
    key = None
    for row in rows:
        if row[0] != key and current:
            yield current
            current = []
        key = row[0]
        current.append(row)
    if current:
        yield current


def select(conn: sqlite3.Connection, start: float, end: float,
           condition: tuple[str, list[Any]] | None = None, end_open: bool = False
           ) -> Iterable[tuple]:
    """The segment rows of the traces that start in [start, end] (and match ``condition``, an
    SQL condition on ``traces t`` with its parameters; ``end_open``: [start, end)), a trace's
    rows together (CROSS JOIN makes traces SQLite's outer loop)."""
    where = "t.start >= ? AND t.start < ?" if end_open else "t.start >= ? AND t.start <= ?"
    params: list[Any] = [start, end]
    if condition is not None:
        where += f" AND {condition[0]}"
        params.extend(condition[1])
    return conn.execute(
        f"SELECT {COLUMNS} FROM traces t CROSS JOIN segments s ON s.tpk = t.pk "
        f"WHERE {where}", params)


def fill(graph: Graph, rows: Iterable[tuple]) -> Graph:
    for trace in _by_trace(rows):
        add_trace(graph, trace)
    return graph


def filled(conn: sqlite3.Connection, graph: Graph, rows: Iterable[tuple]) -> Graph:
    """``graph`` with the rows' traces and the nodes' account ids."""
    fill(graph, rows)
    graph.find_accounts(conn)
    return graph


def build_between(conn: sqlite3.Connection, start: float, end: float,
                  condition: tuple[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """GetServiceGraph's services for the traces that start in [start, end]."""
    return filled(conn, Graph(), select(conn, start, end, condition)).services()


def build(conn: sqlite3.Connection, trace_keys: Iterable[int]) -> list[dict[str, Any]]:
    """The services and edges of the given traces (by store key)."""
    graph = Graph()
    keys = sorted(set(trace_keys))
    for i in range(0, len(keys), CHUNK):
        chunk = orjson.dumps(keys[i:i + CHUNK]).decode()
        fill(graph, conn.execute(
            f"SELECT {COLUMNS} FROM traces t CROSS JOIN segments s ON s.tpk = t.pk "
            "WHERE t.pk IN (SELECT value FROM json_each(?))", (chunk,)))
    graph.find_accounts(conn)
    return graph.services()


def build_for_ids(conn: sqlite3.Connection, trace_ids: Iterable[str]) -> list[dict[str, Any]]:
    """GetTraceGraph's services."""
    keys = [row[0] for trace_id in trace_ids for row in conn.execute(
        "SELECT pk FROM traces WHERE trace_id = ?", (trace_id,))]
    return build(conn, keys)
