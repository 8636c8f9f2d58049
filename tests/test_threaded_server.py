"""The small threaded HTTP/1.1 server (server/threaded.py) that serves the TCP proxy and the
admin endpoint: keep-alive, framing, limits and timeouts, over real sockets."""

from __future__ import annotations

import contextlib
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


# -- hardening (issue 11: slowloris, framing, handler failures) -------------------------------

def connect_from(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def trickle(sock: socket.socket, data: bytes, pause: float) -> tuple[int, bytes]:
    """Send ``data`` a byte at a time until the server answers; (bytes sent, answer)."""
    sent = 0
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
        sock.settimeout(pause)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        sock.settimeout(5)
        return sent, answer + read_all(sock)
    sock.settimeout(5)
    return sent, read_all(sock)


def test_a_trickled_head_meets_a_deadline_for_the_whole_head(serve):
    server, handler = serve(head_timeout=0.5)
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 400 + b"\r\n\r\n"
    with connect_from(server.bound[1]) as sock:
        sent, answer = trickle(sock, head, pause=0.02)  # 10 s at full length
    assert sent < len(head)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert server.counts["head_timeout"] == 1 and handler.seen == []


def test_a_trickled_body_meets_a_deadline_for_the_whole_body(serve):
    server, handler = serve(body_timeout=0.5)
    with connect_from(server.bound[1]) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 400\r\n\r\n")
        sent, answer = trickle(sock, b"b" * 400, pause=0.02)
    assert sent < 400
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert server.counts["body_timeout"] == 1 and handler.seen == []


def test_a_silent_new_connection_is_closed_at_the_head_deadline(serve):
    server, _ = serve(head_timeout=0.3)
    with connect_from(server.bound[1]) as sock:
        assert sock.recv(10) == b""  # nothing sent, nothing answered: closed


def test_300_trickling_connections_do_not_stop_a_normal_client(serve):
    """Slowloris: 300 connections trickling request heads from one address and 300 from 30
    other addresses. The first address gets its share, the rest is refused at once; a client
    on 127.0.0.1 keeps getting answers on new connections throughout."""
    server, handler = serve()
    port = server.bound[1]
    attackers: list[socket.socket] = []
    sources = ["127.0.0.2"] * 300 + [f"127.0.1.{i % 30 + 1}" for i in range(300)]
    for source in sources:
        sock = connect_from(port, source)
        sock.setblocking(False)
        attackers.append(sock)
    stop = threading.Event()

    def drip() -> None:
        header = b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: "
        step = 0
        while not stop.is_set():
            for sock in attackers:
                with_byte = header[step:step + 1] or b"a"
                with contextlib.suppress(OSError):
                    sock.send(with_byte)
            step += 1
            stop.wait(0.1)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        wait_until(lambda: server.counts["refused_client"] >= 300 - server.admission.per_client,
                   what="connections over the per-address limit refused")
        answers = []
        for i in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", f"/normal{i}", body=b"x")
            response = conn.getresponse()
            answers.append((response.status, response.read()))
            conn.close()
    finally:
        stop.set()
        dripper.join(5)
        for sock in attackers:
            sock.close()
    assert answers == [(200, b"echo:x")] * 20
    assert server.admission.per_client == 64
    assert server.counts["refused_client"] == 300 - 64
    assert server.counts["refused_total"] == 0
    assert [r.path for r in handler.seen] == [f"/normal{i}" for i in range(20)]


def test_connections_over_the_per_client_limit_are_refused_with_503(serve):
    server, _ = serve(max_per_client=2)
    port = server.bound[1]
    held = [connect_from(port, "127.0.0.3") for _ in range(2)]
    wait_until(lambda: server.admission.open() == 2, what="two connections taken")
    with connect_from(port, "127.0.0.3") as third:
        third.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert read_all(third).startswith(b"HTTP/1.1 503 ")
    with connect_from(port, "127.0.0.4") as other:  # another address is not affected
        other.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert read_all(other).startswith(b"HTTP/1.1 200 ")
    for sock in held:
        sock.close()
    wait_until(lambda: server.admission.open() == 0, what="slots released")
    assert server.counts["refused_client"] == 1


@pytest.mark.parametrize("head, status", [
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tfolded\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-N: v\r\n" * 101 + b"\r\n", 431),
])
def test_ambiguous_framing_is_refused_and_the_connection_closed(serve, head, status):
    server, handler = serve()
    pipelined = b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"
    answer = raw(server.bound[1], head + pipelined)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert answer.count(b"HTTP/1.1 ") == 1  # closed: the pipelined request is not read
    assert handler.seen == []
    assert server.counts["bad_head"] == 1


def test_pipelined_requests_are_answered_in_turn(serve):
    server, handler = serve()
    answer = raw(server.bound[1],
                 b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
                 b"\r\nGET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 2 and b"echo:ab" in answer
    assert [r.path for r in handler.seen] == ["/1", "/2"]


def test_handler_failures_get_the_error_shape_and_are_logged_once_each_with_their_cause(
        serve, caplog):
    import json
    import logging

    from xrayd.logs import RateLimitedLog

    def json_error(status: int, code: str, message: str) -> Response:
        return Response(status, json.dumps({"__type": code, "message": message}).encode(),
                        content_type="application/json")

    logs = RateLimitedLog(logging.getLogger("xrayd.test-http"), interval=60)
    server, _ = serve(errors=json_error, logs=logs)
    conn = http.client.HTTPConnection("127.0.0.1", server.bound[1], timeout=5)
    with caplog.at_level(logging.WARNING, logger="xrayd.test-http"):
        for _ in range(3):
            conn.request("GET", "/boom")
            answer = conn.getresponse()
            assert answer.getheader("Content-Type") == "application/json"
            assert json.loads(answer.read())["__type"] == "InternalFailure"
            assert answer.status == 500
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # rate-limited: one line for the burst
    assert "GET /boom failed: RuntimeError: handler bug at test_threaded_server.py:" in lines[0]
    assert server.counts["handler_error"] == 3


def test_protocol_errors_use_the_error_shape(serve):
    server, _ = serve(errors=lambda s, c, m: Response(s, f"{c}|{m}".encode()))
    answer = raw(server.bound[1], b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"InvalidRequestException|" in answer


def test_admission_counts_per_client_and_in_total():
    from xrayd.server.threaded import Admission, client_key

    admission = Admission(total=3, per_client=2)
    assert [admission.admit("a"), admission.admit("a"), admission.admit("a")] == [
        None, None, "client"]
    assert admission.admit("b") is None
    assert admission.admit("c") == "total"
    admission.release("a")
    assert admission.admit("c") is None and admission.open() == 3
    assert client_key(("::ffff:10.0.0.1", 5, 0, 0)) == "10.0.0.1"
    assert client_key(("::1", 5, 0, 0)) == "::1"


def test_offline_api_failures_are_json_and_logged(tmp_path, caplog):
    """Handler failures behind the offline API (item 7): a store that is not a database, and
    filter expressions nested deeper than the parser or SQLite go. Never text/plain."""
    import json
    import logging

    from xrayd.sampling.engine import SamplingEngine
    from xrayd.server.xray_api import StoreReader, XRayApi, make_server
    from xrayd.store.writer import StoreWriter

    good = str(tmp_path / "good.db")
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not an SQLite database" * 100)
    writer = StoreWriter(good)
    readers = {"good": StoreReader(good), "broken": StoreReader(str(broken))}
    servers = {name: make_server(f"127.0.0.1:{free_port()}",
                                 XRayApi(writer, reader, SamplingEngine()))
               for name, reader in readers.items()}
    for server in servers.values():
        server.start()

    def summaries(name: str, expression: str | None = None) -> tuple[int, str, dict]:
        body = {"StartTime": 0, "EndTime": 4e9}
        if expression is not None:
            body["FilterExpression"] = expression
        conn = http.client.HTTPConnection("127.0.0.1", servers[name].bound[1], timeout=30)
        conn.request("POST", "/TraceSummaries", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        return answer.status, answer.getheader("Content-Type"), json.loads(data)

    try:
        with caplog.at_level(logging.ERROR, logger="xrayd"):
            status, kind, body = summaries("broken")
        assert (status, kind, body["__type"]) == (500, "application/json", "InternalFailure")
        assert any("/TraceSummaries failed: DatabaseError" in r.getMessage()
                   for r in caplog.records)
        status, kind, body = summaries("good", "(" * 400 + "responsetime > 1" + ")" * 400)
        assert (status, kind, body["__type"]) == (400, "application/json",
                                                  "InvalidRequestException")
        status, kind, body = summaries("good", "NOT " * 300 + "responsetime > 1")
        assert kind == "application/json" and body["__type"] in (
            "InvalidRequestException", "InternalFailure")
    finally:
        for server in servers.values():
            server.stop()
        for reader in readers.values():
            reader.close()
        writer.close()


def test_lingerer_drains_then_closes_and_is_bounded():
    from xrayd.server.threaded import Lingerer

    lingerer = Lingerer(seconds=30, capacity=1)
    held_ours, held_theirs = socket.socketpair()
    over_ours, over_theirs = socket.socketpair()
    try:
        lingerer.add(held_ours)
        lingerer.add(over_ours)  # over capacity: closed at once
        over_theirs.settimeout(5)
        assert over_theirs.recv(10) == b""
        held_theirs.sendall(b"x" * 100_000)  # read and dropped, the socket stays open
        held_theirs.settimeout(0.2)
        with pytest.raises(TimeoutError):
            held_theirs.recv(10)
        held_theirs.shutdown(socket.SHUT_WR)  # the client is done: the lingerer closes
        held_theirs.settimeout(5)
        assert held_theirs.recv(10) == b""
        wait_until(lambda: lingerer._held == 0, what="lingerer empty")
    finally:
        lingerer.stop()
        held_theirs.close()
        over_theirs.close()
