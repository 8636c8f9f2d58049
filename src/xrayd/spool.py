"""The durable spool: batches that cannot be delivered now, kept on disk and replayed in order.

One file per batch, named ``<sequence>-<documents>.spool`` so the order and the depth are known
from a directory listing. A file is ``MAGIC`` then one record per document: a 4-byte big-endian
length, the 4-byte zlib.crc32 of the payload, the payload. Files are written to a temporary
name, flushed and renamed, so a reader never sees a half-written file under its final name; data
is fsynced at once or every ``fsync_interval`` seconds (a power loss may then tear the newest
files: the checksums find it and the torn part is skipped with a log line, never a crash).

Names are checked strictly (16 ASCII digits, a dash, 1 to 6 digits), and only regular files
are indexed or opened (never blocking: a FIFO under a spool name is skipped, not waited on).
When the disk is full, the temporary file is removed and the oldest files are evicted until
the new one fits, as when the spool reaches its size limit; the new batch is refused only when
even an empty spool cannot hold it.

``encode``/``decode`` are pure; ``Spool`` is the small I/O class around them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAGIC = b"XRAYDSP1"
_RECORD = struct.Struct(">II")
SUFFIX = ".spool"
TMP_PREFIX = ".tmp-"
MAX_RECORD = 16 * 1024 * 1024  # far above a UDP datagram; a larger length means corruption
SEQUENCE_DIGITS = 16
_NAME = re.compile(rf"(\d{{{SEQUENCE_DIGITS}}})-([1-9]\d{{0,5}}){re.escape(SUFFIX)}", re.ASCII)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
LISTED_NAMES = 5  # entries named in the start-up line about what was skipped


def _private(path: str, flags: int) -> int:
    """Spool files hold segment documents: readable by the daemon's user only."""
    return os.open(path, flags, 0o600)


def encode(docs: Sequence[bytes]) -> bytes:
    parts = [MAGIC]
    for doc in docs:
        parts.append(_RECORD.pack(len(doc), zlib.crc32(doc)))
        parts.append(doc)
    return b"".join(parts)


@dataclass(frozen=True)
class Decoded:
    docs: list[bytes]
    error: str  # "" when the whole file was read cleanly


def decode(data: bytes) -> Decoded:
    """The documents of a spool file, up to the first damaged record."""
    if not data.startswith(MAGIC):
        return Decoded([], "not a spool file (bad magic)")
    docs: list[bytes] = []
    offset = len(MAGIC)
    end = len(data)
    while offset < end:
        if end - offset < _RECORD.size:
            return Decoded(docs, f"truncated record header at byte {offset}")
        length, crc = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        if length > MAX_RECORD or offset + length > end:
            return Decoded(docs, f"truncated or oversized record at byte {offset - _RECORD.size}")
        payload = data[offset:offset + length]
        if zlib.crc32(payload) != crc:
            return Decoded(docs, f"checksum mismatch at byte {offset - _RECORD.size}")
        docs.append(payload)
        offset += length
    return Decoded(docs, "")


def file_name(sequence: int, count: int) -> str:
    return f"{sequence:0{SEQUENCE_DIGITS}d}-{count}{SUFFIX}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(sequence, documents) of a spool file name as ``file_name`` writes it, None for anything
    else (a longer sequence, signs, spaces, non-ASCII digits, a zero or huge count)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def _regular(path: str) -> int | None:
    """The size of a regular file (not following a symlink), None for anything else."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _open_regular(path: str) -> int:
    """A read-only descriptor of a regular file; never blocks (a FIFO would wait for a
    writer) and never follows a symlink. OSError for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


@dataclass
class Entry:
    sequence: int
    count: int
    size: int
    claimed: bool = False

    @property
    def name(self) -> str:
        return file_name(self.sequence, self.count)


@dataclass(frozen=True)
class Stored:
    stored: bool  # False when the batch alone is larger than the spool
    evicted: int  # documents of older files removed to make room


