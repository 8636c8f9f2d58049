"""Trace keys: each stored trace's integer key, new traces numbered in arrival order (so the
store's indexes keyed by it grow at their end). Pure: the database look-up is passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def epoch_of(trace_id: str) -> int:
    """The second field of a trace id (validated by the caller): the trace's start, in seconds."""
    return int(trace_id[2:10], 16)


class TraceKeys:
    """Keys of recent traces, kept by the epoch of their trace ids. Every stored trace whose
    epoch is at least ``horizon`` has its key here, so an id that recent and not here is a new
    trace and needs no database look-up: live traffic (new traces, ids of this second) only
    touches memory. Older ids are looked up with ``lookup``. Past ``limit`` keys, the oldest
    epochs are dropped and the horizon moves up past them."""

    def __init__(self, next_pk: int, horizon: int,
                 lookup: Callable[[list[str]], dict[str, int]], limit: int) -> None:
        self.next_pk = next_pk
        self.horizon = horizon
        self._lookup = lookup
        self._limit = limit
        self._epochs: dict[int, dict[str, int]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def resolve(self, trace_ids: Iterable[str]) -> dict[str, int]:
        """The key of each of ``trace_ids``. A batch's keys are resolved once the batches before
        it are in the database (or rolled back: their new keys stay here, unused elsewhere)."""
        epochs = self._epochs
        horizon = self.horizon
        keys: dict[str, int] = {}
        older: list[str] = []
        for trace_id in trace_ids:
            if trace_id in keys:
                continue
            epoch = epoch_of(trace_id)
            known = epochs.get(epoch)
            pk = None if known is None else known.get(trace_id)
            if pk is not None:
                keys[trace_id] = pk
            elif epoch >= horizon:
                keys[trace_id] = self._remember(epoch, trace_id, None)
            else:
                older.append(trace_id)
        if older:
            found = self._lookup(list(dict.fromkeys(older)))
            for trace_id in older:
                if trace_id not in keys:
                    keys[trace_id] = self._remember(epoch_of(trace_id), trace_id,
                                                    found.get(trace_id))
        if self._size > self._limit:
            self._drop_oldest(keys)
        return keys

    def preload(self, known: Iterable[tuple[str, int]]) -> None:
        """Remember stored (trace id, key) pairs, such as every stored trace from the horizon
        on when the store is opened."""
        for trace_id, pk in known:
            self._remember(epoch_of(trace_id), trace_id, pk)

    def _remember(self, epoch: int, trace_id: str, pk: int | None) -> int:
        if pk is None:
            pk = self.next_pk
            self.next_pk += 1
        known = self._epochs.get(epoch)
        if known is None:
            known = self._epochs[epoch] = {}
        if trace_id not in known:
            self._size += 1
        known[trace_id] = pk
        return pk

    def _drop_oldest(self, keep: dict[str, int]) -> None:
        """Drop whole epochs, oldest first, down to half the limit; the horizon moves past
        them. The keys of the batch being resolved (not in the database yet) are kept."""
        target = self._limit // 2
        for epoch in sorted(self._epochs):
            if self._size <= target:
                break
            self._size -= len(self._epochs.pop(epoch))
            self.horizon = max(self.horizon, epoch + 1)
        for trace_id, pk in keep.items():
            self._remember(epoch_of(trace_id), trace_id, pk)
