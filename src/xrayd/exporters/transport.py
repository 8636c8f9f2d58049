"""Sending signed X-Ray API requests on kept-alive connections, one per calling thread.

The daemon makes up to two thousand PutTraceSegments calls a second under load. The generic HTTP
stacks cost more CPU than the signing: botocore's URLLib3Session about 790 µs a call,
``http.client`` about 150 µs (its response headers go through the ``email`` parser), while the
exchange itself — one write of the request, one read of the answer, parsed by httptools
(llhttp, in C) — costs about 35 µs (docs/benchmarks.md). Requests are signed by botocore either
way; this module only moves bytes, and alone decides their framing (Content-Length). TLS uses
the CA bundle botocore would use. Through an outbound proxy, SessionTransport sends through
botocore's session with the same interface and limits (the caller chooses).

The request goes out in one write (headers and body together), with TCP_NODELAY: no waiting for
the peer's delayed ACK. Every call is bounded by one deadline, ``timeout`` seconds from its
start, for the connect, the request and the whole answer; and by size: the response head (at
most MAX_HEAD_BYTES and MAX_HEADER_LINES lines) and body (MAX_RESPONSE_BYTES), so a hostile or
broken endpoint costs a bounded time and memory. Reads and writes are timed by the kernel
(SO_RCVTIMEO, SO_SNDTIMEO) on a blocking socket rather than by Python's socket timeouts, which
add a ``poll`` (and a release and re-take of the GIL) to every read and write; a read or write
after the first of a call is given only the time left.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from xrayd.numbers import parse_uint

MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # X-Ray's answers are small; a runaway peer is cut off
# X-Ray's response heads are a few hundred bytes in fewer than ten lines.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
# A kept-alive connection idle for longer than this is checked for a close by the peer before
# it is used again; if a server closes one sooner, the call is made again on a new connection
# (DirectTransport.post).
IDLE_CHECK_SECONDS = 1.0
_READ = 65536
# What a blocking socket raises when SO_RCVTIMEO / SO_SNDTIMEO runs out.
_KERNEL_TIMEOUTS = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ResponseError(ConnectionError):
    """The peer's answer was not a well-formed HTTP/1.1 response (the connection is dropped)."""


class StaleConnection(ConnectionError):
    """The peer closed the connection before any byte of an answer: on a kept-alive connection,
    most likely closed while idle, before it read the request."""


class Headers(dict):
    """Response headers by lower-case name; ``get`` and ``[]`` take any case."""

    def get(self, name: str, default=None):  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Response:
    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers


class _Answer:
    """httptools callbacks: collects one response."""

    __slots__ = ("body", "complete", "delimited", "header_bytes", "header_lines", "headers",
                 "headers_done", "size")

    def __init__(self) -> None:
        self.headers = Headers()
        self.body: list[bytes] = []
        self.size = 0
        self.header_lines = 0
        self.header_bytes = 0
        self.complete = False
        self.headers_done = False
        self.delimited = False  # Content-Length or chunked: the end is known without EOF

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_lines += 1
        self.header_bytes += len(name) + len(value) + 4
        key = name.decode("latin-1").lower()
        if key in ("content-length", "transfer-encoding"):
            self.delimited = True
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True


# The transport alone decides how a request is framed: a caller's copy of these would go out
# next to the transport's own, and a front end that signs what it received (as X-Ray's does)
# would see two values where the signer saw one.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def check_headers(headers: Mapping[str, str]) -> None:
    """ValueError unless each name is given once (whatever its case), without a line break,
    and none is a framing header."""
    names: set[str] = set()
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} has a line break")
        key = name.lower()
        if key in FRAMING_HEADERS:
            raise ValueError(f"header {name!r} is the transport's to set")
        if key in names:
            raise ValueError(f"header {name!r} given twice")
        names.add(key)


