"""Putting a trace back together: subsegments sent as their own documents go into their parent
entity, as the X-Ray service returns them from BatchGetTraces. Pure."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


def _subsegments(entity: dict) -> list[dict]:
    """The entity's subsegments that are objects (a stored document may have anything there)."""
    subs = entity.get("subsegments")
    return [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []


def _index(entity: dict, found: dict[str, dict], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(entity.get("id"), str):
        found.setdefault(entity["id"], entity)
    for sub in _subsegments(entity):
        _index(sub, found, depth + 1)


def _attach(parent: dict, child: dict) -> None:
    subs = parent.get("subsegments")
    if not isinstance(subs, list):
        subs = parent["subsegments"] = []
    for i, existing in enumerate(subs):
        if isinstance(existing, dict) and existing.get("id") == child.get("id"):
            # The complete document replaces its in-progress version; children attached to
            # the old one stay.
            kept = _subsegments(existing)
            if kept:
                own = child.get("subsegments")
                if not isinstance(own, list):
                    own = child["subsegments"] = []
                ids = {s.get("id") for s in own if isinstance(s, dict)}
                own.extend(s for s in kept if s.get("id") not in ids)
                own.sort(key=_start)
            subs[i] = child
            return
    subs.append(child)
    subs.sort(key=_start)


def _start(entity: object) -> float:
    value = entity.get("start_time") if isinstance(entity, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def merge(segments: list[dict[str, Any]], subsegments: list[dict[str, Any]]
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(segments with the subsegment documents merged in, subsegments whose parent is unknown).

    A subsegment whose parent is another separately sent subsegment is attached after its parent,
    so the order the documents arrived in does not matter.
    """
    found: dict[str, dict] = {}
    for segment in segments:
        _index(segment, found)
    pending = list(subsegments)
    while pending:
        progress = False
        left = []
        for sub in pending:
            parent_id = sub.get("parent_id")
            parent = found.get(parent_id) if isinstance(parent_id, str) else None
            if parent is None or parent is sub:
                left.append(sub)
                continue
            clean = dict(sub)
            _attach(parent, clean)
            _index(clean, found)
            if isinstance(clean.get("id"), str):
                found[clean["id"]] = clean
            progress = True
        pending = left
        if not progress:
            break
    return segments, pending
