"""From a segment document to the rows the store indexes. Pure: bytes in, records out.

A document is checked as the X-Ray service checks it (required fields, trace id format); what is
indexed covers the whole entity tree, so annotations and errors of embedded subsegments count for
their trace, as they do in X-Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from xrayd.store.summary import SQL_TYPE, inferred_node

TRACE_ID = re.compile(r"1-[0-9a-fA-F]{8}-[0-9a-fA-F]{24}")
REMOTE_NAMESPACES = ("aws", "remote")
MAX_DEPTH = 64


class BadDocument(Exception):
    """A document the store rejects; ``code`` is the service's ErrorCode."""

    def __init__(self, code: str, message: str, segment_id: str = "", trace_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.segment_id = segment_id
        self.trace_id = trace_id


# A subsegment that calls a downstream service (namespace aws or remote), as the store keeps it:
# (id, id of the entity that makes the call, name, namespace, start, end or None, error, fault,
# throttle, the name and type of the node it calls when no segment answers it), the flags as 0
# or 1. Plain tuples: a document has several and the writer stores them as they are. Calls
# stored before schema 5's node names have the first nine only.
Call = tuple[str, str, str, str, float, "float | None", int, int, int, str, str]
CALL_FIELDS = ("id", "owner_id", "name", "namespace", "start", "end", "error", "fault",
               "throttle", "node_name", "node_type")


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
    own_flags: int = 0  # the document's own error (1), fault (2) and throttle (4) flags
    annotations: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    doc: bytes = b""


# orjson makes exactly these types; checking ``type(x) in`` a set is much cheaper than
# isinstance with a union, and the writer's hot path runs it for every field it reads.
_SCALARS = frozenset((str, int, float, bool))
_NUMBERS = frozenset((int, float))
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # orjson's integers; beyond, it makes floats


class _Aws(msgspec.Struct):
    """The resource fields of an AWS SDK call's ``aws`` block (summary.RESOURCE_FIELDS)."""

    table_name: Any = None
    bucket_name: Any = None
    queue_url: Any = None
    topic_arn: Any = None
    function_name: Any = None


class _Sql(msgspec.Struct):
    """A ``sql`` block: only its presence is read."""


class _Entity(msgspec.Struct):
    """The fields the store reads of a segment or subsegment. Decoding into it skips the rest
    of the document (metadata, sql, aws...), which makes parsing about twice as fast as
    building every dict."""

    id: Any = None
    trace_id: Any = None
    name: Any = None
    start_time: Any = msgspec.UNSET
    end_time: Any = msgspec.UNSET
    in_progress: Any = None
    type: Any = None
    parent_id: Any = None
    origin: Any = None
    http: Any = None
    user: Any = None
    namespace: Any = None
    error: Any = None
    fault: Any = None
    throttle: Any = None
    annotations: Any = None
    aws: _Aws | None = None
    sql: _Sql | None = None
    subsegments: list[_Entity] | None = None


_FIELDS = _Entity.__struct_fields__
_decode = msgspec.json.Decoder(_Entity).decode


def _entity(data: dict, depth: int = 0) -> _Entity:
    """The entity of a document the typed decoder refused (a subsegment that is not an object,
    say): the same fields, anything the walk would skip left out."""
    entity = _Entity(**{key: data[key] for key in _FIELDS if key in data})
    aws = data.get("aws")
    entity.aws = _Aws(**{key: aws[key] for key in _Aws.__struct_fields__ if key in aws}) \
        if type(aws) is dict else None
    entity.sql = _Sql() if type(data.get("sql")) is dict else None
    subsegments = data.get("subsegments")
    entity.subsegments = None
    if type(subsegments) is list and depth <= MAX_DEPTH:
        entity.subsegments = [_entity(sub, depth + 1) for sub in subsegments
                              if type(sub) is dict]
    return entity


def _load(doc: bytes) -> _Entity:
    try:
        return _decode(doc)
    except msgspec.DecodeError:
        pass
    except RecursionError:
        raise BadDocument("InvalidSegment", "Invalid JSON: nested too deeply") from None
    try:
        data = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        raise BadDocument("InvalidSegment", f"Invalid JSON: {exc}") from None
    if type(data) is not dict:
        raise BadDocument("InvalidSegment", "A segment document must be a JSON object")
    return _entity(data)


def _json_int(value: int) -> int | float:
    """An integer as orjson would have read it."""
    return value if _INT_MIN <= value <= _INT_MAX else float(value)


def _number(value: Any, name: str, seg_id: str, trace_id: str) -> float:
    if type(value) not in _NUMBERS:
        raise BadDocument("InvalidSegment", f"{name} is not a number", seg_id, trace_id)
    return float(value)


def _node(name: str, namespace: str, entity: _Entity) -> tuple[str, str]:
    aws = entity.aws
    if aws is None or namespace != "aws":
        if namespace == "remote":
            return (name, SQL_TYPE) if entity.sql is not None else (name, "remote")
        return inferred_node(name, namespace, None, entity.sql is not None)
    return inferred_node(name, namespace, (aws.table_name, aws.bucket_name, aws.queue_url,
                                           aws.topic_arn, aws.function_name), False)


def _walk(entity: _Entity, record: Record, depth: int) -> None:
    """Collect annotations, calls and error flags of ``entity`` and its nested subsegments."""
    annotations = entity.annotations
    if annotations and type(annotations) is dict:
        found = record.annotations
        for key, value in annotations.items():
            kind = type(value)
            if kind is int:
                found.append((key, _json_int(value)))
            elif kind in _SCALARS:
                found.append((key, value))
    if entity.error is True:
        record.error = True
    if entity.fault is True:
        record.fault = True
    if entity.throttle is True:
        record.throttle = True
    subsegments = entity.subsegments
    if not subsegments:
        return
    deeper = depth < MAX_DEPTH
    for sub in subsegments:
        namespace = sub.namespace
        if namespace in REMOTE_NAMESPACES and type(sub.id) is str:
            start = sub.start_time
            end = sub.end_time
            name = str(sub.name or "")
            record.calls.append((
                sub.id, record.id, name,
                namespace, float(start) if type(start) in _NUMBERS else record.start,
                float(end) if type(end) in _NUMBERS else None,
                int(sub.error is True), int(sub.fault is True), int(sub.throttle is True),
                *_node(name, namespace, sub),
            ))
        # Most subsegments have nothing below them to collect: skip the call.
        if deeper and (sub.subsegments or sub.annotations or sub.error is True
                       or sub.fault is True or sub.throttle is True):
            _walk(sub, record, depth + 1)


def _http(entity: _Entity, record: Record) -> None:
    http = entity.http
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
        if type(status) is int and _INT_MIN <= status < 2**63:  # what SQLite can store
            record.http_status = status


def parse(doc: bytes) -> Record:
    """The record of one document, or BadDocument with the service's error code."""
    data = _load(doc)
    seg_id = data.id
    if not seg_id or type(seg_id) is not str:
        raise BadDocument("MissingId", "Missing segment ID")
    trace_id = data.trace_id
    if not trace_id or type(trace_id) is not str:
        raise BadDocument("InvalidTraceId", "Missing trace ID", seg_id)
    if not TRACE_ID.fullmatch(trace_id):
        raise BadDocument("InvalidTraceId", f"Invalid trace ID {trace_id[:64]!r}", seg_id,
                          trace_id)
    name = data.name
    if not name or type(name) is not str:
        raise BadDocument("InvalidName", "Missing segment name", seg_id, trace_id)
    if data.start_time is msgspec.UNSET:
        raise BadDocument("InvalidSegment", "Missing start_time", seg_id, trace_id)
    start = _number(data.start_time, "start_time", seg_id, trace_id)
    in_progress = data.in_progress is True
    end: float | None = None
    if data.end_time is not msgspec.UNSET and not in_progress:
        end = _number(data.end_time, "end_time", seg_id, trace_id)
    elif not in_progress:
        raise BadDocument("InvalidSegment", "Missing end_time or in_progress", seg_id, trace_id)
    kind = "subsegment" if data.type == "subsegment" else "segment"
    parent_id = data.parent_id
    if parent_id is not None and type(parent_id) is not str:
        raise BadDocument("InvalidSegment", "parent_id is not a string", seg_id, trace_id)
    if kind == "subsegment" and not parent_id:
        raise BadDocument("InvalidSegment", "Missing parent_id of a subsegment", seg_id,
                          trace_id)
    origin = data.origin
    record = Record(trace_id, seg_id, parent_id or None, kind, name,
                    origin if type(origin) is str else None, start, end, in_progress,
                    False, False, False, doc=doc)
    record.own_flags = ((data.error is True) + 2 * (data.fault is True)
                        + 4 * (data.throttle is True))
    if kind == "segment":
        _http(data, record)
        if type(data.user) is str:
            record.user = data.user
    elif data.namespace in REMOTE_NAMESPACES:
        record.calls.append((seg_id, parent_id, name, data.namespace, start, end,
                             int(data.error is True), int(data.fault is True),
                             int(data.throttle is True), *_node(name, data.namespace, data)))
    _walk(data, record, 0)
    return record


