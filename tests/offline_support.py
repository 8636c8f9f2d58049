"""Helpers for the offline-mode tests: the daemon in offline mode, a boto3 client for its X-Ray
API, and an app instrumented with the real aws-xray-sdk."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import boto3
from aws_xray_sdk.core import AWSXRayRecorder

from conftest import free_udp_tcp_port


def start_offline(start_xrayd, tmp_path: Path, *extra: str, name: str = "traces.db"):
    """(daemon, port, store path) of ``xrayd --offline`` on a free port."""
    port = free_udp_tcp_port()
    store = tmp_path / name
    daemon = start_xrayd(
        ["--offline", "--store", str(store), "-b", f"127.0.0.1:{port}",
         "-t", f"127.0.0.1:{port}", "-l", "info", *extra],
        ready="Trace viewer and X-Ray API at",
    )
    return daemon, port, store


def xray_client(port: int):
    return boto3.client(
        "xray", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id="AKIDTESTTESTTEST", aws_secret_access_key="test-secret-key",
    )


def recorder(daemon_address: str, **settings) -> AWSXRayRecorder:
    rec = AWSXRayRecorder()
    rec.configure(daemon_address=daemon_address, context_missing="LOG_ERROR",
                  sampling=settings.pop("sampling", False), plugins=(), **settings)
    return rec


class UdpCapture:
    """A UDP socket that keeps what an SDK sends to it (to replay the same documents)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.bodies.append(data.split(b"\n", 1)[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
