"""The store's one writer. Callers (the upload workers) queue documents; a writer thread takes
them in batches and has their rows built (by the parse helper process under load, else at once
in its own thread); a committer thread gives the traces their keys and writes each batch in a
transaction while the next one is parsed; the writer thread enforces retention. A caller that
waits counts its documents as sent only once they are committed."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import orjson

from xrayd.logs import RateLimitedLog
from xrayd.store import schema
from xrayd.store.keys import TraceKeys
from xrayd.store.parse_helper import ParseHelper, Ticket
from xrayd.store.rows import (
    ANNOTATION_COLUMNS,
    SEGMENT_COLUMNS,
    SERVICE_COLUMNS,
    TRACE_COLUMNS,
    Rejected,
)

# Work taken into one transaction at most: bounds how long a reader waits on a checkpoint.
MAX_RECORDS_PER_COMMIT = 5000
MAX_PENDING = 20000  # records queued for the writer before callers are held back
# Batches handed to the committer at once: while it writes one, the parse helper builds the
# rows of the next.
IN_FLIGHT = 2
PK_CACHE_SIZE = 200_000
REJECTED_DOC_BYTES = 65536
RETENTION_CHECK_SECONDS = 30.0
DELETE_CHUNK = 2000
CHECKPOINT_SECONDS = 0.5
WAL_LIMIT_BYTES = 128 * 1024 * 1024
# How often the committer checks that the store's path still names the file it writes (a file
# deleted or replaced under a running daemon would take every later commit with it).
FILE_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class Retention:
    hours: float = 72.0
    max_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Rejection:
    id: str
    code: str
    message: str


class _Job:
    __slots__ = ("docs", "done", "error", "received", "records", "rejects")

    def __init__(self, docs: Sequence[bytes], received: float) -> None:
        self.docs = docs
        self.received = received
        self.records = 0
        self.rejects: list[Rejected] = []
        self.done = threading.Event()
        self.error: Exception | None = None


class StoreClosed(Exception):
    pass


class StoreGone(Exception):
    """The store's file was deleted or replaced while the daemon ran: nothing more is stored
    (the documents would go into a file no one can open again)."""


class _Commit:
    """A batch the committer thread writes and commits in one transaction."""

    __slots__ = ("count", "future", "jobs")

    def __init__(self, jobs: list[_Job], count: int) -> None:
        self.jobs = jobs
        self.count = count
        self.future: Future[object] | None = None


# Each statement inserts up to MAX_ROWS_PER_STATEMENT rows given as a VALUES list (padded
# with rows of zeros to a power of two, so that a few prepared statements serve every batch): SQLite
# runs it in one step without the GIL, so the committer thread writes a batch while the writer
# thread parses the next one. (One statement per row made the committer wait for the GIL after
# every row.) nullif() turns the rows' NULL_TEXT and NULL_NUMBER back into NULL.
MAX_ROWS_PER_STATEMENT = 1024
MIN_ROWS_PER_STATEMENT = 16

_SEGMENT_UPSERT = """
INSERT INTO segments (tpk, id, parent_id, kind, name, origin, start, end, in_progress,
                      error, fault, throttle, received, calls, doc)
SELECT column1, column2, nullif(column3, 0),
       CASE WHEN column8 & 16 THEN 'subsegment' ELSE 'segment' END, column4,
       nullif(column5, 0), column6, nullif(column7, ''), (column8 >> 3) & 1, column8 & 1,
       (column8 >> 1) & 1, (column8 >> 2) & 1, column9, nullif(column10, 0), column11
FROM ({values}) AS v WHERE v.column1 > 0
ON CONFLICT (tpk, id) DO UPDATE SET
    parent_id = excluded.parent_id, kind = excluded.kind, name = excluded.name,
    origin = excluded.origin, start = excluded.start, end = excluded.end,
    in_progress = excluded.in_progress, error = excluded.error, fault = excluded.fault,
    throttle = excluded.throttle, received = excluded.received, calls = excluded.calls,
    doc = excluded.doc
WHERE segments.in_progress = 1 OR excluded.in_progress = 0
"""

# Root segments (no parent) own the trace's HTTP, user and response time; other documents only
# fill what is still unknown.
_TRACE_UPSERT = """
INSERT INTO traces (pk, trace_id, start, end, root_start, root_end, error, fault, throttle,
                    http_method, http_status, http_url, user, root_name, documents, updated,
                    annotations, services)
