"""A strict OTLP/HTTP receiver for the export tests (no package implements one to embed): it reads
each request from the socket itself and judges the raw bytes: HTTP/1.1 framing (one
Content-Length, no chunking, no repeated or folded header lines), Content-Type
application/x-protobuf, gzip Content-Encoding, a body that inflates and decodes as an
ExportTraceServiceRequest with opentelemetry-proto and serializes back to the same bytes, and,
when given secrets, a SigV4 signature recomputed by botocore from the received request.

Anything wrong is answered 400 and recorded in ``problems``. It can be stopped (the port closes:
connection refused) and started again on the same port, or told to answer with a status and a
Retry-After."""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from fakes.sigv4 import Verdict, verify

MAX_HEAD = 16 * 1024
MAX_BODY = 32 * 1024 * 1024


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes  # the whole request as it arrived
    body: bytes  # inflated
    verdict: Verdict | None


@dataclass
class OtlpReceiver:
    secrets: dict[str, str] | None = None  # access key -> secret: verify SigV4
    port: int = 0
    status: int = 200  # what to answer valid requests with
    retry_after: str = ""
    partial_rejected: int = 0
    tls: tuple[str, str] | None = None  # (certificate, key) files: serve https
    max_body: int = MAX_BODY  # larger (compressed) bodies are answered 413
    requests: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)

    # -- what arrived -------------------------------------------------------------------------

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            return [ExportTraceServiceRequest.FromString(r.body) for r in self.requests
                    if r.path.endswith("/v1/traces")]

    def spans(self) -> list[tuple[dict[str, str], Span]]:
        """(resource attributes as strings, span) of every span received."""
        out = []
        for request in self.trace_requests():
            for rs in request.resource_spans:
                resource = {kv.key: str(getattr(kv.value, kv.value.WhichOneof("value")))
                            for kv in rs.resource.attributes}
                for scope in rs.scope_spans:
                    out.extend((resource, span) for span in scope.spans)
        return out

    # -- serving ----------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if self.tls is not None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*self.tls)
                try:
                    conn.settimeout(5)
                    conn = context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    self._note(f"TLS handshake: {exc}")
                    conn.close()
                    continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    if len(buffer) > MAX_HEAD and b"\r\n\r\n" not in buffer:
                        self._problem(conn, "header block too large")
                        return
                head, _, rest = buffer.partition(b"\r\n\r\n")
                parsed = self._parse_head(head)
                if isinstance(parsed, str):
                    self._problem(conn, parsed)
                    return
                method, path, headers = parsed
                length = int(headers["content-length"])
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        self._note("connection closed inside the body")
                        return
                    rest += chunk
                body, buffer = rest[:length], rest[length:]
                status, answer, extra = self._judge(method, path, headers, head, body)
                lines = [f"HTTP/1.1 {status} X", "Content-Type: application/x-protobuf",
                         f"Content-Length: {len(answer)}", *extra]
                closing = headers.get("connection", "").lower() == "close"
                if closing:
                    lines.append("Connection: close")
                conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + answer)
                if closing:  # as a real server does: the client reads to the end
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _parse_head(self, head: bytes) -> tuple[str, str, dict[str, str]] | str:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            return "non-ASCII bytes in the request head"
        request_line, *lines = text.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[2] != "HTTP/1.1":
            return f"bad request line {request_line!r}"
        headers: dict[str, str] = {}
        for line in lines:
            if not line or line[0] in " \t":
                return "folded or empty header line"
            name, sep, value = line.partition(":")
            if not sep or name != name.strip() or not name:
                return f"malformed header line {line!r}"
            key = name.lower()
            if key in headers:
                return f"header {name} sent twice"
            headers[key] = value.strip()
        if "transfer-encoding" in headers:
            return "chunked/transfer-encoded request"
        if not headers.get("content-length", "").isdigit():
            return "no valid Content-Length"
        if int(headers["content-length"]) > MAX_BODY:
            return "body too large"
        if "host" not in headers:
            return "no Host header"
        return parts[0], parts[1], headers

    def _judge(self, method: str, path: str, headers: dict[str, str], head: bytes,
               body: bytes) -> tuple[int, bytes, list[str]]:
        if method != "POST":
            return self._refuse(f"method {method}")
        if len(body) > self.max_body:
            return 413, b"", []
        if headers.get("content-type") != "application/x-protobuf":
            return self._refuse(f"content type {headers.get('content-type')!r}")
        if headers.get("content-encoding") != "gzip":
            return self._refuse(f"content encoding {headers.get('content-encoding')!r}")
        try:
            inflated = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            return self._refuse(f"gzip: {exc}")
        message_type = ExportMetricsServiceRequest if path.endswith("/v1/metrics") else \
            ExportTraceServiceRequest
        try:
            message = message_type.FromString(inflated)
        except Exception as exc:
            return self._refuse(f"protobuf: {exc}")
        if message.SerializeToString() != inflated:
            return self._refuse("body does not serialize back to the same bytes")
        verdict = None
        if self.secrets is not None:
            url = f"{'https' if self.tls else 'http'}://{headers['host']}{path}"
            verdict = verify("POST", url, headers, body, self.secrets)
            if not verdict.ok:
                return self._refuse(f"signature: {verdict.reason}")
        with self._lock:
            status, retry_after = self.status, self.retry_after
            if status == 200:
                self.requests.append(Received(path, headers, head + b"\r\n\r\n" + body,
                                              inflated, verdict))
        extra = [f"Retry-After: {retry_after}"] if retry_after else []
        if status != 200:
            return status, b"", extra
        answer = ExportTraceServiceResponse()
        if self.partial_rejected:
            answer.partial_success.rejected_spans = self.partial_rejected
            answer.partial_success.error_message = "injected partial success"
        return 200, answer.SerializeToString(), extra

    def _note(self, problem: str) -> None:
        with self._lock:
            self.problems.append(problem)

    def _refuse(self, problem: str) -> tuple[int, bytes, list[str]]:
        self._note(problem)
        return 400, b"", []

    def _problem(self, conn: socket.socket, problem: str) -> None:
        self._note(problem)
        conn.sendall(b"HTTP/1.1 400 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
