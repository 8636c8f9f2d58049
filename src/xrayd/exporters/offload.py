"""Signing and sending X-Ray API calls in a helper process, so that uploads use the second core.

Under load the daemon makes up to two thousand PutTraceSegments calls a second; signing and
sending one costs several times the CPU of receiving its fifty datagrams, and in one process
all of it shares one GIL with the UDP reader. The helper is a child process
forked from the daemon, with one socket pair per upload worker: the daemon
writes the frozen credentials, the URL, the headers to sign and the body; the helper signs the
request with botocore's SigV4Auth, sends it on its own kept-alive connection and writes back
the status, the error type header and the response body (or the transport error, classified).

The exporter starts the helper only once calls come often (see XRayExporter), so an idle or
lightly loaded daemon stays one small process; when the helper is unusable (it could not start,
it died, a reply is late) the exporter goes back to sending in-process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

_HEAD = struct.Struct("!II")  # meta length, body length
_READ = 1 << 17
READY = b"R"
# A helper with no call for this long ends itself: after a burst the daemon is one process (and
# its memory) again; the exporter forks a new helper when calls come often again.
IDLE_EXIT_SECONDS = 30.0  # shorter than the telemetry interval (60 s), whose calls it serves too


class HelperUnavailable(Exception):
    """The helper cannot take this call; send it in-process."""


@dataclass
class Reply:
    status: int
    content: bytes
    headers: dict[str, str]
    error: dict | None  # {"message", "error_class", "retriable"} for a transport failure


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write(sock: socket.socket, meta: dict, body: bytes) -> None:
    encoded = orjson.dumps(meta)
    sock.sendall(_HEAD.pack(len(encoded), len(body)) + encoded + body)


def _read(sock: socket.socket) -> tuple[dict, bytes]:
    """One message; the peer never sends the next before this one is answered, so a read may
    take everything there is (one system call, one release of the GIL, for most messages)."""
    data = sock.recv(_READ)
    if len(data) < _HEAD.size:
        if not data:
            raise ConnectionError("peer closed")
        data += _recv_exact(sock, _HEAD.size - len(data))
    meta_len, body_len = _HEAD.unpack_from(data)
    end = _HEAD.size + meta_len + body_len
    if len(data) < end:
        data += _recv_exact(sock, end - len(data))
    elif len(data) > end:
        raise ValueError("more than one message on a channel")
    view = memoryview(data)
    meta = orjson.loads(view[_HEAD.size:_HEAD.size + meta_len])
    return meta, data[_HEAD.size + meta_len:end] if body_len else b""


class Helper:
    """The parent's side: the child process and a pool of channels to it.

    The child is forked from the daemon, so it shares the daemon's memory pages (copy on write;
    ``gc.freeze`` keeps the collector from copying them) and needs no start-up imports. It only
    signs and sends: no logging, no locks of the daemon's, no credential look-ups."""

    def __init__(self, endpoint: str, region: str, verify: bool, proxy: str, timeout: float,
                 channels: int) -> None:
        self.timeout = timeout
        pairs = [socket.socketpair() for _ in range(channels)]
        sender = _ChildSender(endpoint, region, verify, proxy, timeout)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the daemon's code
            code = 1
            try:
                gc.freeze()
                # The daemon's free heap pages came along with the fork: give them back.
                from xrayd.memory import trim

                trim()
                # Its threads are I/O-bound around a few hundred µs of signing each: hand the
                # GIL over sooner than every 5 ms, or each call waits for the others in turn.
                sys.setswitchinterval(0.0002)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                for parent, _ in pairs:
                    parent.close()
                _close_inherited_fds({0, 1, 2} | {child.fileno() for _, child in pairs})
                _child_main([child for _, child in pairs], sender)
                code = 0
            finally:
                os._exit(code)
        self.pid = pid
        for _, child in pairs:
            child.close()
        self._free = [parent for parent, _ in pairs]
        self._lock = threading.Lock()
        self.broken = False
        self.ready = threading.Event()
        threading.Thread(target=self._await_ready, name="offload-start", daemon=True).start()

    def _await_ready(self) -> None:
        with self._lock:
            channels = list(self._free)
        try:
            for channel in channels:
                channel.settimeout(30)
                if channel.recv(1) != READY:
                    raise ConnectionError("no ready byte")
                channel.settimeout(self.timeout * 2 + 5)
        except OSError:
            self.broken = True
            return
        self.ready.set()

    @property
    def usable(self) -> bool:
        return self.ready.is_set() and not self.broken

    def call(self, meta: dict, body: bytes) -> Reply:
        if not self.usable:
            raise HelperUnavailable("not ready")
        with self._lock:
            if not self._free:
                raise HelperUnavailable("no free channel")
            channel = self._free.pop()
        try:
            _write(channel, meta, body)
            answer, content = _read(channel)
        except (OSError, ValueError) as exc:
            # A late or lost reply leaves the channel out of step: give the helper up.
            self.broken = True
            channel.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)  # reap it if it died
            raise HelperUnavailable(str(exc)) from exc
        with self._lock:
            self._free.append(channel)
        return Reply(answer["status"], content, answer.get("headers") or {}, answer.get("error"))

    def close(self) -> None:
        """Close the channels; the child exits when it sees them closed."""
        self.broken = True
        with self._lock:
            channels, self._free = self._free, []
        for channel in channels:
            channel.close()
        try:
            for _ in range(50):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
                time.sleep(0.1)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            return  # already reaped


