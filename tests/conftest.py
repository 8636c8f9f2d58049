"""Shared fixtures: real peers on loopback (moto server, the xrayd process) and a safe AWS
environment. Nothing here reaches beyond 127.0.0.1: instance metadata is disabled and the
credentials are dummies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SAFE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy",
              "http_proxy", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
    os.environ.pop(_name, None)
os.environ.update(SAFE_ENV)
# As the daemon runs grpcio (receivers/otlp_grpc.py), before any test module imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_tcp_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 (the daemon binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class MotoServer:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "moto.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **SAFE_ENV},
        )
        wait_until(self._ready, timeout=30, what="moto server")

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1).read()
            return True
        except OSError:
            return False

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    def xray(self, region: str = "us-east-1"):
        import boto3

        return boto3.client(
            "xray", endpoint_url=self.url, region_name=region,
            aws_access_key_id="AKIDTESTTESTTEST", aws_secret_access_key="test-secret-key",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


class Xrayd:
    """The daemon as a subprocess: ``python -m xrayd <args>``, its log in a file."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log_path = tmp / f"xrayd-{time.monotonic_ns()}.log"
        self.args = args
        self._out = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrayd", *args],
            stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, **SAFE_ENV, **(env or {})}, cwd=cwd or tmp,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        def seen() -> bool:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"xrayd exited ({self.proc.returncode}):\n{self.output}")
            return False

        wait_until(seen, timeout, what=repr(text))
        return self.output

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def start_xrayd(tmp_path: Path) -> Iterator:
    started: list[Xrayd] = []

    def start(args: list[str], env: dict[str, str] | None = None,
              ready: str | None = "Ready: receiving segments", cwd: Path | None = None) -> Xrayd:
        daemon = Xrayd(args, tmp_path, env, cwd)
        started.append(daemon)
        if ready:
            daemon.wait_for(ready)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def datagram(document: bytes | str, header: bytes = b'{"format":"json","version":1}') -> bytes:
    body = document.encode() if isinstance(document, str) else document
    return header + b"\n" + body


def send_udp(port: int, *payloads: bytes, host: str = "127.0.0.1") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, (host, port))
