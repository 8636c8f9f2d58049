"""A strict HTTP/1.1 server for the test fakes of AWS endpoints (X-Ray, STS) and the outbound
proxy. Each request head is read as raw bytes and judged as a strict front end judges it, before
any handler sees it: a malformed request line or header line, an obs-fold (a line starting with
whitespace), whitespace before a colon, a duplicate Host, two Content-Length lines (even equal),
a Content-Length that is not one number, Content-Length together with Transfer-Encoding, or a
transfer coding other than a lone ``chunked`` is answered 400 and the connection closed
(RFC 9112 sections 2.2, 5, 6.1, 6.3). Handlers get the header lines as received (in order,
names as sent, duplicates kept), so a signature can be checked against the bytes on the wire.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


@dataclass
class RawRequest:
    method: str = ""
    target: str = ""
    version: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)  # as received, OWS trimmed
    body: bytes = b""
    head: bytes = b""  # the raw head, up to and without its blank line
    problem: str = ""  # why the request was refused ("" when it was not)

    @property
    def path(self) -> str:
        return self.target.split("?")[0]

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.lines if key.lower() == name]

    def header(self, name: str, default: str = "") -> str:
        found = self.values(name)
        return found[0] if found else default

    @property
    def headers(self) -> dict[str, str]:
        """First value of each name, names as sent (duplicates are in ``lines``)."""
        first: dict[str, str] = {}
        names: set[str] = set()
        for key, value in self.lines:
            if key.lower() not in names:
                names.add(key.lower())
                first[key] = value
        return first


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_reply(status: int, payload: dict, content_type: str = "application/x-amz-json-1.1",
               close: bool = False) -> Reply:
    headers = [("Content-Type", content_type)]
    if status >= 400 and "__type" in payload:
        headers.append(("x-amzn-ErrorType", payload["__type"]))
    return Reply(status, json.dumps(payload).encode(), headers, close)


def parse_head(head: bytes) -> RawRequest:
    """The request line and header lines of ``head`` (without the blank line); ``problem``
    says what a strict front end would refuse."""
    request = RawRequest(head=head)
    text = head.decode("latin-1")
    first, *lines = text.split("\r\n")
    parts = first.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] \
            or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        request.problem = f"malformed request line {first[:100]!r}"
        return request
    request.method, request.target, request.version = parts
    for line in lines:
        if "\n" in line or "\r" in line or "\0" in line:
            request.problem = "bare CR, LF or NUL in a header line"
            return request
        if line[:1] in (" ", "\t"):
            request.problem = "obs-fold (a header line starting with whitespace)"
            return request
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            request.problem = f"malformed header line {line[:100]!r}"
            return request
        request.lines.append((name, value.strip(" \t")))
    request.problem = framing_problem(request)
    return request


def framing_problem(request: RawRequest) -> str:
    lengths = request.values("content-length")
    codings = request.values("transfer-encoding")
    hosts = request.values("host")
    if len(hosts) > 1 or (request.version == "HTTP/1.1" and not hosts):
        return "not exactly one Host header"
    if len(lengths) > 1:
        return f"duplicate Content-Length ({', '.join(lengths)})"
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if lengths and not lengths[0].isdigit():
        return f"bad Content-Length {lengths[0]!r}"
    if lengths and int(lengths[0]) > MAX_BODY_BYTES:
        return "body too large"
    if codings and (len(codings) > 1 or codings[0].lower() != "chunked"):
        return f"unsupported Transfer-Encoding {codings!r}"
    return ""


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def head(self) -> bytes | None:
        """The next head (None at a clean end of the connection); ValueError if too large."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise ValueError("request head too large")
            if not self._fill():
                if self.buffer:
                    raise ValueError("connection closed inside a request head")
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if len(head) > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
        return head

    def exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ValueError("connection closed inside a body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 4096 or not self._fill():
                raise ValueError("bad chunk line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():  # trailers
                    pass
                return body
            body += self.exact(size)
            if self.exact(2) != b"\r\n" or len(body) > MAX_BODY_BYTES:
                raise ValueError("bad chunk")


def write_reply(sock: socket.socket, reply: Reply) -> None:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    lines.append(f"Content-Length: {len(reply.body)}")
    if reply.close:
        lines.append("Connection: close")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)


# A handler answers a request with a Reply, or None when it took the connection over (a
# tunnel, a dropped connection): the server then stops reading from it.
Handler = Callable[[RawRequest, socket.socket], Reply | None]


class StrictHttpServer:
    """Serves ``handler`` on a loopback port, one thread per connection, kept alive.
    ``refused`` holds each refused request (``problem`` says why); ``on_refused`` is called with
    it too. ``tls``: (certificate file, key file) to serve HTTPS."""

    def __init__(self, handler: Handler, tls: tuple[str, str] | None = None,
                 on_refused: Callable[[RawRequest], None] | None = None) -> None:
        self.handler = handler
        self.on_refused = on_refused
        self.refused: list[RawRequest] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(*tls)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="strict-http").start()

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(30)
            sock = conn
            if self._context is not None:
                sock = self._context.wrap_socket(conn, server_side=True)
            with sock:
                self._requests(sock)
        except (OSError, ValueError):
            pass  # a client that went away, or a refused request
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _requests(self, sock: socket.socket) -> None:
        reader = _Reader(sock)
        while True:
            try:
                head = reader.head()
            except ValueError as exc:
                self._refuse(sock, RawRequest(problem=str(exc)))
                return
            if head is None:
                return
            request = parse_head(head)
            if request.problem:
                self._refuse(sock, request)
                return
            if request.header("transfer-encoding"):
                request.body = reader.chunked()
            else:
                request.body = reader.exact(int(request.header("content-length") or 0))
            reply = self.handler(request, sock)
            if reply is None:
                return
            close = reply.close or request.version == "HTTP/1.0" or \
                "close" in request.header("connection").lower()
            reply.close = close
            write_reply(sock, reply)
            if close:
                return

    def _refuse(self, sock: socket.socket, request: RawRequest) -> None:
        with self._lock:
            self.refused.append(request)
        if self.on_refused is not None:
            self.on_refused(request)
        write_reply(sock, json_reply(400, {"__type": "BadRequestException",
                                           "message": request.problem}, close=True))
