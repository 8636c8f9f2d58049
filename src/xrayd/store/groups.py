"""X-Ray groups (CreateGroup, GetGroup, GetGroups, UpdateGroup, DeleteGroup), kept in the store
file in a table of their own. A group is a name and a filter expression (checked by the filter
compiler when it is set); its ARN has the offline account id of the sampling rules' ARNs."""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from xrayd.sampling.rules import ARN_PREFIX as RULE_ARN_PREFIX
from xrayd.store.filters import parse

ARN_PREFIX = RULE_ARN_PREFIX.rsplit(":", 1)[0] + ":group/"
DEFAULT = "Default"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_GROUPS = 25  # X-Ray's default quota of groups per account and region
PAGE = 100

_TABLE = """CREATE TABLE IF NOT EXISTS xray_groups (
    name          TEXT PRIMARY KEY,
    arn           TEXT NOT NULL UNIQUE,
    filter        TEXT,
    insights      INTEGER NOT NULL DEFAULT 0,
    notifications INTEGER NOT NULL DEFAULT 0,
    created       REAL NOT NULL
)"""


class GroupError(Exception):
    """A group request the service refuses (InvalidRequestException)."""


def _arn(name: str, suffix: str | None) -> str:
    return f"{ARN_PREFIX}{name}" if suffix is None else f"{ARN_PREFIX}{name}/{suffix}"


def _shape(name: str, arn: str, expression: str | None, insights: int, notifications: int
           ) -> dict[str, Any]:
    group: dict[str, Any] = {"GroupName": name, "GroupARN": arn}
    if expression:
        group["FilterExpression"] = expression
    group["InsightsConfiguration"] = {"InsightsEnabled": bool(insights),
                                      "NotificationsEnabled": bool(notifications)}
    return group


DEFAULT_GROUP = _shape(DEFAULT, _arn(DEFAULT, None), None, 0, 0)


def check_filter(expression: Any, groups: Callable[[str], str | None] | None = None
                 ) -> str | None:
    if expression is None:
        return None
    if not isinstance(expression, str):
        raise GroupError("FilterExpression must be a string")
    if not expression.strip():
        return None
    parse(expression, groups)  # FilterError says what is wrong
    return expression


def _insights(config: Any) -> tuple[int, int] | None:
    if config is None:
        return None
    if not isinstance(config, dict):
        raise GroupError("InsightsConfiguration must be an object")
    insights = config.get("InsightsEnabled", False)
    notifications = config.get("NotificationsEnabled", False)
    if not isinstance(insights, bool) or not isinstance(notifications, bool):
        raise GroupError("InsightsEnabled and NotificationsEnabled must be booleans")
    if notifications and not insights:
        raise GroupError("Notifications can only be enabled on a group with InsightsEnabled")
    return int(insights), int(notifications)


