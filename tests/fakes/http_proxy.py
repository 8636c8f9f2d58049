"""A forward HTTP proxy for tests: CONNECT tunnels and absolute-URI requests (plain HTTP
forwarding), recording every target it was asked for.

Strict as the X-Ray fakes are (fakes/raw_http.py): each request head is judged from the raw bytes
received (duplicate or conflicting framing headers get 400 and are recorded in ``refused``), and
a forwarded request goes on as it came, its header lines in order with their duplicates, less
the hop-by-hop ones, so that the upstream judges the client's bytes, not this proxy's."""

from __future__ import annotations

import select
import socket
import threading
from urllib.parse import urlsplit

from fakes.raw_http import RawRequest, Reply, StrictHttpServer

HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te",
       "trailer", "transfer-encoding", "upgrade"}


class HttpProxy:
    def __init__(self) -> None:
        self.targets: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = StrictHttpServer(self._handle)
        self.url = self._server.url

    @property
    def refused(self) -> list[RawRequest]:
        return self._server.refused

    def _record(self, method: str, target: str) -> None:
        with self._lock:
            self.targets.append((method, target))

    def seen(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.targets)

    def _handle(self, request: RawRequest, conn: socket.socket) -> Reply | None:
        self._record(request.method, request.target)
        if request.method == "CONNECT":
            host, _, port = request.target.rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
            except (OSError, ValueError):
                return Reply(502, close=True)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(conn, upstream)
            return None
        parts = urlsplit(request.target)
        if parts.scheme != "http" or not parts.hostname:
            return Reply(400, b"absolute http URI expected", close=True)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{request.method} {path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.lines
                  if name.lower() not in HOP and name.lower() != "content-length"]
        lines += [f"Content-Length: {len(request.body)}", "Connection: close"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            with socket.create_connection((parts.hostname, parts.port or 80),
                                          timeout=10) as upstream:
                upstream.sendall(head + request.body)
                answer = b""
                while chunk := upstream.recv(65536):
                    answer += chunk
        except OSError:
            return Reply(502, close=True)
        conn.sendall(answer)  # as the upstream sent it, with its Connection: close
        return None

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        finally:
            upstream.close()

    def stop(self) -> None:
        self._server.stop()
