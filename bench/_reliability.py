"""Shared set-up of the reliability benchmarks: a fault-injecting upstream (tests/fakes) and
xrayd as a subprocess on loopback with dummy credentials and instance metadata disabled."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# Importing the tests' conftest puts their safe environment in os.environ (dummy credentials,
# no instance metadata, no proxies); its loopback port helpers are the ones used here too.
from conftest import free_port, free_udp_tcp_port  # noqa: E402
from fakes.harness import sequence_number  # noqa: E402


class Checklist:
    """The upstream's sink: checks off each numbered document once, counting repeats."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.duplicates = 0
        self._lock = threading.Lock()

    def __call__(self, docs: list[bytes]) -> None:
        with self._lock:
            for doc in docs:
                n = sequence_number(doc)
                if n >= len(self.seen):
                    self.seen.extend(bytes(n + 1 - len(self.seen)))
                if self.seen[n]:
                    self.duplicates += 1
                self.seen[n] = 1

    @property
    def unique(self) -> int:
        return sum(self.seen)


class Daemon:
    def __init__(self, endpoint: str, workdir: Path, extra: list[str]) -> None:
        self.port = free_udp_tcp_port()
        admin_port = free_port()
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log_path = workdir / f"xrayd-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrayd", "-o", "-n", "us-east-1", "--endpoint", endpoint,
             "-b", f"127.0.0.1:{self.port}", "-t", f"127.0.0.1:{self.port}",
             "--admin-address", f"127.0.0.1:{admin_port}", "-l", "info", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, env=os.environ.copy())
        deadline = time.monotonic() + 30
        while b"Ready: receiving segments" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log_path.read_text())
            time.sleep(0.05)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
