"""Service graphs (GetServiceGraph, GetTraceGraph): nodes are services (segments by name and
origin, downstream calls by name), edges are calls between them, with the service's summary
statistics. The graph is built from indexed columns, never from the documents."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Stats:
    ok: int = 0
    error: int = 0
    throttle: int = 0
    fault: int = 0
    total: int = 0
    response_time: float = 0.0

    def add(self, error: int, fault: int, throttle: int, seconds: float | None) -> None:
        self.total += 1
        if fault:
            self.fault += 1
        elif throttle:
            self.throttle += 1
        elif error:
            self.error += 1
        else:
            self.ok += 1
        if seconds is not None:
            self.response_time += max(0.0, seconds)

    def shape(self) -> dict[str, Any]:
        return {
            "OkCount": self.ok,
            "ErrorStatistics": {"ThrottleCount": self.throttle, "OtherCount": self.error,
                                "TotalCount": self.throttle + self.error},
            "FaultStatistics": {"OtherCount": self.fault, "TotalCount": self.fault},
            "TotalCount": self.total,
            "TotalResponseTime": round(self.response_time, 6),
        }


@dataclass
class Node:
    ref: int
    name: str
    type: str
    root: bool = False
    start: float | None = None
    end: float | None = None
    stats: Stats = field(default_factory=Stats)
    edges: dict[int, Stats] = field(default_factory=dict)
    edge_times: dict[int, list[float]] = field(default_factory=dict)

    def seen(self, start: float, end: float | None) -> None:
        self.start = start if self.start is None else min(self.start, start)
        stop = end if end is not None else start
        self.end = stop if self.end is None else max(self.end, stop)


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], Node] = {}

    def node(self, name: str, kind: str) -> Node:
        key = (name, kind)
        if key not in self.nodes:
            self.nodes[key] = Node(len(self.nodes), name, kind)
        return self.nodes[key]

    def edge(self, source: Node, target: Node, start: float, end: float | None,
             flags: tuple[int, int, int]) -> None:
        stats = source.edges.setdefault(target.ref, Stats())
        stats.add(*flags, (end - start) if end is not None else None)
        times = source.edge_times.setdefault(target.ref, [start, end or start])
        times[0] = min(times[0], start)
        times[1] = max(times[1], end or start)

    def services(self) -> list[dict[str, Any]]:
        answer = []
        for node in self.nodes.values():
            answer.append({
                "ReferenceId": node.ref,
                "Name": node.name,
                "Names": [node.name],
                "Root": node.root,
                "Type": node.type,
                "State": "active",
                "StartTime": node.start,
                "EndTime": node.end,
                "SummaryStatistics": node.stats.shape(),
                "Edges": [
                    {"ReferenceId": ref, "StartTime": node.edge_times[ref][0],
                     "EndTime": node.edge_times[ref][1], "SummaryStatistics": stats.shape(),
                     "ResponseTimeHistogram": [], "Aliases": []}
                    for ref, stats in node.edges.items()
                ],
                "DurationHistogram": [],
                "ResponseTimeHistogram": [],
            })
        return answer


def _remote_type(name: str, namespace: str) -> str:
    return f"AWS::{name}" if namespace == "aws" else "remote"


def build(conn: sqlite3.Connection, trace_keys: Iterable[int]) -> list[dict[str, Any]]:
    """The services and edges of the given traces (by store key)."""
    graph = _Graph()
    keys = list(trace_keys)
    for i in range(0, len(keys), 500):
        chunk = orjson.dumps(keys[i:i + 500]).decode()
        segments = conn.execute(
            "SELECT tpk, id, parent_id, kind, name, origin, start, end, error, fault, "
            "throttle, calls FROM segments WHERE tpk IN (SELECT value FROM json_each(?)) "
            "ORDER BY tpk", (chunk,)).fetchall()
        calls = [(row[0], *call) for row in segments if row[-1]
                 for call in orjson.loads(row[-1])]
        _add(graph, [row[:-1] for row in segments], calls)
    return graph.services()


def build_for_ids(conn: sqlite3.Connection, trace_ids: Iterable[str]) -> list[dict[str, Any]]:
    from xrayd.store.queries import known_trace_key

    keys = [known_trace_key(conn, trace_id) for trace_id in trace_ids]
    return build(conn, [k for k in keys if k is not None])


def _add(graph: _Graph, segments: list[tuple], calls: list[tuple]) -> None:
    by_trace: dict[str, tuple[list[tuple], list[tuple]]] = {}
    for row in segments:
        by_trace.setdefault(row[0], ([], []))[0].append(row)
    for row in calls:
        by_trace.setdefault(row[0], ([], []))[1].append(row)
    for trace_segments, trace_calls in by_trace.values():
        owner: dict[str, Node] = {}
        parents: dict[str, str | None] = {}
        for _t, seg_id, parent_id, kind, name, origin, start, end, error, fault, throttle in (
                trace_segments):
            if kind != "segment":
                parents[seg_id] = parent_id
                continue
            node = graph.node(name, origin or "service")
            node.seen(start, end)
            node.stats.add(error, fault, throttle, (end - start) if end is not None else None)
            owner[seg_id] = node
        default = next(iter(owner.values()), None)

        def owner_of(entity_id: str | None, _owner=owner, _default=default,
                     _parents=parents) -> Node | None:
            for _ in range(64):
                if entity_id is None:
                    return _default
                if entity_id in _owner:
                    return _owner[entity_id]
                entity_id = _parents.get(entity_id)
            return _default

        call_owner: dict[str, Node | None] = {}
        for _t, call_id, owner_id, *_rest in trace_calls:
            call_owner[call_id] = owner_of(owner_id)
        called: set[str] = set()
        for _t, seg_id, parent_id, kind, _name, _o, start, end, error, fault, throttle in (
                trace_segments):
            if kind != "segment":
                continue
            node = owner[seg_id]
            if parent_id is None:
                node.root = True
                continue
            source = call_owner.get(parent_id) or owner.get(parent_id)
            if parent_id in call_owner:
                called.add(parent_id)
            if source is not None and source is not node:
                graph.edge(source, node, start, end, (error, fault, throttle))
        for _t, call_id, _owner_id, name, namespace, start, end, error, fault, throttle in (
                trace_calls):
            if call_id in called:
                continue
            source = call_owner.get(call_id)
            if source is None:
                continue
            target = graph.node(name, _remote_type(name, namespace))
            target.seen(start, end)
            target.stats.add(error, fault, throttle, (end - start) if end is not None else None)
            graph.edge(source, target, start, end, (error, fault, throttle))
