"""Service graphs (GetServiceGraph, GetTraceGraph, GetTimeSeriesServiceStatistics) as X-Ray
draws them: nodes, edges and their requests' statistics. graph_rows.py fills a graph from the
store's rows.

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
from dataclasses import dataclass, field
from typing import Any

CLIENT = ("client", "client")


def histogram(counts: Counter[float]) -> list[dict[str, Any]]:
    """X-Ray's histogram: each value (seconds, to the millisecond) with how many times."""
    return [{"Value": value, "Count": count} for value, count in sorted(counts.items())]


OK, ERROR, THROTTLE, FAULT = 0, 1, 2, 3
MINUTE = 60
_MS_BITS = 32  # a request's time in milliseconds in the low bits of its code
_MS_MASK = (1 << _MS_BITS) - 1
_KIND_MS = (3 << _MS_BITS) | _MS_MASK  # a code without its minute


def outcome(error: bool, fault: bool, throttle: bool) -> int:
    """How X-Ray counts a request: a fault, else a throttle (a 429, also an error), else an
    error, else OK."""
    return FAULT if fault else THROTTLE if throttle else ERROR if error else OK


@dataclass(slots=True)
class Stats:
    """Completed requests by outcome, their total response time and its histogram (in-progress
    requests are not counted: TotalCount counts completed requests, so the histogram's counts
    sum to TotalCount)."""

    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    response_ms: int = 0
    times: Counter[float] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: Stats) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.response_ms += other.response_ms
        self.times.update(other.times)

    def shape(self) -> dict[str, Any]:
        ok, error, throttle, fault = self.counts
        return {
            "OkCount": ok,
            "ErrorStatistics": {"ThrottleCount": throttle, "OtherCount": error,
                                "TotalCount": throttle + error},
            "FaultStatistics": {"OtherCount": fault, "TotalCount": fault},
            "TotalCount": ok + error + throttle + fault,
            "TotalResponseTime": self.response_ms / 1000,
        }