SELECT column1, column2, column3, nullif(column4, ''),
       CASE WHEN column5 & 8 THEN column3 END, CASE WHEN column5 & 8 THEN nullif(column4, '') END,
       column5 & 1, (column5 >> 1) & 1, (column5 >> 2) & 1, nullif(column6, 0),
       nullif(column7, ''), nullif(column8, 0), nullif(column9, 0),
       CASE WHEN column5 & 8 THEN column10 END, 1, column11, column12, column13
FROM ({values}) AS v WHERE v.column1 > 0
ON CONFLICT (trace_id) DO UPDATE SET
    start = min(start, excluded.start),
    end = max(coalesce(end, excluded.end), coalesce(excluded.end, end)),
    root_start = coalesce(excluded.root_start, root_start),
    root_end = coalesce(excluded.root_end, root_end),
    error = error | excluded.error,
    fault = fault | excluded.fault,
    throttle = throttle | excluded.throttle,
    http_method = CASE WHEN excluded.root_start IS NOT NULL
        THEN coalesce(excluded.http_method, http_method)
        ELSE coalesce(http_method, excluded.http_method) END,
    http_status = CASE WHEN excluded.root_start IS NOT NULL
        THEN coalesce(excluded.http_status, http_status)
        ELSE coalesce(http_status, excluded.http_status) END,
    http_url = CASE WHEN excluded.root_start IS NOT NULL
        THEN coalesce(excluded.http_url, http_url)
        ELSE coalesce(http_url, excluded.http_url) END,
    user = coalesce(excluded.user, user),
    root_name = coalesce(excluded.root_name, root_name),
    documents = documents + 1,
    updated = excluded.updated,
    annotations = CASE WHEN excluded.annotations = '{{}}' THEN annotations
        ELSE json_patch(annotations, excluded.annotations) END,
    services = CASE WHEN excluded.services = '{{}}' THEN services
        ELSE json_patch(services, excluded.services) END
"""

_ANNOTATIONS_INSERT = """
INSERT OR IGNORE INTO annotations (bucket, key, typ, val, tpk)
SELECT column1 >> {bits}, column2,
       CASE typeof(column3) WHEN 'text' THEN 's' WHEN 'integer' THEN 'b' ELSE 'n' END,
       column3, column1
