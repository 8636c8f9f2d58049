"""Service graphs over long ranges without reading every trace each time: the graph of each
whole minute (traces that started in it) is kept, compacted to counts, and merged with the
graphs of the range's partial minutes, read afresh. Kept apart by key: the plain graph (key
None) and each group's (its filter expression), whose rows come from a reader of their own.

Kept minutes follow the store by its segment rows' keys (they increase as rows are stored):
* a trace all of whose rows are new since the last look is added to its minute's plain graph
  (traffic of new traces is counted once, as it arrives); a group's minute is dropped instead;
* a minute one of whose earlier traces got a new row (a late document) is dropped, read afresh
  by the next build;
* a minute one of whose in-progress rows was replaced (completed, or sent again in progress:
  the store replaces such rows in place, under the same key) is dropped;
* minutes retention emptied are dropped.
Every read is bounded by the row key of its look, so a row is counted by one path only. A
completed document sent again is not seen (docs/offline.md)."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from xrayd.store.graph import MINUTE, Graph
from xrayd.store.graph_rows import COLUMNS, fill, select

SETTLE = 0.0
MAX_MINUTES = 75  # the last hour, and some
MAX_KEYS = 8  # the plain graph and the groups asked for most recently
_END, _PK, _RECEIVED = 7, 11, 12  # of a row as graph_rows reads it

# The segment rows, with keys up to the last argument, of the traces that start in
# [start, end] ([start, end) when the flag is set).
RowReader = Callable[[sqlite3.Connection, float, float, bool, int], Iterable[tuple]]


def all_traces(conn: sqlite3.Connection, start: float, end: float, end_open: bool, upto: int
               ) -> Iterable[tuple]:
    return select(conn, start, end, ("s.pk <= ?", [upto]), end_open)


@dataclass(slots=True)
class _Minute:
    graph: Graph
    pending: dict[int, float] = field(default_factory=dict)  # in-progress rows: key, received


def _tracked(rows: Iterable[tuple], pending: dict[int, float]) -> Iterator[tuple]:
    """The rows, noting those in progress (their end unknown)."""
    for row in rows:
        if row[_END] is None:
            pending[row[_PK]] = row[_RECEIVED]
        yield row


class GraphCache:
    def __init__(self, settle: float = SETTLE, max_minutes: int = MAX_MINUTES,
                 clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self.settle = settle
        self.max_minutes = max_minutes
        self.max_keys = max_keys
        self.clock = clock
        self._kept: OrderedDict[Hashable, OrderedDict[int, _Minute]] = OrderedDict()
        self._seen_row: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Minutes kept, over every key."""
        return sum(len(minutes) for minutes in self._kept.values())

    def _drop(self, minute: int) -> None:
        for minutes in self._kept.values():
            minutes.pop(minute, None)

    def _follow(self, conn: sqlite3.Connection) -> None:
        """Bring the kept minutes up to the store's newest row (see the module's doc)."""
        top = conn.execute("SELECT max(pk) FROM segments").fetchone()[0] or 0
        seen = self._seen_row
        if seen is not None and top < seen:  # the newest rows were deleted: start afresh
            self._kept.clear()
        elif seen is not None and top > seen and len(self):
            added: defaultdict[int, list[int]] = defaultdict(list)
            # each trace with new rows: its minute, and its minute before them (a document
            # that starts earlier moves the trace to an earlier minute)
            for tpk, minute, before in conn.execute(
                    "SELECT t.pk, CAST(t.start / ? AS INTEGER), (SELECT CAST(min(o.start) / ? "
                    "AS INTEGER) FROM segments o WHERE o.tpk = t.pk AND o.pk <= ?) FROM traces t "
                    "WHERE t.pk IN (SELECT DISTINCT tpk FROM segments WHERE pk > ? AND pk <= ?)",
                    (MINUTE, MINUTE, seen, seen, top)):
                if before is not None:
                    for changed in {minute, before}:
                        self._drop(changed)
                        added.pop(changed, None)
                elif any(minute in minutes for minutes in self._kept.values()):
                    added[minute].append(tpk)
            plain = self._kept.get(None, {})
            for minute, keys in added.items():
                for key, minutes in self._kept.items():
                    if key is not None:
                        minutes.pop(minute, None)
                kept = plain.get(minute)
                if kept is not None:  # a new graph: answers being built refer to the old one
                    rows = conn.execute(
                        f"SELECT {COLUMNS} FROM traces t CROSS JOIN segments s ON s.tpk = t.pk "
                        "WHERE t.pk IN (SELECT value FROM json_each(?)) AND s.pk <= ?",
                        (orjson.dumps(keys).decode(), top))
                    graph = Graph()
                    graph.merge(kept.graph)
                    kept.graph = fill(graph, _tracked(rows, kept.pending)).compact()
        self._seen_row = top
        self._forget_replaced(conn)
        oldest = conn.execute("SELECT min(start) FROM traces").fetchone()[0]
        for minutes in self._kept.values():
            for minute in [m for m in minutes if oldest is None or m * MINUTE < oldest]:
                del minutes[minute]

    def _forget_replaced(self, conn: sqlite3.Connection) -> None:
        """Drop the minutes whose in-progress rows were replaced in place since read."""
        pending = {pk: (minute, received) for minutes in self._kept.values()
                   for minute, kept in minutes.items() for pk, received in kept.pending.items()}
        if not pending:
            return
        now = dict(conn.execute("SELECT pk, received FROM segments WHERE pk IN "
                                "(SELECT value FROM json_each(?))",
                                (orjson.dumps(list(pending)).decode(),)))
        for pk, (minute, received) in pending.items():
            if now.get(pk) != received:
                self._drop(minute)

    def build(self, conn: sqlite3.Connection, start: float, end: float,
              rows: RowReader = all_traces, key: Hashable = None) -> Graph:
        """The graph of the traces that start in [start, end] (of those ``rows`` reads, kept
        under ``key``). The lock is held to follow the store, look minutes up and keep new
        ones: two builds read the store's new minutes at once."""
        first = math.ceil(start / MINUTE)
        last = math.floor(end / MINUTE)  # whole minutes: [first, last)
        with self._lock:
            self._follow(conn)
            seen = self._seen_row or 0
            minutes = self._kept.get(key) or OrderedDict()
            kept = {minute: minutes.get(minute) for minute in range(first, last)}
            for minute, found in kept.items():
                if found is not None:
                    minutes.move_to_end(minute)
            # a kept graph is merged into the answer, which must not change it later
            graph = Graph()
            for found in kept.values():
                if found is not None:
                    graph.merge(found.graph)
        if first >= last:
            return fill(graph, rows(conn, start, end, False, seen))
        settled = self.clock() - self.settle
        fill(graph, rows(conn, start, first * MINUTE, True, seen))
        new: dict[int, _Minute] = {}
        for minute, found in kept.items():
            if found is not None:
                continue
            begin, stop = minute * MINUTE, (minute + 1) * MINUTE
            if stop > settled:
                fill(graph, rows(conn, begin, stop, True, seen))
                continue
            fresh = new[minute] = _Minute(Graph())
            fill(fresh.graph, _tracked(rows(conn, begin, stop, True, seen), fresh.pending))
            graph.merge(fresh.graph.compact())
        fill(graph, rows(conn, last * MINUTE, end, False, seen))
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