def request_head(target: str, headers: Mapping[str, str], length: int,
                 checked: set[tuple[str, ...]] | None = None) -> bytes:
    """The request line and headers of a POST with a ``length``-byte body: ``headers`` (see
    check_headers) and the Content-Length. ``checked``: the sets of names already found
    valid (each call of a transport sends the same names; the values are checked every time)."""
    names = tuple(headers)
    if checked is None or names not in checked:
        check_headers(headers)
        if checked is not None and len(checked) < 64:
            checked.add(names)
    lines = [f"POST {target} HTTP/1.1"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "\r\n".join(lines).encode("latin-1")


def kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Make ``sock`` blocking, with reads and writes timed out by the kernel."""
    timeout = max(timeout, 0.001)  # zero would mean no timeout at all
    sock.settimeout(None)
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _Connection:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout  # the socket's usual read and write timeout
        self.used = time.monotonic()
        self.exchanges = 0
        self.shortened = False  # the socket's timeouts are the time left of a call

    def dropped(self) -> bool:
        """True when an idle connection was closed by the peer (it is readable: EOF, or data
        nobody asked for)."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def exchange(self, request: bytes, deadline: float) -> tuple[Response, bool]:
        """Send ``request``, read the answer by ``deadline`` (time.monotonic()); (response,
        whether the connection stays open)."""
        try:
            if deadline - time.monotonic() < self.timeout - 0.01:  # after a connect or retry
                self._time_left(deadline)
            return self._exchange(request, deadline)
        except _KERNEL_TIMEOUTS:
            raise TimeoutError(f"no complete response within {self.timeout:g} s") from None
        finally:
            if self.shortened:  # the next call starts with the whole timeout again
                kernel_timeouts(self.sock, self.timeout)
                self.shortened = False

    def _time_left(self, deadline: float) -> None:
        """Give the next read or write only the time left before ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {self.timeout:g} s")
        kernel_timeouts(self.sock, left)
        self.shortened = True

    def _send(self, request: bytes, deadline: float) -> None:
        sock = self.sock
        sent = sock.send(request)
        if sent < len(request):  # a large body the peer takes slowly: keep to the deadline
            view = memoryview(request)
            while sent < len(view):
                self._time_left(deadline)
                sent += sock.send(view[sent:])

    def _exchange(self, request: bytes, deadline: float) -> tuple[Response, bool]:
        sock = self.sock
        self.exchanges += 1
        try:
            self._send(request, deadline)
            data = sock.recv(_READ)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise StaleConnection(str(exc)) from None
        if not data:
            raise StaleConnection("connection closed before any response")
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        recv = sock.recv
        head_read = 0  # bytes read while the head was incomplete
        while True:
            if not data:
                if answer.headers_done and not answer.delimited:
                    break  # a body delimited by the end of the connection
                raise ResponseError("connection closed before the response was complete")
            if not answer.headers_done:
                head_read += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ResponseError(f"malformed response: {exc}") from None
            if answer.header_lines > MAX_HEADER_LINES:
                raise ResponseError(f"response head has more than {MAX_HEADER_LINES} lines")
            if answer.header_bytes > MAX_HEAD_BYTES or \
                    (head_read > MAX_HEAD_BYTES and not answer.headers_done):
                raise ResponseError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            if answer.complete:
                break
            if answer.size > MAX_RESPONSE_BYTES:
                raise ResponseError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
            self._time_left(deadline)
            data = recv(_READ)
        self.used = time.monotonic()
        status = parser.get_status_code()
        # (httptools' should_keep_alive() is reset once the message is complete.)
        keep = (answer.complete and answer.delimited and parser.get_http_version() == "1.1"
                and "close" not in answer.headers.get("connection", "").lower())
        return Response(status, b"".join(answer.body), answer.headers), keep

    def close(self) -> None:
        self.sock.close()


class DirectTransport:
    """POSTs to one endpoint; thread-safe (each thread has its own connection)."""

    def __init__(self, endpoint: str, verify: bool, timeout: float) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.tls:
            self._context = self._tls_context(verify)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._checked: set[tuple[str, ...]] = set()  # header names found valid (request_head)

    @staticmethod
    def _tls_context(verify: bool) -> ssl.SSLContext:
        if not verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        from botocore.httpsession import get_cert_path

        return ssl.create_default_context(cafile=get_cert_path(True))

    def _connect(self, deadline: float) -> _Connection:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no connection within {self.timeout:g} s")
        sock = socket.create_connection((self.host, self.port), timeout=left)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            kernel_timeouts(sock, self.timeout)
        except BaseException:
            sock.close()
            raise
        conn = _Connection(sock, self.timeout)
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn

    def _connection(self, deadline: float) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if time.monotonic() - conn.used < IDLE_CHECK_SECONDS or not conn.dropped():
                return conn
            self._discard(conn)
        return self._connect(deadline)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def post(self, target: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST ``body`` to ``target`` (a path, with its query) on this transport's endpoint;
        ``headers`` must include Host. Raises OSError (TimeoutError, ConnectionError,
        ResponseError ...) on a transport failure; the connection is then dropped."""
        request = request_head(target, headers, len(body), self._checked) + body
        deadline = time.monotonic() + self.timeout
        conn = self._connection(deadline)
        try:
            try:
                response, keep = conn.exchange(request, deadline)
            except StaleConnection:
                if conn.exchanges == 1:
                    raise  # a new connection: no idle close to blame
                self._discard(conn)
                conn = self._connect(deadline)
                response, keep = conn.exchange(request, deadline)
        except BaseException:
            self._discard(conn)
            raise
        if not keep:
            self._discard(conn)
        return response

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()


class SessionTransport:
    """POSTs through botocore's HTTP session (used with an outbound proxy: CONNECT tunnels,
    proxy TLS), with DirectTransport's ``post``: the same headers in, the Content-Length added
    once (by botocore's request preparer), the same Response out, the same limits on the body
    (MAX_RESPONSE_BYTES, read by the deadline, complete). The response head is read by
    ``http.client``, which allows 100 header lines of at most 64 KiB each."""

    def __init__(self, endpoint: str, session: Any, timeout: float) -> None:
        parts = urlsplit(endpoint)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.session = session
        self.timeout = timeout

    def post(self, target: str, body: bytes, headers: Mapping[str, str]) -> Response:
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        check_headers(headers)
        deadline = time.monotonic() + self.timeout
        request = AWSRequest(method="POST", url=self.base + target, data=body,
                             headers=dict(headers))
        request.stream_output = True  # the body is read here, within the limits
        try:
            answer = self.session.send(request.prepare())
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise TimeoutError(str(exc)) from exc
        raw = answer.raw
        try:
            content = self._body(raw, answer.headers.get("content-length"), deadline)
        except BaseException:
            raw.close()  # not reused: the rest of the answer is still on it
            raw.release_conn()
            raise
        raw.release_conn()
        return Response(answer.status_code, content, answer.headers)

    def _body(self, raw: Any, length: str | None, deadline: float) -> bytes:
        from urllib3.exceptions import HTTPError
        from urllib3.exceptions import ReadTimeoutError as ReadTimeout

        chunks, size = [], 0
        try:
            while chunk := raw.read(_READ):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ResponseError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete response within {self.timeout:g} s")
                chunks.append(chunk)
        except ReadTimeout:
            raise TimeoutError(f"no complete response within {self.timeout:g} s") from None
        except HTTPError as exc:
            raise ResponseError(f"malformed response: {exc}") from None
        expected = parse_uint(length) if length is not None else None
        if expected is not None and size != expected:
            raise ResponseError("connection closed before the response was complete")
        return b"".join(chunks)

    def close(self) -> None:
        self.session.close()


Transport = DirectTransport | SessionTransport
