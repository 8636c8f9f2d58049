"""Upload workers: ``Concurrency`` threads take batches from the queue and deliver them with an
exporter, retrying failures by the retry policy. Every document ends up counted as sent,
unprocessed or failed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from xrayd import stats as names
from xrayd.batcher import Batch
from xrayd.exporters.xray import Unprocessed, UploadError
from xrayd.logs import RateLimitedLog
from xrayd.protocol import document_ids
from xrayd.retry import RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.stats import Stats


class Exporter(Protocol):
    name: str

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]: ...

    def close(self) -> None: ...


class Uploader:
    def __init__(
        self,
        queue: SegmentQueue,
        exporter: Exporter,
        stats: Stats,
        logs: RateLimitedLog,
        concurrency: int,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.exporter = exporter
        self.stats = stats
        self.logs = logs
        self.log = logs.logger
        # Each unprocessed entry gets its line, up to a flood.
        self._entries = RateLimitedLog(logs.logger, logs.interval, burst=100, clock=logs.clock)
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self._random = random.Random()
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _work(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            try:
                self.deliver(batch)
            finally:
                self.queue.done(batch)

    def deliver(self, batch: Batch) -> None:
        """Upload one batch, with retries; count the outcome of every document."""
        size = len(batch)
        self.log.debug("processor: segment batch size: %d", size)
        started = self.clock()
        while True:
            batch.attempts += 1
            attempt_start = self.clock()
            try:
                unprocessed = self.exporter.put(batch.docs)
            except UploadError as error:
                self.stats.add(names.UPLOAD_ERRORS, label=error.error_class)
                wait = self.policy.next_delay(
                    batch.attempts, self.clock() - started, error.retriable, self._random.random()
                )
                if wait is None:
                    self._failed(batch, error)
                    return
                self.stats.add(names.BATCHES_RETRIED)
                self.log.debug("Retrying batch of %d segments in %.3f s after: %s", size, wait,
                               error)
                self.sleep(wait)
                continue
            elapsed = self.clock() - attempt_start
            self._delivered(batch, unprocessed, elapsed)
            return

    def _delivered(self, batch: Batch, unprocessed: list[Unprocessed], elapsed: float) -> None:
        size = len(batch)
        self.stats.add(names.BATCHES_SENT)
        self.stats.add(names.SEGMENTS_SENT, size - len(unprocessed))
        if not unprocessed:
            self.logs.log(
                logging.INFO, "sent",
                f"Successfully sent batch of {size} segments ({elapsed:.3f} seconds)",
            )
            return
        self.log.info(
            "Sent batch of %d segments but had %d Unprocessed segments (%.3f seconds)",
            size, len(unprocessed), elapsed,
        )
        traces = {}
        for doc in batch.docs:
            seg_id, trace_id = document_ids(doc)
            traces.setdefault(seg_id, trace_id)
        for entry in unprocessed:
            self.stats.add(names.SEGMENTS_UNPROCESSED, label=entry.error_code or "unknown")
            self._entries.error(
                "unprocessed",
                f"Unprocessed trace {traces.get(entry.id) or 'unknown'}, segment: "
                f"Id {entry.id or 'missing'}, ErrorCode {entry.error_code}, "
                f"Message {entry.message}",
            )

    def _failed(self, batch: Batch, error: UploadError) -> None:
        self.stats.add(names.SEGMENTS_FAILED, len(batch), label=error.error_class)
        self.logs.error(
            f"failed:{error.error_class}",
            f"Sending segment batch failed with: {error} "
            f"({len(batch)} segments dropped after {batch.attempts} attempts)",
        )