class Requests:
    """The requests a node served or an edge carried, as integer codes (minute of the start,
    outcome, milliseconds): appended while reading (the cheapest per-request work in Python)
    and counted in C by Counter. A graph kept in a cache holds them counted (one entry per
    distinct code) and its span as two numbers, and is not changed once kept: a graph merged
    from kept ones refers to their counts (``parts``) instead of copying them, and reads them
    once, when its statistics are asked for."""

    __slots__ = ("codes", "counted", "end", "ends", "parts", "start", "starts")

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.counted: Counter[int] = Counter()
        self.parts: list[Counter[int]] = []  # kept graphs' counts, read only
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.start: float | None = None
        self.end: float | None = None

    def compact(self) -> None:
        self.start, self.end = self.span()
        self.counted = self.all()
        self.codes, self.parts, self.starts, self.ends = [], [], [], []

    def merge(self, other: Requests) -> None:
        self.codes.extend(other.codes)
        if other.counted:
            self.parts.append(other.counted)
        self.parts.extend(other.parts)
        for start, end in ((other.start, other.end), *zip(other.starts, other.ends,
                                                               strict=True)):
            if start is not None and end is not None:
                self.starts.append(start)
                self.ends.append(end)

    def span(self) -> tuple[float | None, float | None]:
        starts = self.starts if self.start is None else [*self.starts, self.start]
        ends = self.ends if self.end is None else [*self.ends, self.end]
        return (min(starts), max(ends)) if starts else (None, None)

    def all(self) -> Counter[int]:
        """Every request's code, counted (a new Counter)."""
        return _counted(self.codes, self.counted, self.parts)

    def by_minute(self) -> dict[int, Stats]:
        """Statistics per minute (epoch seconds // 60) of the requests' start."""
        return _stats(self.all())

    def by_period(self, period: int) -> dict[float, Stats]:
        """Statistics by the start of each period (a multiple of a minute)."""
        found: dict[float, Stats] = {}
        for minute, stats in self.by_minute().items():
            when = float(minute * MINUTE // period * period)
            if when in found:
                found[when].merge(stats)
            else:
                found[when] = stats
        return found

    def stats(self) -> Stats:
        """Statistics over the whole range (the codes counted without their minute)."""
        without_minute = Counter(map(_KIND_MS.__and__, self.codes))
        get = without_minute.get
        for part in (self.counted, *self.parts):
            for code, count in part.items():
                key = code & _KIND_MS
                without_minute[key] = get(key, 0) + count
        return _stats(without_minute).get(0, Stats())


def _add(counted: Counter[int], other: Counter[int]) -> None:
    """``counted.update(other)`` for a mapping, without its per-key method calls."""
    get = counted.get
    for key, count in other.items():
        counted[key] = get(key, 0) + count


def _counted(values: list[int], counted: Counter[int], parts: list[Counter[int]]
             ) -> Counter[int]:
    """``values`` counted, with ``counted`` and ``parts`` added (a new Counter)."""
    found = Counter(values)
    for part in (counted, *parts):
        if part:
            _add(found, part)
    return found


def _stats(counted: Counter[int]) -> dict[int, Stats]:
    found: dict[int, Stats] = {}
    for code, count in counted.items():
        millis = code & _MS_MASK
        minute, kind = divmod(code >> _MS_BITS, 4)
        stats = found.get(minute)
        if stats is None:
            stats = found[minute] = Stats()
        stats.counts[kind] += count
        stats.response_ms += millis * count
        stats.times[millis / 1000] += count
    return found


def _millis(seconds: float) -> int:
    millis = int(seconds * 1000 + 0.5)
    return millis if millis > 0 else 0


def _count(requests: Requests, start: float, end: float | None, kind: int) -> int | None:
    """Record a request; its time in milliseconds, None while it is in progress."""
    requests.starts.append(start)
    if end is None:
        requests.ends.append(start)
        return None
    requests.ends.append(end)
    millis = _millis(end - start)
    requests.codes.append((int(start // MINUTE) << 2 | kind) << _MS_BITS | millis)
    return millis


@dataclass(slots=True)
class Node:
    ref: int
    name: str
    type: str  # "" for a segment without origin: the Service then has no Type
    inferred: bool = False
    root: bool = False
    account: str | None = None
    first: tuple[int, str] | None = None  # (trace key, id) of a segment, for the account
    requests: Requests = field(default_factory=Requests)
    durations: list[int] = field(default_factory=list)  # milliseconds
    counted_durations: Counter[int] = field(default_factory=Counter)  # of a kept graph
    duration_parts: list[Counter[int]] = field(default_factory=list)  # kept graphs', read only
    edges: dict[int, Requests] = field(default_factory=dict)

    def all_durations(self) -> Counter[int]:
        """Every duration, counted (a new Counter)."""
        return _counted(self.durations, self.counted_durations, self.duration_parts)


class Graph:
    """Nodes and edges, with statistics per minute (so per period of minutes, or over the
    whole range)."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], Node] = {}

    def node(self, name: str, kind: str, inferred: bool = False) -> Node:
        key = (name, kind)
        found = self.nodes.get(key)
        if found is None:
            found = self.nodes[key] = Node(len(self.nodes), name, kind, inferred)
        return found

    def request(self, node: Node, start: float, end: float | None, kind: int,
                duration: float | None = None) -> None:
        """A request that ``node`` served (end None: still in progress); ``duration``: of the
        whole request, downstream work included, when longer than the node's own time."""
        millis = _count(node.requests, start, end, kind)
        if millis is not None:
            if duration is not None and duration * 1000 > millis:
                millis = _millis(duration)
            node.durations.append(millis)

    def call(self, source: Node, target: Node, start: float, end: float | None,
             kind: int) -> None:
        edge = source.edges.get(target.ref)
        if edge is None:
            edge = source.edges[target.ref] = Requests()
        _count(edge, start, end, kind)

    def compact(self) -> Graph:
        for node in self.nodes.values():
            node.requests.compact()
            node.counted_durations = node.all_durations()
            node.durations, node.duration_parts = [], []
            for edge in node.edges.values():
                edge.compact()
        return self

    def merge(self, other: Graph) -> None:
        """Add another graph's nodes, edges and requests to this one."""
        keys = {node.ref: key for key, node in other.nodes.items()}
        for (name, kind), theirs in other.nodes.items():
            mine = self.node(name, kind, theirs.inferred)
            mine.root = mine.root or theirs.root
            mine.first = mine.first or theirs.first
            mine.account = mine.account or theirs.account
            mine.requests.merge(theirs.requests)
            mine.durations.extend(theirs.durations)
            if theirs.counted_durations:
                mine.duration_parts.append(theirs.counted_durations)
            mine.duration_parts.extend(theirs.duration_parts)
        for key, theirs in other.nodes.items():
            source = self.nodes[key]
            for ref, requests in theirs.edges.items():
                target = self.nodes[keys[ref]].ref
                edge = source.edges.get(target)
                if edge is None:
                    edge = source.edges[target] = Requests()
                edge.merge(requests)

    def services(self) -> list[dict[str, Any]]:
        """The Service list of GetServiceGraph."""
        answer = []
        for node in self.nodes.values():
            client = (node.name, node.type) == CLIENT
            edges = {ref: (edge.span(), edge.stats()) for ref, edge in node.edges.items()}
            if client:  # the requests clients sent: those on its edges
                stats = Stats()
                for _span, edge_stats in edges.values():
                    stats.merge(edge_stats)
                durations = stats.times
                start = min((s for (s, _e), _st in edges.values() if s is not None),
                            default=None)
                end = max((e for (_s, e), _st in edges.values() if e is not None),
                          default=None)
            else:
                stats = node.requests.stats()
                durations = Counter({ms / 1000: n for ms, n in node.all_durations().items()})
                start, end = node.requests.span()
            service: dict[str, Any] = {
                "ReferenceId": node.ref,
                "Name": node.name,
                "Names": [node.name],
                "Root": node.root,
                "State": "unknown" if node.inferred else "active",
                "StartTime": start,
                "EndTime": end,
                "Edges": [
                    {"ReferenceId": ref, "StartTime": span[0], "EndTime": span[1],
                     "SummaryStatistics": edge_stats.shape(),
                     "ResponseTimeHistogram": histogram(edge_stats.times), "Aliases": []}
                    for ref, (span, edge_stats) in edges.items()
                ],
                "SummaryStatistics": stats.shape(),
                "DurationHistogram": histogram(durations),
                "ResponseTimeHistogram": histogram(stats.times),
            }
            if node.type:
                service["Type"] = node.type
            if node.account is not None:
                service["AccountId"] = node.account
            answer.append(service)
        return answer

    def find_accounts(self, conn: sqlite3.Connection) -> None:
        """Each instrumented node's account id, from the document of one of its segments."""
        for node in self.nodes.values():
            if node.first is None or node.account is not None:
                continue
            row = conn.execute("SELECT json_extract(CAST(doc AS TEXT), '$.aws.account_id') "
                               "FROM segments WHERE tpk = ? AND id = ?", node.first).fetchone()
            if row and type(row[0]) is str and row[0]:
                node.account = row[0]
