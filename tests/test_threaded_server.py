"""The small threaded HTTP/1.1 server (server/threaded.py) that serves the TCP proxy and the
admin endpoint: keep-alive, framing, limits and timeouts, over real sockets."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import free_port, wait_until
from xrayd.server.threaded import Request, Response, ThreadedHttpServer, plain


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.threads: set[str] = set()

    def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        self.threads.add(threading.current_thread().name + str(threading.get_ident()))
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return Response(200, b"echo:" + request.body, [("X-Path", request.path)],
                        content_type="text/plain")


@pytest.fixture
def serve() -> Iterator:
    servers: list[ThreadedHttpServer] = []

    def start(**options) -> tuple[ThreadedHttpServer, Recorder]:
        handler = Recorder()
        server = ThreadedHttpServer(f"127.0.0.1:{free_port()}", handler, **options)
        server.start()
        servers.append(server)
        return server, handler

    yield start
    for server in servers:
        server.stop()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_keep_alive_serves_requests_in_turn_on_one_connection(serve):
    server, handler = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=5)
    for i in range(3):
        conn.request("POST", f"/a?n={i}", body=f"body{i}".encode(),
                     headers={"X-Mixed-Case": "v"})
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, f"echo:body{i}".encode())
        assert answer.getheader("X-Path") == "/a"
        assert answer.getheader("Date") and answer.getheader("Server") == "xrayd"
        assert not answer.will_close
    conn.close()
    assert [r.target for r in handler.seen] == ["/a?n=0", "/a?n=1", "/a?n=2"]
    assert handler.seen[0].query == "n=0"
    assert ("X-Mixed-Case", "v") in handler.seen[0].headers  # names as sent
    assert handler.seen[0].header("x-mixed-case") == "v"
    assert len(handler.threads) == 1  # one connection, one thread


def test_body_limit_answers_413_without_calling_the_handler(serve):
    server, handler = serve(max_body=10,
                            too_large=lambda: Response(413, b"custom", content_type="x/y"))
    conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=5)
    conn.request("POST", "/x", body=b"y" * 11)
    answer = conn.getresponse()
    assert (answer.status, answer.read()) == (413, b"custom")
    assert answer.will_close
    # Chunked: counted while reading.
    reply = raw(server.bound[1], b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                b"\r\n6\r\n123456\r\n6\r\n789012\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert handler.seen == []
    conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=5)
    conn.request("POST", "/x", body=b"y" * 10)
    assert conn.getresponse().status == 200


def test_chunked_body_and_expect_100_continue(serve):
    server, handler = serve()
    reply = raw(server.bound[1], b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"echo:abcde")
    with socket.create_connection(("127.0.0.1", server.bound[1]), timeout=5) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"wxyz")
        answer = b""
        while not answer.endswith(b"echo:wxyz"):
            answer += sock.recv(1000)
    assert [r.body for r in handler.seen] == [b"abcde", b"wxyz"]


def test_bad_requests_head_and_handler_errors(serve):
    server, _handler = serve()
    assert raw(server.bound[1], b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    assert raw(server.bound[1], huge).startswith(b"HTTP/1.1 431 ")
    head = raw(server.bound[1], b"HEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert b"content-length: 5\r\n" in head.lower() and head.endswith(b"\r\n\r\n")
    conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=5)
    conn.request("GET", "/boom")
    answer = conn.getresponse()
    assert answer.status == 500 and b"RuntimeError" in answer.read()
    conn.request("GET", "/after")  # the connection survives a handler's bug
    assert conn.getresponse().status == 200


def test_idle_connections_are_closed(serve):
    server, _ = serve(idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.bound[1]), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server, without an answer
        assert time.monotonic() - started < 4


def test_connection_limit_and_stop(serve):
    server, _ = serve(max_connections=1)
    first = socket.create_connection(("127.0.0.1", server.bound[1]), timeout=5)
    wait_until(lambda: len(server._open) == 1, what="first connection taken")
    second = raw(server.bound[1], b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 503 ")
    server.stop()
    assert first.recv(10) == b""  # stop closes open connections
    first.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.bound[1]), timeout=1)


def test_address_in_use_raises():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ThreadedHttpServer(f"127.0.0.1:{busy.getsockname()[1]}",
                                    lambda _r: plain(200, "x"))
        with pytest.raises(OSError):
            server.start()
