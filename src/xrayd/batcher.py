"""Grouping segment documents into PutTraceSegments batches within a memory budget.

Pure logic, no threads or clocks of its own: callers pass ``now``. Every document the daemon
holds, in the open batch, in sealed batches waiting for upload and in batches being uploaded,
is counted against one byte budget. A batch is sealed when it holds ``max_batch`` documents,
when the budget runs low, or when its first document is ``max_age`` seconds old. When a new
document does not fit, the oldest sealed batch waiting for upload is spilled; when nothing can be
spilled, the new document is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_BATCH = 50
MAX_AGE = 1.0
# Accounted per document on top of its length: the bytes object and its list slot.
DOC_OVERHEAD = 64


def doc_cost(doc: bytes) -> int:
    return len(doc) + DOC_OVERHEAD


@dataclass
class Batch:
    docs: list[bytes]
    nbytes: int
    attempts: int = 0

    def __len__(self) -> int:
        return len(self.docs)


@dataclass(frozen=True)
class Spill:
    """Documents the batcher let go to stay within the budget."""

    evicted: int  # documents of the oldest waiting batches, spilled to make room
    dropped: int  # 1 when the new document itself did not fit


@dataclass
class Batcher:
    budget: int
    max_batch: int = MAX_BATCH
    max_age: float = MAX_AGE
    low_water: int = 0  # below this much free, seal early if nothing waits; default budget / 10
    held: int = 0  # bytes of every document held: open, waiting and in flight
    in_flight: int = 0  # batches handed out and not yet released
    closed: bool = False
    _open: list[bytes] = field(default_factory=list)
    _open_bytes: int = 0
    _opened_at: float = 0.0
    _waiting: deque[Batch] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise ValueError("budget must be positive")
        if not self.low_water:
            self.low_water = self.budget // 10

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    @property
    def queued_docs(self) -> int:
        """Documents buffered and not yet handed out for upload."""
        return len(self._open) + sum(len(b) for b in self._waiting)

    def add(self, doc: bytes, now: float) -> Spill | None:
        """Buffer one document; a Spill when documents had to be let go to make room."""
        cost = len(doc) + DOC_OVERHEAD
        spill = None
        if self.held + cost > self.budget:
            spill = self._make_room(cost)
            if spill.dropped:
                return spill
        if not self._open:
            self._opened_at = now
        self._open.append(doc)
        self._open_bytes += cost
        self.held += cost
        if len(self._open) >= self.max_batch or (
            self.budget - self.held < self.low_water and not self._waiting
        ):
            # Low on budget, the open batch is sealed early so an idle worker can take it; but
            # not while batches wait anyway: one-document batches under a flood cost a call
            # each and slow delivery down just when it is needed most.
            self._seal()
        return spill

    def add_many(self, docs: list[bytes], now: float) -> Spill | None:
        """``add`` for each document in turn; the Spills summed (None when nothing spilled).

        Documents that fill the open batch without reaching the low-water mark (so that no
        document among them would spill or seal early) go in with one list operation; the
        others one ``add`` at a time. The outcome is the same either way."""
        evicted = dropped = 0
        add = self.add
        start, total = 0, len(docs)
        while start < total:
            chunk = docs[start:start + max(1, self.max_batch - len(self._open))]
            cost = sum(map(len, chunk)) + DOC_OVERHEAD * len(chunk)
            if self.budget - (self.held + cost) >= self.low_water:
                if not self._open:
                    self._opened_at = now
                self._open.extend(chunk)
                self._open_bytes += cost
                self.held += cost
                if len(self._open) >= self.max_batch:
                    self._seal()
            else:
                for doc in chunk:
                    spill = add(doc, now)
                    if spill is not None:
                        evicted += spill.evicted
                        dropped += spill.dropped
            start += len(chunk)
        return Spill(evicted, dropped) if evicted or dropped else None

    def _make_room(self, cost: int) -> Spill:
        """Spill the oldest buffered documents until ``cost`` fits. Batches in flight are being
        delivered and stay; when they alone fill the budget, the new document is dropped."""
        self._seal()
        evicted = 0
        while self.held + cost > self.budget and self._waiting:
            victim = self._waiting.popleft()
            self.held -= victim.nbytes
            evicted += len(victim)
        return Spill(evicted, 0 if self.held + cost <= self.budget else 1)

    def _seal(self) -> None:
        if self._open:
            self._waiting.append(Batch(self._open, self._open_bytes))
            self._open = []
            self._open_bytes = 0

    def take(self, now: float) -> Batch | None:
        """The next batch to upload, or None when none is due yet."""
        if not self._waiting and self._open and (
            self.closed or now - self._opened_at >= self.max_age
        ):
            self._seal()
        if not self._waiting:
            return None
        self.in_flight += 1
        return self._waiting.popleft()

    def due_in(self, now: float) -> float | None:
        """Seconds until the open batch is due, 0 if a batch is ready, None if there is nothing."""
        if self._waiting:
            return 0.0
        if not self._open:
            return None
        return max(0.0, self._opened_at + self.max_age - now)

    def release(self, batch: Batch) -> None:
        """A batch handed out by take() is done with (delivered, dropped or stored elsewhere)."""
        self.in_flight -= 1
        self.held -= batch.nbytes

    def requeue(self, batch: Batch) -> None:
        """Put a batch handed out by take() back at the head of the queue."""
        self.in_flight -= 1
        self._waiting.appendleft(batch)

    def close(self) -> None:
        """No more documents: the open batch is due at once."""
        self.closed = True
        self._seal()

    def abandon(self) -> int:
        """Drop every buffered document not in flight (the drain ran out of time); the count."""
        self._seal()
        count = 0
        while self._waiting:
            victim = self._waiting.popleft()
            self.held -= victim.nbytes
            count += len(victim)
        return count

    @property
    def drained(self) -> bool:
        return self.closed and not self._waiting and not self._open and self.in_flight == 0
