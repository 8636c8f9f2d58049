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


@dataclass(slots=True)
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


@dataclass(slots=True)
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


# orjson makes exactly these types; checking ``type(x) in`` a set is much cheaper than
# isinstance with a union, and the writer's hot path runs it for every field it reads.
_SCALARS = frozenset((str, int, float, bool))
_NUMBERS = frozenset((int, float))


def _number(value: Any, name: str, seg_id: str, trace_id: str) -> float:
    if type(value) not in _NUMBERS:
        raise BadDocument("InvalidSegment", f"{name} is not a number", seg_id, trace_id)
    return float(value)


def _walk(entity: dict, record: Record, depth: int) -> None:
    """Collect annotations, calls and error flags of ``entity`` and its nested subsegments."""
    get = entity.get
    annotations = get("annotations")
    if annotations and type(annotations) is dict:
        found = record.annotations
        for key, value in annotations.items():
            if type(value) in _SCALARS:
                found.append((key, value))
    if get("error") is True:
        record.error = True
    if get("fault") is True:
        record.fault = True
    if get("throttle") is True:
        record.throttle = True
    subsegments = get("subsegments")
    if not subsegments or type(subsegments) is not list:
        return
    deeper = depth < MAX_DEPTH
    for sub in subsegments:
        if type(sub) is not dict:
            continue
        namespace = sub.get("namespace")
        if namespace in REMOTE_NAMESPACES and type(sub.get("id")) is str:
            start = sub.get("start_time")
            end = sub.get("end_time")
            record.calls.append(Call(
                sub["id"], str(sub.get("name") or ""), namespace,
                float(start) if type(start) in _NUMBERS else record.start,
                float(end) if type(end) in _NUMBERS else None,
                sub.get("error") is True, sub.get("fault") is True, sub.get("throttle") is True,
            ))
        if deeper:
            _walk(sub, record, depth + 1)


def _http(entity: dict, record: Record) -> None:
    http = entity.get("http")
    if type(http) is not dict:
        return
    request = http.get("request")
    if type(request) is dict:
        method = request.get("method")
        if type(method) is str:
            record.http_method = method
        url = request.get("url")
        if type(url) is str:
            record.http_url = url
    response = http.get("response")
    if type(response) is dict:
        status = response.get("status")
        if type(status) is int:
            record.http_status = status


def parse(doc: bytes) -> Record:
    """The record of one document, or BadDocument with the service's error code."""
    try:
        data = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        raise BadDocument("InvalidSegment", f"Invalid JSON: {exc}") from None
    if type(data) is not dict:
        raise BadDocument("InvalidSegment", "A segment document must be a JSON object")
    get = data.get
    seg_id = get("id")
    if not seg_id or type(seg_id) is not str:
        raise BadDocument("MissingId", "Missing segment ID")
    trace_id = get("trace_id")
    if not trace_id or type(trace_id) is not str:
        raise BadDocument("InvalidTraceId", "Missing trace ID", seg_id)
    if not TRACE_ID.match(trace_id):
        raise BadDocument("InvalidTraceId", f"Invalid trace ID {trace_id[:64]!r}", seg_id,
                          trace_id)
    name = get("name")
    if not name or type(name) is not str:
        raise BadDocument("InvalidName", "Missing segment name", seg_id, trace_id)
    if "start_time" not in data:
        raise BadDocument("InvalidSegment", "Missing start_time", seg_id, trace_id)
    start = _number(data["start_time"], "start_time", seg_id, trace_id)
    in_progress = get("in_progress") is True
    end: float | None = None
    if "end_time" in data and not in_progress:
        end = _number(data["end_time"], "end_time", seg_id, trace_id)
    elif not in_progress:
        raise BadDocument("InvalidSegment", "Missing end_time or in_progress", seg_id, trace_id)
    kind = "subsegment" if get("type") == "subsegment" else "segment"
    parent_id = get("parent_id")
    if parent_id is not None and type(parent_id) is not str:
        raise BadDocument("InvalidSegment", "parent_id is not a string", seg_id, trace_id)
    if kind == "subsegment" and not parent_id:
        raise BadDocument("InvalidSegment", "Missing parent_id of a subsegment", seg_id,
                          trace_id)
    origin = get("origin")
    record = Record(trace_id, seg_id, parent_id or None, kind, name,
                    origin if type(origin) is str else None, start, end, in_progress,
                    False, False, False, doc=doc)
    if kind == "segment":
        _http(data, record)
        user = get("user")
        if type(user) is str:
            record.user = user
    elif get("namespace") in REMOTE_NAMESPACES:
        record.calls.append(Call(seg_id, name, get("namespace"), start, end,
                                 get("error") is True, get("fault") is True,
                                 get("throttle") is True, owner_id=parent_id))
    _walk(data, record, 0)
    return record


def remote_node_type(call: Call) -> str:
    """The service-graph node type of a downstream call, as X-Ray names it."""
    if call.namespace == "aws":
        return f"AWS::{call.name}"
    return "remote"
