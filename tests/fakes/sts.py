"""A fake STS endpoint for what moto cannot do: answer RegionDisabledException for regions
named disabled (taken from the SigV4 credential scope, as STS routes by endpoint) and issue
credentials elsewhere. Every call is SigV4-verified with botocore."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from fakes.sigv4 import verify

ISSUED_KEY = "ASIAFAKESTSISSUED001"
ISSUED_SECRET = "fake-sts-issued-secret"


class FakeSts:
    def __init__(self, disabled: set[str], secrets: dict[str, str]) -> None:
        sts = self
        self.disabled = disabled
        self.secrets = secrets
        self.calls: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                sts._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = dict(handler.headers.items())
        verdict = verify("POST", f"http://{headers.get('Host')}{handler.path}", headers, body,
                         self.secrets)
        params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.calls.append({"region": verdict.region, "ok": verdict.ok, **params})
        if not verdict.ok:
            return self._send(handler, 403, self._error("SignatureDoesNotMatch", verdict.reason))
        if verdict.region in self.disabled:
            return self._send(handler, 403, self._error(
                "RegionDisabledException",
                "STS is not activated in this region for account:123456789012. Your account "
                "administrator can activate STS in this region using the IAM Console."))
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._send(handler, 200, f"""<AssumeRoleResponse
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
    def _send(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/xml")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
