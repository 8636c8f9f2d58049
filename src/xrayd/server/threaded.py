"""The daemon's HTTP server, on h11 (protocol) and blocking sockets (I/O): the TCP signing
proxy, the admin endpoint, and in offline mode the X-Ray API and the viewer.

Why not aiohttp (used before): importing aiohttp.web and asyncio costs about 13 MB of resident
memory, a quarter of the idle daemon, for servers that answer a few sampling calls a minute
(docs/benchmarks.md, "Memory"). h11 is pure Python and about 0.1 MB.

One thread accepts; each connection is served by a thread of its own, requests one after the
other on a kept-alive connection. Handlers are plain functions ``(Request) -> Response``.

Limits (docs/operations.md, "Threat model"): connections in total and per client address (a
refused connection gets a 503 without a thread of its own and without blocking the acceptor);
a deadline for the whole request head (``head_timeout``, from the connection's start or the
first byte of a later request) and one for the whole body (``body_timeout``), whatever the
pace of the bytes; the head's size and header count (431); the body (``max_body``: 413
without reading it); an idle timeout between requests; a timeout for writing each answer.
Ambiguous framing is refused and the connection closed (server/head.py). An optional
``policy`` refuses requests before the handler sees them (server/policy.py). A handler's
exception is answered with ``errors(500, ...)`` and logged (rate-limited) with its cause.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import h11

from xrayd.logs import RateLimitedLog
from xrayd.receivers.udp import split_address
from xrayd.server.head import MAX_HEADERS, check_head, head_end

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0  # the whole request head, however slowly it trickles in
BODY_TIMEOUT = 30.0  # the whole request body
IDLE_TIMEOUT = 75.0  # between requests on a kept-alive connection (aiohttp's default)
IO_TIMEOUT = 30.0  # writing one answer
MAX_CONNECTIONS = 512
MAX_PER_CLIENT = 64
LINGER_SECONDS = 1.0  # reading what a refused or failed client still sends, before closing
MAX_LINGERING = 256
RECV_BYTES = 65536
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


@dataclass(frozen=True)
class Refusal:
    """A request a policy turns away: the status, an error code and a message."""

    status: int
    code: str
    message: str


Handler = Callable[[Request], Response]
Policy = Callable[[Request], Refusal | None]
# (status, error code, message) -> the answer in the application's error shape.
ErrorShape = Callable[[int, str, str], Response]


def plain(status: int, text: str) -> Response:
    return Response(status, text.encode(), content_type="text/plain; charset=utf-8")


def plain_error(status: int, _code: str, message: str) -> Response:
    return plain(status, message + "\n")


class BodyTooLarge(Exception):
    pass


class Deadline(Exception):
    """The head or body deadline passed."""


class Admission:
    """Connections open, in total and per client address; pure bookkeeping, thread-safe."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._count = 0

    def admit(self, client: str) -> str | None:
        """None when admitted (call ``release`` later), else why not: "total" or "client"."""
        with self._lock:
            if self._count >= self.total:
                return "total"
            if self._open[client] >= self.per_client:
                return "client"
            self._open[client] += 1
            self._count += 1
            return None

    def release(self, client: str) -> None:
        with self._lock:
            self._count -= 1
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def open(self) -> int:
        with self._lock:
            return self._count


