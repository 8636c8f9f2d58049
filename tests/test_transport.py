"""exporters/transport.py against small scripted HTTP servers on real loopback sockets: how
responses are delimited, kept-alive connections, stale connections, malformed answers, size and
time limits."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest

from xrayd.exporters import transport
from xrayd.exporters.transport import (
    DirectTransport,
    Headers,
    ResponseError,
    StaleConnection,
    request_head,
)

Script = Callable[[socket.socket, int], None]  # (accepted connection, request number)


class ScriptedServer:
    """Accepts connections; for each request read, runs ``script`` on the connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client reset the connection
            self._requests(conn)

    def _requests(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                self.script(conn, len(self.requests))
                if conn.fileno() < 0:
                    return

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def answer(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def post(url: str, body: bytes = b'{"a":1}', timeout: float = 2.0,
         client: DirectTransport | None = None):
    client = client or DirectTransport(url, True, timeout)
    return client.post("/TraceSegments", body, {"Host": "x", "Content-Type": "application/json"})


def test_request_is_one_well_formed_post_and_connections_are_kept(serve):
    server = serve(lambda conn, n: conn.sendall(answer(b'{"n":%d}' % n)))
    client = DirectTransport(server.url, True, 2.0)
    try:
        bodies = [post(server.url, b"x" * 70_000, client=client).content for _ in range(3)]
    finally:
        client.close()
    assert bodies == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"POST /TraceSegments HTTP/1.1", b"Host: x",
                                   b"Content-Type: application/json",
                                   b"Content-Length: 70000"]
    assert body == b"x" * 70_000


def test_chunked_and_close_delimited_answers(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-amzn-ErrorType: E\r\n\r\n"
               b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
    server = serve(lambda conn, n: conn.sendall(chunked))
    response = post(server.url)
    assert (response.status_code, response.content) == (200, b'{"a":1}')
    assert response.headers.get("X-Amzn-ErrorType") == "E"  # any case

    def close_delimited(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"message\":\"busy\"}")
        conn.shutdown(socket.SHUT_WR)
        conn.close()

    server = serve(close_delimited)
    client = DirectTransport(server.url, True, 2.0)
    for _ in range(2):  # the connection is not reused
        response = post(server.url, client=client)
        assert (response.status_code, response.content) == (503, b'{"message":"busy"}')
    assert server.connections == 2


def test_connection_close_header_drops_the_connection(serve):
    server = serve(lambda conn, n: conn.sendall(answer(extra=b"Connection: close\r\n")))
    client = DirectTransport(server.url, True, 2.0)
    for _ in range(3):
        assert post(server.url, client=client).status_code == 200
    assert server.connections == 3


def test_a_kept_alive_connection_closed_silently_is_replaced_once(serve):
    def answer_then_close(conn: socket.socket, n: int) -> None:
        conn.sendall(answer())
        conn.close()  # no Connection: close header

    server = serve(answer_then_close)
    client = DirectTransport(server.url, True, 2.0)
    for _ in range(3):  # at once: no idle check before reuse
        assert post(server.url, client=client).status_code == 200
    assert len(server.requests) == 3  # each request reached the server once
    assert server.connections == 3


def test_a_new_connection_closed_without_an_answer_is_an_error(serve):
    def hang_up(conn: socket.socket, n: int) -> None:
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(hang_up)
    with pytest.raises(StaleConnection):
        post(server.url)
    assert len(server.requests) == 1  # not sent twice


@pytest.mark.parametrize("reply", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
])
def test_malformed_or_truncated_answers(serve, reply):
    def send(conn: socket.socket, n: int) -> None:
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(send)
    with pytest.raises(ResponseError):
        post(server.url)


def test_an_oversized_answer_is_cut_off(serve, monkeypatch):
    monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 100_000)

    def huge(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        for _ in range(20):
            conn.sendall(b"x" * 65536)

    server = serve(huge)
    with pytest.raises(ResponseError, match="larger than"):
        post(server.url)


def test_every_call_times_out(serve):
    server = serve(lambda conn, n: time.sleep(3))  # never answers
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post(server.url, timeout=0.3)
    assert time.monotonic() - started < 2.5

    def drip(conn: socket.socket, n: int) -> None:  # each read is quick, the whole is not
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"x")
            time.sleep(0.05)

    server = serve(drip)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post(server.url, timeout=0.5)
    assert time.monotonic() - started < 2.0


def test_header_values_cannot_carry_line_breaks():
    assert request_head("/p", {"A": "b"}, 3) == (
        b"POST /p HTTP/1.1\r\nA: b\r\nContent-Length: 3\r\n\r\n")
    with pytest.raises(ValueError):
        request_head("/p", {"X-Amz-Security-Token": "a\r\nInjected: 1"}, 0)


@pytest.mark.parametrize("headers", [
    {"Content-Length": "3"}, {"content-length": "3"}, {"Transfer-Encoding": "chunked"},
    {"X-A": "1", "x-a": "2"},
])
def test_framing_is_the_transports_alone_and_each_name_goes_once(headers):
    with pytest.raises(ValueError):
        request_head("/p", {"Host": "x", **headers}, 3)
    session = transport.SessionTransport("http://127.0.0.1:9", None, 2.0)
    with pytest.raises(ValueError):  # refused before anything is sent
        session.post("/p", b"abc", {"Host": "x", **headers})


