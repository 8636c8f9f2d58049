"""Giving memory back: ``malloc_trim`` once a burst of buffered documents has drained.

Segment documents over 512 bytes are not Python's small objects: they come from glibc malloc,
in the arena of the thread that received them. When the queue drains, the freed space stays in
the arenas (resident) until something trims them; ``malloc_trim(0)`` returns every free page
to the kernel (measured: 102 MB resident after an overload of a 64 MB budget, 38-40 MB after
the trim; docs/benchmarks.md). Limiting the number of arenas (mallopt M_ARENA_MAX) was measured
too and changed nothing beyond noise, so glibc's default stays. Linux with glibc only;
elsewhere ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

CHECK_SECONDS = 1.0
# Trim when the queue's bytes fell below this fraction of their high-water mark since the last
# trim, and that mark was at least TRIM_MIN_BYTES (nothing to gain below).
TRIM_FRACTION = 0.125
TRIM_MIN_BYTES = 8 * 1024 * 1024


def trim() -> bool:
    """Return free heap pages to the kernel; whether any were returned. The call releases the
    GIL (ctypes.CDLL) while glibc walks its arenas."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim  # AttributeError when this is not glibc
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))


class DrainTrimmer:
    """Calls ``trim`` once the buffered bytes (``held()``) fell well below their high-water mark:
    after an overload or a burst, resident memory goes back near the idle figure."""

    def __init__(self, held: Callable[[], int], trim: Callable[[], object] = trim,
                 min_bytes: int = TRIM_MIN_BYTES, fraction: float = TRIM_FRACTION) -> None:
        self.held = held
        self.trim = trim
        self.min_bytes = min_bytes
        self.fraction = fraction
        self.high = 0
        self.trims = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-trim", daemon=True)

    def check(self) -> bool:
        """One look at the queue; whether it trimmed."""
        held = self.held()
        self.high = max(self.high, held)
        if self.high < self.min_bytes or held > self.high * self.fraction:
            return False
        self.trim()
        self.trims += 1
        self.high = held
        return True

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            self.check()

    def stop(self) -> None:
        self._stop.set()