# -- the child --------------------------------------------------------------------------------


class _Activity:
    """When the child last took or answered a call (its threads write, its main thread reads)."""

    def __init__(self) -> None:
        self.last = time.monotonic()


def _serve(channel: socket.socket, sender: _ChildSender, activity: _Activity) -> None:
    try:
        channel.sendall(READY)
        while True:
            try:
                meta, body = _read(channel)
            except ConnectionError:
                return
            activity.last = time.monotonic()
            _write(channel, *sender.send(meta, body))
            activity.last = time.monotonic()
    except OSError:
        return
    finally:
        channel.close()


class _ChildSender:
    def __init__(self, endpoint: str, region: str, verify: bool, proxy: str,
                 timeout: float) -> None:
        from urllib.parse import urlsplit

        from botocore.credentials import ReadOnlyCredentials

        from xrayd.exporters.signing import Signer
        from xrayd.exporters.transport import DirectTransport, SessionTransport, Transport

        self._endpoint = endpoint
        self._prefix = urlsplit(endpoint).path
        self._credentials = ReadOnlyCredentials
        self._signer = Signer(endpoint, region)
        self._transport: Transport
        if proxy:
            from botocore.httpsession import URLLib3Session

            self._transport = SessionTransport(endpoint, URLLib3Session(
                verify=verify, proxies={"http": proxy, "https": proxy}, timeout=timeout,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ), timeout)
        else:
            self._transport = DirectTransport(endpoint, verify, timeout)

    def send(self, meta: dict, body: bytes) -> tuple[dict, bytes]:
        from xrayd.exporters.xray import classify_send_error, request_body

        path = meta["path"]
        lengths = meta.get("documents")
        if lengths is not None:  # the documents of a PutTraceSegments call, joined
            docs, start = [], 0
            for length in lengths:
                docs.append(body[start:start + length])
                start += length
            body = request_body(docs)
        credentials = self._credentials(*meta["credentials"])
        try:
            signed = self._signer.sign(self._endpoint + path, meta["headers"], body,
                                       credentials)
            response = self._transport.post(self._prefix + path, body, signed)
            content = response.content
        except Exception as exc:
            error = classify_send_error(exc)
            return {"status": 0, "error": {"message": str(error),
                                           "error_class": error.error_class,
                                           "retriable": error.retriable}}, b""
        headers: Mapping[str, str] = response.headers
        kept = {name: headers[name] for name in ("x-amzn-ErrorType",) if headers.get(name)}
        return {"status": response.status_code, "headers": kept}, content


def _close_inherited_fds(keep: set[int]) -> None:
    """Close what the fork copied (the UDP socket above all, so that the port is free as soon
    as the daemon exits), keeping ``keep``."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _child_main(channels: list[socket.socket], sender: _ChildSender) -> None:
    activity = _Activity()
    threads = [threading.Thread(target=_serve, args=(channel, sender, activity), daemon=True)
               for channel in channels]
    for thread in threads:
        thread.start()
    # A call in flight has set ``last`` when it arrived, and calls time out long before this.
    while any(thread.is_alive() for thread in threads):
        threads[0].join(min(1.0, IDLE_EXIT_SECONDS))
        if time.monotonic() - activity.last > IDLE_EXIT_SECONDS:
            return