def test_response_headers_any_case():
    headers = Headers({"x-amzn-errortype": "ThrottledException"})
    assert headers.get("x-amzn-ErrorType") == "ThrottledException"
    assert headers["X-AMZN-ERRORTYPE"] == "ThrottledException"
    assert "X-Amzn-ErrorType" in headers and "other" not in headers


class Flood:
    """A hostile endpoint: answers a status line, then ``line`` over and over until the client
    hangs up; ``sent`` is how many bytes it got out (what the client had to take in)."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.sent = 0
        self.done = threading.Event()

    def __call__(self, conn: socket.socket, n: int) -> None:
        block = self.line * (65536 // len(self.line))
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            self.sent += 17
            while self.sent < 1 << 30:
                conn.sendall(block)
                self.sent += len(block)
        except OSError:
            pass
        finally:
            self.done.set()


@pytest.mark.parametrize("line,error", [
    (b"X-Flood: 0123456789abcdef\r\n", "more than 100 lines"),
    (b"X-Flood-Without-End-Of-Line-", "head larger than 65536 bytes"),
    (b"X-" + b"a" * 1000 + b": " + b"b" * 3000 + b"\r\n", "head larger than 65536 bytes"),
])
def test_an_endless_response_head_fails_the_call_with_bounded_reads(serve, line, error):
    """Issue 11 item 3: header lines streamed without end took the daemon's memory to GBs and
    the call never returned. Now the call fails on the head's limits, long before its timeout,
    having read little more than the limit (the kernel's socket buffers aside)."""
    flood = Flood(line)
    server = serve(flood)
    with pytest.raises(ResponseError, match=error):
        post(server.url, timeout=60)
    assert flood.done.wait(30)
    assert flood.sent < 32 * 1024 * 1024


def test_a_head_within_the_limits_is_read(serve):
    extra = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(transport.MAX_HEADER_LINES
                                                                        - 2))
    server = serve(lambda conn, n: conn.sendall(answer(extra=extra)))
    response = post(server.url)
    assert response.status_code == 200 and response.headers["x-h0"] == "v" * 500


def test_a_trickled_head_is_bounded_by_the_whole_call_deadline(serve):
    stop = threading.Event()

    def trickle(conn: socket.socket, n: int) -> None:  # each read is quick, the whole is not
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.05):
            conn.sendall(b"X-Slow: 1\r\n")

    server = serve(trickle)
    try:
        with pytest.raises(TimeoutError, match=r"within 0\.5 s"):
            post(server.url, timeout=0.5)
    finally:
        stop.set()


def test_the_sampling_proxy_answers_502_for_an_endless_upstream_head(serve):
    import http.client
    import logging

    from xrayd import aws
    from xrayd.logs import RateLimitedLog
    from xrayd.server.proxy import SigningProxy

    flood = Flood(b"X-Flood: 0123456789abcdef\r\n")
    upstream = serve(flood)
    signing = SigningProxy(aws.create_context("us-east-1", upstream.url, False, ""),
                           upstream.url, RateLimitedLog(logging.getLogger("xrayd-test-flood")),
                           timeout=60)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = signing.server(f"127.0.0.1:{port}")
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=30)
        conn.request("POST", "/GetSamplingRules", body=b"{}")
        reply = conn.getresponse()
        assert reply.status == 502 and b"more than 100 lines" in reply.read()
    finally:
        server.stop()
        signing.close()
    assert flood.done.wait(30) and flood.sent < 32 * 1024 * 1024


def session_post(url: str, timeout: float = 5.0):
    """A POST through SessionTransport (botocore's HTTP session, as with an outbound proxy)."""
    from botocore.httpsession import URLLib3Session

    client = transport.SessionTransport(url, URLLib3Session(timeout=timeout), timeout)
    try:
        return client.post("/TraceSegments", b'{"a":1}', {"Host": "x"})
    finally:
        client.close()


def test_the_session_transport_keeps_the_body_limits(serve, monkeypatch):
    server = serve(lambda conn, n: conn.sendall(answer(b'{"ok":1}')))
    response = session_post(server.url)
    assert (response.status_code, response.content) == (200, b'{"ok":1}')
    head = server.requests[0].partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert [line for line in head if line.lower().startswith(b"content-length")] == [
        b"Content-Length: 7"]

    monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 100_000)

    def huge(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        for _ in range(20):
            conn.sendall(b"x" * 65536)

    with pytest.raises(ResponseError, match="larger than"):
        session_post(serve(huge).url)

    def truncated(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        conn.shutdown(socket.SHUT_RDWR)

    with pytest.raises(ResponseError, match="before the response was complete"):
        session_post(serve(truncated).url)


def test_the_session_transport_refuses_an_endless_head(serve):
    from botocore.exceptions import HTTPClientError

    flood = Flood(b"X-Flood: 0123456789abcdef\r\n")
    with pytest.raises(HTTPClientError) as error:  # http.client's own limit, which botocore
        session_post(serve(flood).url, timeout=60)  # reports as a closed connection
    assert "more than 100 headers" in repr(error.value.kwargs.get("error"))
    assert flood.done.wait(30) and flood.sent < 32 * 1024 * 1024
