"""The yardstick: a bare Python blocking ``recv_into`` loop in a process of its own, counting
datagrams. What any Python receiver can at best do on this machine; the CI regression check
compares xrayd's delivered rate with it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

LOOP = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
buf = bytearray(65536)
recv_into = sock.recv_into
n = 0
while recv_into(buf):
    n += 1
print(n, flush=True)
"""


class BareReceiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def count(self) -> int:
        """Stop the loop: the datagrams it received."""
        time.sleep(0.2)  # let it read what the kernel still holds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"", ("127.0.0.1", self.port))
        out, _ = self.proc.communicate(timeout=10)
        return int(out)

    def __enter__(self) -> BareReceiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
