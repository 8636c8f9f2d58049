"""Read queries behind the X-Ray API and the viewer. Each function takes a read connection;
answers are in the service's response shapes (times as epoch seconds)."""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Generator
from typing import Any

import orjson

from xrayd.store.filters import GroupResolver, Node, Sql, parse
from xrayd.store.merge import merge
from xrayd.store.summary import Trace

PAGE_SIZE = 100
MAX_BATCH_TRACE_IDS = 5
GRAPH_TRACE_LIMIT = 20000


class QueryError(Exception):
    """A request the store cannot answer as asked (the API's InvalidRequestException)."""


def encode_token(start: float, trace_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([start, trace_id])).decode()


def decode_token(token: str) -> tuple[float, str]:
    try:
        start, trace_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return float(start), str(trace_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise QueryError("Invalid NextToken") from None


# Traces whose documents a filter is checked on, per call at most: past that the page ends
# early with a NextToken (as the service answers a partial scan), so a call stays short.
MAX_CHECKED = 2000
# How GetTraceSummaries' TimeRangeType picks traces: (condition, the matched time).
TIME_RANGES = {
    None: ("t.start >= ? AND t.start <= ?", "t.start"),
    "Event": ("t.updated >= ? AND t.updated <= ?", "t.updated"),
    "Service": ("t.end >= ? AND t.end <= ?", "t.end"),
    "TraceId": ("t.trace_id >= ? AND t.trace_id < ?", "t.start"),
}


def _range(kind: str | None, start: float, end: float) -> tuple[str, list[Any], str]:
    if kind not in TIME_RANGES:
        raise QueryError(f"TimeRangeType {kind!r} is not one of TraceId, Event, Service")
    where, matched = TIME_RANGES[kind]
    if kind == "TraceId":  # trace ids start with their epoch second in 8 hex digits
        low = max(0, min(int(start), 0xFFFFFFFF))
        high = max(0, min(int(end) + 1, 0xFFFFFFFF + 1))
        return where, [f"1-{low:08x}", f"1-{high:08x}" if high <= 0xFFFFFFFF else "1-~"], \
            matched
    return where, [start, end], matched


def trace_summaries(
    conn: sqlite3.Connection,
    start: float,
    end: float,
    filter_expression: str | None = None,
    next_token: str | None = None,
    page_size: int = PAGE_SIZE,
    time_range_type: str | None = None,
    groups: GroupResolver | None = None,
) -> dict[str, Any]:
    where, range_params, matched_column = _range(time_range_type, start, end)
    node = parse(filter_expression, groups) if filter_expression else None
    condition = node.sql() if node is not None else Sql.exact("1")
    processed = conn.execute(f"SELECT count(*) FROM traces t WHERE {where}",
                             range_params).fetchone()[0]
    token_sql, token_params = "", []
    if next_token:
        after_start, after_id = decode_token(next_token)
        token_sql = " AND (t.start < ? OR (t.start = ? AND t.trace_id < ?))"
        token_params = [after_start, after_start, after_id]
    found: list[tuple[Any, ...]] = []
    models: dict[int, Trace] = {}
    checked = 0
    last: tuple[float, str] | None = None
    more = False
    candidates = _candidates(conn, node, condition, f"{where}{token_sql}",
                             [*range_params, *token_params], matched_column)
    for row, model in candidates:
        tkey, trace_id, t_start, _documents, _matched, _sure = row
        if len(found) == page_size or checked >= MAX_CHECKED:
            more = True
            break
        last = (t_start, trace_id)
        if model is not None:
            checked += 1
            if node is None or not node.match(model):
                continue
            models[tkey] = model
        found.append(row)
    candidates.close()
    summaries = []
    for tkey, trace_id, _start, documents, matched_time, _sure in found:
        model = models.get(tkey) or trace_model(conn, tkey, trace_id, documents)
        summaries.append(model.summary(matched_time))
    answer: dict[str, Any] = {
        "TraceSummaries": summaries,
        "ApproximateTime": end,
        "TracesProcessedCount": processed,
    }
    if more and last is not None:
        answer["NextToken"] = encode_token(*last)
    return answer


def _candidates(conn: sqlite3.Connection, node: Node | None, condition: Sql, where: str,
                params: list[Any], extra: str = "NULL"
                ) -> Generator[tuple[tuple[Any, ...], Trace | None], None, None]:
    """Traces that may match, newest first, as (row, None) when SQL decided they match, else
    (row, their model) for the caller to check. Rows: key, id, start, documents, extra, sure."""
    cursor = conn.execute(
        f"SELECT t.pk, t.trace_id, t.start, t.documents, {extra}, {condition.sure} "
        f"FROM traces t WHERE {where} AND {condition.maybe} "
        "ORDER BY t.start DESC, t.trace_id DESC",
        (*condition.sure_params, *params, *condition.maybe_params))
    try:
        for row in cursor:
            tkey, trace_id, _start, documents, _extra, sure = row
            yield row, None if sure or node is None else trace_model(conn, tkey, trace_id,
                                                                     documents)
    finally:
        cursor.close()


def start_span(conn: sqlite3.Connection) -> tuple[float | None, float | None]:
    """The earliest and latest start time of the stored traces (None, None when empty)."""
    first = conn.execute("SELECT min(start) FROM traces").fetchone()[0]
    last = conn.execute("SELECT max(start) FROM traces").fetchone()[0]
    return first, last


def trace_keys_matching(conn: sqlite3.Connection, start: float, end: float, expression: str,
                        groups: GroupResolver | None = None, limit: int = GRAPH_TRACE_LIMIT,
                        max_checked: int = GRAPH_TRACE_LIMIT) -> list[int]:
    """Keys of the newest traces (by start time, in [start, end]) that a filter expression
    selects, at most ``limit``; at most ``max_checked`` are checked on their documents (for a
    group's service graph). FilterError for a bad expression."""
    node = parse(expression, groups)
    keys: list[int] = []
    checked = 0
    candidates = _candidates(conn, node, node.sql(), "t.start >= ? AND t.start <= ?",
                             [start, end])
    for row, model in candidates:
        if len(keys) >= limit or checked >= max_checked:
            break
        if model is not None:
            checked += 1
            if not node.match(model):
                continue
        keys.append(row[0])
    candidates.close()
    return keys


def trace_model(conn: sqlite3.Connection, tkey: int, trace_id: str, revision: int) -> Trace:
    """The stored trace as X-Ray describes it (root, services, root causes)."""
    segments, orphans = documents_of(conn, tkey)
    return Trace(trace_id, segments, orphans, revision)


def known_trace_key(conn: sqlite3.Connection, trace_id: str) -> int | None:
    """The store's key of a trace id, None when the trace is not stored."""
    row = conn.execute("SELECT pk FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
    return None if row is None else row[0]


def trace_documents(conn: sqlite3.Connection, trace_id: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(segments with their separately sent subsegments merged in, orphan subsegments)."""
    tkey = known_trace_key(conn, trace_id)
    if tkey is None:
        return [], []
    return documents_of(conn, tkey)


def documents_of(conn: sqlite3.Connection, tkey: int
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    segments: list[dict[str, Any]] = []
    subsegments: list[dict[str, Any]] = []
    for kind, doc in conn.execute(
        "SELECT kind, doc FROM segments WHERE tpk = ? ORDER BY start, pk", (tkey,)
    ):
        parsed = orjson.loads(doc)
        (segments if kind == "segment" else subsegments).append(parsed)
    return merge(segments, subsegments)


def batch_get_traces(conn: sqlite3.Connection, trace_ids: list[str]) -> dict[str, Any]:
    traces = []
    unprocessed = []
    for trace_id in trace_ids:
        tkey = known_trace_key(conn, trace_id)
        row = None if tkey is None else conn.execute(
            "SELECT start, end FROM traces WHERE pk = ?", (tkey,)).fetchone()
        if row is None:
            unprocessed.append(trace_id)
            continue
        segments, orphans = trace_documents(conn, trace_id)
        start, end = row
        traces.append({
            "Id": trace_id,
            "Duration": (end - start) if end is not None else 0.0,
            "LimitExceeded": False,
            "Segments": [
                {"Id": doc["id"], "Document": orjson.dumps(doc).decode()}
                for doc in segments + orphans
            ],
        })
    return {"Traces": traces, "UnprocessedTraceIds": unprocessed}


def trace_keys_between(conn: sqlite3.Connection, start: float, end: float,
                       limit: int = GRAPH_TRACE_LIMIT) -> list[int]:
    return [row[0] for row in conn.execute(
        "SELECT pk FROM traces WHERE start >= ? AND start <= ? "
        "ORDER BY start DESC LIMIT ?", (start, end, limit))]


def rejected(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    return [
        {"Received": received, "ErrorCode": code, "Reason": reason,
         "Document": doc.decode("utf-8", "replace") if isinstance(doc, bytes) else str(doc)}
        for received, code, reason, doc in conn.execute(
            "SELECT received, code, reason, doc FROM rejected ORDER BY pk DESC LIMIT ?", (limit,))
    ]


def stats(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        "traces": conn.execute("SELECT count(*) FROM traces").fetchone()[0],
        "segments": conn.execute("SELECT count(*) FROM segments").fetchone()[0],
        "rejected": conn.execute("SELECT count(*) FROM rejected").fetchone()[0],
    }
