"""What every exporter tells the upload loop about a delivery, whatever the destination: a call
that worked (with the documents the destination refused, ``Unprocessed``), or one that failed
(``UploadError``: retriable or not, throttled, with a ``Retry-After`` the peer asked for).

The upload loop (uploader.py) knows only these types; each exporter maps its own protocol's
answers and transport failures onto them."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

from xrayd.numbers import parse_uint

THROTTLING_CODES = frozenset(
    {"ThrottledException", "ThrottlingException", "Throttling", "TooManyRequestsException",
     "RequestLimitExceeded", "SlowDown", "RequestThrottled"}
)


@dataclass(frozen=True)
class Unprocessed:
    """A document the destination answered for but did not keep; final unless its
    ``error_code`` is a transient one (uploader.TRANSIENT_UNPROCESSED)."""

    id: str
    error_code: str
    message: str


class UploadError(Exception):
    """A failed call. ``error_class`` is the telemetry class: timeout, connection_refused,
    unknown_host, http_4xx, http_5xx, no_credentials or other. ``retry_after``: seconds the peer
    asked the caller to wait (an HTTP Retry-After), None when it said nothing."""

    def __init__(self, message: str, error_class: str, retriable: bool, status: int = 0,
                 code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.retriable = retriable
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        return self.status == 429 or self.code in THROTTLING_CODES


def classify_send_error(exc: Exception) -> UploadError:
    """A transport failure (no answer) as an UploadError; every one of them is retriable except
    exceptions nobody expected."""
    from botocore import exceptions as bex

    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return UploadError(f"request timed out: {detail}", "timeout", True)
    if isinstance(exc, ConnectionRefusedError):
        return UploadError(f"connection refused: {detail}", "connection_refused", True)
    if isinstance(exc, socket.gaierror):
        return UploadError(f"unknown host: {detail}", "unknown_host", True)
    if isinstance(exc, OSError | http.client.HTTPException):
        return UploadError(f"{type(exc).__name__}: {detail}", "other", True)
    if isinstance(exc, bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return UploadError(detail, "timeout", True)
    if isinstance(exc, bex.EndpointConnectionError):
        cause = getattr(exc, "kwargs", {}).get("error")
        text = repr(cause) + detail
        if "Name or service not known" in text or "gaierror" in text or "nodename" in text:
            return UploadError(detail, "unknown_host", True)
        if "Connection refused" in text or "ConnectionRefused" in text:
            return UploadError(detail, "connection_refused", True)
        return UploadError(detail, "other", True)
    if isinstance(exc, bex.HTTPClientError | bex.ProxyConnectionError | bex.SSLError):
        return UploadError(detail, "other", True)
    return UploadError(detail, "other", False)


def retry_after_seconds(value: str | None, now_epoch: float | None = None) -> float | None:
    """An HTTP Retry-After value (delay seconds or an HTTP date) in seconds from now; None when
    absent or unreadable. Negative values and dates in the past are 0."""
    if not value:
        return None
    value = value.strip()
    seconds = parse_uint(value)
    if seconds is not None:
        return float(min(seconds, 86_400))
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    import time

    now = time.time() if now_epoch is None else now_epoch
    return max(0.0, min(when - now, 86_400.0))
