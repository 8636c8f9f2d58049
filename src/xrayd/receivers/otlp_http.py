"""OTLP/HTTP trace receiver: ``POST /v1/traces`` with protobuf or JSON bodies, optionally gzip,
answered as the OTLP specification says (partial success, 400, 413, 415, 503 + Retry-After).
Served by the daemon's small threaded HTTP server (server/threaded.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from xrayd.otel.decode import MAX_BODY, DecodeError, TooLarge
from xrayd.receivers.otlp_intake import Count, OtlpIntake
from xrayd.server.threaded import BodyTooLarge, Request, Response, ThreadedHttpServer
from xrayd.stats import OTEL_REQUESTS_REJECTED

SOURCE = "otlp-http"
PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_SECONDS = 1
MAX_CONNECTIONS = 32
# google.rpc.Code values used in error bodies
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE = 3, 8, 14


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def status_body(code: int, message: str, media: str) -> bytes:
    """A google.rpc.Status (code = 1, message = 2), the error body OTLP/HTTP specifies."""
    if media == JSON:
        import orjson

        return orjson.dumps({"code": code, "message": message})
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


class GatedServer(ThreadedHttpServer):
    """The threaded server, reading a body only once its bytes are reserved in the intake's
    ByteGate (Content-Length, or the size limit when the length is not known or the body is
    gzip, which may inflate up to it); the handler gives them back. When they cannot be
    reserved the body is not read: the answer is 503 with Retry-After and the connection
    closes."""

    def __init__(self, address: str, handler: OtlpHttpHandler, **kwargs) -> None:
        self._busy = threading.local()
        too_large = kwargs.pop("too_large")
        kwargs["too_large"] = lambda: self._busy_answer() if self._busy.__dict__.pop(
            "refused", False) else too_large()
        super().__init__(address, handler, **kwargs)
        self.otlp = handler

    def _read_body(self, conn, h, event) -> bytes:  # type: ignore[no-untyped-def]
        from xrayd.server.threaded import _content_length

        length = _content_length(event.headers)
        gzipped = any(k.lower() == b"content-encoding" and v.strip().lower() == b"gzip"
                      for k, v in event.headers)
        size = self.max_body if length is None or gzipped else min(length, self.max_body)
        if not self.otlp.intake.gate.reserve(size):
            self._busy.refused = True
            raise BodyTooLarge
        self.otlp.reserved.size = size
        try:
            return super()._read_body(conn, h, event)
        except BaseException:
            self.otlp.release()
            raise

    def _busy_answer(self) -> Response:
        self.otlp.count(OTEL_REQUESTS_REJECTED, f"{SOURCE}:busy", 1)
        self.otlp.intake.logs.warn(f"otel-busy:{SOURCE}", "OTLP/HTTP request bodies in flight "
                                                          "at their bound: asked the sender to "
                                                          "retry later")
        response = Response(503, status_body(UNAVAILABLE, "too many request bytes in flight, "
                                                          "retry later", PROTOBUF),
                            content_type=PROTOBUF)
        response.headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        return response


@dataclass
class OtlpHttpHandler:
    intake: OtlpIntake
    count: Count
    max_body: int = MAX_BODY

    def __post_init__(self) -> None:
        self.reserved = threading.local()  # the bytes this thread's request holds in the gate

    def release(self) -> None:
        size = self.reserved.__dict__.pop("size", 0)
        if size:
            self.intake.gate.release(size)

    def __call__(self, request: Request) -> Response:
        try:
            return self._answer(request)
        finally:
            request.body = b""
            self.release()

    def _answer(self, request: Request) -> Response:
        if request.path != PATH:
            return self._error(404, INVALID_ARGUMENT, f"not found: only POST {PATH} is served",
                               PROTOBUF, "not_found")
        if request.method != "POST":
            response = self._error(405, INVALID_ARGUMENT, "method not allowed", PROTOBUF,
                                   "bad_method")
            response.headers.append(("Allow", "POST"))
            return response
        media = (request.header("content-type") or "").partition(";")[0].strip().lower()
        if media not in (PROTOBUF, JSON):
            return self._error(415, INVALID_ARGUMENT,
                               f"unsupported content type {media[:60]!r}: use {PROTOBUF} or "
                               f"{JSON}", PROTOBUF, "bad_content_type")
        encoding = (request.header("content-encoding") or "identity").strip().lower()
        if encoding not in ("gzip", "identity"):
            return self._error(415, INVALID_ARGUMENT,
                               f"unsupported content encoding {encoding[:30]!r}", media,
                               "bad_content_encoding")
        try:
            outcome = self.intake.body(request.body, SOURCE, self.count, is_json=media == JSON,
                                       gzipped=encoding == "gzip", limit=self.max_body)
        except TooLarge as exc:
            return self._error(413, INVALID_ARGUMENT, str(exc), media, exc.reason)
        except DecodeError as exc:
            return self._error(400, INVALID_ARGUMENT, str(exc), media, exc.reason, request.body)
        except Exception as exc:  # a bug: answered as a request we cannot take, never 500
            return self._error(400, INVALID_ARGUMENT, f"the request could not be taken "
                                                      f"({type(exc).__name__})", media,
                               "internal_error", request.body)
        if outcome.too_large:
            return self._error(413, INVALID_ARGUMENT, outcome.message, media, None)
        if outcome.busy:
            response = self._error(503, UNAVAILABLE,
                                   "memory budget full, retry later", media, None)
            response.headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
            return response
        return Response(200, export_response(outcome.rejected, outcome.message, media),
                        content_type=media)

    def _error(self, status: int, code: int, message: str, media: str,
               reason: str | None, body: bytes | None = None) -> Response:
        if reason is not None:
            self.count(OTEL_REQUESTS_REJECTED, f"{SOURCE}:{reason}", 1)
            self.intake.rejected(SOURCE, reason, f"{status}: {message}", body)
            self.intake.logs.warn(f"otlp-http:{reason}",
                                  f"Rejected an OTLP/HTTP request ({status}): {message}")
        return Response(status, status_body(code, message, media), content_type=media)


def export_response(rejected: int, message: str, media: str) -> bytes:
    """ExportTraceServiceResponse; partial_success only when spans were rejected."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media == JSON:
        from google.protobuf import json_format

        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def make_server(address: str, intake: OtlpIntake, count: Count,
                max_body: int = MAX_BODY) -> ThreadedHttpServer:
    handler = OtlpHttpHandler(intake, count, max_body)

    def too_large() -> Response:
        count(OTEL_REQUESTS_REJECTED, f"{SOURCE}:too_large", 1)
        intake.rejected(SOURCE, "too_large", f"413: body over {max_body} bytes")
        intake.logs.warn(f"{SOURCE}:too_large",
                         f"Rejected an OTLP/HTTP request (413): body over {max_body} bytes")
        return Response(413, status_body(INVALID_ARGUMENT, f"body larger than {max_body} bytes",
                                         PROTOBUF), content_type=PROTOBUF)

    # Each connection may hold a 20 MiB body (and its inflated copy) at once: fewer
    # connections than the server's default bound the memory that can take.
    return GatedServer(address, handler, max_body=max_body, too_large=too_large,
                       max_connections=MAX_CONNECTIONS, name="otlp-http")

