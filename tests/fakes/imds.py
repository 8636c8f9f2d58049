"""A fake EC2 instance metadata service: IMDSv2 tokens (PUT /latest/api/token), IMDSv1 when
allowed, the instance identity document, hostname and instance id, and a hanging mode. Strict as
the other fakes (fakes/raw_http.py): each request is judged from the raw bytes received."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

from fakes.raw_http import RawRequest, Reply, StrictHttpServer

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
        self._server = StrictHttpServer(self._handle)
        self.url = self._server.url + "/"

    @property
    def refused(self) -> list[RawRequest]:
        return self._server.refused

    def stop(self) -> None:
        self._server.stop()

    def _handle(self, request: RawRequest, _conn: socket.socket) -> Reply | None:
        values = request.values("x-aws-ec2-metadata-token")
        token = values[0] if values else None
        self.calls.append((request.method, request.path, token == TOKEN))
        if self.hang:
            time.sleep(self.hang)
            return None  # no answer: the client's timeout decides
        if len(values) > 1:
            return Reply(400, close=True)
        if request.method == "PUT":
            if request.path == "/latest/api/token" and self.tokens and \
                    request.header("x-aws-ec2-metadata-token-ttl-seconds"):
                return Reply(200, TOKEN.encode())
            return Reply(403 if not self.tokens else 400)
        if request.method != "GET":
            return Reply(405)
        if token != TOKEN and not self.v1:
            return Reply(401)
        if token is not None and token != TOKEN:
            return Reply(401)
        answers = {
            "/latest/dynamic/instance-identity/document": json.dumps(
                {"region": self.region, "instanceId": self.instance_id,
                 "availabilityZone": self.region + "a"}),
            "/latest/meta-data/hostname": self.hostname,
            "/latest/meta-data/instance-id": self.instance_id,
        }
        if request.path not in answers:
            return Reply(404)
        return Reply(200, answers[request.path].encode())
