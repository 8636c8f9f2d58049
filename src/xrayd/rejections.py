"""The last rejections of every intake (bad datagrams, OTLP requests that do not decode, spans
that cannot be converted), kept for the viewer's Rejected view: a bounded ring of small rows,
each with its intake, reason, message and a safe, truncated preview of the input.

Recording is rate-limited: under a flood of garbage a datagram past the limit costs a clock
read and a comparison (no copy, no decoding), so the UDP reader keeps its pace. The counters
(stats.py) still count every rejection; this keeps examples."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from xrayd.protocol import Reason
from xrayd.stats import (
    OTEL_REQUESTS_REJECTED,
    OTEL_SOURCES,
    OTEL_SPANS_REJECTED,
    SOURCE_XRAY,
    Stats,
)

CAPACITY = 200
PER_SECOND = 20  # rows recorded a second at most; the rest are only counted
PREVIEW_BYTES = 200
MESSAGE_CHARS = 500
OTLP_UDP = "otlp-udp"
_OTLP_REASONS = frozenset({Reason.OTLP_BODY, Reason.OTLP_BAD_BASE64, Reason.OTLP_BAD_PROTOBUF})
# Control characters (C0, DEL, C1) and the line separators JavaScript treats as newlines.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def preview(data: bytes | str | None, limit: int = PREVIEW_BYTES) -> str:
    """At most ``limit`` bytes of the input as text: invalid UTF-8 and control characters
    escaped, and how long the whole was when it is cut."""
    if data is None:
        return ""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    text = raw[:limit].decode("utf-8", "backslashreplace").translate(_ESCAPES)
    return f"{text}… ({len(raw)} bytes)" if len(raw) > limit else text


def datagram_source(reason: Reason) -> str:
    """The intake a rejected UDP datagram counts against."""
    return OTLP_UDP if reason in _OTLP_REASONS else SOURCE_XRAY


class RecentRejections:
    """Written by the receivers' threads (appending to a deque is atomic), read by the viewer.
    The rate limit is per window of one second; threads racing on it may record a row or two
    more than the limit, which is harmless."""

    def __init__(self, capacity: int = CAPACITY, per_second: int = PER_SECOND,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.rows: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.per_second = per_second
        self.clock = clock
        self.wall = wall
        self.not_kept = 0  # rejections past the rate limit (counted by stats.py as usual)
        self._window = float("-inf")
        self._used = 0

    def _allowed(self) -> bool:
        now = self.clock()
        if now - self._window >= 1.0:
            self._window, self._used = now, 0
        if self._used >= self.per_second:
            self.not_kept += 1
            return False
        self._used += 1
        return True

    def datagram(self, reason: Reason, data: bytes) -> bool:
        """A datagram the UDP reader refused (past the limit nothing else is looked at)."""
        if not self._allowed():
            return False
        self._append(datagram_source(reason), reason.value, reason.description, data)
        return True

    def record(self, source: str, reason: str, message: str,
               data: bytes | str | None = None) -> bool:
        if not self._allowed():
            return False
        self._append(source, reason, message, data)
        return True

    def _append(self, source: str, reason: str, message: str,
                data: bytes | str | None) -> None:
        self.rows.append({"Received": self.wall(), "Intake": source, "ErrorCode": reason,
                          "Reason": message[:MESSAGE_CHARS], "Document": preview(data)})

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, newest first."""
        rows = list(self.rows)  # one C call: no other thread runs while it copies
        return rows[::-1][:limit]


def intake_counts(stats: Stats) -> dict[str, dict[str, int]]:
    """Per intake (xray, otlp-udp, otlp-http, otlp-grpc): segment documents accepted, and
    datagrams, requests or spans rejected."""
    accepted = stats.intake_by_source()
    rejected = dict.fromkeys((SOURCE_XRAY, *OTEL_SOURCES), 0)
    for reason, n in stats.rejected().items():
        rejected[datagram_source(reason)] += n
    for name in (OTEL_REQUESTS_REJECTED, OTEL_SPANS_REJECTED):
        for label, n in stats.by_label(name).items():
            source = label.partition(":")[0]
            if source in rejected:
                rejected[source] += n
    return {source: {"accepted": accepted.get(source, 0), "rejected": rejected[source]}
            for source in rejected}
