"""The X-Ray API served by the daemon in offline mode: the service's REST-JSON paths and shapes,
so boto3, the AWS CLI and the SDKs work with an endpoint URL pointing at xrayd. Requests are not
signed-checked (everything stays on this machine); bad requests get the service's error shape.
Store reads run in a small thread pool, each thread with its own read-only connection. Served by
the daemon's threaded HTTP server (server/threaded.py)."""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from xrayd.logs import RateLimitedLog
from xrayd.sampling.engine import PersistError, SamplingEngine, SamplingError
from xrayd.server.policy import api_policy
from xrayd.server.threaded import Handler, Request, Response, ThreadedHttpServer
from xrayd.store import graph, graph_rows, groups, queries, schema, timeseries
from xrayd.store.filters import FilterError
from xrayd.store.graph_cache import GraphCache, Warmer
from xrayd.store.groups import GroupError, GroupStore
from xrayd.store.queries import QueryError
from xrayd.store.writer import StoreWriter

MAX_BODY = 6 * 1024 * 1024
MAX_DOCUMENTS = 50
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_TRACE_IDS = 5


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def error_response(code: str, message: str, status: int = 400) -> Response:
    return Response(status, orjson.dumps({"__type": code, "message": message}),
                    [("x-amzn-ErrorType", code)], content_type="application/json")


def json_response(data: Any) -> Response:
    return Response(200, orjson.dumps(data), content_type="application/json")


