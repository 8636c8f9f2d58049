"""Logging in the original daemon's format: ``<time> [Level] message``.

Time is local with second resolution as ``2006-01-02T15:04:05Z07:00`` (``Z`` when UTC). Output
goes to stdout, or to a file that rotates at 50 MiB keeping one rolled file (``<file>.<n>``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from xrayd.numbers import parse_uint

LOGGER_NAME = "xrayd"
TRACE = 5
ROTATE_BYTES = 50 * 1024 * 1024

LEVEL_NAMES = {
    TRACE: "Trace",
    logging.DEBUG: "Debug",
    logging.INFO: "Info",
    logging.WARNING: "Warn",
    logging.ERROR: "Error",
    logging.CRITICAL: "Critical",
}

# -l / Logging.LogLevel values; prod is Info since 3.3.2 of the original.
LEVELS_BY_SETTING = {
    "dev": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "prod": logging.INFO,
}


def level_for(setting: str) -> int | None:
    """The minimum level for a -l value, or None when the value is unknown."""
    return LEVELS_BY_SETTING.get(setting)


def format_time(epoch: float) -> str:
    local = time.localtime(epoch)
    offset = local.tm_gmtoff or 0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    if offset == 0:
        return stamp + "Z"
    sign = "+" if offset > 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{stamp}{sign}{hours:02d}:{minutes:02d}"


class DaemonFormatter(logging.Formatter):
    """``<time> [Level] message``, with the timestamp string cached per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, format_time(record.created)
        level = LEVEL_NAMES.get(record.levelno, record.levelname)
        return f"{self._stamp} [{level}] {record.getMessage()}"


class RotatingFile:
    """An append-only log file, rolled to ``<path>.<n>`` at ``limit`` bytes, one roll kept."""

    def __init__(self, path: str, rotate: bool, limit: int = ROTATE_BYTES) -> None:
        self.path = path
        self.rotate = rotate
        self.limit = limit
        self._lock = threading.Lock()
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._handle = self._open()

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="replace")

    def write(self, text: str) -> None:
        with self._lock:
            if self.rotate and self._handle.tell() >= self.limit:
                self._roll()
            self._handle.write(text)
            self._handle.flush()

    def _rolled(self) -> list[int]:
        folder = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + "."
        found = []
        for name in os.listdir(folder):
            suffix = name[len(prefix):]
            number = parse_uint(suffix) if name.startswith(prefix) else None
            if number is not None:
                found.append(number)
        return found

    def _roll(self) -> None:
        self._handle.close()
        existing = self._rolled()
        target = max(existing, default=0) + 1
        os.replace(self.path, f"{self.path}.{target}")
        for n in existing:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}.{n}")
        self._handle = self._open()

    def reopen(self) -> None:
        """Reopen the path (after an external logrotate moved the file; SIGHUP)."""
        with self._lock:
            self._handle.close()
            self._handle = self._open()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


class _FileHandler(logging.Handler):
    def __init__(self, target: RotatingFile) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def configure(
    level: int, path: str = "", rotate: bool = True, stream: TextIO | None = None
) -> RotatingFile | None:
    """Send the daemon's log to ``path`` (or ``stream``/stdout); returns the file, if any."""
    logging.addLevelName(TRACE, "TRACE")
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    target = None
    handler: logging.Handler
    if path:
        target = RotatingFile(path, rotate)
        handler = _FileHandler(target)
    else:
        handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(DaemonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return target


def write_early_error(message: str, log_path: str = "") -> None:
    """A fatal error before logging is set up: stderr, and the -f file when one was given."""
    line = f"{format_time(time.time())} [Error] {message}\n"
    sys.stderr.write(line)
    sys.stderr.flush()
    if log_path:
        with contextlib.suppress(OSError):
            RotatingFile(log_path, rotate=False).write(line)


class RateLimitedLog:
    """At most ``burst`` lines per key per ``interval`` seconds; the next line after a quiet spell
    tells how many were held back. Used for everything a flood of bad input or a failing backend
    could repeat."""

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, lines in it)
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str) -> bool:
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        with self._lock:
            start, lines = self._windows.get(key, (now - self.interval, 0))
            if now - start >= self.interval:
                start, lines = now, 0
            if lines >= self.burst:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._windows[key] = (start, lines + 1)
            held = self._held.pop(key, 0)
        if held:
            message = f"{message} ({held} similar messages suppressed)"
        self.logger.log(level, message)
        return True

    def warn(self, key: str, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def error(self, key: str, message: str) -> bool:
        return self.log(logging.ERROR, key, message)
