"""What every OpenTelemetry receiver does with a decoded request: convert its spans to segment
documents (otel/spans_to_segments.py), hand them to the same queue as X-Ray segments, and count
per source. Used by the UDP reader (T1S/T1U/M1), OTLP/HTTP and OTLP/gRPC."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xrayd.batcher import doc_cost
from xrayd.otel import Options
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
    from xrayd.otel.spans_to_segments import Converted
    from xrayd.receivers.convert_workers import ConvertPool
    from xrayd.rejections import RecentRejections

# (Stats name, label, amount): Stats.add for the request receivers, a lock-free per-thread
# counter for the UDP reader.
Count = Callable[[str, str, int], None]
MetricsSink = Callable[[bytes], None]
# Request bytes in flight, at least (the daemon sizes it from the memory budget): two 20 MiB
# bodies at once.
IN_FLIGHT_BYTES = 40 * 1024 * 1024
PutOtel = Callable[[list[bytes], list[bytes]], "Spill | None"]


class ByteGate:
    """Bounds the bytes of OTLP request bodies held at once across connections and calls:
    a receiver reserves a body's bytes before reading (HTTP) or converting (gRPC) it, and is
    answered busy (503 / RESOURCE_EXHAUSTED) when they are not free. One request is always let
    in when nothing else is held, so any body within the size limit can be taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.held and self.held + size > self.capacity:
                return False
            self.held += size
            self.peak = max(self.peak, self.held)
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.held = max(0, self.held - size)


@dataclass
class Outcome:
    accepted: int = 0  # segment documents queued
    rejected: int = 0  # spans that could not be converted
    message: str = ""  # why, for the OTLP partial-success answer
    busy: bool = False  # nothing taken: the memory budget is full (the sender should retry)
    too_large: bool = False  # nothing taken: more than the whole budget (never retry as is)


class OtlpIntake:
    def __init__(self, put_many: Callable[[list[bytes]], Spill | None],
                 on_spill: Callable[[Spill], None], logs: RateLimitedLog,
                 options: Options | None = None,
                 free_bytes: Callable[[], int] | None = None,
                 capacity: int | None = None,
                 metrics_sink: MetricsSink | None = None,
                 put_otel: PutOtel | None = None,
                 gate: ByteGate | None = None,
                 workers: int = 0, backlog_threads: int = 0,
                 shared_count: Count | None = None) -> None:
        self.put_many = put_many
        self.on_spill = on_spill
        self.logs = logs
        self.options = options or Options()
        # The free bytes of the fullest lane, and the smallest lane's whole budget: a request
        # must fit in every lane, since every lane takes all of it.
        self.free_bytes = free_bytes
        self.capacity = capacity
        self.metrics_sink = metrics_sink
        # With an OTLP exporter (Fanout.put_otel): the request's ResourceSpans go to it as
        # they came, beside the converted documents; None: nothing more is cut out or kept.
        self.put_otel = put_otel
        self.gate = gate or ByteGate(IN_FLIGHT_BYTES)
        # Worker processes for large requests, and threads converting T1S datagrams off the
        # UDP reader: both started on first use (0: convert in the receiving thread).
        self.workers = workers
        self.backlog_threads = backlog_threads
        if backlog_threads and shared_count is None:
            raise ValueError("the backlog's threads need a thread-safe count (Stats.add)")
        self.shared_count = shared_count
        self.pool: ConvertPool | None = None
        self.backlog: Backlog | None = None
        self._lazy = threading.Lock()
        self._closed = False
        self.rejections: RecentRejections | None = None  # the last few, for the viewer

    def rejected(self, source: str, reason: str, message: str, data: bytes | None = None) -> None:
        if self.rejections is not None:
            self.rejections.record(source, reason, message, data)

    def udp_backlog(self) -> Backlog | None:
        """Where the UDP reader leaves T1S payloads; None: convert them in the reader."""
        if self.backlog is None and self.backlog_threads and not self._closed:
            assert self.shared_count is not None
            with self._lazy:
                if self.backlog is None:
                    self.backlog = Backlog(self, self.shared_count, "otlp-udp",
                                           self.backlog_threads)
        return self.backlog

    def _pool(self) -> ConvertPool | None:
        if self.pool is None and self.workers and not self._closed:
            from xrayd.receivers.convert_workers import ConvertPool

            with self._lazy:
                if self.pool is None:
                    self.pool = ConvertPool(self.options, self.workers, self.logs.logger)
        return self.pool

    def close(self) -> None:
        """Convert what waits, stop the threads and the worker processes."""
        self._closed = True
        if self.backlog is not None:
            self.backlog.close()
        if self.pool is not None:
            self.pool.close()

    def convert(self, request: Any, source: str, count: Count) -> tuple[list[bytes], Outcome]:
        """The request's segment documents; its unconvertible spans counted and logged."""
        from xrayd.otel.spans_to_segments import convert_request  # at the first OTel request

        try:
            converted = convert_request(request, self.options)
        except Exception as exc:  # a bug: the request is rejected, the thread lives on
            count(OTEL_REQUESTS_REJECTED, f"{source}:conversion_failed", 1)
            self.logs.warn(f"otel-failed:{source}", f"Rejected an OpenTelemetry request from "
                                                    f"{source}: conversion failed ({exc!r:.200})")
            return [], Outcome(message="the request could not be converted")
        return self._account(converted, source, count)

    def _account(self, converted: Converted, source: str,
                 count: Count) -> tuple[list[bytes], Outcome]:
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
            self.rejected(source, ",".join(converted.rejected), outcome.message)
        return converted.documents, outcome

    def traces(self, request: Any, source: str, count: Count, *,
               back_pressure: bool = False) -> Outcome:
        """Convert and queue; with ``back_pressure``, refuse the whole request (busy) when its
        documents do not fit in the free budget, instead of spilling older ones."""
        docs, outcome = self.convert(request, source, count)
        passed = [rs.SerializeToString() for rs in request.resource_spans] \
            if self.put_otel is not None else None
        return self._queue(docs, outcome, source, count, back_pressure, passed)

    def body(self, body: bytes, source: str, count: Count, *, is_json: bool = False,
             gzipped: bool = False, limit: int | None = None,
             back_pressure: bool = True) -> Outcome:
        """A request body (OTLP/HTTP or gRPC): decoded and converted by the worker pool when
        there is one, else here; DecodeError when it does not decode."""
        from xrayd.otel.decode import MAX_BODY, gunzip, resource_spans_of_body
        from xrayd.receivers.convert_workers import decode_and_convert

        limit = MAX_BODY if limit is None else limit
        if self.put_otel is not None and gzipped:
            body, gzipped = gunzip(body, limit), False  # inflated once, for both uses
        pool = self._pool()
        if pool is not None:
            converted = pool.convert(body, is_json, gzipped, limit)
        else:
            converted = decode_and_convert(body, is_json, gzipped, limit, self.options)
        docs, outcome = self._account(converted, source, count)
        passed = resource_spans_of_body(body, is_json) if self.put_otel is not None else None
        return self._queue(docs, outcome, source, count, back_pressure, passed)

    def _queue(self, docs: list[bytes], outcome: Outcome, source: str, count: Count,
               back_pressure: bool, passed: list[bytes] | None = None) -> Outcome:
        if not docs and not passed:
            return outcome
        cost = sum(map(doc_cost, docs)) if back_pressure else 0
        if back_pressure and self.capacity is not None and cost > self.capacity:
            count(OTEL_REQUESTS_REJECTED, f"{source}:over_budget", 1)
            message = (f"the request's {len(docs)} spans need {cost // 1024} KiB, more than "
                       f"the whole memory budget ({self.capacity // 1024} KiB): send fewer "
                       "spans per request, or start xrayd with a larger -m")
            self.logs.warn(f"otel-over-budget:{source}", f"Rejected an OpenTelemetry request "
                                                         f"from {source}: {message}")
            return Outcome(too_large=True, message=message)
        if back_pressure and self.free_bytes is not None and cost > self.free_bytes():
            count(OTEL_REQUESTS_REJECTED, f"{source}:busy", 1)
            self.logs.warn(f"otel-busy:{source}",
                           f"Memory budget full: asked the {source} sender to retry "
                           f"{len(docs)} spans later")
            return Outcome(busy=True)
        if passed is not None and self.put_otel is not None:
            spill = self.put_otel(docs, passed)
        else:
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


