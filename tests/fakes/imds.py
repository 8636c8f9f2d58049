"""A fake EC2 instance metadata service: IMDSv2 tokens (PUT /latest/api/token), IMDSv1 when
allowed, the instance identity document, hostname and instance id, and a hanging mode."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "fake-imds-token"


@dataclass
class FakeImds:
    """``tokens``: the token PUT works (IMDSv2); ``v1``: GETs without a token are answered
    (otherwise 401, as on an IMDSv2-only instance); ``hang``: every request waits that long."""

    region: str = "eu-west-3"
    hostname: str = "ip-10-0-0-1.eu-west-3.compute.internal"
    instance_id: str = "i-0123456789abcdef0"
    tokens: bool = True
    v1: bool = True
    hang: float = 0.0
    calls: list[tuple[str, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                imds._handle(self)

            do_GET = do_PUT

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        token = handler.headers.get("x-aws-ec2-metadata-token")
        self.calls.append((handler.command, handler.path, token == TOKEN))
        if self.hang:
            time.sleep(self.hang)
            return
        if handler.command == "PUT":
            if handler.path == "/latest/api/token" and self.tokens and \
                    handler.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(handler, 200, TOKEN)
            return self._send(handler, 403 if not self.tokens else 400, "")
        if token != TOKEN and not self.v1:
            return self._send(handler, 401, "")
        if token is not None and token != TOKEN:
            return self._send(handler, 401, "")
        answers = {
            "/latest/dynamic/instance-identity/document": json.dumps(
                {"region": self.region, "instanceId": self.instance_id,
                 "availabilityZone": self.region + "a"}),
            "/latest/meta-data/hostname": self.hostname,
            "/latest/meta-data/instance-id": self.instance_id,
        }
        if handler.path not in answers:
            return self._send(handler, 404, "")
        return self._send(handler, 200, answers[handler.path])

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
