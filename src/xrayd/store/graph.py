"""Service graphs (GetServiceGraph, GetTraceGraph) as X-Ray draws them, from the store's indexed
columns (and each segment's own flags and account id, read from its document).

Nodes: a ``client`` node for the requests that enter a trace (at each root segment: no parent,
or a parent that is not in the trace); a node per segment name and ``origin``; an inferred node
per downstream call that no instrumented segment answered (subsegments with namespace ``aws``
typed as X-Ray types AWS resources, ``remote`` ones typed ``remote``). Edges: from a caller's
node to the callee's, counted once a call: from the calling subsegment when there is one (the
client's view, as X-Ray's edge statistics are), else from the callee's segment. A service's
statistics come from its own segments' flags: a fault recorded only on a subsegment counts
against the edge and the downstream node, not against the service that made the call.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

CLIENT = ("client", "client")
# Subsegment names the SDKs give AWS calls, and the resource type X-Ray gives their inferred
# node; other AWS services are typed AWS::<name> (as AWS::SimpleSystemsManagement).
AWS_RESOURCE_TYPES = {
    "DynamoDB": "AWS::DynamoDB::Table",
    "S3": "AWS::S3::Bucket",
    "SQS": "AWS::SQS::Queue",
    "SNS": "AWS::SNS::Topic",
    "Lambda": "AWS::Lambda",
    "Kinesis": "AWS::Kinesis::Stream",
}
MAX_PARENT_HOPS = 64
CHUNK = 500


def aws_type(name: str) -> str:
    return AWS_RESOURCE_TYPES.get(name, f"AWS::{name}")


def histogram(counts: Counter[float]) -> list[dict[str, Any]]:
    """X-Ray's histogram: each value (seconds, to the millisecond) with how many times."""
    return [{"Value": value, "Count": count} for value, count in sorted(counts.items())]


@dataclass(slots=True)
class Stats:
    """Requests, by outcome, with their response times; in-progress requests are left out
    (TotalCount counts completed requests), so histogram counts sum to TotalCount."""

    ok: int = 0
    error: int = 0
    throttle: int = 0
    fault: int = 0
    response_time: float = 0.0
    times: Counter[float] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + self.error + self.throttle + self.fault

    def add(self, error: bool, fault: bool, throttle: bool, seconds: float) -> None:
        if fault:
            self.fault += 1
        elif throttle:
            self.throttle += 1
        elif error:
            self.error += 1
        else:
            self.ok += 1
        seconds = max(0.0, seconds)
        self.response_time += seconds
        self.times[round(seconds, 3)] += 1

    def merge(self, other: Stats) -> None:
        self.ok += other.ok
        self.error += other.error
        self.throttle += other.throttle
        self.fault += other.fault
        self.response_time += other.response_time
        self.times.update(other.times)

    def shape(self) -> dict[str, Any]:
        return {
            "OkCount": self.ok,
            "ErrorStatistics": {"ThrottleCount": self.throttle, "OtherCount": self.error,
                                "TotalCount": self.throttle + self.error},
            "FaultStatistics": {"OtherCount": self.fault, "TotalCount": self.fault},
            "TotalCount": self.total,
            "TotalResponseTime": round(self.response_time, 6),
        }


@dataclass(slots=True)
class Span:
    """First start and last end of what a node or an edge saw."""

    start: float | None = None
    end: float | None = None

    def seen(self, start: float, end: float | None) -> None:
        self.start = start if self.start is None else min(self.start, start)
        stop = start if end is None else end
        self.end = stop if self.end is None else max(self.end, stop)


@dataclass(slots=True)
class Edge:
    span: Span = field(default_factory=Span)
    stats: Stats = field(default_factory=Stats)
    series: dict[float, Stats] = field(default_factory=dict)


@dataclass(slots=True)
class Node:
    ref: int
    name: str
    type: str  # "" for a segment without origin: the Service then has no Type
    inferred: bool = False
    root: bool = False
    account: str | None = None
    span: Span = field(default_factory=Span)
    stats: Stats = field(default_factory=Stats)
    durations: Counter[float] = field(default_factory=Counter)
    series: dict[float, Stats] = field(default_factory=dict)
    edges: dict[int, Edge] = field(default_factory=dict)


