"""A fault-injecting X-Ray API for tests and benchmarks: PutTraceSegments over real HTTP on a
loopback port, checking the SigV4 signature of every request with botocore the way the real API
would, and answering by a script of time windows: ok, 5xx, 429 ThrottledException, 403 access
denied, hang, connection reset, or partial UnprocessedTraceSegments.

In "ok" mode the request is answered itself (documents recorded), or forwarded unchanged to
another X-Ray API (moto server) when ``forward_to`` is set.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACCESS_KEY = "AKIDTESTTESTTEST"
SECRET_KEY = "test-secret-key"

MODES = ("ok", "error", "throttle", "deny", "hang", "reset", "partial")


@dataclass
class Phase:
    seconds: float  # how long the window lasts
    mode: str
    status: int = 503  # for "error"
    unprocessed_code: str = "ThrottledException"  # for "partial"
    unprocessed_every: int = 2  # for "partial": every n-th document is refused
    hang_seconds: float = 5.0  # for "hang"
    delay: float = 0.0  # for "ok": seconds before answering (a slow backend)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode}")


def verify_sigv4(method: str, path: str, headers: dict[str, str], body: bytes,
                 secret_key: str = SECRET_KEY) -> str:
    """"" when the request carries a valid SigV4 signature for ``secret_key``, else why not."""
    from fakes.sigv4 import verify

    host = {k.lower(): v for k, v in headers.items()}.get("host", "")
    verdict = verify(method, f"http://{host}{path}", headers, body, {ACCESS_KEY: secret_key})
    return "" if verdict.ok else verdict.reason or "bad signature"


@dataclass
class Record:
    """What the upstream saw."""

    requests: int = 0
    bad_signatures: int = 0
    by_mode: dict[str, int] = field(default_factory=dict)
    accepted: int = 0  # documents answered as processed
    refused: int = 0  # documents answered as unprocessed


class FaultUpstream:
    def __init__(self, schedule: list[Phase] | None = None, forward_to: str = "",
                 sink: Callable[[list[bytes]], None] | None = None,
                 keep_docs: bool = True) -> None:
        self.schedule = schedule or [Phase(float("inf"), "ok")]
        self.forward_to = forward_to
        self.sink = sink
        self.keep_docs = keep_docs
        self.docs: list[bytes] = []
        self.record = Record()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._override: Phase | None = None
        self._stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda *_: None  # resets and hangs end connections abruptly
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultUpstream:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def restart_schedule(self) -> None:
        self._started = time.monotonic()

    def set_mode(self, mode: str, **options) -> None:
        """Override the schedule from now on (``clear_override`` returns to it)."""
        self._override = Phase(float("inf"), mode, **options)

    def clear_override(self) -> None:
        self._override = None

    def phase(self) -> Phase:
        if self._override is not None:
            return self._override
        elapsed = time.monotonic() - self._started
        for phase in self.schedule:
            if elapsed < phase.seconds:
                return phase
            elapsed -= phase.seconds
        return self.schedule[-1]

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # and the client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                upstream._serve(self)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        phase = self.phase()
        with self._lock:
            self.record.requests += 1
            self.record.by_mode[phase.mode] = self.record.by_mode.get(phase.mode, 0) + 1
        why = verify_sigv4(h.command, h.path, dict(h.headers.items()), body)
        if why:
            with self._lock:
                self.record.bad_signatures += 1
            return self._answer(h, 403, {"__type": "InvalidSignatureException", "message": why})
        if h.path != "/TraceSegments":
            return self._answer(h, 404, {"__type": "UnknownOperationException",
                                         "message": h.path})
        mode = phase.mode
        if mode == "error":
            return self._answer(h, phase.status, {"__type": "InternalFailure",
                                                  "message": "injected failure"})
        if mode == "throttle":
            return self._answer(h, 429, {"__type": "ThrottledException",
                                         "message": "Rate exceeded"})
        if mode == "deny":
            return self._answer(h, 403, {"__type": "AccessDeniedException",
                                         "message": "not authorized to perform: "
                                                    "xray:PutTraceSegments"})
        if mode == "hang":
            self._stopping.wait(phase.hang_seconds)
            h.close_connection = True
            return None
        if mode == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.close()
            return None
        try:
            docs = [d.encode() for d in json.loads(body)["TraceSegmentDocuments"]]
        except (ValueError, KeyError, TypeError):
            return self._answer(h, 400, {"__type": "InvalidRequestException",
                                         "message": "bad body"})
        if mode == "ok" and phase.delay:
            self._stopping.wait(phase.delay)
        if mode == "ok" and self.forward_to:
            return self._forward(h, body, docs)
        refused = []
        if mode == "partial":
            refused = [d for i, d in enumerate(docs) if i % phase.unprocessed_every == 0]
        taken = [d for i, d in enumerate(docs) if mode != "partial"
                 or i % phase.unprocessed_every != 0]
        self._accept(taken, len(refused))
        entries = []
        for doc in refused:
            entries.append({"Id": json.loads(doc).get("id", ""),
                            "ErrorCode": phase.unprocessed_code, "Message": "injected"})
        return self._answer(h, 200, {"UnprocessedTraceSegments": entries})

    def _accept(self, docs: list[bytes], refused: int) -> None:
        with self._lock:
            self.record.accepted += len(docs)
            self.record.refused += refused
            if self.keep_docs:
                self.docs.extend(docs)
        if self.sink is not None:
            self.sink(docs)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes, docs: list[bytes]) -> None:
        target = urlsplit(self.forward_to)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "host"}
            conn.request("POST", h.path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            status = response.status
        finally:
            conn.close()
        if status == 200:
            self._accept(docs, 0)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        h.wfile.write(answer)

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/x-amz-json-1.1")
        if status >= 400 and "__type" in payload:
            h.send_header("x-amzn-ErrorType", payload["__type"])
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
