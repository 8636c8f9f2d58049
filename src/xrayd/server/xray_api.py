"""The X-Ray API served by the daemon in offline mode: the service's REST-JSON paths and shapes,
so boto3, the AWS CLI and the SDKs work with an endpoint URL pointing at xrayd. Requests are not
signed-checked (everything stays on this machine); bad requests get the service's error shape.
Store reads run in a small thread pool, each thread with its own read-only connection."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from aiohttp import web

from xrayd.sampling.engine import SamplingEngine, SamplingError
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


def error_response(code: str, message: str, status: int = 400) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"__type": code, "message": message}),
        content_type="application/json", headers={"x-amzn-ErrorType": code},
    )


def json_response(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


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

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(self._conn(), *args))

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

    def routes(self) -> list[web.RouteDef]:
        ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
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
        return [web.post(path, self._wrap(op)) for path, op in ops.items()]

    @staticmethod
    def _wrap(op: Callable[[dict[str, Any]], Awaitable[Any]]):
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return error_response("InvalidRequestException", "Request body too large", 413)
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                return error_response("SerializationException", f"Request body is not JSON: {exc}")
            if not isinstance(body, dict):
                return error_response("SerializationException", "Request body must be an object")
            try:
                return json_response(await op(body))
            except ApiError as exc:
                return error_response(exc.code, str(exc), exc.status)
            except (FilterError, QueryError) as exc:
                return error_response("InvalidRequestException", str(exc))
            except SamplingError as exc:
                return error_response(exc.code, str(exc))
        return handler

    # --- traces ----------------------------------------------------------------------
    async def put_trace_segments(self, body: dict[str, Any]) -> dict[str, Any]:
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
            loop = asyncio.get_running_loop()
            rejected = await loop.run_in_executor(self.reader.pool, self.writer.write, accepted)
            unprocessed.extend({"Id": r.id, "ErrorCode": r.code, "Message": r.message}
                               for r in rejected)
        return {"UnprocessedTraceSegments": unprocessed}

    async def put_telemetry_records(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("TelemetryRecords"), list):
            raise ApiError("InvalidRequestException", "TelemetryRecords is required")
        return {}

    async def get_trace_summaries(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)
        expression = body.get("FilterExpression")
        if expression is not None and not isinstance(expression, str):
            raise ApiError("InvalidRequestException", "FilterExpression must be a string")
        token = body.get("NextToken")
        if token is not None and not isinstance(token, str):
            raise ApiError("InvalidRequestException", "NextToken must be a string")
        return await self.reader.run(queries.trace_summaries, start, end, expression or None,
                                     token or None)

    async def batch_get_traces(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.reader.run(queries.batch_get_traces, trace_ids(body, MAX_TRACE_IDS))

    async def get_service_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = time_range(body)

        def build(conn):
            return graph.build(conn, queries.trace_keys_between(conn, start, end))

        services = await self.reader.run(build)
        return {"StartTime": start, "EndTime": end, "Services": services,
                "ContainsOldGroupVersions": False}

    async def get_trace_graph(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = trace_ids(body, None)
        return {"Services": await self.reader.run(graph.build_for_ids, ids)}

    # --- sampling --------------------------------------------------------------------
    async def get_sampling_rules(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.get_rules()

    async def get_sampling_targets(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.targets(body.get("SamplingStatisticsDocuments"))

    async def create_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        if "SamplingRule" not in body:
            raise ApiError("InvalidRequestException", "SamplingRule is required")
        return self.sampling.create_rule(body["SamplingRule"])

    async def update_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.update_rule(body.get("SamplingRuleUpdate"))

    async def delete_sampling_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        name, arn = body.get("RuleName"), body.get("RuleARN")
        if not name and not arn:
            raise ApiError("InvalidRequestException", "RuleName or RuleARN is required")
        return self.sampling.delete_rule(name, arn)

    async def get_sampling_statistic_summaries(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.sampling.statistic_summaries()


async def _unknown(request: web.Request) -> web.Response:
    return error_response("UnknownOperationException",
                          f"No X-Ray operation at {request.method} {request.path}", 404)


def make_app(api: XRayApi, viewer_routes: list[web.RouteDef] | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(api.routes())
    if viewer_routes:
        app.add_routes(viewer_routes)
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app

