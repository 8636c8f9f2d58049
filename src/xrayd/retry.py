"""When to try an upload again: exponential back-off with full jitter, bounded in attempts and
in time. Pure: the caller supplies the random draw and does the sleeping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 2.0
    max_elapsed: float = 10.0  # no new attempt starts later than this after the first

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); draw in [0, 1)."""
        return draw * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))

    def next_delay(
        self, attempt: int, elapsed: float, retriable: bool, draw: float
    ) -> float | None:
        """The wait before the next attempt, or None when the batch should be given up."""
        if not retriable or attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, draw)
        if elapsed + wait > self.max_elapsed:
            return None
        return wait