class GroupStore:
    """Groups in the store file, through a connection of its own (writes are rare)."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                     timeout=10.0)
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute(_TABLE)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _find(self, name: Any, arn: Any) -> tuple | None:
        """The stored row of the group given by name or ARN (both must agree)."""
        if name is None and arn is None:
            raise GroupError("GroupName or GroupARN is required")
        for key, value, limit in (("GroupName", name, 32), ("GroupARN", arn, 400)):
            if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= limit):
                raise GroupError(f"{key} must be a string of 1 to {limit} characters")
        row = self._conn.execute(
            "SELECT name, arn, filter, insights, notifications FROM xray_groups "
            "WHERE name = coalesce(?, name) AND arn = coalesce(?, arn)", (name, arn)).fetchone()
        return row

    def _existing(self, name: Any, arn: Any) -> tuple:
        row = self._find(name, arn)
        if row is None:
            raise GroupError("Group not found")
        return row

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("GroupName")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise GroupError("GroupName must be 1 to 32 letters, digits, '-', '_' or '.'")
        if name == DEFAULT:
            raise GroupError("Default is a reserved group name")
        expression = check_filter(body.get("FilterExpression"), resolver(self._conn))
        insights, notifications = _insights(body.get("InsightsConfiguration")) or (0, 0)
        arn = _arn(name, secrets.token_hex(16).upper())
        with self._lock:
            count = self._conn.execute("SELECT count(*) FROM xray_groups").fetchone()[0]
            if count >= MAX_GROUPS:
                raise GroupError(f"At most {MAX_GROUPS} groups")
            try:
                self._conn.execute(
                    "INSERT INTO xray_groups (name, arn, filter, insights, notifications, "
                    "created) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, arn, expression, insights, notifications, time.time()))
            except sqlite3.IntegrityError:
                raise GroupError(f"Group {name} already exists") from None
        return {"Group": _shape(name, arn, expression, insights, notifications)}

    def get(self, body: dict[str, Any]) -> dict[str, Any]:
        name, arn = body.get("GroupName"), body.get("GroupARN")
        if DEFAULT in (name, arn) or arn == DEFAULT_GROUP["GroupARN"]:
            return {"Group": DEFAULT_GROUP}
        with self._lock:
            return {"Group": _shape(*self._existing(name, arn))}

    def list(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("NextToken")
        if token is not None and not isinstance(token, str):
            raise GroupError("NextToken must be a string")
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, arn, filter, insights, notifications FROM xray_groups "
                "WHERE name > ? ORDER BY name LIMIT ?", (token or "", PAGE + 1)).fetchall()
        groups = ([] if token else [DEFAULT_GROUP]) + [_shape(*row) for row in rows[:PAGE]]
        answer: dict[str, Any] = {"Groups": groups}
        if len(rows) > PAGE:
            answer["NextToken"] = rows[PAGE - 1][0]
        return answer

    def update(self, body: dict[str, Any]) -> dict[str, Any]:
        name, arn = body.get("GroupName"), body.get("GroupARN")
        if DEFAULT in (name, arn) or arn == DEFAULT_GROUP["GroupARN"]:
            raise GroupError("The Default group cannot be changed")
        changes = _insights(body.get("InsightsConfiguration"))
        has_filter = "FilterExpression" in body
        with self._lock:
            stored_name, stored_arn, stored_filter, insights, notifications = self._existing(
                name, arn)
            if has_filter:
                expression = check_filter(body.get("FilterExpression"), _with_new_filter(
                    resolver(self._conn), (stored_name, stored_arn),
                    body.get("FilterExpression")))
                stored_filter = expression
            if changes is not None:
                insights, notifications = changes
            self._conn.execute(
                "UPDATE xray_groups SET filter = ?, insights = ?, notifications = ? "
                "WHERE name = ?", (stored_filter, insights, notifications, stored_name))
        return {"Group": _shape(stored_name, stored_arn, stored_filter, insights,
                                notifications)}

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        name, arn = body.get("GroupName"), body.get("GroupARN")
        if DEFAULT in (name, arn) or arn == DEFAULT_GROUP["GroupARN"]:
            raise GroupError("The Default group cannot be deleted")
        with self._lock:
            stored = self._existing(name, arn)
            self._conn.execute("DELETE FROM xray_groups WHERE name = ?", (stored[0],))
        return {}

    def filter_of(self, name: Any, arn: Any) -> str | None:
        """The filter expression of the group a request names (None: every trace)."""
        if name is None and arn is None:
            return None
        if DEFAULT in (name, arn) or arn == DEFAULT_GROUP["GroupARN"]:
            return None
        with self._lock:
            return self._existing(name, arn)[2]


def _with_new_filter(resolve: Callable[[str], str | None], names: tuple[str, str],
                     expression: Any) -> Callable[[str], str | None]:
    """``resolve`` as it will be once the group named ``names`` (name, ARN) has
    ``expression``: a cycle through the updated group is then found (groups nest at most a
    few deep) before it is stored."""
    new = expression if isinstance(expression, str) else ""

    def resolve_updated(name_or_arn: str) -> str | None:
        return new if name_or_arn in names else resolve(name_or_arn)

    return resolve_updated


def resolver(conn: sqlite3.Connection) -> Callable[[str], str | None]:
    """For ``group.name``/``group.arn`` in filter expressions: a group's name or ARN to its
    filter expression ("" for a group without one, as Default), None for no such group."""

    def resolve(name_or_arn: str) -> str | None:
        if name_or_arn in (DEFAULT, DEFAULT_GROUP["GroupARN"]):
            return ""
        try:
            row = conn.execute("SELECT filter FROM xray_groups WHERE name = ? OR arn = ?",
                               (name_or_arn, name_or_arn)).fetchone()
        except sqlite3.OperationalError:  # no group was ever created in this store
            return None
        return None if row is None else (row[0] or "")

    return resolve


def filters(conn: sqlite3.Connection) -> tuple[tuple[str, str | None], ...]:
    """Every group's name and filter: a group's cached graph is kept under its expression and
    these (``group.name`` in an expression reads other groups' filters)."""
    try:
        return tuple(conn.execute("SELECT name, filter FROM xray_groups ORDER BY name"))
    except sqlite3.OperationalError:  # no group was ever created in this store
        return ()
