"""The daemon's counters: monotonic totals, by name and label.

Readers of the counters (telemetry, metrics, tests) take snapshots and work with differences,
so nothing is ever reset. The UDP reader owns an IntakeCounters of its own (one thread writes
it, no lock on the hot path); everything else goes through Stats.add, which takes a lock.
"""

from __future__ import annotations

import threading
from collections import Counter

from xrayd.protocol import Reason


class IntakeCounters:
    """Written by one receiver thread only."""

    __slots__ = ("accepted", "received", "rejected")

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0
        self.rejected: Counter[Reason] = Counter()


# Names of the counters kept in Stats. Labels are given per call.
SEGMENTS_SPILLED = "segments_spilled"  # label: evicted_oldest | dropped_new
SEGMENTS_SENT = "segments_sent"  # accepted by the X-Ray API
SEGMENTS_UNPROCESSED = "segments_unprocessed"  # label: error code
SEGMENTS_FAILED = "segments_failed"  # label: error class; the batch could not be delivered
SEGMENTS_DROPPED = "segments_dropped"  # label: reason (e.g. shutdown)
BATCHES_SENT = "batches_sent"
BATCHES_RETRIED = "batches_retried"
UPLOAD_ERRORS = "upload_errors"  # label: error class, one per failed attempt
SEGMENTS_RETRIED = "segments_retried"  # documents sent again (after an error or unprocessed)
SEGMENTS_SPOOLED = "segments_spooled"  # written to the spool (pending until replayed)
SEGMENTS_REPLAYED = "segments_replayed"  # taken back out of the spool for upload
SPOOL_RECOVERED = "spool_recovered"  # found in the spool at start (written by an earlier run)
PROXY_REQUESTS = "proxy_requests"  # label: HTTP status the proxy answered, e.g. "200", "502"

# Upper bounds (seconds) of the upload latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (not cumulative), their sum and count."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


TELEMETRY_ERRORS = "telemetry_errors"  # label: error class, one per failed PutTelemetryRecords


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._intakes: list[IntakeCounters] = []
        self.upload_latency = Histogram()

    def intake(self) -> IntakeCounters:
        counters = IntakeCounters()
        with self._lock:
            self._intakes.append(counters)
        return counters

    def add(self, name: str, amount: int = 1, label: str = "") -> None:
        with self._lock:
            self._counts[(name, label)] += amount

    def get(self, name: str, label: str | None = None) -> int:
        """A total; with label None, summed over every label."""
        with self._lock:
            if label is not None:
                return self._counts[(name, label)]
            return sum(v for (n, _), v in self._counts.items() if n == name)

    def by_label(self, name: str) -> dict[str, int]:
        with self._lock:
            return {label: v for (n, label), v in self._counts.items() if n == name}

    @property
    def received(self) -> int:
        return sum(c.received for c in self._intakes)

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self._intakes)

    def rejected(self) -> Counter[Reason]:
        total: Counter[Reason] = Counter()
        for c in self._intakes:
            total.update(c.rejected)
        return total

    def summary(self) -> str:
        """Every counter on one line, for the shutdown log."""
        rejected = self.rejected()
        parts = [f"datagrams received {self.received}", f"accepted {self.accepted}",
                 f"rejected {sum(rejected.values())}"]
        parts += [f"rejected[{reason.value}] {n}" for reason, n in sorted(rejected.items())]
        with self._lock:
            items = sorted(self._counts.items())
        parts += [f"{name}[{label}] {n}" if label else f"{name} {n}" for (name, label), n in items]
        return ", ".join(parts)
