"""When and how fast to upload: the retry policy of one batch, the upload-rate limiter every
worker shares, and the backend breaker that sends batches to the spool while the X-Ray API is
unreachable. Pure: the callers pass ``now`` and random draws, and do the sleeping."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_elapsed: float = 15.0  # no new attempt starts later than this after the first

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); draw in [0, 1)."""
        return draw * min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 30))

    def next_delay(self, attempt: int, elapsed: float, retriable: bool,
                   draw: float) -> float | None:
        """The wait before the next attempt, or None when the batch should be given up."""
        if not retriable or attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, draw)
        if elapsed + wait > self.max_elapsed:
            return None
        return wait


class RateLimiter:
    """AIMD on the rate of upload calls, shared by every worker.

    Unlimited until the API throttles. A throttled answer halves the allowed rate (starting from
    the rate measured over the last second) and pauses every worker for ``pause`` seconds; each
    successful call then adds ``increase`` calls/s, and past ``ceiling`` calls/s the limit is
    lifted again. Workers call ``reserve`` before each call and sleep what it returns.
    """

    def __init__(self, clock: Callable[[], float], min_rate: float = 1.0, increase: float = 0.5,
                 decrease: float = 0.5, pause: float = 1.0, ceiling: float = 1000.0) -> None:
        self.clock = clock
        self.min_rate = min_rate
        self.increase = increase
        self.decrease = decrease
        self.pause = pause
        self.ceiling = ceiling
        self.rate: float | None = None  # calls per second; None = no limit
        self.throttled_count = 0
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        # Start times of the calls of the last second, oldest first (pruned from the left: a
        # scan of the whole second at every call cost O(calls/s) per call under load).
        self._recent: deque[float] = deque()

    def reserve(self) -> float:
        """Seconds the caller must wait before starting its call (0 when it may go now)."""
        with self._lock:
            now = self.clock()
            start = max(now, self._paused_until)
            if self.rate is not None:
                start = max(start, self._next_slot)
                self._next_slot = start + 1.0 / self.rate
            recent = self._recent
            recent.append(start)
            while recent[0] < now - 1.0:
                recent.popleft()
            return start - now

    def throttled(self) -> None:
        with self._lock:
            now = self.clock()
            self.throttled_count += 1
            if now < self._paused_until:
                return  # one decrease per pause: the other workers' answers are the same event
            measured = sum(1 for t in self._recent if now - 1.0 <= t <= now)
            current = self.rate if self.rate is not None else max(float(measured), self.min_rate)
            self.rate = max(self.min_rate, current * self.decrease)
            self._paused_until = now + self.pause
            self._next_slot = self._paused_until

    def succeeded(self) -> None:
        with self._lock:
            if self.rate is None:
                return
            self.rate += self.increase
            if self.rate >= self.ceiling:
                self.rate = None


class Breaker:
    """Whether the backend is usable. Opens after ``threshold`` consecutive failed calls (no
    answer, 5xx, throttling or credentials refused) or at once on ``trip``; while open, batches
    go to the spool instead of waiting through retries, and one probe per ``probe_interval``
    seconds (doubling up to ``max_probe_interval``) tests the backend. A success closes it."""

    def __init__(self, clock: Callable[[], float], threshold: int = 3, probe_interval: float = 1.0,
                 max_probe_interval: float = 5.0) -> None:
        self.clock = clock
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.max_probe_interval = max_probe_interval
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._next_probe = 0.0
        self._interval = probe_interval
        self.last_success: float | None = None
        self.last_failure: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def failed(self) -> None:
        with self._lock:
            now = self.clock()
            self.last_failure = now
            self._failures += 1
            if self._open:
                self._interval = min(self.max_probe_interval, self._interval * 2)
                self._next_probe = now + self._interval
            elif self._failures >= self.threshold:
                self._trip(now)

    def trip(self) -> None:
        with self._lock:
            now = self.clock()
            self.last_failure = now
            if not self._open:
                self._trip(now)

    def _trip(self, now: float) -> None:
        self._open = True
        self._interval = self.probe_interval
        self._next_probe = now + self._interval

    def succeeded(self) -> None:
        with self._lock:
            self.last_success = self.clock()
            self._failures = 0
            self._open = False
            self._interval = self.probe_interval

    def probe_due(self) -> float:
        """0 when a call may go now (closed, or a probe is due; the probe slot is taken), else
        the seconds until the next probe."""
        with self._lock:
            if not self._open:
                return 0.0
            now = self.clock()
            if now >= self._next_probe:
                self._next_probe = now + self._interval
                return 0.0
            return self._next_probe - now
