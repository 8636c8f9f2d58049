"""Batching within the memory budget (checklist: processor batching loop, bufferpool and
ringbuffer, adapted: the budget is counted in bytes, not 64 KiB buffers)."""

from __future__ import annotations

import pytest

from xrayd.batcher import DOC_OVERHEAD, Batcher, Spill


def doc(n: int, size: int = 100) -> bytes:
    return (b"%08d" % n).ljust(size, b"x")


def cost(size: int = 100) -> int:
    return size + DOC_OVERHEAD


def test_full_batch_is_ready_at_once_in_order():
    b = Batcher(budget=10**6)
    for i in range(50):
        assert b.add(doc(i), now=0.0) is None
    batch = b.take(now=0.0)
    assert batch is not None and batch.docs == [doc(i) for i in range(50)]
    assert b.take(now=0.0) is None


def test_partial_batch_waits_for_max_age():
    b = Batcher(budget=10**6, max_age=1.0)
    b.add(doc(1), now=10.0)
    assert b.take(now=10.5) is None
    assert b.due_in(now=10.5) == pytest.approx(0.5)
    b.add(doc(2), now=10.9)  # a new document does not restart the clock: latency is bounded
    batch = b.take(now=11.0)
    assert batch is not None and len(batch) == 2


def test_nothing_buffered_means_no_deadline():
    b = Batcher(budget=10**6)
    assert b.due_in(now=0.0) is None
    assert b.take(now=100.0) is None


def test_budget_running_low_seals_a_partial_batch():
    b = Batcher(budget=cost() * 20)  # low water = 2 documents
    for i in range(18):
        b.add(doc(i), now=0.0)
    assert b.waiting_count == 0
    b.add(doc(18), now=0.0)  # 1 document's room left: below low water
    assert b.waiting_count == 1
    assert len(b.take(now=0.0)) == 19


def test_full_budget_spills_oldest_waiting_batch_first():
    b = Batcher(budget=cost() * 100, max_batch=10, low_water=1)
    for i in range(100):
        assert b.add(doc(i), now=0.0) is None
    spill = b.add(doc(100), now=0.0)
    assert spill == Spill(evicted=10, dropped=0)
    first = b.take(now=0.0)
    assert first.docs[0] == doc(10)  # documents 0..9 were the ones spilled
    assert b.held <= b.budget


def test_in_flight_batches_are_never_spilled_new_document_dropped():
    b = Batcher(budget=cost() * 20, max_batch=10, low_water=1)
    for i in range(20):
        b.add(doc(i), now=0.0)
    first, second = b.take(now=0.0), b.take(now=0.0)
    assert b.in_flight == 2
    assert b.add(doc(99), now=0.0) == Spill(evicted=0, dropped=1)
    b.release(first)
    assert b.add(doc(100), now=0.0) is None
    assert b.held == cost() * 11
    b.release(second)


def test_held_bytes_never_exceed_budget_under_flood():
    b = Batcher(budget=50_000, max_batch=50)
    spilled = dropped = 0
    for i in range(10_000):
        spill = b.add(doc(i, size=300 + i % 700), now=i / 1000)
        if spill:
            spilled += spill.evicted
            dropped += spill.dropped
        assert b.held <= b.budget
        if i % 97 == 0 and (batch := b.take(now=i / 1000)):
            b.release(batch)
    assert spilled + dropped > 0


def test_release_returns_budget_and_requeue_puts_batch_first():
    b = Batcher(budget=10**6, max_batch=2)
    for i in range(4):
        b.add(doc(i), now=0.0)
    first = b.take(now=0.0)
    b.requeue(first)
    again = b.take(now=0.0)
    assert again is first
    b.release(again)
    assert b.held == cost() * 2


def test_close_makes_the_open_batch_due_and_drained_after_release():
    b = Batcher(budget=10**6)
    b.add(doc(1), now=0.0)
    b.close()
    batch = b.take(now=0.0)
    assert batch.docs == [doc(1)]
    assert not b.drained
    b.release(batch)
    assert b.drained


def test_abandon_drops_buffered_but_not_in_flight():
    b = Batcher(budget=10**6, max_batch=2)
    for i in range(5):
        b.add(doc(i), now=0.0)
    in_flight = b.take(now=0.0)
    assert b.abandon() == 3
    b.release(in_flight)
    assert b.held == 0


def test_invalid_budget():
    with pytest.raises(ValueError):
        Batcher(budget=0)


def _state(b: Batcher) -> tuple:
    return (b.held, b.open_count, b._open_bytes, b._opened_at,
            [(batch.docs, batch.nbytes) for batch in b._waiting])


def test_add_many_ends_in_the_same_state_as_add_one_at_a_time():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(
        budget_docs=st.integers(1, 40), max_batch=st.integers(1, 12),
        low_water_docs=st.integers(0, 5),
        rounds=st.lists(st.tuples(st.lists(st.integers(1, 300), max_size=40),
                                  st.integers(0, 3)), max_size=8),
    )
    def check(budget_docs, max_batch, low_water_docs, rounds):
        budget = budget_docs * (150 + DOC_OVERHEAD)
        low = low_water_docs * (150 + DOC_OVERHEAD)
        one = Batcher(budget=budget, max_batch=max_batch, low_water=low)
        many = Batcher(budget=budget, max_batch=max_batch, low_water=low)
        for now, (sizes, takes) in enumerate(rounds):
            docs = [b"d" * size for size in sizes]
            evicted = dropped = 0
            for doc in docs:
                spill = one.add(doc, float(now))
                if spill is not None:
                    evicted, dropped = evicted + spill.evicted, dropped + spill.dropped
            expected = Spill(evicted, dropped) if evicted or dropped else None
            assert many.add_many(docs, float(now)) == expected
            assert _state(many) == _state(one)
            for _ in range(takes):  # some batches go in flight, freeing nothing yet
                a, b = one.take(float(now)), many.take(float(now))
                assert (a is None) == (b is None)

    check()
