"""A fake X-Ray endpoint for what moto lacks: the sampling API (GetSamplingRules,
SamplingTargets), SigV4 checks with botocore against known credentials, a record of every
request, and fault injection (an HTTP status, a hang, a dropped connection).

PutTraceSegments and PutTelemetryRecords are accepted too (verified, recorded), so it can stand
in for the whole API where a test needs to see headers.

It is strict as X-Ray's front end is (fakes/raw_http.py): requests are judged from the raw bytes
received, duplicate or conflicting framing headers are refused with 400 (recorded in ``seen``
with the reason), and signatures are checked against the header lines as received."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fakes.raw_http import RawRequest, Reply, StrictHttpServer, json_reply
from fakes.sigv4 import Verdict, verify


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verdict: Verdict
    status: int = 0  # what it was answered (0: no answer)
    lines: list[tuple[str, str]] = field(default_factory=list)  # header lines as received

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

    close_after_response: bool = False  # answer with Connection: close

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = StrictHttpServer(self._handle, tls=self.tls, on_refused=self._refused)
        self.port = self._server.port
        self.url = self._server.url

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._server.connections

    def stop(self) -> None:
        self._server.stop()

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _refused(self, request: RawRequest) -> None:
        seen = Seen(request.method, request.path, request.headers, b"",
                    Verdict(False, reason=request.problem), 400, request.lines)
        with self._lock:
            self.seen.append(seen)

    def _handle(self, request: RawRequest, conn: socket.socket) -> Reply | None:
        url = f"http://{request.header('host')}{request.target}"
        verdict = verify(request.method, url, request.lines, request.body, self.secrets)
        seen = Seen(request.method, request.path, request.headers, request.body, verdict,
                    lines=request.lines)
        with self._lock:
            self.seen.append(seen)
        fault = self.fault
        if fault is not None:
            if fault.hang:
                time.sleep(fault.hang)
            if fault.close:
                conn.shutdown(socket.SHUT_RDWR)
                return None
            if fault.status:
                seen.status = fault.status
                return json_reply(fault.status, {"__type": "InjectedFault",
                                                 "message": f"injected {fault.status}"})
        if not verdict.ok:
            seen.status = 403
            return json_reply(403, {"__type": "InvalidSignatureException",
                                    "message": verdict.reason})
        seen.status = 200
        return json_reply(200, self._answer(seen), close=self.close_after_response)

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
