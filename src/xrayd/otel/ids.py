"""Trace and span ids between OpenTelemetry (16 and 8 bytes) and X-Ray (``1-<8 hex>-<24 hex>``
and 16 hex digits)."""

from __future__ import annotations

import re

XRAY_TRACE_ID = re.compile(r"1-([0-9a-f]{8})-([0-9a-f]{24})\Z")
XRAY_SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")


class IdError(ValueError):
    """An id of the wrong length or form; the message says which."""


def xray_trace_id(trace_id: bytes) -> str:
    """An OTel trace id (16 bytes) as X-Ray's: the first 4 bytes are the epoch seconds."""
    if len(trace_id) != 16:
        raise IdError(f"trace id of {len(trace_id)} bytes, not 16")
    if not any(trace_id):
        raise IdError("trace id is all zeros")
    text = trace_id.hex()
    return f"1-{text[:8]}-{text[8:]}"


def xray_span_id(span_id: bytes) -> str:
    if len(span_id) != 8:
        raise IdError(f"span id of {len(span_id)} bytes, not 8")
    if not any(span_id):
        raise IdError("span id is all zeros")
    return span_id.hex()


def otel_trace_id(trace_id: str) -> bytes:
    """An X-Ray trace id as OTel's 16 bytes."""
    match = XRAY_TRACE_ID.match(trace_id)
    if match is None:
        raise IdError(f"trace id {trace_id[:40]!r} is not 1-<8 hex>-<24 hex>")
    return bytes.fromhex(match.group(1) + match.group(2))


def otel_span_id(span_id: str) -> bytes:
    if XRAY_SPAN_ID.match(span_id) is None:
        raise IdError(f"segment id {span_id[:40]!r} is not 16 hex digits")
    return bytes.fromhex(span_id)