class Graph:
    """Nodes and edges, with statistics over the whole range and, given a period, per period
    (by the start time of each request)."""

    def __init__(self, period: float | None = None) -> None:
        self.period = period
        self.nodes: dict[tuple[str, str], Node] = {}

    def node(self, name: str, kind: str, inferred: bool = False) -> Node:
        key = (name, kind)
        found = self.nodes.get(key)
        if found is None:
            found = self.nodes[key] = Node(len(self.nodes), name, kind, inferred)
        return found

    def _bucket(self, series: dict[float, Stats], start: float) -> Stats | None:
        if self.period is None:
            return None
        key = start - start % self.period
        found = series.get(key)
        if found is None:
            found = series[key] = Stats()
        return found

    def request(self, node: Node, start: float, end: float | None, flags: tuple[bool, ...],
                duration: float | None = None) -> None:
        """A request that ``node`` served (end None: still in progress)."""
        node.span.seen(start, end)
        if end is None:
            return
        node.stats.add(*flags, end - start)
        node.durations[round(max(0.0, end - start if duration is None else duration), 3)] += 1
        bucket = self._bucket(node.series, start)
        if bucket is not None:
            bucket.add(*flags, end - start)

    def call(self, source: Node, target: Node, start: float, end: float | None,
             flags: tuple[bool, ...]) -> None:
        edge = source.edges.get(target.ref)
        if edge is None:
            edge = source.edges[target.ref] = Edge()
        edge.span.seen(start, end)
        if end is None:
            return
        edge.stats.add(*flags, end - start)
        bucket = self._bucket(edge.series, start)
        if bucket is not None:
            bucket.add(*flags, end - start)

    def services(self) -> list[dict[str, Any]]:
        """The Service list of GetServiceGraph."""
        answer = []
        for node in self.nodes.values():
            client = (node.name, node.type) == CLIENT
            stats = node.stats
            if client:  # the requests clients sent: those on its edges
                stats = Stats()
                for edge in node.edges.values():
                    stats.merge(edge.stats)
            service: dict[str, Any] = {
                "ReferenceId": node.ref,
                "Name": node.name,
                "Names": [node.name],
                "Root": node.root,
                "State": "unknown" if node.inferred else "active",
                "StartTime": node.span.start,
                "EndTime": node.span.end,
                "Edges": [
                    {"ReferenceId": ref, "StartTime": edge.span.start, "EndTime": edge.span.end,
                     "SummaryStatistics": edge.stats.shape(),
                     "ResponseTimeHistogram": histogram(edge.stats.times), "Aliases": []}
                    for ref, edge in node.edges.items()
                ],
                "SummaryStatistics": stats.shape(),
                "DurationHistogram": histogram(stats.times if client else node.durations),
                "ResponseTimeHistogram": histogram(stats.times),
            }
            if node.type:
                service["Type"] = node.type
            if node.account is not None:
                service["AccountId"] = node.account
            answer.append(service)
        return answer


# --- from rows --------------------------------------------------------------------------
# A segment row as read: (tpk, id, parent_id, kind, name, origin, start, end, calls JSON,
# own flags and account id as a JSON array or None, trace start, trace end).
_COLUMNS = ("s.tpk, s.id, s.parent_id, s.kind, s.name, s.origin, s.start, s.end, s.calls, "
            "CASE WHEN s.kind = 'segment' THEN json_extract(CAST(s.doc AS TEXT), '$.error', "
            "'$.fault', '$.throttle', '$.aws.account_id') END, t.start, t.end")


def _flags(own: str | None) -> tuple[tuple[bool, bool, bool], str | None]:
    if not own:
        return (False, False, False), None
    try:
        error, fault, throttle, account = orjson.loads(own)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return (False, False, False), None
    return ((error is True, fault is True, throttle is True),
            account if type(account) is str and account else None)