class Spool:
    def __init__(self, directory: str, max_bytes: int, fsync_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync_interval = fsync_interval
        self.clock = clock
        self.log = log or logging.getLogger("xrayd")
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque()
        self._next = 1
        self._bytes = 0
        self._docs = 0
        self._unsynced: list[str] = []
        self._last_sync = clock()
        self.skipped = 0  # directory entries at start that are not spool files
        self.full_drops = 0  # batches refused because even an emptied spool had no room

    def open(self) -> int:
        """Create the directory, clear leftovers of interrupted writes, index what is there;
        the number of documents found."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        probe = os.path.join(self.directory, TMP_PREFIX + "probe")
        with open(probe, "wb", opener=_private):
            pass  # fail at start, not at the first outage, when the directory is not writable
        os.remove(probe)
        found = []
        skipped: list[str] = []
        last = 0  # new files are numbered after every spool name, usable or not
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            size = _regular(path)
            if name.startswith(TMP_PREFIX) and size is not None:
                self._remove(path)
                continue
            parsed = parse_name(name)
            if parsed is not None:
                last = max(last, parsed[0])
            if parsed is None or size is None:
                skipped.append(name)
                continue
            found.append(Entry(parsed[0], parsed[1], size))
        found.sort(key=lambda e: e.sequence)
        self.skipped = len(skipped)
        if skipped:
            shown = ", ".join(repr(n[:80]) for n in sorted(skipped)[:LISTED_NAMES])
            more = f" and {len(skipped) - LISTED_NAMES} more" if len(skipped) > LISTED_NAMES else ""
            self.log.warning("Spool directory %s: ignored %d entries that are not spool files "
                             "(regular files named <16 digits>-<count>%s): %s%s",
                             self.directory, len(skipped), SUFFIX, shown, more)
        with self._lock:
            self._entries = deque(found)
            self._bytes = sum(e.size for e in found)
            self._docs = sum(e.count for e in found)
            self._next = last + 1
            return self._docs

    def depth(self) -> tuple[int, int, int]:
        """(documents, bytes, files) held."""
        with self._lock:
            return self._docs, self._bytes, len(self._entries)

    def put(self, docs: Sequence[bytes]) -> Stored:
        data = encode(docs)
        if len(data) > self.max_bytes:
            return Stored(False, 0)
        with self._lock:
            evicted = 0
            while self._bytes + len(data) > self.max_bytes:
                gone = self._evict_oldest()
                if gone is None:
                    return Stored(False, evicted)
                evicted += gone
            entry = Entry(self._next, len(docs), len(data))
            self._next += 1
            while True:
                try:
                    self._write(entry.name, data)
                    break
                except OSError as exc:
                    # A full disk: make room as the size limit does, oldest first.
                    if exc.errno not in NO_ROOM:
                        raise
                    gone = self._evict_oldest()
                    if gone is None:
                        self.full_drops += 1
                        self.log.error("Spool directory %s: no room on the disk for a batch "
                                       "of %d segments even after removing every spool file "
                                       "that could go: %s", self.directory, len(docs), exc)
                        return Stored(False, evicted)
                    evicted += gone
            self._entries.append(entry)
            self._bytes += entry.size
            self._docs += entry.count
            return Stored(True, evicted)

    def _evict_oldest(self) -> int | None:
        """Remove the oldest file not being replayed: its documents, None when there is none.
        Called with the lock held."""
        victim = next((e for e in self._entries if not e.claimed), None)
        if victim is None:
            return None
        self._entries.remove(victim)
        self._forget(victim)
        self._remove(os.path.join(self.directory, victim.name))
        return victim.count

    def _write(self, name: str, data: bytes) -> None:
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, TMP_PREFIX + name)
        durable_now = self.fsync_interval <= 0
        try:
            with open(tmp, "wb", opener=_private) as handle:
                handle.write(data)
                handle.flush()
                if durable_now:
                    os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            self._remove(tmp)  # never leave a partial (or empty) temporary file behind
            raise
        if durable_now:
            self._sync_dir()
        else:
            self._unsynced.append(final)
            self._maybe_sync()

    def _maybe_sync(self) -> None:
        if not self._unsynced:
            return
        now = self.clock()
        if now - self._last_sync < self.fsync_interval:
            return
        self._last_sync = now
        for path in self._unsynced:
            try:
                fd = _open_regular(path)
            except OSError:
                continue  # already replayed or evicted (or replaced by something else)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._unsynced.clear()
        self._sync_dir()

    def sync(self, force: bool = True) -> None:
        """fsync what is waiting for the fsync interval: now, or when the interval is up
        (called periodically by the replay thread and at exit)."""
        with self._lock:
            if force:
                self._last_sync = float("-inf")
            self._maybe_sync()

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def claim(self) -> Entry | None:
        """The oldest file not being replayed, marked as being replayed."""
        with self._lock:
            for entry in self._entries:
                if not entry.claimed:
                    entry.claimed = True
                    return entry
            return None

    def read(self, entry: Entry) -> Decoded:
        try:
            with open(_open_regular(os.path.join(self.directory, entry.name)), "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return Decoded([], f"unreadable: {exc.strerror or exc}")
        return decode(data)

    def release(self, entry: Entry) -> None:
        """Give a claimed file back (its upload failed); it stays first in line."""
        with self._lock:
            entry.claimed = False

    def remove(self, entry: Entry) -> None:
        """A claimed file is done with (uploaded, or unreadable)."""
        with self._lock:
            try:
                self._entries.remove(entry)
            except ValueError:
                return
            self._forget(entry)
        self._remove(os.path.join(self.directory, entry.name))

    def _forget(self, entry: Entry) -> None:
        self._bytes -= entry.size
        self._docs -= entry.count

    @staticmethod
    def _remove(path: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.remove(path)
