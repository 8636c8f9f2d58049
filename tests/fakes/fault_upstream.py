"""A fault-injecting X-Ray API for tests and benchmarks: PutTraceSegments over real HTTP on a
loopback port, checking the SigV4 signature of every request with botocore the way the real API
would, and answering by a script of time windows: ok, 5xx, 429 ThrottledException, 403 access
denied, hang, connection reset, or partial UnprocessedTraceSegments.

In "ok" mode the request is answered itself (documents recorded), or forwarded unchanged to
another X-Ray API (moto server) when ``forward_to`` is set.

Requests are judged from the raw bytes received (fakes/raw_http.py): duplicate or conflicting
framing headers get 400 and count as bad requests; signatures are checked against the header
lines as received.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fakes.raw_http import RawRequest, Reply, StrictHttpServer, json_reply

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


def verify_sigv4(method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes,
                 secret_key: str = SECRET_KEY) -> str:
    """"" when the request carries a valid SigV4 signature for ``secret_key``, else why not.
    ``headers``: the header lines as received."""
    from fakes.sigv4 import verify

    headers = list(headers)
    host = next((v for k, v in headers if k.lower() == "host"), "")
    verdict = verify(method, f"http://{host}{path}", headers, body, {ACCESS_KEY: secret_key})
    return "" if verdict.ok else verdict.reason or "bad signature"


@dataclass
class Record:
    """What the upstream saw."""

    requests: int = 0
    bad_signatures: int = 0
    bad_requests: int = 0  # refused for their framing (400)
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
        self.server: StrictHttpServer | None = None
        self.port = 0
        self.url = ""

    def start(self) -> FaultUpstream:
        self._started = time.monotonic()
        self.server = StrictHttpServer(self._serve, on_refused=self._refused)
        self.port = self.server.port
        self.url = self.server.url
        return self

    def _refused(self, request: RawRequest) -> None:
        with self._lock:
            self.record.bad_requests += 1

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
        if self.server is not None:
            self.server.stop()

    def _serve(self, request: RawRequest, conn: socket.socket) -> Reply | None:
        body = request.body
        phase = self.phase()
        with self._lock:
            self.record.requests += 1
            self.record.by_mode[phase.mode] = self.record.by_mode.get(phase.mode, 0) + 1
        why = verify_sigv4(request.method, request.target, request.lines, body)
        if why:
            with self._lock:
                self.record.bad_signatures += 1
            return json_reply(403, {"__type": "InvalidSignatureException", "message": why})
        if request.path != "/TraceSegments":
            return json_reply(404, {"__type": "UnknownOperationException",
                                    "message": request.path})
        mode = phase.mode
        if mode == "error":
            return json_reply(phase.status, {"__type": "InternalFailure",
                                             "message": "injected failure"})
        if mode == "throttle":
            return json_reply(429, {"__type": "ThrottledException", "message": "Rate exceeded"})
        if mode == "deny":
            return json_reply(403, {"__type": "AccessDeniedException",
                                    "message": "not authorized to perform: "
                                               "xray:PutTraceSegments"})
        if mode == "hang":
            self._stopping.wait(phase.hang_seconds)
            return None
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                conn.close()
            return None
        try:
            docs = [d.encode() for d in json.loads(body)["TraceSegmentDocuments"]]
        except (ValueError, KeyError, TypeError):
            return json_reply(400, {"__type": "InvalidRequestException", "message": "bad body"})
        if mode == "ok" and phase.delay:
            self._stopping.wait(phase.delay)
        if mode == "ok" and self.forward_to:
            return self._forward(request, docs)
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
        return json_reply(200, {"UnprocessedTraceSegments": entries})

    def _accept(self, docs: list[bytes], refused: int) -> None:
        with self._lock:
            self.record.accepted += len(docs)
            self.record.refused += refused
            if self.keep_docs:
                self.docs.extend(docs)
        if self.sink is not None:
            self.sink(docs)

    def _forward(self, request: RawRequest, docs: list[bytes]) -> Reply:
        target = urlsplit(self.forward_to)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            headers = {k: v for k, v in request.lines if k.lower() != "host"}
            conn.request("POST", request.target, body=request.body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            status = response.status
        finally:
            conn.close()
        if status == 200:
            self._accept(docs, 0)
        return Reply(status, answer, [("Content-Type", "application/json")])
