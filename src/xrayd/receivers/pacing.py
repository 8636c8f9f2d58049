"""How long the UDP reader sleeps between reads: pure logic, no clock or socket of its own.

On this kind of machine a wake-up of a Python thread costs several hundred µs of CPU (the
wake-up itself and the cache misses of the code that runs after it), far more than handling a
datagram (~3-5 µs), so at everyday rates the reader's cost is its wake-ups. Instead of waking
for every datagram, the reader sleeps and then takes everything that arrived meanwhile; the
sleep is chosen so that about ``target`` datagrams wait for each wake-up at the rate seen so
far, within two bounds:

* ``max_sleep`` (200 ms): documents wait for a batch anyway (50 documents or 1 s); at 1,000
  segments/s the reader wakes 5 times a second and seals four batches each time, which one
  worker uploads one after the other with warm caches. The price: from a steady low rate, a
  jump to more than ~18,000 1 KB datagrams/s within one sleep can fill the kernel buffer before
  the reader wakes;
* after an idle spell (the reader blocked in ``poll`` until a datagram came), the first sleep is
  at most ``guard`` (20 ms), and each later one at most twice the one before: a burst that
  starts from idle fills at most ``guard`` times its rate of the kernel buffer (8 MiB, about
  3,600 1 KB datagrams: up to 180,000 datagrams/s) before the reader has measured it.

A read that finds nothing sends the reader back to ``poll``; a read that fills every slot means
more are waiting, and the reader reads again at once.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET = 256  # datagrams per wake-up aimed at (8 reads of 32)
MAX_SLEEP = 0.2
GUARD = 0.02
MIN_SLEEP = 0.0005  # below this, sleeping costs more than it saves: read again instead
SMOOTHING = 0.5  # weight of the newest rate measurement


@dataclass
class ReadPacer:
    target: int = TARGET
    max_sleep: float = MAX_SLEEP
    guard: float = GUARD
    min_sleep: float = MIN_SLEEP
    rate: float = 0.0  # datagrams/s, smoothed
    _since: float | None = None  # when the reader last went to sleep or to poll
    _count: int = 0  # datagrams read since then
    _last_sleep: float = 0.0  # 0 after an idle spell in poll

    def read(self, count: int) -> None:
        self._count += count

    def next_sleep(self, now: float) -> float | None:
        """After a read that did not fill every slot: seconds to sleep before reading again,
        0.0 to read again at once, or None to wait in ``poll`` (nothing arrived)."""
        if self._since is not None and now > self._since:
            measured = self._count / (now - self._since)
            self.rate = measured if not self.rate else (
                SMOOTHING * measured + (1 - SMOOTHING) * self.rate)
        self._since = now
        count, self._count = self._count, 0
        if count == 0:
            self._last_sleep = 0.0
            return None
        sleep = self.target / self.rate if self.rate else self.max_sleep
        cap = max(self.guard, 2 * self._last_sleep) if self._last_sleep else self.guard
        sleep = min(sleep, cap, self.max_sleep)
        if sleep < self.min_sleep:
            self._last_sleep = self.min_sleep
            return 0.0
        self._last_sleep = sleep
        return sleep
