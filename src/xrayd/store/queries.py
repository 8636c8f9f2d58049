"""Read queries behind the X-Ray API and the viewer. Each function takes a read connection;
answers are in the service's response shapes (times as epoch seconds)."""

from __future__ import annotations

import base64
import binascii
import sqlite3
from typing import Any

import orjson

from xrayd.store.filters import compile_filter
from xrayd.store.merge import merge

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


def trace_summaries(
    conn: sqlite3.Connection,
    start: float,
    end: float,
    filter_expression: str | None = None,
    next_token: str | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    where = ["t.start >= ?", "t.start <= ?"]
    params: list[Any] = [start, end]
    if filter_expression:
        sql, extra = compile_filter(filter_expression)
        where.append(sql)
        params.extend(extra)
    count_sql = "SELECT count(*) FROM traces t WHERE t.start >= ? AND t.start <= ?"
    processed = conn.execute(count_sql, (start, end)).fetchone()[0]
    if next_token:
        after_start, after_id = decode_token(next_token)
        where.append("(t.start < ? OR (t.start = ? AND t.trace_id < ?))")
        params.extend([after_start, after_start, after_id])
    rows = conn.execute(
        "SELECT t.trace_id, t.start, t.end, t.root_start, t.root_end, t.error, t.fault, "
        "t.throttle, t.http_method, t.http_status, t.http_url, t.user, t.root_name, t.documents, "
        "t.annotations, t.services, t.pk "
        f"FROM traces t WHERE {' AND '.join(where)} "
        "ORDER BY t.start DESC, t.trace_id DESC LIMIT ?",
        (*params, page_size + 1),
    ).fetchall()
    more = len(rows) > page_size
    rows = rows[:page_size]
    partial = _partial_of(conn, [row[-1] for row in rows])
    summaries = []
    for (trace_id, t_start, t_end, r_start, r_end, error, fault, throttle, method, status, url,
         user, root_name, documents, notes, names, tkey) in rows:
        http: dict[str, Any] = {}
        if url is not None:
            http["HttpURL"] = url
        if status is not None:
            http["HttpStatus"] = status
        if method is not None:
            http["HttpMethod"] = method
        summary: dict[str, Any] = {
            "Id": trace_id,
            "StartTime": t_start,
            "Duration": (t_end - t_start) if t_end is not None else 0.0,
            "ResponseTime": ((r_end - r_start)
                             if r_end is not None and r_start is not None else 0.0),
            "HasFault": bool(fault),
            "HasError": bool(error),
            "HasThrottle": bool(throttle),
            "IsPartial": tkey in partial,
            "Http": http,
            "Annotations": {
                key: [{"AnnotationValue": _annotation_json(value), "ServiceIds": []}]
                for key, value in orjson.loads(notes).items()
            },
            "Users": [{"UserName": user, "ServiceIds": []}] if user else [],
            "ServiceIds": [{"Name": name, "Names": [name]}
                           for name in sorted(orjson.loads(names))],
            "Revision": documents,
        }
        if root_name:
            summary["EntryPoint"] = {"Name": root_name, "Names": [root_name]}
        summaries.append(summary)
    answer: dict[str, Any] = {
        "TraceSummaries": summaries,
        "ApproximateTime": end,
        "TracesProcessedCount": processed,
    }
    if more and rows:
        last = rows[-1]
        answer["NextToken"] = encode_token(last[1], last[0])
    return answer


def _annotation_json(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BooleanValue": value}
    if isinstance(value, int | float):
        return {"NumberValue": float(value)}
    return {"StringValue": str(value)}


def _partial_of(conn: sqlite3.Connection, keys: list[int]) -> set[int]:
    if not keys:
        return set()
    return {row[0] for row in conn.execute(
        "SELECT DISTINCT tpk FROM segments WHERE in_progress = 1 "
        "AND tpk IN (SELECT value FROM json_each(?))", (orjson.dumps(keys).decode(),))}


def known_trace_key(conn: sqlite3.Connection, trace_id: str) -> int | None:
    """The store's key of a trace id, None when the trace is not stored."""
    row = conn.execute("SELECT pk FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
    return None if row is None else row[0]


def trace_documents(conn: sqlite3.Connection, trace_id: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(segments with their separately sent subsegments merged in, orphan subsegments)."""
    segments: list[dict[str, Any]] = []
    subsegments: list[dict[str, Any]] = []
    tkey = known_trace_key(conn, trace_id)
    if tkey is None:
        return [], []
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
