"""TraceKeys: which trace ids need a database look-up, and that keys stay right when old epochs
are dropped."""

from __future__ import annotations

from xrayd.store.keys import TraceKeys, epoch_of


def tid(epoch: int, n: int) -> str:
    return f"1-{epoch:08x}-{n:024x}"


class Database:
    def __init__(self, stored: dict[str, int]) -> None:
        self.stored = stored
        self.asked: list[list[str]] = []

    def lookup(self, trace_ids: list[str]) -> dict[str, int]:
        self.asked.append(trace_ids)
        return {t: self.stored[t] for t in trace_ids if t in self.stored}


def test_epoch_is_the_second_field():
    assert epoch_of("1-5F000001-000000000000000000000000") == 0x5F000001


def test_ids_from_the_horizon_on_are_new_without_a_lookup():
    db = Database({tid(99, 1): 7})
    keys = TraceKeys(next_pk=8, horizon=100, lookup=db.lookup, limit=1000)
    assert keys.resolve([tid(100, 1), tid(101, 2), tid(100, 1)]) == {tid(100, 1): 8,
                                                                     tid(101, 2): 9}
    assert db.asked == []


def test_older_ids_are_looked_up_once_and_then_remembered():
    db = Database({tid(99, 1): 7})
    keys = TraceKeys(next_pk=8, horizon=100, lookup=db.lookup, limit=1000)
    found = keys.resolve([tid(99, 1), tid(99, 2), tid(99, 1), tid(50, 3)])
    assert found == {tid(99, 1): 7, tid(99, 2): 8, tid(50, 3): 9}
    assert db.asked == [[tid(99, 1), tid(99, 2), tid(50, 3)]]
    assert keys.resolve([tid(99, 1), tid(99, 2)]) == {tid(99, 1): 7, tid(99, 2): 8}
    assert len(db.asked) == 1


def test_dropping_old_epochs_moves_the_horizon_and_keeps_the_batch():
    db = Database({})
    keys = TraceKeys(next_pk=1, horizon=0, lookup=db.lookup, limit=4)
    db.stored.update(keys.resolve([tid(10, 1), tid(10, 2), tid(11, 3)]))  # committed
    batch = keys.resolve([tid(12, 4), tid(13, 5)])  # over the limit: old epochs go
    assert keys.horizon > 10 and len(keys) <= 4
    assert batch == {tid(12, 4): 4, tid(13, 5): 5}
    db.stored.update(batch)
    asked = len(db.asked)
    # tid(10, 1) comes back from the database, tid(12, 4) from memory, tid(14, 6) is new.
    assert keys.resolve([tid(10, 1), tid(12, 4), tid(14, 6)]) == {
        tid(10, 1): 1, tid(12, 4): 4, tid(14, 6): 6}
    assert db.asked[asked:] == [[tid(10, 1)]]


def test_a_new_trace_older_than_the_horizon_gets_a_new_key():
    db = Database({tid(5, 1): 1})
    keys = TraceKeys(next_pk=2, horizon=6, lookup=db.lookup, limit=1000)
    assert keys.resolve([tid(5, 2)]) == {tid(5, 2): 2} and keys.next_pk == 3
