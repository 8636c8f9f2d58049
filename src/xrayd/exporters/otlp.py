"""OTLP/HTTP export (protobuf, gzip) of everything the daemon receives: X-Ray segment documents
converted to spans (otel/segments_to_spans.py) at send time, on the upload workers; OTel spans a
receiver took in passed through as they came (``wrap_resource_spans``).

Optionally SigV4-signed (service ``xray``) with the daemon's botocore credentials, for X-Ray's own
OTLP endpoint ``https://xray.<region>.amazonaws.com/v1/traces``. Requests go out on the kept-alive
connections of exporters/transport.py. Answers map onto the shared delivery types
(xrayd.delivery): 2xx sent (spans refused in a partial success are counted, final); 408, 429,
502, 503 and 504 retriable, with the peer's ``Retry-After``; other statuses final.

``forward_metrics`` posts OTLP metrics requests (ExportMetricsServiceRequest bytes, from the M1
datagrams of ADOT's UDP exporter) to ``/v1/metrics`` from a thread of its own, from a bounded
queue: the receiver that hands them over never waits.

The settings (flags, config, OTEL_EXPORTER_OTLP_* variables) are resolved in otlp_settings.py.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from xrayd import __version__
from xrayd.delivery import Unprocessed, UploadError, classify_send_error, retry_after_seconds
from xrayd.exporters.otlp_settings import OtlpConfigError, OtlpSettings
from xrayd.exporters.signing import Signer
from xrayd.exporters.transport import DirectTransport
from xrayd.logs import RateLimitedLog
from xrayd.otel.segments_to_spans import Report, convert

RETRIABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# A receiver hands OTel spans over as this prefix + a serialized ResourceSpans; a segment
# document is JSON and starts with "{" (or whitespace), never with a NUL byte.
RESOURCE_SPANS_TAG = b"\x00otlp.ResourceSpans\x00"
METRICS_QUEUE_BYTES = 8 * 1024 * 1024  # metrics requests waiting to be forwarded, at most
GZIP_LEVEL = 5
CONTENT_TYPE = "application/x-protobuf"
# Unprocessed error codes (final): a document that gave no span; spans a receiver refused.
UNCONVERTIBLE = "OtlpUnconvertibleDocument"
PARTIAL_SUCCESS = "OtlpPartialSuccessRejected"


def _proxy_for(url: str, proxy: str) -> str:
    from xrayd.aws import proxy_for

    return proxy_for(url, proxy)


def wrap_resource_spans(serialized: bytes) -> bytes:
    """A ResourceSpans a receiver took in (serialized), as a queue item for OTLP exporters."""
    return RESOURCE_SPANS_TAG + serialized


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, varint length, payload."""
    size = len(payload)
    out = bytearray([(number << 3) | 2])
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out) + payload


def request_body(items: Sequence[bytes], report: Report,
                 unconverted: list[bytes] | None = None) -> tuple[bytes, int]:
    """The ExportTraceServiceRequest (serialized, not compressed) for queue items, and the
    number of items that gave spans (the others appended to ``unconverted``). A request is its
    ResourceSpans one after the other as field 1, so each is serialized (or, passed through,
    kept) on its own and the bytes joined."""
    parts = []
    tag = RESOURCE_SPANS_TAG
    for item in items:
        if item.startswith(tag):
            parts.append(_field(1, item[len(tag):]))
            continue
        converted = convert(item, report)
        if converted is not None:
            parts.append(_field(1, converted.SerializeToString()))
        elif unconverted is not None:
            unconverted.append(item)
    return b"".join(parts), len(parts)


def unprocessed(docs: Sequence[bytes], code: str, message: str) -> list[Unprocessed]:
    """Documents this exporter answers for without having delivered them (the upload loop
    counts them unprocessed with ``code``, final)."""
    from xrayd.protocol import document_ids

    return [Unprocessed(document_ids(doc)[0], code, message) for doc in docs]


def _status_message(body: bytes) -> str:
    """The message of a google.rpc.Status answer (or the start of a text one)."""
    try:
        from google.rpc.status_pb2 import Status  # googleapis-common-protos, when installed

        return Status.FromString(body).message[:200]
    except Exception:
        return body[:200].decode("utf-8", "replace")


