"""Several exporters side by side: each is a *lane* with its own queue (its share of the memory
budget), upload workers, retries, breaker, spool directory and counters, so a slow or failed
exporter never holds up or loses another's documents.

The receivers put every document into ``Fanout``, which puts it into every lane; one document in
two lanes is one ``bytes`` object referenced twice, and each lane accounts it against its own
share, so what the lanes hold together stays within the daemon's budget (docs/otlp-export.md).
The first lane is the *primary* one (the X-Ray API, or the store in offline mode): its spills
are the receiver's to count, as before, and its counters keep the daemon-wide names.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xrayd import stats as names
from xrayd.batcher import Spill
from xrayd.logs import RateLimitedLog
from xrayd.stats import Histogram, Stats

if TYPE_CHECKING:
    from xrayd.segment_queue import SegmentQueue
    from xrayd.spool import Spool
    from xrayd.uploader import Uploader


class LaneStats:
    """The counters one lane's Uploader writes: kept per exporter; the primary lane's also go to
    the daemon's Stats under the names they always had (metrics, telemetry, summary)."""

    def __init__(self, stats: Stats, exporter: str, primary: bool) -> None:
        self.stats = stats
        self.exporter = exporter
        self.primary = primary
        self.upload_latency = stats.upload_latency if primary else Histogram()
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, name: str, amount: int = 1, label: str = "") -> None:
        if self.primary:
            self.stats.add(name, amount, label)
        with self._lock:
            self._counts[(name, label)] += amount

    def get(self, name: str, label: str | None = None) -> int:
        with self._lock:
            if label is not None:
                return self._counts[(name, label)]
            return sum(v for (n, _), v in self._counts.items() if n == name)

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class PrefixedLog(RateLimitedLog):
    """A lane's log lines say which exporter they are about, and are rate-limited apart from
    the other lanes' lines."""

    def __init__(self, base: RateLimitedLog, prefix: str) -> None:
        super().__init__(base.logger, base.interval, base.burst, base.clock)
        self.prefix = prefix

    def log(self, level: int, key: str, message: str) -> bool:
        return super().log(level, key, f"{self.prefix}{message}")


@dataclass
class Lane:
    name: str  # the exporter's name: xray, local, otlp
    queue: SegmentQueue
    uploader: Uploader
    stats: LaneStats
    logs: RateLimitedLog
    spool: Spool | None = None
    takes_otlp: bool = False  # OTel spans go to it as they came, not converted

    @property
    def exporter(self):
        return self.uploader.exporter

    def spilled(self, spill: Spill) -> None:
        """Count documents this (non-primary) lane let go to stay within its share."""
        if spill.evicted:
            self.stats.add(names.SEGMENTS_SPILLED, spill.evicted, label="evicted_oldest")
            self.logs.warn("spill-evicted", f"Spilling over {spill.evicted} segments")
        if spill.dropped:
            self.stats.add(names.SEGMENTS_SPILLED, spill.dropped, label="dropped_new")
            self.logs.warn("spill-dropped", "Segment dropped. Consider increasing memory limit")

    def summary(self) -> str:
        """sent, failed, queued and the rest, for the shutdown log."""
        counts = self.stats.snapshot()
        totals: Counter[str] = Counter()
        for (name, _label), value in counts.items():
            totals[name] += value
        queued = self.queue.snapshot()[1]
        spooled = self.spool.depth()[0] if self.spool is not None else 0
        parts = [f"sent {totals[names.SEGMENTS_SENT]}",
                 f"failed {totals[names.SEGMENTS_FAILED]}",
                 f"queued {queued}", f"spooled now {spooled}"]
        parts += [f"{name}[{label}] {n}" if label else f"{name} {n}"
                  for (name, label), n in sorted(counts.items())
                  if name not in (names.SEGMENTS_SENT, names.SEGMENTS_FAILED)]
        return f"exporter {self.name}: " + ", ".join(parts)


class Fanout:
    """What the receivers put documents into when there is more than one lane."""

    def __init__(self, lanes: Sequence[Lane]) -> None:
        if not lanes:
            raise ValueError("no lanes")
        self.lanes = list(lanes)
        self.primary = self.lanes[0]
        self._others = self.lanes[1:]

    def put(self, doc: bytes) -> Spill | None:
        spill = self.primary.queue.put(doc)
        for lane in self._others:
            other = lane.queue.put(doc)
            if other is not None:
                lane.spilled(other)
        return spill

    def put_many(self, docs: list[bytes]) -> Spill | None:
        spill = self.primary.queue.put_many(docs)
        for lane in self._others:
            other = lane.queue.put_many(docs)
            if other is not None:
                lane.spilled(other)
        return spill

    def put_otel(self, segment_docs: list[bytes], resource_spans: list[bytes],
                 wrap: Callable[[bytes], bytes] | None = None) -> Spill | None:
        """OTel spans a receiver took in: converted to ``segment_docs`` for the lanes that take
        segments, passed through as they came (``resource_spans``, serialized ResourceSpans,
        each made a queue item by ``wrap``) to the lanes that take OTLP. The primary lane's
        Spill, for the receiver to count."""
        if wrap is None and any(lane.takes_otlp for lane in self.lanes):
            from xrayd.exporters.otlp import wrap_resource_spans as wrap
        spill = None
        for lane in self.lanes:
            items = [wrap(rs) for rs in resource_spans] if lane.takes_otlp and wrap else \
                segment_docs
            if not items:
                continue
            result = lane.queue.put_many(items)
            if lane is self.primary:
                spill = result
            elif result is not None:
                lane.spilled(result)
        return spill
