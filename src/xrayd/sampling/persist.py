"""Sampling rules kept in the trace store's file (offline mode), so that rules created or
changed through the API survive a restart. The table is this module's own (created if missing;
the store's schema version does not cover it, so an older xrayd opening the file ignores it).
Calls come from the sampling engine, one at a time under its lock."""

from __future__ import annotations

import os
import sqlite3

import orjson

from xrayd.sampling.engine import StoredRule

TABLE = """CREATE TABLE IF NOT EXISTS sampling_rules (
    name     TEXT PRIMARY KEY,
    rule     TEXT NOT NULL,
    created  REAL NOT NULL,
    modified REAL NOT NULL,
    origin   TEXT NOT NULL
)"""


class StoreFileGone(OSError):
    pass


class SqliteRuleStore:
    def __init__(self, path: str) -> None:
        # Opened after the store's writer, which created the file (private) and set WAL mode.
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                    timeout=10.0)
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute(TABLE)
        self._identity = self._file()

    def _file(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check(self) -> None:
        """A change written into a deleted store file would be lost at the next start."""
        if self._file() != self._identity:
            raise StoreFileGone(f"the trace store file {self.path} was deleted or replaced")

    def load(self) -> list[StoredRule]:
        records = []
        for name, rule, created, modified, origin in self.conn.execute(
                "SELECT name, rule, created, modified, origin FROM sampling_rules"):
            try:
                parsed = orjson.loads(rule)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed = {"RuleName": name}  # fails validation: the engine drops it
            records.append(StoredRule(parsed, created, modified,
                                      "file" if origin == "file" else "api"))
        return records

    def save(self, record: StoredRule) -> None:
        self._check()
        self.conn.execute(
            "INSERT INTO sampling_rules (name, rule, created, modified, origin) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET rule = excluded.rule, "
            "created = excluded.created, modified = excluded.modified, "
            "origin = excluded.origin",
            (record.rule["RuleName"], orjson.dumps(record.rule).decode(), record.created,
             record.modified, record.origin))

    def delete(self, name: str) -> None:
        self._check()
        self.conn.execute("DELETE FROM sampling_rules WHERE name = ?", (name,))

    def close(self) -> None:
        self.conn.close()
