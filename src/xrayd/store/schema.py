"""The store's SQLite schema and connection settings."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3

SCHEMA_VERSION = 5
# 5: a segment row's error/fault/throttle are the document's own (4: anywhere in it); a trace
# row's error, fault and HTTP fields are its root segment's (4: any document's).
# Annotations are indexed within buckets of 2**BUCKET_BITS consecutive trace keys: a commit's
# rows then land in the newest bucket's few pages. Keyed by (key, value) alone, each of a
# thousand values of an annotation had its own insertion point, so every commit rewrote a
# thousand 16 KiB pages, and the cost per document grew with the store. A lookup seeks each
# bucket in turn (a store of a million traces has 62).
BUCKET_BITS = 14
PAGE_SIZE = 16384

# Every index grows at its end: rows and trace keys (pk, tpk) go in arrival order and trace ids
# start with their time, so a commit dirties few pages (random keys made inserts several times
# slower). Each trace's annotations and services are also kept as JSON on its row, so a page of
# summaries and retention need no extra index.
_ANNOTATIONS = """CREATE TABLE IF NOT EXISTS annotations (
    bucket INTEGER NOT NULL,
    key    TEXT NOT NULL,
    typ    TEXT NOT NULL,
    val    NOT NULL,
    tpk    INTEGER NOT NULL,
    PRIMARY KEY (bucket, key, typ, val, tpk)
) WITHOUT ROWID;"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    pk          INTEGER PRIMARY KEY,
    trace_id    TEXT NOT NULL UNIQUE,
    start       REAL NOT NULL,
    end         REAL,
    root_start  REAL,
    root_end    REAL,
    error       INTEGER NOT NULL DEFAULT 0,
    fault       INTEGER NOT NULL DEFAULT 0,
    throttle    INTEGER NOT NULL DEFAULT 0,
    http_method TEXT,
    http_status INTEGER,
    http_url    TEXT,
    user        TEXT,
    root_name   TEXT,
    documents   INTEGER NOT NULL DEFAULT 0,
    updated     REAL NOT NULL,
    annotations TEXT NOT NULL DEFAULT '{}',
    services    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS traces_start ON traces(start);

CREATE TABLE IF NOT EXISTS segments (
    pk          INTEGER PRIMARY KEY,
    tpk         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    parent_id   TEXT,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    origin      TEXT,
    start       REAL NOT NULL,
    end         REAL,
    in_progress INTEGER NOT NULL,
    error       INTEGER NOT NULL,
    fault       INTEGER NOT NULL,
    throttle    INTEGER NOT NULL,
    received    REAL NOT NULL,
    calls       TEXT,
    doc         BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS segments_id ON segments(tpk, id);

{annotations}

CREATE TABLE IF NOT EXISTS services (
    name TEXT NOT NULL,
    tpk  INTEGER NOT NULL,
    PRIMARY KEY (name, tpk)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejected (
    pk       INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    code     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    doc      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_received ON rejected(received);
""".replace("{annotations}", _ANNOTATIONS)


# The store holds whatever the traced applications sent (URLs, users, SQL): readable by its owner
# only, like the spool. SQLite gives the -wal and -shm files the database file's mode, so
# creating the database file 0600 before SQLite opens it covers all three.
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm")
LOCK_SUFFIX = ".lock"


class StoreLocked(Exception):
    """Another process writes this store."""


def make_private(path: str) -> None:
    """Create the database file 0600 if it is missing; take group and other access away from
    the files of an existing store."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in SIDE_FILES:
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, FILE_MODE)
        except FileNotFoundError:
            pass


def lock(path: str) -> int:
    """An exclusive lock on ``path``.lock (a file descriptor to keep open while writing; closing
    it releases the lock). One store file has one writer: a second daemon on the same store
    would number new traces from the same keys and every one of its commits would fail."""
    lock_path = path + LOCK_SUFFIX
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        owner = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreLocked(f"the trace store {path} is in use by another xrayd{owner}: stop it "
                          "or give this one another --store path") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the store's settings; the writer's creates the schema."""
    if not readonly and path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        make_private(path)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA busy_timeout=10000")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
        return conn
    # Both only take effect on a new database. 16 KiB pages hold ten 1.5 KB segment rows where
    # 4 KiB pages held two (a third of each page was empty), and halve the page writes.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 3:
        _migrate_from_3(conn)
        version = 4
    if version == 4:
        logging.getLogger("xrayd").warning(
            "Converting the trace store %s to schema %d (once; about a minute a million "
            "traces)", path, SCHEMA_VERSION)
        _migrate_from_4(conn)
        version = SCHEMA_VERSION
    if version and version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"trace store schema version {version}, this xrayd uses {SCHEMA_VERSION}: "
            "move the old file away or use another --store path")
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def _migrate_from_3(conn: sqlite3.Connection) -> None:
    """Version 3 indexed annotations by (key, type, value, trace key), without buckets."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE annotations RENAME TO annotations_v3")
        conn.execute(_ANNOTATIONS)
        conn.execute(f"INSERT INTO annotations SELECT tpk >> {BUCKET_BITS}, key, typ, val, tpk "
                     "FROM annotations_v3")
        conn.execute("DROP TABLE annotations_v3")
        conn.execute("PRAGMA user_version=4")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _own(flag: str) -> str:
    return f"coalesce(json_type(CAST(doc AS TEXT), '$.{flag}') = 'true', 0)"


def _migrate_from_4(conn: sqlite3.Connection) -> None:
    """Version 4 kept flags of anywhere in a document on its segment row, and the error, fault
    and HTTP of any document on the trace row: recomputed from the stored documents."""
    root = ("(SELECT {what} FROM segments s WHERE s.tpk = traces.pk AND s.kind = 'segment' "
            "AND s.parent_id IS NULL ORDER BY s.start LIMIT 1)")
    http = "json_extract(CAST(s.doc AS TEXT), '$.http.{path}')"
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"UPDATE segments SET error = {_own('error')}, fault = {_own('fault')}, "
                     f"throttle = {_own('throttle')}")
        conn.execute(
            "UPDATE traces SET "
            f"error = coalesce({root.format(what='s.error')}, 0), "
            f"fault = coalesce({root.format(what='s.fault')}, 0), "
            f"http_method = {root.format(what=http.format(path='request.method'))}, "
            f"http_url = {root.format(what=http.format(path='request.url'))}, "
            f"http_status = {root.format(what=http.format(path='response.status'))}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def buckets_sql() -> str:
    """The buckets of every stored trace key, as a subquery for ``bucket IN (...)``."""
    return (f"WITH RECURSIVE b(x) AS (SELECT (SELECT min(pk) FROM traces) >> {BUCKET_BITS} "
            f"UNION ALL SELECT x + 1 FROM b WHERE x < (SELECT max(pk) FROM traces) >> "
            f"{BUCKET_BITS}) SELECT x FROM b")


def default_path(environ: dict[str, str] | None = None) -> str:
    """$XDG_DATA_HOME/xrayd/traces.db, else ~/.local/share/xrayd/traces.db."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "xrayd", "traces.db")