def add_trace(graph: Graph, rows: Sequence[tuple]) -> None:
    """Add one trace's segment rows to ``graph``."""
    segments = [row for row in rows if row[3] == "segment"]
    parents: dict[str, str | None] = {row[1]: row[2] for row in rows if row[3] != "segment"}
    calls: dict[str, tuple] = {}
    for row in rows:
        if row[8]:
            for call in orjson.loads(row[8]):
                calls[call[0]] = call
    owner: dict[str, Node] = {}
    own: dict[str, tuple[tuple[bool, bool, bool], str | None]] = {}
    for row in segments:
        node = graph.node(row[4], row[5] or "")
        flags, account = own[row[1]] = _flags(row[9])
        if account is not None:
            node.account = account
        owner[row[1]] = node

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
    for row in segments:
        _t, seg_id, parent_id, _k, _n, _o, start, end, _c, _own, t_start, t_end = row
        node = owner[seg_id]
        flags = own[seg_id][0]
        duration = (t_end - t_start) if t_end is not None else None
        graph.request(node, start, end, flags, duration)
        if parent_id in calls:
            call = calls[parent_id]
            answered.add(parent_id)
            source = owner_of(call[1])
            if source is not None:
                graph.call(source, node, call[4], call[5], (bool(call[6]), bool(call[7]),
                                                              bool(call[8])))
            continue
        source = owner_of(parent_id) if parent_id in owner or parent_id in parents else None
        if source is None:  # entered the trace here: no parent, or one this store never got
            node.root = True
            graph.call(graph.node(*CLIENT, inferred=True), node, start, end, flags)
        elif source is not node:
            graph.call(source, node, start, end, flags)
    for call_id, (_i, owner_id, name, namespace, start, end, error, fault, throttle) in (
            calls.items()):
        if call_id in answered:
            continue
        source = owner_of(owner_id)
        if source is None:
            continue
        target = graph.node(name, aws_type(name) if namespace == "aws" else "remote",
                            inferred=True)
        flags = (bool(error), bool(fault), bool(throttle))
        graph.request(target, start, end, flags)
        graph.call(source, target, start, end, flags)


def _by_trace(rows: Iterable[tuple]) -> Iterable[list[tuple]]:
    """Rows ordered by trace key, grouped a trace at a time."""
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
           condition: tuple[str, list[Any]] | None = None) -> Iterable[tuple]:
    """The segment rows of the traces that start in [start, end] (and match ``condition``, an
    SQL condition on ``traces t`` with its parameters), ordered by trace."""
    where = "t.start >= ? AND t.start <= ?"
    params: list[Any] = [start, end]
    if condition is not None:
        where += f" AND {condition[0]}"
        params.extend(condition[1])
    return conn.execute(
        f"SELECT {_COLUMNS} FROM traces t JOIN segments s ON s.tpk = t.pk WHERE {where} "
        "ORDER BY s.tpk", params)


def fill(graph: Graph, rows: Iterable[tuple]) -> Graph:
    for trace in _by_trace(rows):
        add_trace(graph, trace)
    return graph


def build_between(conn: sqlite3.Connection, start: float, end: float,
                  condition: tuple[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """GetServiceGraph's services for the traces that start in [start, end]."""
    return fill(Graph(), select(conn, start, end, condition)).services()


def build(conn: sqlite3.Connection, trace_keys: Iterable[int]) -> list[dict[str, Any]]:
    """The services and edges of the given traces (by store key)."""
    graph = Graph()
    keys = sorted(set(trace_keys))
    for i in range(0, len(keys), CHUNK):
        chunk = orjson.dumps(keys[i:i + CHUNK]).decode()
        fill(graph, conn.execute(
            f"SELECT {_COLUMNS} FROM traces t JOIN segments s ON s.tpk = t.pk "
            "WHERE t.pk IN (SELECT value FROM json_each(?)) ORDER BY s.tpk", (chunk,)))
    return graph.services()


def build_for_ids(conn: sqlite3.Connection, trace_ids: Iterable[str]) -> list[dict[str, Any]]:
    """GetTraceGraph's services."""
    keys = [row[0] for trace_id in trace_ids for row in conn.execute(
        "SELECT pk FROM traces WHERE trace_id = ?", (trace_id,))]
    return build(conn, keys)
