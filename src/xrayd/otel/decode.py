"""OTLP payloads to messages: protobuf and OTLP/JSON bodies, gzip with a bound checked while
inflating, and the base64 text of the X-Ray UDP exporters (``T1S``/``T1U``/``M1``). Pure
functions; errors are DecodeError with a counter label and a message."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAX_BODY = 20 * 1024 * 1024  # after decompression (the OTLP/HTTP and gRPC request limit)
_INFLATE_STEP = 256 * 1024


class DecodeError(ValueError):
    """``reason`` is a counter label; ``str()`` says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[1])


class TooLarge(DecodeError):
    def __init__(self, limit: int) -> None:
        super().__init__("too_large", f"body larger than {limit} bytes after decompression")
        self.limit = limit

    def __reduce__(self):
        return TooLarge, (self.limit,)


def gunzip(data: bytes, limit: int = MAX_BODY) -> bytes:
    """Inflate a gzip body, stopping as soon as the output passes ``limit`` (a small bomb costs
    no more than ``limit`` bytes of memory and the time to inflate them)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    pending = data
    try:
        while True:
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            parts.append(chunk)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
            if not pending and not chunk:
                raise DecodeError("bad_gzip", "gzip body ends before its end marker")
    except zlib.error as exc:
        raise DecodeError("bad_gzip", f"not a valid gzip body: {exc}") from None
    return b"".join(parts)


def traces_from_protobuf(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (ProtobufError, RuntimeError, ValueError) as exc:
        raise DecodeError("bad_protobuf",
                          f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    return request


_HEX_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id",
                            "parent_span_id"})


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise DecodeError("bad_json", f"{key} {value[:40]!r} is not hex") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)
    return node


def traces_from_json(data: bytes) -> ExportTraceServiceRequest:
    import orjson

    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise DecodeError("bad_json", "not a JSON object")
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(_hex_ids_to_base64(parsed), request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise DecodeError("bad_json",
                          f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return request


def from_base64(text: bytes) -> bytes:
    """The payload after ``T1S``/``T1U``/``M1`` (standard base64, padding required)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("bad_base64", f"invalid base64: {exc}") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("bad_protobuf", "truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def resource_spans_of(data: bytes) -> list[bytes]:
    """The serialized ResourceSpans of a serialized ExportTraceServiceRequest (its field 1),
    cut out of the bytes without decoding them: what an OTLP exporter passes through."""
    out, pos, size = [], 0, len(data)
    while pos < size:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if key >> 3 == 1:
                out.append(data[pos:pos + length])
            pos += length
        else:
            raise DecodeError("bad_protobuf", f"unexpected wire type {wire}")
        if pos > size:
            raise DecodeError("bad_protobuf", "truncated field")
    return out


def resource_spans_of_body(body: bytes, is_json: bool) -> list[bytes]:
    """The serialized ResourceSpans of a (not compressed) OTLP/HTTP or gRPC request body."""
    if is_json:
        return [rs.SerializeToString() for rs in traces_from_json(body).resource_spans]
    return resource_spans_of(body)
