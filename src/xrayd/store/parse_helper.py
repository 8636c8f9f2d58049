"""Building the store's rows in a helper process, so that under load the store uses both cores.

Parsing documents and building their rows is pure Python and holds the GIL; writing them is
mostly SQLite, which runs without it. In one process the two share one GIL with the UDP
reader, and the parsing alone takes more of it than everything else together. The helper is a
child process (``python -m xrayd.store.parse_helper``) that reads batches of documents on its
stdin and writes back their rows (``rows.build``) on its stdout; the committer thread takes
them, gives the traces their keys and writes them.

Messages are a 4-byte length and MessagePack (msgspec: several times faster than pickle at
encoding the rows' many small values). The writer starts the helper when a batch is large (the
writer has fallen behind), stops it after a spell without large batches, and builds rows
in-process whenever the helper is not there or fails (it is then started again at most once a
minute).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO

import msgspec

from xrayd.store.rows import Jobs, Rejected, Rows, build

_LENGTH = struct.Struct("!I")
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
MIN_BATCH = 1000  # documents: a batch this large starts the helper
IDLE_SECONDS = 30.0  # without a batch this large, the helper is stopped
RETRY_SECONDS = 60.0  # after a failure, in-process for this long
REPLY_TIMEOUT = 30.0


class HelperFailed(Exception):
    pass


_encode = msgspec.msgpack.Encoder().encode


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):  # a smaller pipe only means more system calls
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)


def _write(fd: int, payload: bytes) -> None:
    for data in (memoryview(_LENGTH.pack(len(payload))), memoryview(payload)):
        while data:  # no joined copy: a request is megabytes
            data = data[os.write(fd, data):]


def _read(fd: int, deadline: float | None = None) -> bytes | None:
    """One message; None at end of file."""
    head = _read_exact(fd, _LENGTH.size, deadline)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    body = _read_exact(fd, length, deadline)
    if body is None:
        raise HelperFailed("message cut short")
    return body


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise HelperFailed("no reply in time")
        chunk = os.read(fd, min(left, _PIPE_BYTES))
        if not chunk:
            if left == size:
                return None
            raise HelperFailed("message cut short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


Built = tuple[Rows, list[list[Rejected]]]


class Ticket:
    """A batch handed to ``ParseHelper.submit``: its rows once built, or why they were not."""

    __slots__ = ("built", "error", "jobs", "remote")

    def __init__(self, jobs: Jobs, built: Built | None, error: Exception | None = None
                 ) -> None:
        self.jobs = jobs
        self.built = built
        self.error = error
        self.remote = built is None and error is None

    @classmethod
    def local(cls, jobs: Jobs) -> Ticket:
        try:
            return cls(jobs, build(jobs))
        except Exception as exc:  # fails this batch only, in result()
            return cls(jobs, None, exc)


class ParseHelper:
    """The writer's side. ``submit`` (the writer thread) hands a batch to the child, which
    builds its rows while the committer writes the batch before; ``result`` (the committer)
    takes them back, in order. Without a child (light load, or a failure) ``submit`` builds
    the rows in-process at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 command: Sequence[str] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.clock = clock
        # -P: not the daemon's working directory first on the child's sys.path.
        self.command = list(command or [sys.executable, "-P", "-m", "xrayd.store.parse_helper"])
        self.on_error = on_error
        self.process: subprocess.Popen[bytes] | None = None
        self.failures = 0
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._outstanding: deque[Ticket] = deque()
        self._lock = threading.Lock()  # submit() and result() run in different threads
        self._last_large = float("-inf")
        self._failed_at = float("-inf")

    def submit(self, jobs: Jobs) -> Ticket:
        """Called by one thread only (the writer), so requests go out in submission order."""
        with self._lock:
            now = self.clock()
            size = sum(len(docs) for docs, _ in jobs)
            if size >= MIN_BATCH:
                self._last_large = now
                if self.process is None and now - self._failed_at >= RETRY_SECONDS:
                    self._start()
            else:
                self._stop_if_idle(now)
            if self.process is None or not size:
                remote = None
            else:
                remote = Ticket(jobs, None)
                self._outstanding.append(remote)
                requests = self._requests
        if remote is None:
            return Ticket.local(jobs)
        requests.put(_encode([(list(docs), received) for docs, received in jobs]))
        return remote

    def result(self, ticket: Ticket) -> Built:
        """The rows of ``ticket``; tickets are taken in the order they were submitted (by one
        thread; another may submit meanwhile)."""
        while ticket.built is None and ticket.error is None:
            with self._lock:
                oldest = self._outstanding[0]
                process = self.process
            try:
                built = self._receive(process)
            except (OSError, HelperFailed, msgspec.DecodeError, ValueError, TypeError) as exc:
                with self._lock:
                    self._fail(exc)
                    lost = list(self._outstanding)
                    self._outstanding.clear()
                for each in lost:
                    rebuilt = Ticket.local(each.jobs)
                    each.built, each.error = rebuilt.built, rebuilt.error
                break
            with self._lock:
                oldest.built = built
                self._outstanding.popleft()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.built is not None
        return ticket.built

    def stop_if_idle(self) -> None:
        """Stop the helper after IDLE_SECONDS without a large batch (the writer calls this
        when it wakes with nothing to do)."""
        with self._lock:
            self._stop_if_idle(self.clock())

    def _stop_if_idle(self, now: float) -> None:
        if (self.process is not None and not self._outstanding
                and now - self._last_large >= IDLE_SECONDS):
            self.close()

    @staticmethod
    def _receive(process: subprocess.Popen[bytes] | None) -> Built:
        if process is None or process.stdout is None:
            raise HelperFailed("the helper is gone")
        reply = _read(process.stdout.fileno(), time.monotonic() + REPLY_TIMEOUT)
        if reply is None:
            raise HelperFailed("the helper exited")
        rows, rejected = msgspec.msgpack.decode(reply)
        return Rows.from_tuple(rows), [[Rejected(*r) for r in job] for job in rejected]

    def _fail(self, exc: Exception) -> None:
        self.failures += 1
        self._failed_at = self.clock()
        self.close(kill=True)
        if self.on_error is not None:
            self.on_error(f"the trace store's parse helper failed ({exc}); parsing in the "
                          f"daemon for {RETRY_SECONDS:.0f} s")

    def _start(self) -> None:
        try:
            process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            self._failed_at = self.clock()
            if self.on_error is not None:
                self.on_error(f"the trace store's parse helper did not start: {exc}")
            return
        assert process.stdin is not None and process.stdout is not None
        _grow_pipe(process.stdin.fileno())
        _grow_pipe(process.stdout.fileno())
        self.process = process
        self._requests = queue.SimpleQueue()
        # Requests are written by a thread of their own: the child answers one batch while the
        # next is on its way, and a pipe holds less than a batch.
        threading.Thread(target=self._feed, args=(process.stdin, self._requests),
                         name="store-parse-feed", daemon=True).start()

    @staticmethod
    def _feed(stdin: IO[bytes], requests: queue.SimpleQueue[bytes | None]) -> None:
        with contextlib.suppress(OSError):  # the child is gone: result() sees it
            while (request := requests.get()) is not None:
                _write(stdin.fileno(), request)
        with contextlib.suppress(OSError):
            stdin.close()  # the child exits at end of file

    def close(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self._requests.put(None)
        if kill:
            process.kill()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def main() -> int:
    """The child: answer batches until stdin ends."""
    import gc
    import signal

    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the daemon drains
    # through this process, which ends when the daemon closes its input (or dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.freeze()  # the imported modules: nothing for the collector to walk
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    decode = msgspec.msgpack.Decoder(list[tuple[list[bytes], float]]).decode
    while True:
        request = _read(stdin)
        if request is None:
            return 0
        rows, rejected = build(decode(request))
        _write(stdout, _encode((rows.as_tuple(), rejected)))


if __name__ == "__main__":
    sys.exit(main())
