"""The X-Ray API served by the daemon in offline mode: the service's REST-JSON paths and shapes,
so boto3, the AWS CLI and the SDKs work with an endpoint URL pointing at xrayd. Requests are not
signed-checked (everything stays on this machine); bad requests get the service's error shape.
Store reads run in a small thread pool, each thread with its own read-only connection. Served by
the daemon's threaded HTTP server (server/threaded.py)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from xrayd.logs import RateLimitedLog
from xrayd.sampling.engine import SamplingEngine, SamplingError
from xrayd.server.policy import api_policy
from xrayd.server.threaded import Handler, Request, Response, ThreadedHttpServer
from xrayd.store import graph, queries, schema
from xrayd.store.filters import FilterError
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

    def operations(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The operations by path (all POST)."""
        return {
            "/TraceSegments": self.put_trace_segments,
            "/TelemetryRecords": self.put_telemetry_records,
            "/TraceSummaries": self.get_trace_summaries,
            "/Traces": self.batch_get_traces,
            "/ServiceGraph": self.get_service_graph,
            "/TraceGraph": self.get_trace_graph,
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
        return self.reader.run(queries.trace_summaries, start, end, expression or None,
                                     token or None)

    def batch_get_traces(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.reader.run(queries.batch_get_traces, trace_ids(body, MAX_TRACE_IDS))

    def get_service_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)

        def build(conn):
            return graph.build(conn, queries.trace_keys_between(conn, start, end))

        services = self.reader.run(build)
        return {"StartTime": start, "EndTime": end, "Services": services,
                "ContainsOldGroupVersions": False}

    def get_trace_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = trace_ids(body, None)
        return {"Services": self.reader.run(graph.build_for_ids, ids)}

    # --- sampling --------------------------------------------------------------------
    def get_sampling_rules(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.get_rules()

    def get_sampling_targets(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.targets(body.get("SamplingStatisticsDocuments"))

    def create_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        if "SamplingRule" not in body:
            raise ApiError("InvalidRequestException", "SamplingRule is required")
        return self.sampling.create_rule(body["SamplingRule"])

    def update_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.update_rule(body.get("SamplingRuleUpdate"))

    def delete_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        name, arn = body.get("RuleName"), body.get("RuleARN")
        if not name and not arn:
            raise ApiError("InvalidRequestException", "RuleName or RuleARN is required")
        return self.sampling.delete_rule(name, arn)

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
    return ThreadedHttpServer(
        address, make_handler(api, viewer), max_body=MAX_BODY, name="offline-http",
        policy=api_policy(address, allowed_hosts).check, logs=logs,
        errors=lambda status, code, message: error_response(code, message, status),
        too_large=lambda: error_response("InvalidRequestException", "Request body too large",
                                         413))