def classify_answer(status: int, headers: Mapping[str, str], body: bytes,
                    now_epoch: float | None = None) -> UploadError:
    """A non-2xx answer as an UploadError (retriable per the OTLP specification)."""
    retriable = status in RETRIABLE_STATUSES
    error_class = "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else "other"
    retry_after = retry_after_seconds(headers.get("retry-after"), now_epoch) if retriable \
        else None
    message = _status_message(body) if body else ""
    return UploadError(f"HTTP {status}: {message}".strip().rstrip(":"), error_class, retriable,
                       status, "", retry_after)


Counts = Callable[[str, int, str], None]  # (counter name, amount, label)


def _no_counts(_name: str, _amount: int, _label: str) -> None:
    return None


class _Endpoint:
    """One URL: its transport, path and (when signing) signer. Through an outbound proxy
    (unless NO_PROXY names the host) requests go by botocore's HTTP session, as the X-Ray
    exporter's do (CONNECT tunnels for https); else on the kept-alive connections of
    exporters/transport.py."""

    def __init__(self, url: str, settings: OtlpSettings) -> None:
        parts = urlsplit(url)
        self.url = url
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.transport = DirectTransport(url, settings.verify, settings.timeout)
        self.session = None
        proxy = settings.proxy and _proxy_for(url, settings.proxy)
        if proxy:
            import socket

            from botocore.httpsession import URLLib3Session

            self.session = URLLib3Session(
                verify=settings.verify, proxies={"http": proxy, "https": proxy},
                timeout=settings.timeout,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        self.host = shown if port == default_port else f"{shown}:{port}"
        self.signer = Signer(url, settings.sigv4_region, "xray") if settings.sigv4_region \
            else None


class OtlpExporter:
    """Sends batches as OTLP/HTTP requests. Thread-safe: one instance serves every worker."""

    name = "otlp"

    def __init__(self, settings: OtlpSettings, credentials: Callable[[], Any] | None = None,
                 counts: Counts = _no_counts, clock: Callable[[], float] = time.time,
                 logs: RateLimitedLog | None = None) -> None:
        if settings.sigv4_region and credentials is None:
            raise OtlpConfigError("SigV4 signing needs credentials")
        self.settings = settings
        self._credentials = credentials
        self._counts = counts
        self._logs = logs
        self._clock = clock
        self._traces = _Endpoint(settings.traces_url, settings)
        self._metrics = _Endpoint(settings.metrics_url, settings) if settings.metrics_url \
            else None
        self._base_headers = {
            "Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip",
            "User-Agent": f"xrayd/{__version__}", **settings.headers,
        }
        self._metrics_lock = threading.Condition(threading.Lock())
        self._metrics_queue: deque[bytes] = deque()
        self._metrics_bytes = 0
        self._metrics_thread: threading.Thread | None = None
        self._closed = False

    # -- traces ---------------------------------------------------------------------------

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]:
        """Send a batch; the documents that gave no span, and as many as the receiver refused
        spans of in a partial success (which ones it does not say), come back Unprocessed."""
        report = Report()
        unconverted: list[bytes] = []
        body, converted = request_body(docs, report, unconverted)
        self._count_report(report)
        refused = unprocessed(unconverted, UNCONVERTIBLE, "gave no span for OTLP export")
        if not converted:
            return refused  # nothing convertible: nothing to send
        rejected, message = self._send(docs, body)
        rejected = min(rejected, converted)
        return refused + [Unprocessed("", PARTIAL_SUCCESS, message)] * rejected

    def _send(self, docs: Sequence[bytes], body: bytes) -> tuple[int, str]:
        """POST a request; one the receiver finds too large (413) is sent again in halves.
        (A half that then fails fails the batch: delivery stays at least once.) The spans the
        receiver refused in a partial success, and its message."""
        try:
            answer = self._post(self._traces, body)
        except UploadError as exc:
            if exc.status != 413 or len(docs) < 2:
                raise
            self._counts("otlp_requests_split", 1, "")
            middle = len(docs) // 2
            rejected, message = 0, ""
            for half in (docs[:middle], docs[middle:]):
                part, converted = request_body(half, Report())  # counted the first time
                if converted:
                    more, text = self._send(half, part)
                    rejected, message = rejected + more, message or text
            return rejected, message
        return self._partial_success(answer)

    def _count_report(self, report: Report) -> None:
        for reason, count in report.skipped.items():
            if reason.startswith("document:"):
                why = reason[len("document:"):]
                self._counts("otlp_documents_unconverted", count, why)
                if self._logs is not None:
                    self._logs.warn(f"unconverted:{why}",
                                    f"{count} segment documents gave no span for OTLP export "
                                    f"(no usable {why})" if why in ("trace_id", "id") else
                                    f"{count} segment documents gave no span for OTLP export "
                                    f"({why})")
            else:
                self._counts("otlp_fields_skipped", count, reason)
        if report.spans:
            self._counts("otlp_spans_converted", report.spans, "")

    def _partial_success(self, answer: bytes) -> tuple[int, str]:
        """The spans a 2xx answer says were refused, and why."""
        if not answer:
            return 0, ""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        try:
            response = ExportTraceServiceResponse.FromString(answer)
        except Exception:
            return 0, ""  # a 2xx whose body is not the response message: the spans were taken
        rejected = response.partial_success.rejected_spans
        message = response.partial_success.error_message[:200] or "no message"
        if rejected:
            self._counts("otlp_spans_rejected", rejected, "")
            if self._logs is not None:
                self._logs.warn("partial-success", f"The OTLP receiver refused {rejected} "
                                                   f"spans of a batch: {message}")
        return max(0, rejected), message

    def _post(self, endpoint: _Endpoint, body: bytes) -> bytes:
        compressed = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        data = compressed.compress(body) + compressed.flush()
        headers = {"Host": endpoint.host, **self._base_headers}
        if endpoint.signer is not None:
            assert self._credentials is not None
            from xrayd.aws import CredentialsError

            try:
                credentials = self._credentials()
            except CredentialsError as exc:
                raise UploadError(str(exc), "no_credentials", False) from None
            headers.pop("Host")
            headers = endpoint.signer.sign(endpoint.url, headers, data, credentials)
        try:
            if endpoint.session is not None:
                from botocore.awsrequest import AWSRequest

                request = AWSRequest(method="POST", url=endpoint.url, data=data,
                                     headers=headers)
                response = endpoint.session.send(request.prepare())
            else:
                response = endpoint.transport.post(endpoint.target, data, headers)
        except Exception as exc:
            raise classify_send_error(exc) from exc
        if 200 <= response.status_code < 300:
            return response.content
        raise classify_answer(response.status_code, response.headers, response.content,
                              self._clock())

    # -- metrics --------------------------------------------------------------------------

    @property
    def forwards_metrics(self) -> bool:
        return self._metrics is not None

    def forward_metrics(self, request: bytes) -> bool:
        """Queue an ExportMetricsServiceRequest (serialized) for /v1/metrics; False (counted)
        when metrics are not forwarded or the queue is full. Never blocks."""
        if self._metrics is None:
            self._counts("otlp_metrics_dropped", 1, "no_metrics_endpoint")
            return False
        with self._metrics_lock:
            if self._closed or self._metrics_bytes + len(request) > METRICS_QUEUE_BYTES:
                self._counts("otlp_metrics_dropped", 1, "closed" if self._closed else
                             "queue_full")
                return False
            self._metrics_queue.append(request)
            self._metrics_bytes += len(request)
            if self._metrics_thread is None:
                self._metrics_thread = threading.Thread(target=self._send_metrics,
                                                        name="otlp-metrics", daemon=True)
                self._metrics_thread.start()
            self._metrics_lock.notify()
        return True

    def _send_metrics(self) -> None:
        endpoint = self._metrics
        assert endpoint is not None
        while True:
            with self._metrics_lock:
                while not self._metrics_queue and not self._closed:
                    self._metrics_lock.wait()
                if not self._metrics_queue:
                    return
                request = self._metrics_queue.popleft()
                self._metrics_bytes -= len(request)
            for attempt in range(3):
                try:
                    self._post(endpoint, request)
                except UploadError as exc:
                    if exc.retriable and attempt < 2 and not self._closed:
                        time.sleep(min(exc.retry_after or 0.5 * 2 ** attempt, 5.0))
                        continue
                    self._counts("otlp_metrics_failed", 1, exc.error_class)
                    break
                self._counts("otlp_metrics_forwarded", 1, "")
                break

    def close(self, timeout: float = 2.0) -> None:
        with self._metrics_lock:
            self._closed = True
            self._metrics_lock.notify_all()
            thread = self._metrics_thread
        if thread is not None:
            thread.join(timeout)
        with self._metrics_lock:
            left = len(self._metrics_queue)
            self._metrics_queue.clear()
            self._metrics_bytes = 0
        if left:
            self._counts("otlp_metrics_dropped", left, "shutdown")
        for endpoint in (self._traces, self._metrics):
            if endpoint is not None:
                endpoint.transport.close()
                if endpoint.session is not None:
                    endpoint.session.close()


