"""From a segment document to the rows the store indexes. Pure: bytes in, records out.

A document is checked as the X-Ray service checks it (required fields, trace id format); what is
indexed covers the whole entity tree, so annotations and errors of embedded subsegments count for
their trace, as they do in X-Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

TRACE_ID = re.compile(r"^1-[0-9a-fA-F]{8}-[0-9a-fA-F]{24}$")
REMOTE_NAMESPACES = ("aws", "remote")
MAX_DEPTH = 64


class BadDocument(Exception):
    """A document the store rejects; ``code`` is the service's ErrorCode."""

    def __init__(self, code: str, message: str, segment_id: str = "", trace_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.segment_id = segment_id
        self.trace_id = trace_id


@dataclass
class Call:
    """A subsegment that calls a downstream service (namespace aws or remote)."""

    id: str
    name: str
    namespace: str
    start: float
    end: float | None
    error: bool
    fault: bool
    throttle: bool
    owner_id: str | None = None  # None: the document that carries it


@dataclass
class Record:
    trace_id: str
    id: str
    parent_id: str | None
    kind: str  # "segment" or "subsegment" (a subsegment sent as its own document)
    name: str
    origin: str | None
    start: float
    end: float | None
    in_progress: bool
    error: bool
    fault: bool
    throttle: bool
    http_method: str | None = None
    http_status: int | None = None
    http_url: str | None = None
    user: str | None = None
    annotations: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    doc: bytes = b""


def _number(value: Any, name: str, seg_id: str, trace_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadDocument("InvalidSegment", f"{name} is not a number", seg_id, trace_id)
    return float(value)


def _walk(entity: dict, record: Record, depth: int) -> None:
    """Collect annotations, calls and error flags of ``entity`` and its nested subsegments."""
    if depth > MAX_DEPTH:
        return
    annotations = entity.get("annotations")
    if isinstance(annotations, dict):
        for key, value in annotations.items():
            if isinstance(value, str | int | float | bool):
                record.annotations.append((str(key), value))
    record.error |= entity.get("error") is True
    record.fault |= entity.get("fault") is True
    record.throttle |= entity.get("throttle") is True
    subsegments = entity.get("subsegments")
    if not isinstance(subsegments, list):
        return
    for sub in subsegments:
        if not isinstance(sub, dict):
            continue
        namespace = sub.get("namespace")
        if namespace in REMOTE_NAMESPACES and isinstance(sub.get("id"), str):
            start = sub.get("start_time")
            end = sub.get("end_time")
            record.calls.append(Call(
                sub["id"], str(sub.get("name") or ""), namespace,
                float(start) if isinstance(start, int | float) else record.start,
                float(end) if isinstance(end, int | float) else None,
                sub.get("error") is True, sub.get("fault") is True, sub.get("throttle") is True,
            ))
        _walk(sub, record, depth + 1)


def _http(entity: dict, record: Record) -> None:
    http = entity.get("http")
    if not isinstance(http, dict):
        return
    request = http.get("request")
    if isinstance(request, dict):
        if isinstance(request.get("method"), str):
            record.http_method = request["method"]
        if isinstance(request.get("url"), str):
            record.http_url = request["url"]
    response = http.get("response")
    if isinstance(response, dict):
        status = response.get("status")
        if isinstance(status, int) and not isinstance(status, bool):
            record.http_status = status


def parse(doc: bytes) -> Record:
    """The record of one document, or BadDocument with the service's error code."""
    try:
        data = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        raise BadDocument("InvalidSegment", f"Invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadDocument("InvalidSegment", "A segment document must be a JSON object")
    seg_id = data.get("id")
    if not isinstance(seg_id, str) or not seg_id:
        raise BadDocument("MissingId", "Missing segment ID")
    trace_id = data.get("trace_id")
    if not isinstance(trace_id, str) or not trace_id:
        raise BadDocument("InvalidTraceId", "Missing trace ID", seg_id)
    if not TRACE_ID.match(trace_id):
        raise BadDocument("InvalidTraceId", f"Invalid trace ID {trace_id[:64]!r}", seg_id,
                          trace_id)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise BadDocument("InvalidName", "Missing segment name", seg_id, trace_id)
    if "start_time" not in data:
        raise BadDocument("InvalidSegment", "Missing start_time", seg_id, trace_id)
    start = _number(data["start_time"], "start_time", seg_id, trace_id)
    in_progress = data.get("in_progress") is True
    end: float | None = None
    if "end_time" in data and not in_progress:
        end = _number(data["end_time"], "end_time", seg_id, trace_id)
    elif not in_progress:
        raise BadDocument("InvalidSegment", "Missing end_time or in_progress", seg_id, trace_id)
    kind = "subsegment" if data.get("type") == "subsegment" else "segment"
    parent_id = data.get("parent_id")
    if parent_id is not None and not isinstance(parent_id, str):
        raise BadDocument("InvalidSegment", "parent_id is not a string", seg_id, trace_id)
    if kind == "subsegment" and not parent_id:
        raise BadDocument("InvalidSegment", "Missing parent_id of a subsegment", seg_id,
                          trace_id)
    origin = data.get("origin")
    record = Record(
        trace_id=trace_id, id=seg_id, parent_id=parent_id or None, kind=kind, name=name,
        origin=origin if isinstance(origin, str) else None, start=start, end=end,
        in_progress=in_progress, error=False, fault=False, throttle=False, doc=doc,
    )
    if kind == "segment":
        _http(data, record)
        user = data.get("user")
        if isinstance(user, str):
            record.user = user
    namespace = data.get("namespace")
    if kind == "subsegment" and namespace in REMOTE_NAMESPACES:
        record.calls.append(Call(seg_id, name, namespace, start, end, data.get("error") is True,
                                 data.get("fault") is True, data.get("throttle") is True,
                                 owner_id=parent_id))
    _walk(data, record, 0)
    return record


def remote_node_type(call: Call) -> str:
    """The service-graph node type of a downstream call, as X-Ray names it."""
    if call.namespace == "aws":
        return f"AWS::{call.name}"
    return "remote"
