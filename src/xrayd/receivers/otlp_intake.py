"""What every OpenTelemetry receiver does with a decoded request: convert its spans to segment
documents (otel/spans_to_segments.py), hand them to the same queue as X-Ray segments, and count
per source. Used by the UDP reader (T1S/T1U/M1), OTLP/HTTP and OTLP/gRPC."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xrayd.batcher import doc_cost
from xrayd.otel.spans_to_segments import Options, convert_request
from xrayd.stats import (
    OTEL_METRICS,
    OTEL_REQUESTS_REJECTED,
    OTEL_SEGMENTS,
    OTEL_SPANS_RECEIVED,
    OTEL_SPANS_REJECTED,
    OTEL_SPANS_UNSAMPLED,
)

if TYPE_CHECKING:
    from xrayd.batcher import Spill
    from xrayd.logs import RateLimitedLog

# (Stats name, label, amount): Stats.add for the request receivers, a lock-free per-thread
# counter for the UDP reader.
Count = Callable[[str, str, int], None]
MetricsSink = Callable[[bytes], None]


@dataclass
class Outcome:
    accepted: int = 0  # segment documents queued
    rejected: int = 0  # spans that could not be converted
    message: str = ""  # why, for the OTLP partial-success answer
    busy: bool = False  # nothing taken: the memory budget is full (the sender should retry)


class OtlpIntake:
    def __init__(self, put_many: Callable[[list[bytes]], Spill | None],
                 on_spill: Callable[[Spill], None], logs: RateLimitedLog,
                 options: Options | None = None,
                 free_bytes: Callable[[], int] | None = None,
                 metrics_sink: MetricsSink | None = None) -> None:
        self.put_many = put_many
        self.on_spill = on_spill
        self.logs = logs
        self.options = options or Options()
        self.free_bytes = free_bytes
        self.metrics_sink = metrics_sink

    def convert(self, request: Any, source: str, count: Count) -> tuple[list[bytes], Outcome]:
        """The request's segment documents; its unconvertible spans counted and logged."""
        converted = convert_request(request, self.options)
        count(OTEL_SPANS_RECEIVED, source, converted.spans)
        outcome = Outcome(rejected=sum(converted.rejected.values()))
        for reason, n in converted.rejected.items():
            count(OTEL_SPANS_REJECTED, f"{source}:{reason}", n)
        if outcome.rejected:
            outcome.message = (f"{outcome.rejected} of {converted.spans} spans rejected: "
                               + "; ".join(converted.messages))
            self.logs.warn(f"otel-rejected:{source}",
                           f"Rejected {outcome.rejected} OpenTelemetry spans from {source}: "
                           + "; ".join(converted.messages))
        return converted.documents, outcome

    def traces(self, request: Any, source: str, count: Count, *,
               back_pressure: bool = False) -> Outcome:
        """Convert and queue; with ``back_pressure``, refuse the whole request (busy) when its
        documents do not fit in the free budget, instead of spilling older ones."""
        docs, outcome = self.convert(request, source, count)
        if not docs:
            return outcome
        if (back_pressure and self.free_bytes is not None
                and sum(map(doc_cost, docs)) > self.free_bytes()):
            count(OTEL_REQUESTS_REJECTED, f"{source}:busy", 1)
            self.logs.warn(f"otel-busy:{source}",
                           f"Memory budget full: asked the {source} sender to retry "
                           f"{len(docs)} spans later")
            return Outcome(busy=True)
        spill = self.put_many(docs)
        if spill is not None:
            self.on_spill(spill)
        outcome.accepted = len(docs)
        count(OTEL_SEGMENTS, source, len(docs))
        return outcome

    def unsampled(self, spans: int, source: str, count: Count) -> None:
        count(OTEL_SPANS_UNSAMPLED, source, spans)

    def metrics(self, payload: bytes, count: Count) -> None:
        """A raw ExportMetricsServiceRequest: to the OTLP exporter when one is wired, else
        dropped (counted either way)."""
        sink = self.metrics_sink
        if sink is None:
            count(OTEL_METRICS, "dropped_no_exporter", 1)
            return
        sink(payload)
        count(OTEL_METRICS, "forwarded", 1)


def count_into(counter: Any) -> Count:
    """A Count writing a receiver thread's own Counter (IntakeCounters.otel)."""

    def count(name: str, label: str, amount: int) -> None:
        if amount:
            counter[(name, label)] += amount

    return count


def stats_count(add: Callable[..., None]) -> Count:
    """A Count on Stats.add (which takes a lock: the request receivers' threads share it)."""

    def count(name: str, label: str, amount: int) -> None:
        if amount:
            add(name, amount, label=label)

    return count
