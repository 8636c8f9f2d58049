"""UDP intake: a blocking socket read loop in a thread of its own.

A plain blocking ``recv`` in a thread keeps up with bursts where asyncio's datagram endpoint
does not (DESIGN.md section 2). Stopping sends the socket an empty datagram from the daemon
itself: everything queued in the kernel before it is still read and buffered.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from xrayd.protocol import (
    KNOWN_HEADERS,
    MAX_DATAGRAM,
    METRICS,
    UNSAMPLED_SPANS,
    HeaderCache,
    Reason,
    classify,
    otlp_payload,
)

if TYPE_CHECKING:  # not imported at run time: this module is loaded before the port is bound
    from xrayd.batcher import Spill
    from xrayd.logs import RateLimitedLog
    from xrayd.receivers.mmsg import MultiReader
    from xrayd.receivers.otlp_intake import OtlpIntake
    from xrayd.rejections import RecentRejections
    from xrayd.stats import IntakeCounters

OTLP_SOURCE = "otlp-udp"
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024
GOOD_HEADERS = 256  # distinct valid header lines remembered for the fast path
HAND_OVER_AT = 256  # under a flood, documents go to the queue at least this often


class AddressError(Exception):
    pass


def split_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` as (host, port); host "" means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise AddressError(f"address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"address {address}: too many colons in address")
    try:
        number = int(port)
    except ValueError:
        raise AddressError(f"address {address}: invalid port") from None
    if not 0 <= number <= 65535:
        raise AddressError(f"address {address}: invalid port")
    return host, number


def bind_udp(address: str) -> socket.socket:
    """A bound UDP socket with a large receive buffer; AddressError with the OS's reason."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise AddressError(f"listen udp {address}: {exc.strerror}") from None
    if not host:  # every interface: prefer a dual-stack IPv6 socket, as Go does
        infos.sort(key=lambda info: info[0] != socket.AF_INET6)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        set_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise AddressError(f"listen udp {address}: bind: {exc.strerror or exc}") from None
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes of kernel receive buffer (forced when privileged); the result."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class UdpReceiver:
    """Reads datagrams, checks them, hands documents to ``put`` (or, several at a time, to
    ``put_many``)."""

    def __init__(
        self,
        sock: socket.socket,
        put: Callable[[bytes], Spill | None],
        counters: IntakeCounters,
        on_spill: Callable[[Spill], None],
        warnings: RateLimitedLog,
        put_many: Callable[[list[bytes]], Spill | None] | None = None,
        pace: bool = True,
        otlp: OtlpIntake | None = None,
        rejections: RecentRejections | None = None,
    ) -> None:
        self.sock = sock
        self.put = put
        self.put_many = put_many
        self.counters = counters
        self.on_spill = on_spill
        self.warnings = warnings
        self.pace = pace  # False: read as soon as a datagram is there (tests)
        self.otlp = otlp  # T1S/T1U/M1 payloads (ADOT's UDP exporters); None: rejected
        self._otlp_count = None
        self.rejections = rejections  # the last few, for the viewer (rate-limited there)
        self.headers = HeaderCache()
        self._good_headers: set[bytes] = set(KNOWN_HEADERS)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="udp-receiver", daemon=True)

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from xrayd.receivers.mmsg import open_reader  # ctypes: after the bind

        reader = open_reader(self.sock.fileno()) if self.put_many is not None else None
        if reader is None:
            self._run_single()
        else:
            self._run_multi(reader)

    def _run_single(self) -> None:
        """One ``recv`` per datagram (where recvmmsg is not available)."""
        recv = self.sock.recv
        while True:
            try:
                data = recv(MAX_DATAGRAM)
            except OSError as exc:
                if self._stopping:
                    return
                self.warnings.error("udp-read", f"daemon: socket: err: {exc}")
                continue
            bodies: list[bytes] = []
            keep_going = self._check([data], bodies)
            self._hand_over(bodies)
            if not keep_going:
                return

    def _run_multi(self, reader: MultiReader) -> None:
        """Many datagrams per GIL hand-over; ``poll`` (GIL released) while there are none,
        and sleeps between reads that let datagrams gather (receivers/pacing.py).

        The documents of one wake-up are handed over together, just before the reader sleeps
        again: a worker woken for a batch then finds the GIL free instead of trading it with
        the reader every switch interval while the reader finishes."""
        from xrayd.receivers.pacing import ReadPacer

        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        read, poll, sleep, clock = reader.read, poller.poll, time.sleep, time.monotonic
        check, hand_over = self._check, self._hand_over
        pacer = ReadPacer() if self.pace else None
        slots = reader.slots
        bodies: list[bytes] = []
        while True:
            try:
                datagrams = read()
            except OSError as exc:
                hand_over(bodies)
                bodies = []
                if self._stopping:
                    return
                self.warnings.error("udp-read", f"daemon: socket: err: {exc}")
                sleep(0.01)
                continue
            if datagrams:
                if not check(datagrams, bodies):
                    hand_over(bodies)
                    return
                if len(datagrams) >= slots:
                    if pacer is not None:
                        pacer.read(len(datagrams))
                    if len(bodies) >= HAND_OVER_AT:
                        hand_over(bodies)
                        bodies = []
                    continue  # more are waiting
            elif self._stopping:
                hand_over(bodies)
                return
            if bodies:
                hand_over(bodies)
                bodies = []
            if pacer is None:
                if not datagrams:
                    poll()
                continue
            pacer.read(len(datagrams))
            pause = pacer.next_sleep(clock())
            if pause is None:
                events = poll()
                if self._stopping and any(e & (select.POLLHUP | select.POLLERR)
                                          for _, e in events):
                    return
            elif pause:
                sleep(pause)

    def _check(self, datagrams: list[bytes], bodies: list[bytes]) -> bool:
        """Check the datagrams, append the accepted documents to ``bodies``, count the rest;
        False when the stop datagram was among them."""
        headers = self.headers
        counters = self.counters
        good = self._good_headers
        append = bodies.append
        keep_going = True
        for data in datagrams:
            # The common case without a function call: a header seen valid before, then an
            # ASCII JSON object, which ``classify`` would accept as it is.
            cut = data.find(b"\n")
            if cut > 0 and data[:cut] in good:
                body = data[cut + 1:]
                if body[:1] == b"{" and body.isascii():
                    append(body)
                    continue
            body, reason = classify(data, headers)
            if reason is None:
                append(body)  # type: ignore[arg-type]
                if len(good) < GOOD_HEADERS:
                    good.add(data[:cut])
                continue
            if reason is Reason.EMPTY and self._stopping:
                keep_going = False  # our own wake-up datagram
                continue
            if reason is Reason.OTLP_BODY and self.otlp is not None:
                reason = self._take_otlp(data[cut + 1:], append)
                if reason is None:
                    continue
            counters.rejected[reason] += 1
            self._log_rejected(reason, data)
        counters.received += len(datagrams) - (not keep_going)
        return keep_going

    def _take_otlp(self, body: bytes, append: Callable[[bytes], None]) -> Reason | None:
        """An OpenTelemetry payload: T1S spans converted to segment documents (appended),
        T1U spans and M1 metrics counted (metrics forwarded when a sink is wired); the
        reason when the payload cannot be decoded."""
        # Imported at the first OTLP datagram: an X-Ray-only daemon never loads protobuf.
        from xrayd.otel.decode import DecodeError, from_base64, traces_from_protobuf
        from xrayd.receivers.otlp_intake import count_into

        assert self.otlp is not None
        if self._otlp_count is None:
            self._otlp_count = count_into(self.counters.otel)
        count = self._otlp_count
        prefix, text = otlp_payload(body)  # type: ignore[misc]
        try:
            raw = from_base64(text)
        except DecodeError:
            return Reason.OTLP_BAD_BASE64
        if prefix == METRICS:
            if not _is_metrics_request(raw):
                return Reason.OTLP_BAD_PROTOBUF
            self.otlp.metrics(raw, count)
            return None
        try:
            request = traces_from_protobuf(raw)
        except DecodeError:
            return Reason.OTLP_BAD_PROTOBUF
        if prefix == UNSAMPLED_SPANS:
            self.otlp.unsampled(_span_count(request), OTLP_SOURCE, count)
            return None
        backlog = self.otlp.udp_backlog()
        if backlog is not None:  # converted by threads of its own
            backlog.submit(raw)
            return None
        docs, _ = self.otlp.convert(request, OTLP_SOURCE, count)
        if docs:
            from xrayd.stats import OTEL_SEGMENTS

            # Handed over with the X-Ray documents, whose count ``accepted`` is.
            self.counters.accepted -= len(docs)
            count(OTEL_SEGMENTS, OTLP_SOURCE, len(docs))
        for doc in docs:
            append(doc)
        return None

    def _hand_over(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        self.counters.accepted += len(bodies)
        if self.put_many is not None:
            spill = self.put_many(bodies)
            if spill is not None:
                self.on_spill(spill)
            return
        for body in bodies:
            spill = self.put(body)
            if spill is not None:
                self.on_spill(spill)

    def _log_rejected(self, reason: Reason, data: bytes) -> None:
        logger = self.warnings.logger
        self.warnings.warn(
            f"rejected:{reason.value}",
            f"Rejected a datagram of {len(data)} bytes: {reason.description}",
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Rejected datagram content (first 200 bytes): %r", data[:200])
        if self.rejections is not None:
            self.rejections.datagram(reason, data)

    def stop(self, timeout: float = 2.0) -> None:
        """Read what the kernel already holds, then stop."""
        self._stopping = True
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(timeout)
        self.sock.close()

    def _wake(self) -> None:
        host, port = self.sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "::1" if self.sock.family == socket.AF_INET6 else "127.0.0.1"
        try:
            with socket.socket(self.sock.family, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", (host, port))
        except OSError:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _span_count(request) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans
               for scope in resource.scope_spans)


def _is_metrics_request(raw: bytes) -> bool:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    try:
        ExportMetricsServiceRequest().ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return False
    return True
