"""The store's SQLite schema and connection settings."""

from __future__ import annotations

import hashlib
import os
import sqlite3

SCHEMA_VERSION = 2

# Keys are 64-bit integers derived from the ids (trace_key, segment_key): random text keys made
# every index insert several times slower. Each trace's annotations and services are also kept
# as JSON on its row, so a page of summaries and retention need no extra index.
SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    tkey        INTEGER PRIMARY KEY,
    trace_id    TEXT NOT NULL,
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
    skey        INTEGER PRIMARY KEY,
    tkey        INTEGER NOT NULL,
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
CREATE INDEX IF NOT EXISTS segments_trace ON segments(tkey);

CREATE TABLE IF NOT EXISTS annotations (
    key  TEXT NOT NULL,
    typ  TEXT NOT NULL,
    val  NOT NULL,
    tkey INTEGER NOT NULL,
    PRIMARY KEY (key, typ, val, tkey)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS services (
    name TEXT NOT NULL,
    tkey INTEGER NOT NULL,
    PRIMARY KEY (name, tkey)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejected (
    pk       INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    code     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    doc      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_received ON rejected(received);
"""

_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def trace_key(trace_id: str) -> int:
    """A 64-bit key of a trace id (``1-<8 hex time>-<24 hex random>``, already validated)."""
    return _signed(int(trace_id[-16:], 16) ^ (int(trace_id[2:10], 16) << 24)
                   ^ int(trace_id[11:19], 16))


def segment_key(tkey: int, segment_id: str) -> int:
    """A 64-bit key of a segment within its trace (distinct ids give distinct keys). The trace
    key is mixed by an odd multiplier so that structured ids (counters) do not collide across
    traces."""
    mixed = (tkey * _MIX) & _MASK
    if len(segment_id) <= 16:
        try:
            return _signed(mixed ^ int(segment_id, 16))
        except ValueError:
            pass
    digest = hashlib.blake2b(segment_id.encode("utf-8", "replace"), digest_size=8).digest()
    return _signed(mixed ^ int.from_bytes(digest, "big") ^ (1 << 62))





def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the store's settings; the writer's creates the schema."""
    if not readonly and path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA busy_timeout=10000")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
        return conn
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new database
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version and version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"trace store schema version {version}, this xrayd uses {SCHEMA_VERSION}: "
            "move the old file away or use another --store path")
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def default_path(environ: dict[str, str] | None = None) -> str:
    """$XDG_DATA_HOME/xrayd/traces.db, else ~/.local/share/xrayd/traces.db."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "xrayd", "traces.db")
