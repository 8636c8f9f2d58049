"""Sending signed X-Ray API requests on kept-alive connections, one per calling thread.

The daemon makes up to two thousand PutTraceSegments calls a second under load, and the generic
HTTP stack (botocore's URLLib3Session over urllib3) costs about twice the CPU of a plain
``http.client`` connection per call (docs/benchmarks.md). Requests are signed by botocore either
way; this module only moves bytes. TLS uses the CA bundle botocore would use. Through an
outbound proxy the daemon keeps botocore's session (the exporter chooses).

Connections get TCP_NODELAY: without it, a request written as headers then body waits for the
peer's delayed ACK (40 ms on Linux) before the body leaves.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit


class _Connection(http.client.HTTPConnection):
    """Headers and body in one write, TCP_NODELAY, and a check that a kept-alive connection
    has not been closed by the server while idle."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_output(self, message_body=None, encode_chunked=False):  # type: ignore[override]
        if isinstance(message_body, bytes):
            self._buffer.extend((b"", b""))
            msg = b"\r\n".join(self._buffer) + message_body
            del self._buffer[:]
            self.send(msg)
            return
        super()._send_output(message_body, encode_chunked)

    def dropped(self) -> bool:
        """True when an idle connection was closed by the peer (it is readable: EOF)."""
        if self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class _TlsConnection(_Connection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int | None, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)

    def dropped(self) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return super().dropped()


class Response:
    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers


class DirectTransport:
    """POSTs to one endpoint; thread-safe (each thread has its own connection)."""

    def __init__(self, endpoint: str, verify: bool, timeout: float) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.tls:
            self._context = self._tls_context(verify)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()

    @staticmethod
    def _tls_context(verify: bool) -> ssl.SSLContext:
        if not verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        from botocore.httpsession import get_cert_path

        return ssl.create_default_context(cafile=get_cert_path(True))

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and not conn.dropped():
            return conn
        if conn is not None:
            self._discard(conn)
        if self._context is not None:
            conn = _TlsConnection(self.host, self.port, self.timeout, self._context)
        else:
            conn = _Connection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST ``body`` to ``url`` (on this transport's endpoint); raises OSError or
        http.client.HTTPException on a transport failure (the connection is then dropped)."""
        path = urlsplit(url)
        target = path.path or "/"
        if path.query:
            target += "?" + path.query
        conn = self._connection()
        try:
            conn.request("POST", target, body, dict(headers))
            response = conn.getresponse()
            content = response.read()
        except BaseException:
            self._discard(conn)
            raise
        if response.will_close:
            self._discard(conn)
        return Response(response.status, content, response.headers)

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()
