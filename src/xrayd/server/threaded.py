"""The daemon's HTTP server, on h11 (protocol) and blocking sockets (I/O): the TCP signing
proxy, the admin endpoint, and in offline mode the X-Ray API and the viewer.

Why not aiohttp (used before): importing aiohttp.web and asyncio costs about 13 MB of resident
memory, a quarter of the idle daemon, for servers that answer a few sampling calls a minute
(docs/benchmarks.md, "Memory"). h11 is pure Python and about 0.1 MB.

One thread accepts; each connection is served by a thread of its own (bounded by
``max_connections``), requests one after the other on a kept-alive connection. Handlers are
plain functions ``(Request) -> Response``. Limits: the request head (``max_head``), the body
(``max_body``: 413 without reading it), a timeout on every read and write, an idle timeout
between requests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import h11

from xrayd.receivers.udp import split_address

MAX_HEAD_BYTES = 16 * 1024
IDLE_TIMEOUT = 75.0  # between requests on a kept-alive connection (aiohttp's default)
IO_TIMEOUT = 30.0  # one read or write within a request
MAX_CONNECTIONS = 256
SERVER_NAME = b"xrayd"


@dataclass
class Request:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]  # as sent (names in their original case), in order
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None


Handler = Callable[[Request], Response]


def plain(status: int, text: str) -> Response:
    return Response(status, text.encode(), content_type="text/plain; charset=utf-8")


class BodyTooLarge(Exception):
    pass


class ThreadedHttpServer:
    """Serves ``handler`` on ``address`` (``host:port``); ``too_large`` answers bodies over
    ``max_body`` (default: a plain 413)."""

    def __init__(self, address: str, handler: Handler, *, max_body: int = 1024 * 1024,
                 too_large: Callable[[], Response] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, io_timeout: float = IO_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, name: str = "http") -> None:
        self.address = address
        self.handler = handler
        self.max_body = max_body
        self.too_large = too_large or (lambda: plain(413, "request body too large\n"))
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.name = name
        self.bound: tuple[str, int] | None = None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self._acceptor: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen; raises OSError (e.g. address in use) when the port cannot be bound."""
        host, port = split_address(self.address)
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        if not host:  # every interface: dual-stack IPv6 first, as for UDP
            infos.sort(key=lambda info: info[0] != socket.AF_INET6)
        family, _, _, _, sockaddr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(sockaddr)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.bound = listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, name=self.name,
                                          daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            conns, threads = list(self._open), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self) -> None:
        listener = self._listener
        while listener is not None and not self._stopping:
            try:
                conn, _peer = listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            thread = threading.Thread(target=self._serve, args=(conn,),
                                      name=f"{self.name}-conn", daemon=True)
            with self._lock:
                self._open.add(conn)
                self._threads.add(thread)
            thread.start()

    def _refuse(self, conn: socket.socket) -> None:
        """Too many connections: a 503 and close, without a thread."""
        with contextlib.suppress(OSError):
            conn.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                conn.recv(MAX_HEAD_BYTES)
            h = h11.Connection(h11.SERVER)
            response = plain(503, "too many connections\n")
            conn.sendall(self._head(h, response, close=True) + response.body)
            _linger(conn, 0.2)
        conn.close()

    # -- one connection ----------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            while not self._stopping and self._one_exchange(conn, h):
                h.start_next_cycle()
        except (OSError, h11.ProtocolError):
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def _one_exchange(self, conn: socket.socket, h: h11.Connection) -> bool:
        """Read one request, answer it; whether the connection stays open for another."""
        conn.settimeout(self.idle_timeout)
        try:
            event = self._next_event(conn, h, first=True)
        except h11.RemoteProtocolError as exc:
            self._send_error(conn, h, exc.error_status_hint, str(exc))
            return False
        if not isinstance(event, h11.Request):
            return False  # closed by the client (or idle too long)
        conn.settimeout(self.io_timeout)
        request = Request(
            event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
        )
        try:
            request.body = self._read_body(conn, h, event)
        except BodyTooLarge:
            self._respond(conn, h, request, self.too_large(), close=True)
            _linger(conn, limit=max(4 * 1024 * 1024, 2 * self.max_body))
            return False
        except h11.RemoteProtocolError as exc:
            self._send_error(conn, h, exc.error_status_hint, str(exc))
            return False
        try:
            response = self.handler(request)
        except Exception as exc:  # a bug in a handler must not kill the connection thread
            response = plain(500, f"internal error: {type(exc).__name__}\n")
        self._respond(conn, h, request, response)
        return h.our_state is h11.DONE and h.their_state is h11.DONE

    def _next_event(self, conn: socket.socket, h: h11.Connection, first: bool = False):
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = conn.recv(MAX_HEAD_BYTES)  # a head over twice this gets 431
            except TimeoutError:
                if first and h.their_state is h11.IDLE:
                    return h11.ConnectionClosed()
                raise
            h.receive_data(data)
            if not data and first and h.their_state is h11.IDLE:
                return h11.ConnectionClosed()

    def _read_body(self, conn: socket.socket, h: h11.Connection, event: h11.Request) -> bytes:
        length = _content_length(event.headers)
        if length is not None and length > self.max_body:
            raise BodyTooLarge
        if h.they_are_waiting_for_100_continue:
            conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._next_event(conn, h)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise BodyTooLarge
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise h11.RemoteProtocolError("connection closed within the request body")

    def _head(self, h: h11.Connection, response: Response, close: bool = False) -> bytes:
        given = {k.lower() for k, _ in response.headers}
        headers = []
        if "date" not in given:
            headers.append((b"date", formatdate(usegmt=True).encode()))
        if "server" not in given:
            headers.append((b"server", SERVER_NAME))
        if response.content_type is not None:
            headers.append((b"content-type", response.content_type.encode("latin-1")))
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers)
        headers.append((b"content-length", str(len(response.body)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        return h.send(h11.Response(status_code=response.status, headers=headers))

    def _respond(self, conn: socket.socket, h: h11.Connection, request: Request,
                 response: Response, close: bool = False) -> None:
        data = self._head(h, response, close)
        if request.method != "HEAD" and response.body:
            data += h.send(h11.Data(data=response.body))
        data += h.send(h11.EndOfMessage())
        conn.sendall(data)

    def _send_error(self, conn: socket.socket, h: h11.Connection, status: int,
                    message: str) -> None:
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = plain(status, f"bad request: {message}\n")
        with contextlib.suppress(OSError, h11.LocalProtocolError):
            conn.sendall(self._head(h, response, close=True) + response.body)
            _linger(conn)


def _linger(conn: socket.socket, seconds: float = 1.0, limit: int = 4 * 1024 * 1024) -> None:
    """Before closing after an error answer: stop sending and read (and drop) what the client
    still sends, for a moment. Closing with unread data would reset the connection, and the
    client could lose the answer."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(seconds)
        while limit > 0:
            data = conn.recv(65536)
            if not data:
                return
            limit -= len(data)


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None
