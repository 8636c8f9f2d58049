"""The thread-safe shell around the Batcher: receivers put documents, upload workers take
batches. One lock; workers sleep on a condition until a batch is due.

A worker that finishes a batch takes the next waiting one without sleeping, so when several
batches are sealed at once (the UDP reader takes everything that arrived while it slept), one
worker is woken for every two of them: on this kind of machine a wake-up, and the cold caches
after it, cost a worker more CPU than the upload call itself (docs/benchmarks.md). Workers that
must wait (a retry, the rate limiter) hand waiting batches on with ``kick``."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from xrayd.batcher import Batch, Batcher, Spill


class _LifoCondition(threading.Condition):
    """notify() wakes the most recently idle waiters first: at everyday rates the same one or
    two workers do all the uploads, with their code, stacks and connections still in the CPU
    caches, instead of each of ``Concurrency`` workers in turn."""

    def notify(self, n: int = 1) -> None:
        waiters = getattr(self, "_waiters", None)  # CPython's Condition: a deque of locks
        if not isinstance(waiters, deque):
            super().notify(n)
            return
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        while waiters and n > 0:
            waiter = waiters.pop()
            try:
                waiter.release()
            except RuntimeError:
                continue
            n -= 1


class SegmentQueue:
    def __init__(self, batcher: Batcher, clock: Callable[[], float]) -> None:
        self.batcher = batcher
        self.clock = clock
        self._cond = _LifoCondition(threading.Lock())
        self._timers = 0  # workers waiting with a timeout for the open batch's age

    def put(self, doc: bytes) -> Spill | None:
        batcher = self.batcher
        with self._cond:
            was_open = batcher.open_count
            waiting = batcher.waiting_count
            spill = batcher.add(doc, self.clock())
            # Wake a worker when a batch became ready, or when a new open batch needs someone
            # to time its age (idle workers sleep without a timeout; a worker already timing
            # an earlier open batch wakes no later than this one is due).
            if batcher.waiting_count > waiting or (not was_open and not self._timers):
                self._cond.notify()
            return spill

    def put_many(self, docs: list[bytes]) -> Spill | None:
        """``put`` for several documents under one lock acquisition."""
        batcher = self.batcher
        with self._cond:
            was_open = batcher.open_count
            waiting = batcher.waiting_count
            spill = batcher.add_many(docs, self.clock())
            ready = batcher.waiting_count
            if ready > waiting or (not was_open and not self._timers):
                self._cond.notify(max(1, (ready + 1) // 2))
            return spill

    def get(self, timeout: float | None = None) -> Batch | None:
        """The next batch; None when closed and empty, or after ``timeout`` seconds."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                now = self.clock()
                batch = self.batcher.take(now)
                if batch is not None:
                    return batch
                if self.batcher.closed and not self.batcher.waiting_count:
                    return None
                wait = due = self.batcher.due_in(now)
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                if due is None:
                    self._cond.wait(wait)
                    continue
                self._timers += 1
                try:
                    self._cond.wait(wait)
                finally:
                    self._timers -= 1

    def done(self, batch: Batch) -> None:
        with self._cond:
            self.batcher.release(batch)
            # Only a drain waits for releases; waking every idle worker after each batch
            # costs more CPU than the upload at everyday rates.
            if self.batcher.closed:
                self._cond.notify_all()

    def kick(self) -> None:
        """Wake an idle worker if a batch is waiting: the caller will not take one for a
        while."""
        with self._cond:
            if self.batcher.waiting_count:
                self._cond.notify()

    def requeue(self, batch: Batch) -> None:
        with self._cond:
            self.batcher.requeue(batch)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.batcher.close()
            self._cond.notify_all()

    def abandon(self) -> int:
        with self._cond:
            count = self.batcher.abandon()
            self._cond.notify_all()
            return count

    def wait_drained(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        with self._cond:
            while not self.batcher.drained:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def snapshot(self) -> tuple[int, int, int]:
        """(bytes held, documents queued, batches in flight)."""
        with self._cond:
            return self.batcher.held, self.batcher.queued_docs, self.batcher.in_flight
