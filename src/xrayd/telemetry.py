"""PutTelemetryRecords: the daemon's own health, one record a minute (reference section 6).

Each record holds the differences of the monotonic totals in Stats between two cycles (nothing
is reset). Records are queued (30 at most, the oldest dropped first) once the first datagram has
arrived and sent 10 per call; a failed call puts its records back. ``TelemetryCycle`` is the
pure logic (clock and sender injected); ``TelemetryThread`` runs it every interval and once more
at shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from xrayd import stats as names
from xrayd.exporters.xray import UploadError
from xrayd.stats import Stats

INTERVAL_SECONDS = 60.0
QUEUE_CAPACITY = 30
RECORDS_PER_CALL = 10
PATH = "/TelemetryRecords"

# error_class of UploadError -> BackendConnectionErrors field. Missing credentials are not a
# connection error (the original counts SDK errors without an HTTP status nowhere).
ERROR_FIELDS = {
    "timeout": "TimeoutCount",
    "connection_refused": "ConnectionRefusedCount",
    "http_4xx": "HTTPCode4XXCount",
    "http_5xx": "HTTPCode5XXCount",
    "unknown_host": "UnknownHostCount",
    "other": "OtherCount",
}
ERROR_ORDER = ("HTTPCode4XXCount", "HTTPCode5XXCount", "TimeoutCount", "ConnectionRefusedCount",
               "UnknownHostCount", "OtherCount")


@dataclass(frozen=True)
class Totals:
    """A snapshot of the monotonic totals a record is the difference of."""

    received: int = 0
    sent: int = 0
    spillover: int = 0
    rejected: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Stats) -> Totals:
        errors: dict[str, int] = {}
        for name in (names.UPLOAD_ERRORS, names.TELEMETRY_ERRORS):
            for label, count in stats.by_label(name).items():
                errors[label] = errors.get(label, 0) + count
        return cls(
            received=stats.received,
            sent=stats.get(names.SEGMENTS_SENT),
            spillover=stats.get(names.SEGMENTS_SPILLED),
            rejected=sum(stats.rejected().values()) + stats.get(names.SEGMENTS_UNPROCESSED),
            errors=errors,
        )


def make_record(before: Totals, after: Totals, timestamp: float) -> dict[str, Any]:
    """One TelemetryRecord of the X-Ray API: what happened between two snapshots."""
    errors = dict.fromkeys(ERROR_ORDER, 0)
    for error_class, count in after.errors.items():
        target = ERROR_FIELDS.get(error_class)
        if target:
            errors[target] += count - before.errors.get(error_class, 0)
    return {
        "Timestamp": round(timestamp, 3),
        "SegmentsReceivedCount": after.received - before.received,
        "SegmentsSentCount": after.sent - before.sent,
        "SegmentsSpilloverCount": after.spillover - before.spillover,
        "SegmentsRejectedCount": after.rejected - before.rejected,
        "BackendConnectionErrors": errors,
    }


@dataclass(frozen=True)
class Identity:
    hostname: str = ""
    instance_id: str = ""
    resource_arn: str = ""


def resolve_identity(resource_arn: str, local_mode: bool, environ: Mapping[str, str],
                     fetch: Callable[[str], str] | None, log: logging.Logger) -> Identity:
    """Hostname and instance id: AWS_HOSTNAME / AWS_INSTANCE_ID, else (not in local mode)
    instance metadata, else ""."""
    hostname = environ.get("AWS_HOSTNAME", "")
    instance_id = environ.get("AWS_INSTANCE_ID", "")
    if not local_mode and fetch is not None:
        if not hostname:
            try:
                hostname = fetch("latest/meta-data/hostname").strip()
            except Exception as exc:
                log.debug("Get hostname metadata failed: %s", _describe(exc))
        if not instance_id:
            try:
                instance_id = fetch("latest/meta-data/instance-id").strip()
            except Exception as exc:
                # Debug, not the original's Error: off EC2 (Fargate, on-premises) this is normal.
                log.debug("Get instance id metadata failed: %s", _describe(exc))
    return Identity(hostname, instance_id, resource_arn)


def _describe(exc: Exception) -> str:
    from xrayd.aws import imds_error

    return imds_error(exc)


class TelemetryCycle:
    """The record/queue logic, without threads or sleeps."""

    def __init__(self, stats: Stats, send: Callable[[str, bytes], bytes], identity: Identity,
                 log: logging.Logger, now: Callable[[], float] = time.time,
                 capacity: int = QUEUE_CAPACITY, per_call: int = RECORDS_PER_CALL) -> None:
        self.stats = stats
        self.send = send
        self.identity = identity
        self.log = log
        self.now = now
        self.per_call = per_call
        self.queue: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._last = Totals()  # the totals count from start-up

    def close_record(self) -> None:
        """Stamp what happened since the last cycle and queue it (once a datagram arrived)."""
        current = Totals.of(self.stats)
        record = make_record(self._last, current, self.now())
        self._last = current
        if current.received == 0:
            self.log.debug("Skipped telemetry data as no segments found")
            return
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.log.debug("Telemetry Buffers truncated")
        self.queue.append(record)

    def flush(self) -> None:
        """Send what is queued, ``per_call`` records a call; re-queue from the first failure."""
        pending = list(self.queue)
        self.queue.clear()
        for start in range(0, len(pending), self.per_call):
            chunk = pending[start:start + self.per_call]
            try:
                self.send(PATH, self.body(chunk))
            except UploadError as error:
                if error.error_class in ERROR_FIELDS:
                    self.stats.add(names.TELEMETRY_ERRORS, label=error.error_class)
                rest = pending[start:]
                self.log.debug("Failed to send telemetry %d record(s). Re-queue records. %s",
                               len(chunk), error)
                for record in rest:
                    self._append(record)
                return
            self.log.debug("Send %d telemetry record(s)", len(chunk))

    def cycle(self) -> None:
        self.close_record()
        self.flush()

    def body(self, records: list[dict[str, Any]]) -> bytes:
        return orjson.dumps({
            "EC2InstanceId": self.identity.instance_id,
            "Hostname": self.identity.hostname,
            "ResourceARN": self.identity.resource_arn,
            "TelemetryRecords": records,
        })


class TelemetryThread:
    """Runs a cycle every ``interval`` seconds (from the end of the previous one), and a last
    one at stop. The identity is looked up in the thread, so instance metadata timeouts never
    delay start-up."""

    def __init__(self, make_cycle: Callable[[], TelemetryCycle], log: logging.Logger,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.make_cycle = make_cycle
        self.log = log
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        cycle = self.make_cycle()
        while not self._stop.wait(self.interval):
            self._guarded(cycle.cycle)
        self._guarded(cycle.cycle)
        self.log.debug("telemetry: done!")

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # a bug here must not end telemetry for the daemon's life
            self.log.error("Telemetry cycle failed: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Send a last record and wait (at most ``timeout``) for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
