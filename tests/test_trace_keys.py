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
    found: dict[str, int] = {}
    keys.resolve([tid(100, 1), tid(101, 2), tid(100, 1)], found, {})
    assert found == {tid(100, 1): 8, tid(101, 2): 9}
    assert db.asked == []


def test_older_ids_are_looked_up_once_and_then_remembered():
    db = Database({tid(99, 1): 7})
    keys = TraceKeys(next_pk=8, horizon=100, lookup=db.lookup, limit=1000)
    found: dict[str, int] = {}
    keys.resolve([tid(99, 1), tid(99, 2), tid(99, 1), tid(50, 3)], found, {})
    assert found == {tid(99, 1): 7, tid(99, 2): 8, tid(50, 3): 9}
    assert db.asked == [[tid(99, 1), tid(99, 2), tid(50, 3)]]
    again: dict[str, int] = {}
    keys.resolve([tid(99, 1), tid(99, 2)], again, {})
    assert again == {tid(99, 1): 7, tid(99, 2): 8} and len(db.asked) == 1


def test_dropping_old_epochs_moves_the_horizon_and_keeps_pending_keys():
    db = Database({})
    keys = TraceKeys(next_pk=1, horizon=0, lookup=db.lookup, limit=4)
    committed: dict[str, int] = {}
    keys.resolve([tid(10, 1), tid(10, 2), tid(11, 3)], committed, {})
    db.stored.update(committed)  # that batch is in the database now
    in_flight: dict[str, int] = {}
    keys.resolve([tid(12, 4), tid(13, 5)], in_flight, {})  # over the limit: epochs go
    assert keys.horizon > 10 and len(keys) <= 4
    current: dict[str, int] = {}
    keys.resolve([tid(10, 1), tid(12, 4), tid(14, 6)], current, in_flight)
    # tid(10, 1) came back from the database, tid(12, 4) (not stored yet) from memory.
    assert current == {tid(10, 1): 1, tid(12, 4): 4, tid(14, 6): 6}
    assert [tid(12, 4) in asked for asked in db.asked] == [False] * len(db.asked)


def test_a_new_trace_older_than_the_horizon_gets_a_new_key():
    db = Database({tid(5, 1): 1})
    keys = TraceKeys(next_pk=2, horizon=6, lookup=db.lookup, limit=1000)
    found: dict[str, int] = {}
    keys.resolve([tid(5, 2)], found, {})
    assert found == {tid(5, 2): 2} and keys.next_pk == 3
