"""receivers/pacing.py: how long the UDP reader sleeps between reads (pure, simulated time)."""

from __future__ import annotations

import pytest

from xrayd.receivers.pacing import ReadPacer


def simulate(pacer: ReadPacer, rate: float, seconds: float, slots: int = 32) -> dict:
    """A steady stream of ``rate`` datagrams/s; returns wake-ups, the longest wait of a datagram
    in the kernel buffer and the most datagrams waiting at once."""
    now, buffered_since, taken = 0.0, None, 0
    wakes, worst_wait, most_waiting = 0, 0.0, 0
    while now < seconds:
        wakes += 1
        while True:  # read until a read does not fill every slot
            waiting = int(rate * now) - taken
            most_waiting = max(most_waiting, waiting)
            got = min(waiting, slots)
            if got and buffered_since is not None:
                worst_wait = max(worst_wait, now - buffered_since)
            taken += got
            pacer.read(got)
            if got < slots:
                break
        pause = pacer.next_sleep(now)
        buffered_since = now
        if pause is None:  # poll: woken by the next datagram
            now = (taken + 1) / rate
            buffered_since = now
        else:
            now += pause or 1e-5
    return {"wakes_per_s": wakes / seconds, "worst_wait": worst_wait, "most_waiting": most_waiting}


@pytest.mark.parametrize("rate", [200, 1000, 2000, 5000, 20_000])
def test_the_reader_wakes_for_about_256_datagrams_and_at_least_every_200_ms(rate):
    result = simulate(ReadPacer(), rate, 30)
    assert result["wakes_per_s"] <= max(5, rate / 256) * 1.1 + 1
    assert result["worst_wait"] <= 0.2 + 1e-9  # documents wait for a batch anyway


def test_at_high_rates_few_datagrams_wait_in_the_kernel():
    for rate in (10_000, 50_000, 200_000):
        result = simulate(ReadPacer(), rate, 5)
        assert result["most_waiting"] <= 2 * 256 + 32, rate


def test_a_burst_from_idle_is_measured_within_the_guard():
    pacer = ReadPacer()
    pacer.read(1)
    assert pacer.next_sleep(0.0) is not None
    pacer.read(0)
    assert pacer.next_sleep(0.02) is None  # nothing more: back to poll
    # 100 s idle, then a datagram: the first sleep is at most the guard, then at most doubling.
    pacer.read(1)
    first = pacer.next_sleep(100.0)
    assert first is not None and 0 < first <= pacer.guard
    pacer.read(2000)  # a burst of 100,000/s during that sleep
    second = pacer.next_sleep(100.0 + first)
    assert second is not None and second <= 2 * first
    assert second < 0.01


def test_a_trickle_wakes_the_reader_once_or_twice_per_datagram():
    result = simulate(ReadPacer(), 5, 60)
    assert result["wakes_per_s"] <= 2 * 5 + 1
