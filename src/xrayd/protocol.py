"""The daemon's wire protocol: one segment document per datagram, after a JSON header line.

``{"format":"json","version":1}\\n{...segment document...}``. The header is valid when it is a
JSON object whose ``format`` is ``json`` in any case and whose ``version`` is the integer 1 (keys
matched case-insensitively, as Go's encoding/json does). The body is kept byte for byte.
Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

MAX_DATAGRAM = 65536

# The headers real SDKs send (Python/Node compact, Go/Java/.NET with spaces), checked by equality
# before any parsing.
KNOWN_HEADERS = frozenset({b'{"format":"json","version":1}', b'{"format": "json", "version": 1}'})


class Reason(enum.StrEnum):
    """Why a datagram was rejected; each value is a counter label."""

    EMPTY = "empty_datagram"
    NO_SEPARATOR = "missing_header_separator"
    EMPTY_BODY = "empty_body"
    HEADER_NOT_JSON = "header_not_json"
    BAD_FORMAT = "header_wrong_format"
    BAD_VERSION = "header_wrong_version"
    NOT_UTF8 = "body_not_utf8"
    OTLP_BODY = "otlp_payload_unsupported"  # only where no OTLP intake is wired
    OTLP_BAD_BASE64 = "otlp_bad_base64"
    OTLP_BAD_PROTOBUF = "otlp_bad_protobuf"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Reason.EMPTY: "empty datagram",
    Reason.NO_SEPARATOR: "missing header: no newline separates header and segment",
    Reason.EMPTY_BODY: "missing segment: nothing follows the header line",
    Reason.HEADER_NOT_JSON: "invalid header: not a JSON object",
    Reason.BAD_FORMAT: 'invalid header: "format" is not "json"',
    Reason.BAD_VERSION: 'invalid header: "version" is not the integer 1',
    Reason.NOT_UTF8: "invalid segment: not UTF-8 text",
    Reason.OTLP_BODY: "OTLP payload (T1S/T1U/M1 after the header), which X-Ray cannot accept",
    Reason.OTLP_BAD_BASE64: "invalid OTLP payload: the text after T1S/T1U/M1 is not base64",
    Reason.OTLP_BAD_PROTOBUF: "invalid OTLP payload: not an OTLP protobuf message",
}


def _header_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Go-style field matching: a key matches a field name case-insensitively, last one wins."""
    fields: dict[str, Any] = {}
    for key, value in pairs:
        lowered = key.lower()
        if lowered in ("format", "version"):
            fields[lowered] = value
    return fields


def check_header(header: bytes) -> Reason | None:
    """None when the header is valid, else the reason it is not."""
    if header in KNOWN_HEADERS:
        return None
    try:
        text = header.decode("utf-8")
        fields = json.loads(text, object_pairs_hook=_header_fields)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Reason.HEADER_NOT_JSON
    if not isinstance(fields, dict):
        return Reason.HEADER_NOT_JSON
    fmt = fields.get("format")
    if not isinstance(fmt, str) or fmt.lower() != "json":
        return Reason.BAD_FORMAT
    version = fields.get("version")
    if type(version) is not int or version != 1:
        return Reason.BAD_VERSION
    return None


# What the AWS Distro for OpenTelemetry's UDP exporters put after the header line, followed by
# the base64 of an OTLP protobuf message: sampled spans, unsampled spans, metrics.
SAMPLED_SPANS, UNSAMPLED_SPANS, METRICS = b"T1S", b"T1U", b"M1"


def otlp_payload(body: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, base64 text) of an OTLP-over-UDP body, None for anything else."""
    head = body[:3]
    if head in (SAMPLED_SPANS, UNSAMPLED_SPANS):
        return head, body[3:]
    if head[:2] == METRICS:
        return METRICS, body[2:]
    return None


def check_body(body: bytes) -> Reason | None:
    """None when the body can be forwarded as a segment document."""
    if not body:
        return Reason.EMPTY_BODY
    if body[:3] in (b"T1S", b"T1U") or body[:2] == b"M1":
        return Reason.OTLP_BODY
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return Reason.NOT_UTF8
    return None


class HeaderCache:
    """Verdicts for headers seen before, so a steady stream costs one dict lookup."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._verdicts: dict[bytes, Reason | None] = dict.fromkeys(KNOWN_HEADERS)

    def check(self, header: bytes) -> Reason | None:
        try:
            return self._verdicts[header]
        except KeyError:
            verdict = check_header(header)
            if len(self._verdicts) < self.capacity:
                self._verdicts[header] = verdict
            return verdict


def classify(datagram: bytes, headers: HeaderCache) -> tuple[bytes | None, Reason | None]:
    """(body, None) for a valid datagram, (None, reason) for a rejected one."""
    if not datagram:
        return None, Reason.EMPTY
    cut = datagram.find(b"\n")
    if cut < 0:
        return None, Reason.NO_SEPARATOR
    reason = headers.check(datagram[:cut])
    if reason is not None:
        return None, reason
    body = datagram[cut + 1:]
    reason = check_body(body)
    if reason is not None:
        return None, reason
    return body, None


_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')
_TRACE_ID = re.compile(rb'"trace_id"\s*:\s*"([^"\\]{1,64})"')


def document_ids(document: bytes) -> tuple[str, str]:
    """(segment id, trace id) of a document, "" where unknown; used on error paths only."""
    try:
        import orjson

        parsed = orjson.loads(document)
    except Exception:
        parsed = None
    if isinstance(parsed, dict):
        return str(parsed.get("id", "")), str(parsed.get("trace_id", ""))
    found_id, found_trace = _ID.search(document), _TRACE_ID.search(document)
    return (
        found_id.group(1).decode("ascii", "replace") if found_id else "",
        found_trace.group(1).decode("ascii", "replace") if found_trace else "",
    )