def client_key(peer: object) -> str:
    """The client's address (an IPv4-mapped IPv6 address as IPv4)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    return host[7:] if isinstance(host, str) and host.startswith("::ffff:") else str(host)


class Lingerer:
    """Reads and drops what closed-off clients still send, for ``seconds``, on one thread and
    a selector, then closes them: closing a socket with unread data resets the connection and
    the client could lose the answer it was sent. At most ``capacity`` at once; beyond that a
    socket is closed at once."""

    def __init__(self, seconds: float = LINGER_SECONDS, capacity: int = MAX_LINGERING,
                 name: str = "http-linger") -> None:
        self.seconds = seconds
        self.capacity = capacity
        self.name = name
        self._lock = threading.Lock()
        self._incoming: list[socket.socket] = []
        self._held = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, conn: socket.socket) -> None:
        with self._lock:
            if self._stopping or self._held >= self.capacity:
                conn.close()
                return
            self._held += 1
            self._incoming.append(conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if thread is not None:
            thread.join(self.seconds + 1)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        deadlines: dict[socket.socket, float] = {}
        while True:
            with self._lock:
                incoming, self._incoming = self._incoming, []
                stopping = self._stopping
            now = time.monotonic()
            for conn in incoming:
                conn.setblocking(False)
                deadlines[conn] = now + self.seconds
                selector.register(conn, selectors.EVENT_READ)
            done = [c for c, d in deadlines.items() if d <= now or stopping]
            if stopping and not done and not deadlines:
                break
            for conn in done:
                self._close(selector, deadlines, conn)
            if stopping:
                break
            wait = min(deadlines.values(), default=now + 60) - now
            for key, _ in selector.select(max(0.0, wait)):
                conn = key.fileobj
                if conn is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                try:
                    data = conn.recv(RECV_BYTES)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._close(selector, deadlines, conn)  # type: ignore[arg-type]
        selector.close()

    def _close(self, selector: selectors.BaseSelector, deadlines: dict, conn: socket.socket
               ) -> None:
        deadlines.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        conn.close()
        with self._lock:
            self._held -= 1


class ThreadedHttpServer:
    """Serves ``handler`` on ``address`` (``host:port``); ``too_large`` answers bodies over
    ``max_body`` (default: ``errors(413, ...)``); ``errors`` gives every error answer the
    application's shape (default: plain text)."""

    def __init__(self, address: str, handler: Handler, *, max_body: int = 1024 * 1024,
                 too_large: Callable[[], Response] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, io_timeout: float = IO_TIMEOUT,
                 head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT,
                 max_head: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS,
                 policy: Policy | None = None, errors: ErrorShape = plain_error,
                 logs: RateLimitedLog | None = None, name: str = "http",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.handler = handler
        self.max_body = max_body
        self.errors = errors
        self.too_large = too_large or (
            lambda: errors(413, "RequestEntityTooLarge", "request body too large"))
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_head = max_head
        self.max_headers = max_headers
        self.policy = policy
        self.logs = logs or RateLimitedLog(logging.getLogger("xrayd"))
        self.name = name
        self.clock = clock
        self.bound: tuple[str, int] | None = None
        self.admission = Admission(max_connections, max_per_client)
        self.counts: Counter[str] = Counter()  # refusals and failures, by kind
        self._lingerer = Lingerer(name=f"{name}-linger")
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
            listener.listen(1024)
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
        self._lingerer.stop()

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        """The refusal and failure counters, by kind (for metrics and tests)."""
        with self._lock:
            return dict(self.counts)

    def _accept_loop(self) -> None:
        listener = self._listener
        while listener is not None and not self._stopping:
            try:
                conn, peer = listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: do not spin
                continue
            client = client_key(peer)
            refused = self.admission.admit(client)
            if refused is not None:
                self._refuse(conn, client, refused)
                continue
            thread = threading.Thread(target=self._serve, args=(conn, client),
                                      name=f"{self.name}-conn", daemon=True)
            with self._lock:
                self._open.add(conn)
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError:  # no more threads: as if the limit were reached
                with self._lock:
                    self._open.discard(conn)
                    self._threads.discard(thread)
                self.admission.release(client)
                self._refuse(conn, client, "total")

    def _refuse(self, conn: socket.socket, client: str, why: str) -> None:
        """Too many connections: a 503 sent without blocking, then the socket is left to the
        lingerer; the acceptor goes straight back to accepting."""
        self.count(f"refused_{why}")
        self.logs.warn(f"{self.name}-refused-{why}",
                       f"{self.name}: connection from {client} refused: too many connections "
                       + ("in total" if why == "total" else "from this address"))
        response = self.errors(503, "ServiceUnavailable", "too many connections")
        answer = self._head(h11.Connection(h11.SERVER), response, close=True) + response.body
        try:
            conn.setblocking(False)
            conn.send(answer)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        self._lingerer.add(conn)

    # -- one connection ----------------------------------------------------------------------

    def _serve(self, conn: socket.socket, client: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = bytearray()
            # A new connection: its first head is due within head_timeout of the accept.
            now = self.clock()
            wait = now + min(self.idle_timeout, self.head_timeout)
            deadline: float | None = now + self.head_timeout
            while not self._stopping and self._one_exchange(conn, client, pending, wait,
                                                            deadline):
                wait, deadline = self.clock() + self.idle_timeout, None
        except (OSError, h11.ProtocolError):
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.close()
            self.admission.release(client)

    def _recv(self, conn: socket.socket, deadline: float) -> bytes:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise Deadline
        conn.settimeout(remaining)
        try:
            return conn.recv(RECV_BYTES)
        except TimeoutError:
            raise Deadline from None

    def _read_head(self, conn: socket.socket, client: str, pending: bytearray, wait: float,
                   deadline: float | None) -> bytes | None:
        """The next request's head (with whatever followed it in ``pending``), or None when
        the connection ends (closed, or idle past ``wait``) before a request starts; an answer
        is sent and None returned when the head is late, too large or ambiguous. ``deadline``
        bounds the whole head; None: ``head_timeout`` from its first byte."""
        while True:
            while pending[:1] in (b"\r", b"\n"):  # blank lines before a request are ignored
                del pending[:1]
            if pending and deadline is None:
                deadline = self.clock() + self.head_timeout
            end = head_end(pending)
            if end > 0:
                if end > self.max_head:
                    break
                head = bytes(pending[:end])
                problem = check_head(head, self.max_headers)
                if problem is not None:
                    self._fail(conn, client, problem.status, "bad_head", problem.message)
                    return None
                return head
            if len(pending) > self.max_head:
                break
            try:
                if not pending:  # waiting for a request to start
                    data = self._recv(conn, wait if deadline is None else min(wait, deadline))
                else:
                    assert deadline is not None
                    data = self._recv(conn, deadline)
            except Deadline:
                if not pending:
                    return None  # idle: close quietly
                self._fail(conn, client, 408, "head_timeout",
                           f"request head not complete within {self.head_timeout:g} s")
                return None
            if not data:
                if pending:
                    self._note(client, "truncated", "connection closed within the request head")
                return None
            pending += data
        self._fail(conn, client, 431, "head_too_large",
                   f"request head larger than {self.max_head} bytes")
        return None

    def _one_exchange(self, conn: socket.socket, client: str, pending: bytearray,
                      wait: float, deadline: float | None) -> bool:
        """Read one request, answer it; whether the connection stays open for another."""
        head = self._read_head(conn, client, pending, wait, deadline)
        if head is None:
            return False
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        h.receive_data(bytes(pending))
        pending.clear()
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            self._fail(conn, client, exc.error_status_hint, "bad_head", str(exc), h)
            return False
        if not isinstance(event, h11.Request):  # cannot happen with a complete head
            self._fail(conn, client, 400, "bad_head", "incomplete request head", h)
            return False
        request = Request(
            event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
        )
        try:
            request.body = self._read_body(conn, h, event)
        except BodyTooLarge:
            self._note(client, "body_too_large", f"request body over {self.max_body} bytes")
            self._respond(conn, h, request, self.too_large(), close=True)
            _linger(conn, limit=max(4 * 1024 * 1024, 2 * self.max_body))
            return False
        except Deadline:
            self._fail(conn, client, 408, "body_timeout",
                       f"request body not complete within {self.body_timeout:g} s", h)
            return False
        except h11.RemoteProtocolError as exc:
            self._fail(conn, client, exc.error_status_hint, "bad_body", str(exc), h)
            return False
        pending += h.trailing_data[0]  # a pipelined next request
        response = self._answer(request, client)
        self._respond(conn, h, request, response)
        return h.our_state is h11.DONE and h.their_state is h11.DONE

    def _answer(self, request: Request, client: str) -> Response:
        if self.policy is not None:
            refusal = self.policy(request)
            if refusal is not None:
                self.count(f"refused_{refusal.status}")
                self.logs.warn(f"{self.name}-policy-{refusal.status}",
                               f"{self.name}: request from {client} refused: "
                               f"{request.method[:20]} {request.path[:200]}: {refusal.message}")
                return self.errors(refusal.status, refusal.code, refusal.message)
        try:
            return self.handler(request)
        except Exception as exc:  # a bug in a handler must not kill the connection thread
            self.count("handler_error")
            where = traceback.extract_tb(exc.__traceback__)[-1:]
            at = f" at {where[0].filename.rpartition('/')[2]}:{where[0].lineno}" if where else ""
            self.logs.error(f"{self.name}-handler-{type(exc).__name__}",
                            f"{self.name}: {request.method[:20]} {request.path[:200]} failed: "
                            f"{type(exc).__name__}: {str(exc)[:300]}{at}")
            return self.errors(500, "InternalFailure",
                               f"internal error ({type(exc).__name__}); see the daemon's log")

    def _read_body(self, conn: socket.socket, h: h11.Connection, event: h11.Request) -> bytes:
        length = _content_length(event.headers)
        if length is not None and length > self.max_body:
            raise BodyTooLarge
        if h.they_are_waiting_for_100_continue:
            conn.settimeout(self.io_timeout)
            conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
        deadline = self.clock() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                h.receive_data(self._recv(conn, deadline))
            elif isinstance(event, h11.Data):
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
        conn.settimeout(self.io_timeout)  # the whole sendall (Python 3.5+)
        conn.sendall(data)

    def _note(self, client: str, kind: str, message: str) -> None:
        """A malformed request: counted and logged (rate-limited, per kind)."""
        self.count(kind)
        self.logs.warn(f"{self.name}-{kind}",
                       f"{self.name}: bad request from {client}: {message[:300]}")

    def _fail(self, conn: socket.socket, client: str, status: int, kind: str, message: str,
              h: h11.Connection | None = None) -> None:
        """A request this server cannot take: count it, log it (rate-limited), answer in the
        application's error shape and close."""
        self._note(client, kind, f"{message} ({status})")
        h = h or h11.Connection(h11.SERVER)
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        code = {408: "RequestTimeout", 431: "RequestHeaderFieldsTooLarge"}.get(
            status, "InvalidRequestException")
        response = self.errors(status, code, message)
        with contextlib.suppress(OSError, h11.LocalProtocolError):
            conn.settimeout(self.io_timeout)
            conn.sendall(self._head(h, response, close=True) + response.body)
            _linger(conn)


def _linger(conn: socket.socket, seconds: float = 1.0, limit: int = 4 * 1024 * 1024) -> None:
    """Before closing after an error answer: stop sending and read (and drop) what the client
    still sends, for a moment (a whole-time bound, not per read). Closing with unread data
    would reset the connection, and the client could lose the answer."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while limit > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            conn.settimeout(remaining)
            data = conn.recv(RECV_BYTES)
            if not data:
                return
            limit -= len(data)


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None