FROM ({values}) AS v WHERE v.column1 > 0
"""

_SERVICES_INSERT = """
INSERT OR IGNORE INTO services (name, tpk)
SELECT column2, column1
FROM ({values}) AS v WHERE v.column1 > 0
"""


class _Insert:
    """One of the statements above, for flat parameter lists of ``columns`` per row."""

    def __init__(self, template: str, columns: int, max_variables: int) -> None:
        self.template = template
        self.columns = columns
        rows = MAX_ROWS_PER_STATEMENT
        while rows > 1 and rows * columns > max_variables:
            rows //= 2
        self.max_rows = rows
        self._sql: dict[int, str] = {}

    def _statement(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            row = "(" + ", ".join("?" * self.columns) + ")"
            sql = self._sql[rows] = self.template.format(values="VALUES " + ", ".join(
                [row] * rows))
        return sql

    def execute(self, conn: sqlite3.Connection, params: list[object]) -> None:
        width = self.columns
        step = self.max_rows * width
        for at in range(0, len(params), step):
            chunk = params[at:at + step]
            rows = len(chunk) // width
            size = min(self.max_rows, max(MIN_ROWS_PER_STATEMENT, 1 << (rows - 1).bit_length()))
            if size > rows:
                chunk.extend([0] * ((size - rows) * width))
            conn.execute(self._statement(size), chunk)


class StoreWriter:
    def __init__(
        self,
        path: str,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        on_reject: Callable[[Rejection], None] | None = None,
        helper: ParseHelper | None = None,
    ) -> None:
        self.path = path
        self.on_reject = on_reject
        self.retention = retention or Retention()
        self.clock = clock
        self.log = log or logging.getLogger("xrayd")
        self._helper = helper or ParseHelper(on_error=self.log.warning)
        self._errors = RateLimitedLog(self.log, 10.0)
        self._lock_fd = -1
        if path != ":memory:":
            self._lock_fd = schema.lock(path)
        try:
            self.conn = schema.connect(path)
            self._identity = self._file_identity()
        except BaseException:
            self._unlock()
            raise
        self._gone: StoreGone | None = None
        self._next_file_check = time.monotonic() + FILE_CHECK_SECONDS
        # Checkpoints (copying the WAL into the database, with an fsync) run in a thread of
        # their own, so commits never wait for one.
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="store-checkpoint", daemon=True)
        self._jobs: deque[_Job] = deque()
        self._pending = 0
        self.failed_commits = 0
        limit = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._segments = _Insert(_SEGMENT_UPSERT, SEGMENT_COLUMNS, limit)
        self._traces = _Insert(_TRACE_UPSERT, TRACE_COLUMNS, limit)
        self._annotations = _Insert(
            _ANNOTATIONS_INSERT.replace("{bits}", str(schema.BUCKET_BITS)), ANNOTATION_COLUMNS,
            limit)
        self._services = _Insert(_SERVICES_INSERT, SERVICE_COLUMNS, limit)
        self._keys = self._load_keys()
        self._cond = threading.Condition()
        self._closed = False
        self._last_retention = 0.0
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="store-commit")
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        self._checkpointer.start()

    # --- callers' side -------------------------------------------------------------------
    def write(self, docs: Sequence[bytes], wait: bool = True, timeout: float = 60.0
              ) -> list[Rejection]:
        """Store ``docs``; the rejected ones, with the service's error codes. Without ``wait``
        the call returns once the documents are queued for the next commit (at most
        MAX_PENDING records wait; beyond that the caller is held back) and rejections go to
        ``on_reject`` only.

        The documents are parsed while the committer thread writes the previous batch."""
        job = _Job(docs, self.clock())
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending >= MAX_PENDING and not self._closed:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("the trace store is not keeping up")
            if self._closed:
                raise StoreClosed("the trace store is closed")
            self._jobs.append(job)
            self._pending += len(docs)
            self._cond.notify_all()
        if not wait:
            return []
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("the trace store did not commit in time")
        if job.error is not None:
            raise job.error
        return [Rejection(r.segment_id, r.code, r.message) for r in job.rejects]

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued is committed (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    return not self._pending
            return True

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        self._checkpointer.join(timeout)
        if not self._thread.is_alive():
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """StoreGone once the path no longer names the open file (checked every
        FILE_CHECK_SECONDS, from the committer thread)."""
        if self._gone is not None:
            raise self._gone
        now = time.monotonic()
        if self._identity is None or now < self._next_file_check:
            return
        self._next_file_check = now + FILE_CHECK_SECONDS
        try:
            current = self._file_identity()
        except FileNotFoundError:
            current = None
        except OSError:
            return  # cannot tell (a permission change, say): the next check tries again
        if current == self._identity:
            return
        what = "deleted" if current is None else "replaced by another file"
        self._gone = StoreGone(
            f"the trace store file {self.path} was {what} while xrayd was running: nothing "
            "more is stored until xrayd is restarted (it then creates a new store)")
        self.log.error("Trace store: %s", self._gone)
        raise self._gone

    @property
    def gone(self) -> bool:
        return self._gone is not None

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                               timeout=10.0)
        try:
            while not self._thread_done():
                time.sleep(CHECKPOINT_SECONDS)
                try:
                    busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if busy:
                        self.log.debug("Trace store checkpoint was busy")
                except Exception as exc:  # busy or I/O error: the next round tries again
                    self.log.debug("Trace store checkpoint: %s", exc)
        finally:
            conn.close()

    def _thread_done(self) -> bool:
        return self._closed and not self._thread.is_alive()

    def enforce_retention_now(self) -> None:
        """Run retention at the writer's next turn (used by tests and at start-up)."""
        with self._cond:
            self._last_retention = float("-inf")
            self._cond.notify()

    # --- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        committing: deque[_Commit] = deque()  # handed to the committer, oldest first
        while True:
            with self._cond:
                while (not self._jobs and not self._closed and not self._retention_due()
                       and not committing):
                    self._cond.wait(RETENTION_CHECK_SECONDS)
                jobs: list[_Job] = []
                count = 0
                while self._jobs and count < MAX_RECORDS_PER_COMMIT:
                    job = self._jobs.popleft()
                    jobs.append(job)
                    count += len(job.docs)
                closing = self._closed and not self._jobs
            if jobs:
                committing.append(self._start(jobs, count))
            else:
                self._helper.stop_if_idle()
            if committing and (len(committing) >= IN_FLIGHT or not jobs):
                self._finish(committing.popleft())
            retention = self._retention_due()  # once: retention needs nothing in flight
            if closing or retention:
                while committing:
                    self._finish(committing.popleft())
            if retention:
                self._run_retention()
            if closing:
                with contextlib.suppress(Exception):
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.close()
                self._committer.shutdown()
                self._helper.close()
                self._unlock()
                return

    def _bound_wal(self) -> None:
        """Under a steady stream the background checkpoints never find the WAL idle enough to
        start it over; past WAL_LIMIT_BYTES the committer checkpoints and truncates it itself
        (while the writer thread parses the next batch)."""
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size > WAL_LIMIT_BYTES:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except Exception as exc:
                self.log.debug("Trace store checkpoint: %s", exc)

    def _retention_due(self) -> bool:
        return time.monotonic() - self._last_retention >= RETENTION_CHECK_SECONDS

    def _start(self, jobs: list[_Job], count: int) -> _Commit:
        """Hand the batch to the parse helper (or parse it here, at once), then to the
        committer thread, which writes and commits it."""
        ticket = self._helper.submit([(job.docs, job.received) for job in jobs])
        commit = _Commit(jobs, count)
        commit.future = self._committer.submit(self._complete, jobs, ticket)
        return commit

    def _load_keys(self) -> TraceKeys:
        """Trace keys: new traces get the next number (arrival order keeps the child tables'
        indexes append-only); the committer looks older trace ids up. Every stored trace is
        older than the newest stored epoch + 1, so ids from there on need no look-up; if that
        is in the future (a client whose clock runs ahead), the horizon is this second and the
        cache starts with the stored traces from it on. Fixed-width hex compares as its number
        once lower-cased."""
        next_pk, newest = self.conn.execute(
            "SELECT coalesce(max(pk), 0) + 1, max(lower(substr(trace_id, 3, 8))) FROM traces"
        ).fetchone()
        now = min(int(self.clock()), 0xFFFFFFFF)
        if newest is None or int(newest, 16) < now:
            horizon = 0 if newest is None else int(newest, 16) + 1
            return TraceKeys(next_pk, horizon, self._stored_keys, PK_CACHE_SIZE)
        ahead = self.conn.execute(
            "SELECT trace_id, pk FROM traces WHERE lower(substr(trace_id, 3, 8)) >= ? LIMIT ?",
            (f"{now:08x}", PK_CACHE_SIZE // 2 + 1)).fetchall()
        if len(ahead) > PK_CACHE_SIZE // 2:  # a clock far behind: look every id up
            return TraceKeys(next_pk, 1 << 32, self._stored_keys, PK_CACHE_SIZE)
        keys = TraceKeys(next_pk, now, self._stored_keys, PK_CACHE_SIZE)
        keys.preload(ahead)
        return keys

    def _stored_keys(self, trace_ids: list[str]) -> dict[str, int]:
        return dict(self.conn.execute(
            "SELECT trace_id, pk FROM traces WHERE trace_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(trace_ids).decode(),)))

    # --- the committer thread ------------------------------------------------------------
    def _complete(self, jobs: list[_Job], ticket: Ticket) -> None:
        """Take the batch's rows, give its traces their keys (here, so that every batch before
        is committed or rolled back), write and commit it. Each statement is one step of
        SQLite without the GIL; a failed batch is rolled back here."""
        rows, rejected = self._helper.result(ticket)
        rows.set_docs(ticket.jobs, rejected)
        rejects = []
        for job, refused in zip(jobs, rejected, strict=True):
            job.rejects = refused
            job.records = len(job.docs) - len(refused)
            rejects.extend((r, job.docs[r.index]) for r in refused)
        self._check_file()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            keys = self._keys.resolve(rows.trace_ids)
            rows.set_keys([keys[trace_id] for trace_id in rows.trace_ids])
            self._traces.execute(conn, rows.traces)
            self._segments.execute(conn, rows.segments)
            if rows.annotations:
                self._annotations.execute(conn, rows.annotations)
            if rows.services:
                self._services.execute(conn, rows.services)
            self._insert_rejects(rejects, self.clock())
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        if self.on_reject is not None:  # once they are in the rejected list
            for r, _doc in rejects:
                self.on_reject(Rejection(r.segment_id, r.code, r.message))
        self._bound_wal()

    def _finish(self, commit: _Commit) -> None:
        assert commit.future is not None
        try:
            commit.future.result()
        except Exception as exc:
            self._failed(commit, exc)
            return
        self._done(commit)

    def _failed(self, commit: _Commit, exc: Exception) -> None:
        self.failed_commits += 1
        if not isinstance(exc, StoreGone):  # said once, when found
            self._errors.error("commit", f"Trace store: {commit.count} documents not stored "
                                         f"(commit failed): {exc}")
        for job in commit.jobs:
            job.error = exc
        self._done(commit)

    def _done(self, commit: _Commit) -> None:
        for job in commit.jobs:
            job.done.set()
        with self._cond:
            self._pending -= commit.count
            self._cond.notify_all()

    def _insert_rejects(self, rejects: list[tuple[Rejected, bytes]], now: float) -> None:
        if rejects:
            self.conn.executemany(
                "INSERT INTO rejected (received, code, reason, doc) VALUES (?, ?, ?, ?)",
                [(now, r.code, r.message, doc[:REJECTED_DOC_BYTES]) for r, doc in rejects],
            )

    # --- retention -----------------------------------------------------------------------
    def used_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def _delete_traces(self, rows: list[tuple[int, str]]) -> None:
        """Delete traces given as (pk, services JSON) rows. Annotations go by bucket (the
        trace row's JSON keeps only the last value of each key, so it cannot name them all)."""
        services = [(name, tpk) for tpk, names in rows for name in orjson.loads(names)]
        keys = [(row[0],) for row in rows]
        buckets: dict[int, list[int]] = {}
        for tpk, _names in rows:
            buckets.setdefault(tpk >> schema.BUCKET_BITS, []).append(tpk)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "DELETE FROM annotations WHERE bucket = ? AND tpk IN (SELECT value FROM json_each(?))",
            [(bucket, orjson.dumps(tpks).decode()) for bucket, tpks in buckets.items()])
        self.conn.executemany("DELETE FROM services WHERE name = ? AND tpk = ?", services)
        self.conn.executemany("DELETE FROM segments WHERE tpk = ?", keys)
        self.conn.executemany("DELETE FROM traces WHERE pk = ?", keys)
        self.conn.execute("COMMIT")
        # Keys of deleted traces may stay in self._keys: a late document of such a trace gets
        # its old key back, which nothing else uses.

    def _run_retention(self) -> None:
        self._last_retention = time.monotonic()
        try:
            removed = self.apply_retention()
        except Exception as exc:
            self.log.error("Trace store retention failed: %s", exc)
            return
        if removed:
            self.log.info("Trace store retention removed %d traces", removed)

    def apply_retention(self) -> int:
        """Remove traces that started before the age limit, then the oldest until under the
        size limit; the number of traces removed."""
        removed = 0
        cutoff = self.clock() - self.retention.hours * 3600.0
        while True:
            rows = self.conn.execute(
                "SELECT pk, services FROM traces WHERE start < ? LIMIT ?",
                (cutoff, DELETE_CHUNK)).fetchall()
            if not rows:
                break
            self._delete_traces(rows)
            removed += len(rows)
        self.conn.execute("DELETE FROM rejected WHERE received < ?", (cutoff,))
        # Size: drop the oldest traces (and rejected documents) until 90 % of the limit.
        target = self.retention.max_bytes * 0.9
        if self.used_bytes() > self.retention.max_bytes:
            while self.used_bytes() > target:
                total = self.conn.execute("SELECT count(*) FROM traces").fetchone()[0]
                if total == 0:
                    self.conn.execute("DELETE FROM rejected")
                    break
                chunk = max(1, min(DELETE_CHUNK, total // 10))
                rows = self.conn.execute(
                    "SELECT pk, services FROM traces ORDER BY start LIMIT ?",
                    (chunk,)).fetchall()
                self._delete_traces(rows)
                self.conn.execute(
                    "DELETE FROM rejected WHERE pk IN "
                    "(SELECT pk FROM rejected ORDER BY received LIMIT ?)", (chunk,))
                removed += len(rows)
        if removed:
            self.conn.execute("PRAGMA incremental_vacuum")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
