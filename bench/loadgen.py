"""The load generator: several sender processes, each sending its share of the sequence numbers
at its share of the rate. The C sender (sendmmsg, compiled with gcc on first use) is used when
gcc is there; otherwise a Python sender builds the same datagrams.

Datagram sizes follow the real SDK's datagrams (reference/sdk-datagrams.txt): a 0.9 KB segment
with one subsegment, 1.3 KB streamed subsegments, a 9.5 KB parent segment. The suite uses
0.5, 1, 4 and 16 KB; each document's name is ``bench-<seq>-<monotonic ns at send>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sender.c"
SIZES = {"0.5k": [512], "1k": [1024], "4k": [4096], "16k": [16384],
         "mix": [512, 1024, 1024, 1024, 4096, 1024, 512, 16384]}  # mix: mostly ~1 KB
HEADER = b'{"format":"json","version":1}\n'


def build_datagram(size: int, seq: int, sent_ns: int) -> bytes:
    """The datagram sender.c builds, byte for byte."""
    sec, usec = sent_ns // 1_000_000_000, (sent_ns // 1000) % 1_000_000
    head = (
        f'{{"format":"json","version":1}}\n'
        f'{{"id":"{seq + 1:016x}","name":"bench-{seq}-{sent_ns}","start_time":{sec}.{usec:06d},'
        f'"end_time":{sec}.{usec + 1:06d},"trace_id":"1-{1700000000 + seq // 1000000:08x}-'
        f'{seq:024x}","in_progress":false,'
        f'"http":{{"request":{{"method":"GET","url":"http://example/x"}},'
        f'"response":{{"status":200}}}},"aws":{{"xray":{{"sdk":"X-Ray for Python",'
        f'"sdk_version":"2.15.0"}}}},"metadata":{{"default":{{"blob":"'
    ).encode()
    tail = b'"}}}'
    pad = max(0, size - len(head) - len(tail))
    return head + b"x" * pad + tail


def compiled(source: Path, cache: Path | None = None, env_off: str = "") -> Path | None:
    """``source`` (C) compiled with gcc on first use, cached by content; None when gcc is
    missing or fails, or when the environment variable ``env_off`` is set."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None or (env_off and os.environ.get(env_off)):
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    folder = cache or HERE / "results" / ".build"
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / f"{source.stem}-{digest}"
    if not binary.exists():
        tmp = folder / f".{source.stem}-{os.getpid()}"
        result = subprocess.run([gcc, "-O2", "-o", str(tmp), str(source)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            sys.stderr.write(f"bench: gcc failed on {source.name}, using the Python "
                             f"fallback:\n{result.stderr}")
            return None
        tmp.replace(binary)
    return binary


def compiled_sender(cache: Path | None = None) -> Path | None:
    """The C sender's binary (BENCH_PYTHON_SENDER=1 forces the Python sender)."""
    return compiled(SOURCE, cache, "BENCH_PYTHON_SENDER")


def python_sender(host: str, port: int, rate: float, count: int, seq0: int, step: int,
                  sizes: list[int]) -> None:
    """The fallback sender (about 0.1-0.3 M datagrams/s per process)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    address = (host, port)
    start = time.monotonic_ns()
    sent = 0
    nsizes = len(sizes)
    while sent < count:
        now = time.monotonic_ns()
        if rate > 0:
            due = min(count, int((now - start) * rate / 1e9) + 1)
            if due <= sent:
                wake = max(start + sent * 1e9 / rate, now + 1e6)  # at most one wake per ms
                time.sleep(max(0.0, (wake - time.monotonic_ns()) / 1e9))
                continue
        else:
            due = min(count, sent + 64)
        while sent < due:
            data = build_datagram(sizes[sent % nsizes], seq0 + sent * step, now)
            try:
                sock.sendto(data, address)
            except OSError:
                continue
            sent += 1
    print(f"sent {sent} {(time.monotonic_ns() - start) / 1e9:.6f}", flush=True)


@dataclass
class LoadResult:
    sent: int
    seconds: float  # the slowest sender's sending time


class Load:
    """``senders`` processes sending ``count`` datagrams in all at ``rate`` per second in all
    (0: as fast as possible), sequence numbers ``seq0`` .. ``seq0 + count - 1``."""

    def __init__(self, port: int, rate: float, count: int, sizes: list[int], senders: int = 2,
                 seq0: int = 0, host: str = "127.0.0.1", binary: Path | None = None) -> None:
        self.procs: list[subprocess.Popen] = []
        senders = max(1, min(senders, count))
        for i in range(senders):
            share = count // senders + (1 if i < count % senders else 0)
            args = [host, str(port), f"{rate / senders:.3f}", str(share), str(seq0 + i),
                    str(senders), ",".join(map(str, sizes))]
            if binary is not None:
                command = [str(binary), *args]
            else:
                command = [sys.executable, "-m", "bench.loadgen", *args]
            self.procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                               cwd=HERE.parent))

    def wait(self, timeout: float | None = None) -> LoadResult:
        sent, seconds = 0, 0.0
        for proc in self.procs:
            out, _ = proc.communicate(timeout=timeout)
            words = out.split()
            if proc.returncode != 0 or len(words) < 3:
                raise RuntimeError(f"sender failed ({proc.returncode}): {out!r}")
            sent += int(words[1])
            seconds = max(seconds, float(words[2]))
        return LoadResult(sent, seconds)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main(argv: list[str]) -> int:
    host, port, rate, count, seq0, step, sizes = argv
    python_sender(host, int(port), float(rate), int(count), int(seq0), int(step),
                  [int(s) for s in sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
