"""GetTimeSeriesServiceStatistics: the statistics of one entity of the service graph (a service,
an edge, or every edge), per period.

Entity selectors (``EntitySelectorExpression``): ``service("name")``, ``edge("a", "b")``,
``id(name: "n", type: "t")`` and ``service(id(...))``, ``edge(id(...), id(...))``; names match
without regard to case, as X-Ray's ``service()`` does. Without a selector, the statistics of
every edge. A service's entries carry its own statistics (``ServiceSummaryStatistics``) and
those of the edges into it (``EdgeSummaryStatistics``, the callers' view)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xrayd.store.filters import FilterError, tokenize
from xrayd.store.graph import Graph, Node, Stats, histogram

DEFAULT_PERIOD = 60
_COLON = re.compile(r'("(?:[^"\\]|\\.)*")|:')


@dataclass(frozen=True)
class NodeMatch:
    name: str | None = None  # lower case
    type: str | None = None

    def __call__(self, node: Node) -> bool:
        return ((self.name is None or node.name.lower() == self.name)
                and (self.type is None or node.type == self.type))


@dataclass(frozen=True)
class Selector:
    kind: str  # "service", "edge" or "all"
    source: NodeMatch | None = None
    target: NodeMatch | None = None


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def take(self, kind: str, text: str | None = None) -> Any:
        token = self.tokens[self.i]
        if token.kind != kind or (text is not None and token.text.lower() != text):
            shown = token.text or "end of expression"
            raise FilterError(f"Expected {text or kind} at position {token.pos} "
                              f"(found {shown!r}) in the entity selector")
        self.i += 1
        return token.value

    def peek(self, text: str) -> bool:
        token = self.tokens[self.i]
        return token.kind in ("ident", "op") and token.text.lower() == text

    def entity(self) -> NodeMatch:
        if self.peek("id"):
            return self.id_function()
        return NodeMatch(name=str(self.take("str")).lower())

    def id_function(self) -> NodeMatch:
        self.take("ident", "id")
        self.take("op", "(")
        fields: dict[str, str] = {}
        while not self.peek(")"):
            key = str(self.take("ident")).lower()
            if key not in ("name", "type") or key in fields:
                raise FilterError(f"id() takes name and type, not {key!r}")
            fields[key] = str(self.take("str"))
            if self.peek(","):
                self.take("op", ",")
        self.take("op", ")")
        if not fields:
            raise FilterError("id() needs a name or a type")
        name = fields.get("name")
        return NodeMatch(name=None if name is None else name.lower(), type=fields.get("type"))

    def parse(self) -> Selector:
        if self.peek("id"):
            selector = Selector("service", target=self.id_function())
        elif self.peek("service"):
            self.take("ident", "service")
            self.take("op", "(")
            selector = Selector("service", target=self.entity())
            self.take("op", ")")
        elif self.peek("edge"):
            self.take("ident", "edge")
            self.take("op", "(")
            source = self.entity()
            self.take("op", ",")
            target = self.entity()
            self.take("op", ")")
            selector = Selector("edge", source, target)
        else:
            token = self.tokens[self.i]
            raise FilterError(f"Unsupported entity selector at position {token.pos}: use "
                              "service(), edge() or id()")
        self.take("end")
        return selector


def parse_selector(text: str | None) -> Selector:
    if text is None:
        return Selector("all")
    # The filter tokenizer has no ':'; id(name: "x") reads the same without it.
    return _Parser(_COLON.sub(lambda m: m.group(1) or " ", text)).parse()


def series(graph: Graph, selector: Selector, period: int) -> list[dict[str, Any]]:
    """The TimeSeriesServiceStatistics list of ``graph`` for the selected entity, a period at
    a time, oldest first; periods without requests left out."""
    edges: dict[float, Stats] = {}
    services: dict[float, Stats] = {}
    wanted_edge: Callable[[Node, Node], bool]
    if selector.kind == "all":
        def wanted_edge(_s: Node, _t: Node) -> bool:
            return True
    elif selector.kind == "edge":
        def wanted_edge(s: Node, t: Node) -> bool:
            assert selector.source is not None and selector.target is not None
            return selector.source(s) and selector.target(t)
    else:
        def wanted_edge(_s: Node, t: Node) -> bool:
            assert selector.target is not None
            return selector.target(t)
    by_ref = {node.ref: node for node in graph.nodes.values()}
    target = selector.target
    for node in graph.nodes.values():
        if selector.kind == "service" and target is not None and target(node) \
                and node.type != "client":
            for when, stats in node.requests.by_period(period).items():
                services.setdefault(when, Stats()).merge(stats)
        for ref, edge in node.edges.items():
            if wanted_edge(node, by_ref[ref]):
                for when, stats in edge.by_period(period).items():
                    edges.setdefault(when, Stats()).merge(stats)
    answer = []
    for when in sorted(set(edges) | set(services)):
        edge_stats = edges.get(when, Stats())
        entry: dict[str, Any] = {"Timestamp": when,
                                 "EdgeSummaryStatistics": edge_stats.shape()}
        times: Counter[float] = edge_stats.times
        if selector.kind == "service":
            service_stats = services.get(when, Stats())
            entry["ServiceSummaryStatistics"] = service_stats.shape()
            times = service_stats.times
        entry["ResponseTimeHistogram"] = histogram(times)
        answer.append(entry)
    return answer


def check_period(value: Any) -> int:
    if value is None:
        return DEFAULT_PERIOD
    if isinstance(value, bool) or not isinstance(value, int) or value < 60 or value % 60:
        raise FilterError("Period must be a multiple of 60 seconds")
    return value
