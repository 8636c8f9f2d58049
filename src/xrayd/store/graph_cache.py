"""Service graphs over long ranges without reading every trace each time: the graph of each
settled minute (traces that started in it, more than ``settle`` seconds ago) is kept, compacted
to counts, and merged with the graphs of the range's partial and recent minutes, read afresh.
Kept apart by key: the plain graph (key None) and each group's (its filter expression), whose
rows come from a reader of their own.

A kept minute is dropped when a new segment row of one of its traces is stored (segment rows
get increasing keys) or when retention removes traces from it. A document that replaces a
stored one in place (an in-progress segment completed, or sent again) keeps its row's key: a
minute settled before it is not refreshed until it leaves the cache (docs/offline.md)."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

from xrayd.store.graph import MINUTE, Graph
from xrayd.store.graph_rows import fill, select

SETTLE = 300.0
MAX_MINUTES = 75  # the last hour, and some: a kept minute of busy traffic is ~0.5 MB
MAX_KEYS = 8  # the plain graph and the groups asked for most recently

# The segment rows of the traces that start in [start, end] ([start, end) when the flag is set).
RowReader = Callable[[sqlite3.Connection, float, float, bool], Iterable[tuple]]


def all_traces(conn: sqlite3.Connection, start: float, end: float, end_open: bool
               ) -> Iterable[tuple]:
    return select(conn, start, end, end_open=end_open)


class GraphCache:
    def __init__(self, settle: float = SETTLE, max_minutes: int = MAX_MINUTES,
                 clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self.settle = settle
        self.max_minutes = max_minutes
        self.max_keys = max_keys
        self.clock = clock
        self._kept: OrderedDict[Hashable, OrderedDict[int, Graph]] = OrderedDict()
        self._seen_row: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Minutes kept, over every key."""
        return sum(len(minutes) for minutes in self._kept.values())

    def _forget_changed(self, conn: sqlite3.Connection) -> None:
        """Drop the minutes whose traces got segment rows since the last look, and those
        retention emptied."""
        top = conn.execute("SELECT max(pk) FROM segments").fetchone()[0] or 0
        if self._seen_row is not None and top > self._seen_row and len(self):
            for (minute,) in conn.execute(
                    "SELECT DISTINCT CAST(t.start / ? AS INTEGER) FROM segments s "
                    "JOIN traces t ON t.pk = s.tpk WHERE s.pk > ?", (MINUTE, self._seen_row)):
                for minutes in self._kept.values():
                    minutes.pop(minute, None)
        if top < (self._seen_row or 0):  # the newest rows were deleted: start afresh
            self._kept.clear()
        self._seen_row = top
        oldest = conn.execute("SELECT min(start) FROM traces").fetchone()[0]
        for minutes in self._kept.values():
            for minute in [m for m in minutes if oldest is None or m * MINUTE < oldest]:
                del minutes[minute]

    def build(self, conn: sqlite3.Connection, start: float, end: float,
              rows: RowReader = all_traces, key: Hashable = None) -> Graph:
        """The graph of the traces that start in [start, end] (of those ``rows`` reads, kept
        under ``key``). The lock is held only to look minutes up and keep new ones: two builds
        read the store at once."""
        first = math.ceil(start / MINUTE)
        last = math.floor(end / MINUTE)  # whole minutes: [first, last)
        if first >= last:
            return fill(Graph(), rows(conn, start, end, False))
        with self._lock:
            self._forget_changed(conn)
            seen = self._seen_row
            minutes = self._kept.get(key) or OrderedDict()
            kept = {minute: minutes.get(minute) for minute in range(first, last)}
            for minute, graph in kept.items():
                if graph is not None:
                    minutes.move_to_end(minute)
        settled = self.clock() - self.settle
        graph = fill(Graph(), rows(conn, start, first * MINUTE, True))
        new: dict[int, Graph] = {}
        for minute, found in kept.items():
            begin, stop = minute * MINUTE, (minute + 1) * MINUTE
            if found is None and stop > settled:
                fill(graph, rows(conn, begin, stop, True))
                continue
            if found is None:
                found = new[minute] = fill(Graph(), rows(conn, begin, stop, True)).compact()
            graph.merge(found)
        fill(graph, rows(conn, last * MINUTE, end, False))
        with self._lock:
            if self._seen_row == seen and new:  # else rows came since: the next build reads
                minutes = self._kept.setdefault(key, OrderedDict())
                minutes.update(new)
                while len(minutes) > self.max_minutes:
                    minutes.popitem(last=False)
            if key in self._kept:
                self._kept.move_to_end(key)
            while len(self._kept) > self.max_keys:
                self._kept.popitem(last=False)
        return graph


class Warmer:
    """Reads the last hour's graph ahead of queries, so that its settled minutes are kept before
    the first GetServiceGraph asks: once ``delay`` seconds after start, then every ``every``
    seconds while graphs were asked for within the last ``idle`` seconds (a daemon nobody asks
    for graphs reads nothing more). ``warm`` raising RuntimeError (the reader closed) ends it."""

    def __init__(self, warm: Callable[[], object], delay: float = 5.0, every: float = 60.0,
                 idle: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.warm = warm
        self.delay = delay
        self.every = every
        self.idle = idle
        self.clock = clock
        self._asked: float | None = None

    def asked(self) -> None:
        """A graph was asked for."""
        self._asked = self.clock()

    def due(self) -> bool:
        return self._asked is not None and self.clock() - self._asked < self.idle

    def run(self, stop: threading.Event) -> None:
        wait, first = self.delay, True
        while not stop.wait(wait):
            if first or self.due():
                try:
                    self.warm()
                except RuntimeError:  # the store's reader was closed
                    return
                except sqlite3.Error:
                    pass  # the query reads the store itself, and reports its error
            wait, first = self.every, False