class StoreReader:
    """Read-only connections, one per pool thread."""

    def __init__(self, path: str, workers: int = 2) -> None:
        self.path = path
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="store-read")

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = schema.connect(self.path, readonly=True)
        return conn

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on a pool thread (at most ``workers`` readers at once)."""
        return self.pool.submit(lambda: fn(self._conn(), *args)).result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def timestamp(body: dict[str, Any], key: str, required: bool = True) -> float | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError("InvalidRequestException", f"{key} is required")
        return None
    if isinstance(value, bool):
        raise ApiError("InvalidRequestException", f"{key} is not a timestamp")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError("InvalidRequestException", f"{key} is not a timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed.timestamp()
    raise ApiError("InvalidRequestException", f"{key} is not a timestamp")


def time_range(body: dict[str, Any]) -> tuple[float, float]:
    start = timestamp(body, "StartTime")
    end = timestamp(body, "EndTime")
    assert start is not None and end is not None
    if end < start:
        raise ApiError("InvalidRequestException", "EndTime must not be before StartTime")
    return start, end


def trace_ids(body: dict[str, Any], limit: int | None) -> list[str]:
    ids = body.get("TraceIds")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ApiError("InvalidRequestException", "TraceIds must be a non-empty list of strings")
    if limit is not None and len(ids) > limit:
        raise ApiError("InvalidRequestException", f"At most {limit} TraceIds per request")
    return ids


class XRayApi:
    def __init__(self, writer: StoreWriter, reader: StoreReader, sampling: SamplingEngine
                 ) -> None:
        self.writer = writer
        self.reader = reader
        self.sampling = sampling
        self.groups = GroupStore(writer.path if writer is not None else reader.path)
        self.graphs = GraphCache()
        self.warmer = Warmer(self.warm_graph)
        self._stop_warming = threading.Event()

    def warm_graph(self) -> None:
        """Read the last hour's graph, so its settled minutes are kept (graph_cache.Warmer)."""
        now = self.graphs.clock()
        self.reader.run(lambda conn: self.graphs.build(conn, now - 3600, now))

    def start_warming(self) -> threading.Thread:
        """The Warmer's thread (it ends with the reader, or ``stop_warming``)."""
        thread = threading.Thread(target=self.warmer.run, args=(self._stop_warming,),
                                  name="graph-warmer", daemon=True)
        thread.start()
        return thread

    def stop_warming(self) -> None:
        self._stop_warming.set()

    def operations(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The operations by path (all POST)."""
        return {
            "/TraceSegments": self.put_trace_segments,
            "/TelemetryRecords": self.put_telemetry_records,
            "/TraceSummaries": self.get_trace_summaries,
            "/Traces": self.batch_get_traces,
            "/ServiceGraph": self.get_service_graph,
            "/TraceGraph": self.get_trace_graph,
            "/TimeSeriesServiceStatistics": self.get_time_series_service_statistics,
            "/CreateGroup": self.create_group,
            "/GetGroup": self.get_group,
            "/Groups": self.get_groups,
            "/UpdateGroup": self.update_group,
            "/DeleteGroup": self.delete_group,
            "/GetSamplingRules": self.get_sampling_rules,
            "/SamplingTargets": self.get_sampling_targets,
            "/CreateSamplingRule": self.create_sampling_rule,
            "/UpdateSamplingRule": self.update_sampling_rule,
            "/DeleteSamplingRule": self.delete_sampling_rule,
            "/SamplingStatisticSummaries": self.get_sampling_statistic_summaries,
        }

    @staticmethod
    def call(op: Callable[[dict[str, Any]], Any], raw: bytes) -> Response:
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return error_response("SerializationException", f"Request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return error_response("SerializationException", "Request body must be an object")
        try:
            return json_response(op(body))
        except RecursionError:  # a request nested deeper than the code that reads it
            return error_response("InvalidRequestException", "Request is nested too deeply")
        except ApiError as exc:
            return error_response(exc.code, str(exc), exc.status)
        except (FilterError, QueryError) as exc:
            return error_response("InvalidRequestException", str(exc))
        except SamplingError as exc:
            return error_response(exc.code, str(exc))
        except GroupError as exc:
            return error_response("InvalidRequestException", str(exc))

    # --- traces ----------------------------------------------------------------------
    def put_trace_segments(self, body: dict[str, Any]) -> dict[str, Any]:
        docs = body.get("TraceSegmentDocuments")
        if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
            raise ApiError("InvalidRequestException",
                           "TraceSegmentDocuments must be a list of strings")
        if len(docs) > MAX_DOCUMENTS:
            raise ApiError("InvalidRequestException",
                           f"Exceeding maximum segment count: {MAX_DOCUMENTS}")
        encoded = [d.encode("utf-8") for d in docs]
        unprocessed = []
        accepted = []
        for doc in encoded:
            if len(doc) > MAX_DOCUMENT_BYTES:
                unprocessed.append({"Id": "", "ErrorCode": "InvalidSegment",
                                    "Message": "Segment document larger than 64 kB"})
            else:
                accepted.append(doc)
        if accepted:
            rejected = self.writer.write(accepted)
            unprocessed.extend({"Id": r.id, "ErrorCode": r.code, "Message": r.message}
                               for r in rejected)
        return {"UnprocessedTraceSegments": unprocessed}

    def put_telemetry_records(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("TelemetryRecords"), list):
            raise ApiError("InvalidRequestException", "TelemetryRecords is required")
        return {}

    def get_trace_summaries(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)
        expression = body.get("FilterExpression")
        if expression is not None and not isinstance(expression, str):
            raise ApiError("InvalidRequestException", "FilterExpression must be a string")
        token = body.get("NextToken")
        if token is not None and not isinstance(token, str):
            raise ApiError("InvalidRequestException", "NextToken must be a string")
        range_type = body.get("TimeRangeType")
        if range_type is not None and range_type not in ("TraceId", "Event", "Service"):
            raise ApiError("InvalidRequestException",
                           "TimeRangeType must be one of TraceId, Event, Service")
        if body.get("Sampling") is True or body.get("SamplingStrategy") is not None:
            raise ApiError("InvalidRequestException",
                           "Sampling and SamplingStrategy are not supported offline: every "
                           "trace of the range is scanned")
        def summaries(conn) -> dict[str, Any]:
            return queries.trace_summaries(conn, start, end, expression or None, token or None,
                                           queries.PAGE_SIZE, range_type, groups.resolver(conn))

        return self.reader.run(summaries)

    def batch_get_traces(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.reader.run(queries.batch_get_traces, trace_ids(body, MAX_TRACE_IDS))

    def _graph(self, body: dict[str, Any], start: float, end: float) -> graph.Graph:
        """The graph of the traces that start in the range (of the request's group, if any:
        the traces its filter selects, as GetTraceSummaries would, at most
        queries.GRAPH_TRACE_LIMIT of the newest in each minute)."""
        expression = self.groups.filter_of(body.get("GroupName"), body.get("GroupARN"))
        self.warmer.asked()

        def build(conn) -> graph.Graph:
            # Only the stored traces' span is read: a range of years costs no more than the
            # store holds (the graph cache keeps an entry per minute of the range).
            oldest, newest = queries.start_span(conn)
            if oldest is None or end < oldest or start > newest:
                return graph.Graph()
            # Widened to whole minutes, which is what the graph cache keeps.
            low = max(start, math.floor(oldest / 60) * 60)
            high = min(end, (math.floor(newest / 60) + 1) * 60)
            if not expression:
                return self.graphs.build(conn, low, high)
            resolve = groups.resolver(conn)

            def rows(conn, begin: float, stop: float, end_open: bool, upto: int):
                last = math.nextafter(stop, -math.inf) if end_open else stop
                keys = queries.trace_keys_matching(conn, begin, last, expression, resolve)
                condition = ("t.pk IN (SELECT value FROM json_each(?)) AND s.pk <= ?",
                             [orjson.dumps(keys).decode(), upto])
                return graph_rows.select(conn, begin, last, condition)

            return self.graphs.build(conn, low, high, rows,
                                     key=(expression, groups.filters(conn)))

        return self.reader.run(build)

    def get_service_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)
        found = self._graph(body, start, end)
        self.reader.run(found.find_accounts)
        return {"StartTime": start, "EndTime": end, "Services": found.services(),
                "ContainsOldGroupVersions": False}

    def get_trace_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = trace_ids(body, None)
        return {"Services": self.reader.run(graph_rows.build_for_ids, ids)}

    def get_time_series_service_statistics(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)
        selector_text = body.get("EntitySelectorExpression")
        if selector_text is not None and (not isinstance(selector_text, str)
                                          or not 1 <= len(selector_text) <= 500):
            raise ApiError("InvalidRequestException",
                           "EntitySelectorExpression must be a string of 1 to 500 characters")
        selector = timeseries.parse_selector(selector_text)
        period = timeseries.check_period(body.get("Period"))
        forecast = body.get("ForecastStatistics")
        if forecast is not None and not isinstance(forecast, bool):
            raise ApiError("InvalidRequestException", "ForecastStatistics must be a boolean")
        found = self._graph(body, start, end)
        return {"TimeSeriesServiceStatistics": timeseries.series(found, selector, period),
                "ContainsOldGroupVersions": False}

    # --- groups ----------------------------------------------------------------------
    def create_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.groups.create(body)

    def get_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.groups.get(body)

    def get_groups(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.groups.list(body)

    def update_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.groups.update(body)

    def delete_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.groups.delete(body)

    # --- sampling --------------------------------------------------------------------
    # Every field is checked by the sampling engine as the service model has it (a request
    # that breaks it gets InvalidRequestException); a change the store cannot keep is refused.
    def get_sampling_rules(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.get_rules()

    def get_sampling_targets(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.targets(body.get("SamplingStatisticsDocuments"),
                                     body.get("SamplingBoostStatisticsDocuments"))

    def create_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        if "SamplingRule" not in body:
            raise ApiError("InvalidRequestException", "SamplingRule is required")
        return self._persisted(self.sampling.create_rule, body["SamplingRule"],
                               body.get("Tags"))

    def update_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._persisted(self.sampling.update_rule, body.get("SamplingRuleUpdate"))

    def delete_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._persisted(self.sampling.delete_rule, body.get("RuleName"),
                               body.get("RuleARN"))

    @staticmethod
    def _persisted(change: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            return change(*args)
        except PersistError as exc:
            raise ApiError("InternalFailure", str(exc), 500) from None

    def get_sampling_statistic_summaries(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.statistic_summaries()


def unknown(request: Request) -> Response:
    return error_response("UnknownOperationException",
                          f"No X-Ray operation at {request.method[:20]} {request.path[:200]}", 404)


def make_handler(api: XRayApi, viewer: Handler | None = None) -> Handler:
    """POST to an operation's path calls it; anything else goes to ``viewer`` (which answers
    None for what it does not serve), then gets UnknownOperationException."""
    operations = api.operations()

    def handle(request: Request) -> Response:
        op = operations.get(request.path)
        if op is not None and request.method == "POST":
            return api.call(op, request.body)
        if viewer is not None:
            answer = viewer(request)
            if answer is not None:
                return answer
        return unknown(request)

    return handle


def make_server(address: str, api: XRayApi, viewer: Handler | None = None,
                allowed_hosts: str = "", logs: RateLimitedLog | None = None
                ) -> ThreadedHttpServer:
    """The offline TCP server: the X-Ray API and the viewer, with the policy against DNS
    rebinding and cross-site requests (server/policy.py); every error in the service's shape."""
    api.start_warming()
    return ThreadedHttpServer(
        address, make_handler(api, viewer), max_body=MAX_BODY, name="offline-http",
        policy=api_policy(address, allowed_hosts).check, logs=logs,
        errors=lambda status, code, message: error_response(code, message, status),
        too_large=lambda: error_response("InvalidRequestException", "Request body too large",
                                         413))
