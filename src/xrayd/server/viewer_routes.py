"""The trace viewer's routes: the static files of the package's viewer/ folder, ``/trace/<id>``
(a redirect to the viewer's route for that trace), and the few JSON endpoints the X-Ray API has
no operation for (rejected inputs: the store's refused documents and the daemon's last rejected
datagrams, requests and spans; store and intake counts; the response-time distribution of a
query; the service map's layout). Every answer carries a Content-Security-Policy that allows
only the viewer's own files: no inline script or style, no other origin."""

from __future__ import annotations

import mimetypes
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson

from xrayd.rejections import RecentRejections, intake_counts
from xrayd.server import viewer_layout
from xrayd.server.threaded import Request, Response
from xrayd.server.xray_api import StoreReader, error_response, json_response
from xrayd.stats import Stats
from xrayd.store import groups, queries
from xrayd.store.filters import FilterError

STATIC = Path(__file__).resolve().parent / "viewer"
STATIC_PREFIX = "/viewer/"
TRACE_PREFIX = "/trace/"
TRACE_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
DISTRIBUTION_BINS = 40
MAX_LAYOUT_BODY = 512 * 1024
STORE_INTAKE = "store"  # the Intake of documents the store refused (any intake sent them)
SECURITY_HEADERS = [
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def static_file(name: str, cache_control: str | None = None) -> Response | None:
    """A file of the viewer folder by its plain name (no folders, so no way out of it)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC / name
    if not path.is_file():
        return None
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".js"):
        content_type = "text/javascript"
    if content_type.startswith("text/") or content_type.endswith(("javascript", "svg+xml")):
        content_type += "; charset=utf-8"
    headers = [("Cache-Control", cache_control or "no-cache")]
    return Response(200, path.read_bytes(), headers, content_type=content_type)


def distribution(conn: sqlite3.Connection, start: float, end: float, expression: str | None,
                 bins: int = DISTRIBUTION_BINS) -> dict[str, Any]:
    """Counts of the matching traces' response times in ``bins`` equal buckets from 0 to the
    largest (traces still in progress have none and are left out). With a filter, the traces
    it selects as GetTraceSummaries would, at most queries.GRAPH_TRACE_LIMIT of the newest."""
    where = ["t.start >= ?", "t.start <= ?", "t.root_end IS NOT NULL",
             "t.root_start IS NOT NULL"]
    params: list[Any] = [start, end]
    if expression:
        keys = queries.trace_keys_matching(conn, start, end, expression,
                                           groups.resolver(conn))
        where.append("t.pk IN (SELECT value FROM json_each(?))")
        params.append(orjson.dumps(keys).decode())
    values = [max(0.0, v) for (v,) in conn.execute(
        f"SELECT t.root_end - t.root_start FROM traces t WHERE {' AND '.join(where)}", params)]
    if not values:
        return {"total": 0, "bins": []}
    top = max(values) or 1e-3
    width = top / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int(value / width))] += 1
    return {"total": len(values), "max": top,
            "bins": [{"from": i * width, "to": (i + 1) * width, "count": c}
                     for i, c in enumerate(counts)]}


# The list's columns the whole query can be sorted by: the traces table's columns (the same
# times GetTraceSummaries reports); traces still in progress (no end) come last either way.
SORT_COLUMNS = {"start": "t.start", "response": "t.root_end - t.root_start",
                "duration": "t.end - t.start"}
SORTED_PAGE = 100
MAX_OFFSET = 100_000


def sorted_summaries(conn: sqlite3.Connection, start: float, end: float,
                     expression: str | None, column: str, descending: bool, offset: int = 0,
                     page: int = SORTED_PAGE) -> dict[str, Any]:
    """A page of the query's trace summaries in the order of a column, as GetTraceSummaries
    would describe them (which has no order of its own but newest first). With a filter, the
    traces it selects as the distribution does (at most queries.GRAPH_TRACE_LIMIT newest)."""
    where = ["t.start >= ?", "t.start <= ?"]
    params: list[Any] = [start, end]
    processed = conn.execute("SELECT count(*) FROM traces t WHERE t.start >= ? AND t.start <= ?",
                             params).fetchone()[0]
    if expression:
        keys = queries.trace_keys_matching(conn, start, end, expression,
                                           groups.resolver(conn))
        where.append("t.pk IN (SELECT value FROM json_each(?))")
        params.append(orjson.dumps(keys).decode())
    order = SORT_COLUMNS[column]
    rows = conn.execute(
        f"SELECT t.pk, t.trace_id, t.documents, t.start FROM traces t "
        f"WHERE {' AND '.join(where)} ORDER BY ({order}) IS NULL, {order} "
        f"{'DESC' if descending else 'ASC'}, t.start DESC, t.trace_id DESC LIMIT ? OFFSET ?",
        [*params, page + 1, offset]).fetchall()
    answer: dict[str, Any] = {
        "TraceSummaries": [queries.trace_model(conn, pk, trace_id, documents).summary(t_start)
                           for pk, trace_id, documents, t_start in rows[:page]],
        "TracesProcessedCount": processed,
    }
    if len(rows) > page and offset + page < MAX_OFFSET:
        answer["NextOffset"] = offset + page
    return answer


def rejected_by_code(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT code, count(*) FROM rejected GROUP BY code").fetchall())


def _number(values: dict[str, list[str]], name: str) -> float:
    try:
        value = float(values[name][-1])
    except (KeyError, ValueError):
        raise ValueError(f"{name} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a number")
    return value


def routes(reader: StoreReader, info: dict[str, object], stats: Stats | None = None,
           rejections: RecentRejections | None = None):
    """The viewer's handler: a Response, or None for a request it does not serve. ``stats``
    and ``rejections``: the daemon's counters and last rejected inputs, when it has them."""

    def rejected(request: Request) -> Response:
        values = parse_qs(request.query).get("limit", ["100"])
        try:
            limit = max(1, min(500, int(values[-1])))
        except ValueError:
            limit = 100
        rows = [{**row, "Intake": STORE_INTAKE} for row in reader.run(queries.rejected, limit)]
        if rejections is not None:
            rows = sorted([*rows, *rejections.recent(limit)], key=lambda r: -r["Received"])
        return json_response({"Rejected": rows[:limit]})

    def counts(_request: Request) -> Response:
        answer = {**reader.run(queries.stats), "rejected_by_code": reader.run(rejected_by_code),
                  **info}
        if stats is not None:
            answer["intake"] = intake_counts(stats)
        if rejections is not None:
            answer["rejections_not_kept"] = rejections.not_kept
        return json_response(answer)

    def response_times(request: Request) -> Response:
        values = parse_qs(request.query)
        try:
            start, end = _number(values, "start"), _number(values, "end")
        except ValueError as exc:
            return error_response("InvalidRequestException", str(exc))
        expression = values.get("filter", [""])[-1].strip() or None
        try:
            return json_response(reader.run(distribution, start, end, expression))
        except FilterError as exc:
            return error_response("InvalidRequestException", str(exc))

    def sorted_page(request: Request) -> Response:
        values = parse_qs(request.query)
        try:
            start, end = _number(values, "start"), _number(values, "end")
            offset = int(values.get("offset", ["0"])[-1])
        except ValueError as exc:
            return error_response("InvalidRequestException", str(exc))
        column, _, direction = values.get("sort", [""])[-1].partition(":")
        if column not in SORT_COLUMNS or direction not in ("asc", "desc"):
            return error_response("InvalidRequestException",
                                  f"sort must be one of {', '.join(SORT_COLUMNS)} with :asc "
                                  "or :desc")
        if not 0 <= offset <= MAX_OFFSET:
            return error_response("InvalidRequestException", "offset out of range")
        expression = values.get("filter", [""])[-1].strip() or None
        try:
            return json_response(reader.run(sorted_summaries, start, end, expression, column,
                                            direction == "desc", offset))
        except FilterError as exc:
            return error_response("InvalidRequestException", str(exc))

    laying_out = threading.Lock()

    def layout(request: Request) -> Response:
        if len(request.body) > MAX_LAYOUT_BODY:
            return error_response("InvalidRequestException", "layout request too large", 413)
        try:
            sizes, edges = viewer_layout.parse(orjson.loads(request.body))
        except (orjson.JSONDecodeError, viewer_layout.LayoutError) as exc:
            return error_response("InvalidRequestException", str(exc))
        # One layout at a time: a large one takes a second of CPU, and parallel requests would
        # take every server thread.
        if not laying_out.acquire(blocking=False):
            return error_response("ThrottledException", "another layout is being computed", 429)
        try:
            return json_response(viewer_layout.layout(sizes, edges))
        finally:
            laying_out.release()

    gets = {"/api/rejected": rejected, "/api/stats": counts, "/api/distribution": response_times,
            "/api/sorted": sorted_page}

    def serve(request: Request) -> Response | None:
        path = request.path
        if request.method == "POST":
            return layout(request) if path == "/api/layout" else None
        if request.method not in ("GET", "HEAD"):
            return None
        if path == "/":
            return static_file("index.html")
        if path == "/favicon.ico":
            return static_file("favicon.svg")
        if path in gets:
            return gets[path](request)
        if path.startswith(TRACE_PREFIX):
            trace_id = path[len(TRACE_PREFIX):]
            if not TRACE_ID.fullmatch(trace_id):
                return None
            return Response(302, b"", [("Location", f"/#/trace/{quote(trace_id)}")],
                            content_type="text/plain; charset=utf-8")
        if path.startswith(STATIC_PREFIX):
            return static_file(path[len(STATIC_PREFIX):], "no-cache")
        return None

    def handle(request: Request) -> Response | None:
        answer = serve(request)
        if answer is not None:
            answer.headers = [*answer.headers, *SECURITY_HEADERS]
        return answer

    return handle
