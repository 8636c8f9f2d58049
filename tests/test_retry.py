"""The retry policy, the shared AIMD upload-rate limiter and the backend breaker, on a manual
clock."""

from __future__ import annotations

import pytest

from xrayd.retry import Breaker, RateLimiter, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_policy_full_jitter_is_exponential_and_capped():
    policy = RetryPolicy(max_attempts=10, base_delay=0.2, max_delay=5.0, max_elapsed=60)
    assert [policy.delay(n, 1.0) for n in (1, 2, 3, 4, 5, 6, 7)] == [
        0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.delay(3, 0.0) == 0.0  # full jitter: anywhere from 0
    assert policy.delay(10_000, 0.5) == 2.5  # no overflow on huge attempt numbers


def test_policy_bounds_attempts_and_time():
    policy = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=1.0, max_elapsed=5.0)
    assert policy.next_delay(2, 0.0, True, 0.5) == 0.5
    assert policy.next_delay(3, 0.0, True, 0.5) is None
    assert policy.next_delay(1, 4.8, True, 0.5) is None
    assert policy.next_delay(1, 0.0, False, 0.5) is None


def test_limiter_is_unlimited_until_throttled():
    clock = Clock()
    limiter = RateLimiter(clock)
    assert all(limiter.reserve() == 0 for _ in range(500))
    assert limiter.rate is None


def test_throttling_halves_the_measured_rate_and_pauses_everyone():
    clock = Clock()
    limiter = RateLimiter(clock, pause=1.0, min_rate=1.0)
    for _ in range(40):  # 40 calls within the last second
        limiter.reserve()
        clock.now += 0.02
    limiter.throttled()
    assert limiter.rate == pytest.approx(20.0)
    # Every worker waits out the pause, then calls are spaced at the new rate.
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == pytest.approx([1.0, 1.05, 1.10])
    # Answers to calls made before the pause are the same event: no second decrease.
    limiter.throttled()
    assert limiter.rate == pytest.approx(20.0)
    clock.now += 2.0
    limiter.throttled()
    assert limiter.rate == pytest.approx(10.0)


def test_rate_never_drops_below_the_floor_and_recovers_additively():
    clock = Clock()
    limiter = RateLimiter(clock, min_rate=2.0, increase=1.0, ceiling=10.0, pause=0.0)
    for _ in range(10):
        limiter.throttled()
        clock.now += 1.0
    assert limiter.rate == 2.0
    for _ in range(5):
        limiter.succeeded()
    assert limiter.rate == 7.0
    for _ in range(3):
        limiter.succeeded()
    assert limiter.rate is None  # past the ceiling the limit is lifted


def test_breaker_opens_after_consecutive_failures_and_probes_with_backoff():
    clock = Clock()
    breaker = Breaker(clock, threshold=3, probe_interval=1.0, max_probe_interval=4.0)
    breaker.failed()
    breaker.failed()
    assert not breaker.is_open and breaker.probe_due() == 0
    breaker.failed()
    assert breaker.is_open
    assert breaker.probe_due() == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.probe_due() == 0  # this caller takes the probe slot
    assert breaker.probe_due() == pytest.approx(1.0)  # the next one waits
    breaker.failed()  # the probe failed: back off
    assert breaker.probe_due() == pytest.approx(2.0)
    breaker.failed()
    breaker.failed()
    assert breaker.probe_due() == pytest.approx(4.0)  # capped
    breaker.succeeded()
    assert not breaker.is_open and breaker.probe_due() == 0


def test_a_success_resets_the_failure_count_and_trip_opens_at_once():
    clock = Clock()
    breaker = Breaker(clock, threshold=2)
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert not breaker.is_open
    breaker.trip()
    assert breaker.is_open
