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

    __slots__ = ("accepted", "otel", "received", "rejected")

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0  # X-Ray segment documents handed to the queue
        self.rejected: Counter[Reason] = Counter()
        # OpenTelemetry counters of this receiver, by (Stats name, label), e.g.
        # (OTEL_SEGMENTS, "otlp-udp"): merged into Stats' own on every read.
        self.otel: Counter[tuple[str, str]] = Counter()


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
# OpenTelemetry intake. Sources: otlp-udp (T1S/T1U/M1 datagrams), otlp-http, otlp-grpc.
OTEL_SPANS_RECEIVED = "otel_spans_received"  # label: source
OTEL_SEGMENTS = "otel_segments_accepted"  # label: source; spans converted and queued
OTEL_SPANS_REJECTED = "otel_spans_rejected"  # label: source:reason (e.g. otlp-http:bad_span_id)
OTEL_SPANS_UNSAMPLED = "otel_spans_unsampled"  # label: source; T1U spans, counted, not sent
OTEL_REQUESTS_REJECTED = "otel_requests_rejected"  # label: source:reason (bad_protobuf, busy...)
OTEL_METRICS = "otel_metrics_payloads"  # label: forwarded | dropped_no_exporter
SOURCE_XRAY = "xray"
OTEL_SOURCES = ("otlp-udp", "otlp-http", "otlp-grpc")
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

    def _all_counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            counts = Counter(self._counts)
            intakes = list(self._intakes)
        for intake in intakes:
            if intake.otel:
                counts.update(dict(intake.otel))
        return counts

    def get(self, name: str, label: str | None = None) -> int:
        """A total; with label None, summed over every label."""
        counts = self._all_counts()
        if label is not None:
            return counts[(name, label)]
        return sum(v for (n, _), v in counts.items() if n == name)

    def by_label(self, name: str) -> dict[str, int]:
        return {label: v for (n, label), v in self._all_counts().items() if n == name}

    def intake_by_source(self) -> dict[str, int]:
        """Segment documents taken in, by source: X-Ray datagrams and each OTLP receiver."""
        otel = self.by_label(OTEL_SEGMENTS)
        return {SOURCE_XRAY: self.accepted,
                **{source: otel.get(source, 0) for source in OTEL_SOURCES}}

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
        sources = self.intake_by_source()
        if any(sources[s] for s in OTEL_SOURCES):
            parts += [f"intake[{source}] {n}" for source, n in sources.items()]
        items = sorted(self._all_counts().items())
        parts += [f"{name}[{label}] {n}" if label else f"{name} {n}" for (name, label), n in items]
        return ", ".join(parts)
