"""Service graphs over long ranges without reading every trace each time: the graph of each
settled minute (traces that started in it, more than ``settle`` seconds ago) is kept, compacted
to counts, and merged with the graphs of the range's partial and recent minutes, read afresh.

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
from collections.abc import Callable

from xrayd.store.graph import MINUTE, Graph
from xrayd.store.graph_rows import fill, select

SETTLE = 300.0
MAX_MINUTES = 75  # the last hour, and some: a kept minute of busy traffic is ~0.5 MB


class GraphCache:
    def __init__(self, settle: float = SETTLE, max_minutes: int = MAX_MINUTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.settle = settle
        self.max_minutes = max_minutes
        self.clock = clock
        self._minutes: OrderedDict[int, Graph] = OrderedDict()
        self._seen_row: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._minutes)

    def _forget_changed(self, conn: sqlite3.Connection) -> None:
        """Drop the minutes whose traces got segment rows since the last look, and those
        retention emptied."""
        top = conn.execute("SELECT max(pk) FROM segments").fetchone()[0] or 0
        if self._seen_row is not None and top > self._seen_row and self._minutes:
            for (minute,) in conn.execute(
                    "SELECT DISTINCT CAST(t.start / ? AS INTEGER) FROM segments s "
                    "JOIN traces t ON t.pk = s.tpk WHERE s.pk > ?", (MINUTE, self._seen_row)):
                self._minutes.pop(minute, None)
        if top < (self._seen_row or 0):  # the newest rows were deleted: start afresh
            self._minutes.clear()
        self._seen_row = top
        oldest = conn.execute("SELECT min(start) FROM traces").fetchone()[0]
        for minute in [m for m in self._minutes if oldest is None or m * MINUTE < oldest]:
            del self._minutes[minute]

    def build(self, conn: sqlite3.Connection, start: float, end: float) -> Graph:
        """The graph of the traces that start in [start, end]. The lock is held only to look
        minutes up and keep new ones: two builds read the store at once."""
        first = math.ceil(start / MINUTE)
        last = math.floor(end / MINUTE)  # whole minutes: [first, last)
        if first >= last:
            return fill(Graph(), select(conn, start, end))
        with self._lock:
            self._forget_changed(conn)
            seen = self._seen_row
            kept = {minute: self._minutes.get(minute) for minute in range(first, last)}
            for minute, graph in kept.items():
                if graph is not None:
                    self._minutes.move_to_end(minute)
        settled = self.clock() - self.settle
        graph = fill(Graph(), select(conn, start, first * MINUTE, end_open=True))
        new: dict[int, Graph] = {}
        for minute, found in kept.items():
            begin, stop = minute * MINUTE, (minute + 1) * MINUTE
            if found is None and stop > settled:
                fill(graph, select(conn, begin, stop, end_open=True))
                continue
            if found is None:
                found = new[minute] = fill(
                    Graph(), select(conn, begin, stop, end_open=True)).compact()
            graph.merge(found)
        fill(graph, select(conn, last * MINUTE, end))
        with self._lock:
            if self._seen_row == seen:  # else rows came since: the next build reads them
                self._minutes.update(new)
            while len(self._minutes) > self.max_minutes:
                self._minutes.popitem(last=False)
        return graph
