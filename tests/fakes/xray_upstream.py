"""A fake X-Ray endpoint for what moto lacks: the sampling API (GetSamplingRules,
SamplingTargets), SigV4 checks with botocore against known credentials, a record of every
request, and fault injection (an HTTP status, a hang, a dropped connection).

PutTraceSegments and PutTelemetryRecords are accepted too (verified, recorded), so it can stand
in for the whole API where a test needs to see headers."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fakes.sigv4 import Verdict, verify


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verdict: Verdict
    status: int = 0  # what it was answered (0: no answer)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Fault:
    """``status``: answer with it; ``hang``: wait that long first; ``close``: drop the
    connection without an answer."""

    status: int = 0
    hang: float = 0.0
    close: bool = False


def sampling_rule(name: str, service: str, fixed_rate: float, reservoir: int,
                  priority: int = 1) -> dict[str, Any]:
    return {
        "SamplingRule": {
            "RuleName": name,
            "RuleARN": f"arn:aws:xray:us-east-1:123456789012:sampling-rule/{name}",
            "ResourceARN": "*", "Priority": priority, "FixedRate": fixed_rate,
            "ReservoirSize": reservoir, "ServiceName": service, "ServiceType": "*",
            "Host": "*", "HTTPMethod": "*", "URLPath": "*", "Version": 1, "Attributes": {},
        },
        "CreatedAt": 1700000000.0, "ModifiedAt": 1700000000.0,
    }


@dataclass
class XRayUpstream:
    secrets: dict[str, str] = field(default_factory=lambda: {
        "AKIDTESTTESTTEST": "test-secret-key"})
    rules: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    seen: list[Seen] = field(default_factory=list)
    tls: tuple[str, str] | None = None  # (certificate file, key file): serve HTTPS

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                upstream._handle(self)

            do_GET = do_PUT = do_DELETE = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items()}
        url = f"http://{headers.get('Host', '')}{handler.path}"
        verdict = verify(handler.command, url, headers, body, self.secrets)
        seen = Seen(handler.command, handler.path.split("?")[0], headers, body, verdict)
        with self._lock:
            self.seen.append(seen)
        fault = self.fault
        if fault is not None:
            if fault.hang:
                time.sleep(fault.hang)
            if fault.close:
                handler.close_connection = True
                handler.connection.shutdown(2)
                return
            if fault.status:
                seen.status = fault.status
                self._send(handler, fault.status, {"__type": "InjectedFault",
                                                   "message": f"injected {fault.status}"})
                return
        if not verdict.ok:
            seen.status = 403
            self._send(handler, 403, {"__type": "InvalidSignatureException",
                                      "message": verdict.reason})
            return
        seen.status = 200
        self._send(handler, 200, self._answer(seen))

    def _answer(self, seen: Seen) -> dict[str, Any]:
        if seen.path == "/GetSamplingRules":
            return {"SamplingRuleRecords": self.rules}
        if seen.path == "/SamplingTargets":
            docs = (seen.json() or {}).get("SamplingStatisticsDocuments", [])
            by_name = {r["SamplingRule"]["RuleName"]: r["SamplingRule"] for r in self.rules}
            targets = [
                {"RuleName": d["RuleName"], "FixedRate": by_name[d["RuleName"]]["FixedRate"],
                 "ReservoirQuota": by_name[d["RuleName"]]["ReservoirSize"],
                 "ReservoirQuotaTTL": time.time() + 60, "Interval": 10}
                for d in docs if d.get("RuleName") in by_name
            ]
            return {"SamplingTargetDocuments": targets, "LastRuleModification": 1700000000.0,
                    "UnprocessedStatistics": []}
        if seen.path == "/TraceSegments":
            return {"UnprocessedTraceSegments": []}
        return {}

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/x-amz-json-1.1")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
