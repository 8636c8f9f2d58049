"""A fake STS endpoint for what moto cannot do: answer RegionDisabledException for regions
named disabled (taken from the SigV4 credential scope, as STS routes by endpoint) and issue
credentials elsewhere. Every call is judged from the raw bytes received (fakes/raw_http.py) and
SigV4-verified with botocore against its header lines as received."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from fakes.raw_http import RawRequest, Reply, StrictHttpServer
from fakes.sigv4 import verify

ISSUED_KEY = "ASIAFAKESTSISSUED001"
ISSUED_SECRET = "fake-sts-issued-secret"


class FakeSts:
    def __init__(self, disabled: set[str], secrets: dict[str, str]) -> None:
        self.disabled = disabled
        self.secrets = secrets
        self.calls: list[dict[str, Any]] = []
        self._server = StrictHttpServer(self._handle)
        self.url = self._server.url

    @property
    def refused(self) -> list[RawRequest]:
        return self._server.refused

    def stop(self) -> None:
        self._server.stop()

    def _handle(self, request: RawRequest, conn: socket.socket) -> Reply:
        body = request.body
        verdict = verify(request.method, f"http://{request.header('host')}{request.target}",
                         request.lines, body, self.secrets)
        params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.calls.append({"region": verdict.region, "ok": verdict.ok, **params})
        if not verdict.ok:
            return self._send(403, self._error("SignatureDoesNotMatch", verdict.reason))
        if verdict.region in self.disabled:
            return self._send(403, self._error(
                "RegionDisabledException",
                "STS is not activated in this region for account:123456789012. Your account "
                "administrator can activate STS in this region using the IAM Console."))
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._send(200, f"""<AssumeRoleResponse
 xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials>
<AccessKeyId>{ISSUED_KEY}</AccessKeyId><SecretAccessKey>{ISSUED_SECRET}</SecretAccessKey>
<SessionToken>fake-session-token</SessionToken><Expiration>{expires}</Expiration>
</Credentials><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/xray-daemon</Arn>
<AssumedRoleId>AROAFAKE:xray-daemon</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>
<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>""")

    @staticmethod
    def _error(code: str, message: str) -> str:
        return (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                f"<RequestId>1</RequestId></ErrorResponse>")

    @staticmethod
    def _send(status: int, text: str) -> Reply:
        return Reply(status, text.encode(), [("Content-Type", "text/xml")])