class Backlog:
    """T1S payloads (already decoded and checked by the UDP reader), converted by threads of
    their own so the reader only reads: the payloads waiting are joined into one request (two
    serialized OTLP requests one after the other are one request with both's spans) and go
    to the worker pool. Bounded: when full, a payload is dropped and counted."""

    def __init__(self, intake: OtlpIntake, count: Count, source: str, threads: int = 2,
                 max_payloads: int = 2048, batch_bytes: int = 512 * 1024) -> None:
        self.intake = intake
        self.count = count
        self.source = source
        self.batch_bytes = batch_bytes
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_payloads)
        self._threads = [threading.Thread(target=self._run, name=f"{source}-convert",
                                          daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.count(OTEL_REQUESTS_REJECTED, f"{self.source}:busy", 1)
            self.intake.logs.warn(f"otel-busy:{self.source}",
                                  "OpenTelemetry spans dropped: conversion is behind")

    def _run(self) -> None:
        from xrayd.otel.decode import DecodeError

        get, get_nowait = self._queue.get, self._queue.get_nowait
        while (first := get()) is not None:
            batch, size, stop = [first], len(first), False
            while size < self.batch_bytes:
                try:
                    more = get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                size += len(more)
            try:
                self.intake.body(b"".join(batch), self.source, self.count, back_pressure=False)
            except DecodeError as exc:
                self.count(OTEL_REQUESTS_REJECTED, f"{self.source}:{exc.reason}", len(batch))
                self.intake.logs.warn(f"otel-failed:{self.source}",
                                      f"Rejected {len(batch)} OpenTelemetry datagrams from "
                                      f"{self.source}: {exc}")
            except Exception as exc:  # a bug must cost these payloads, never the thread
                self.count(OTEL_REQUESTS_REJECTED, f"{self.source}:internal_error", len(batch))
                self.intake.logs.warn(f"otel-failed:{self.source}",
                                      f"Rejected {len(batch)} OpenTelemetry datagrams from "
                                      f"{self.source}: {exc!r:.200}")
            if stop:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Convert what is waiting, then stop."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)


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
