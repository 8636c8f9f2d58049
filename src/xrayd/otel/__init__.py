"""Conversions between OpenTelemetry spans and X-Ray segment documents: pure functions, no I/O."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """Which span attributes become annotations (X-Ray indexes those), like the Collector's
    ``indexed_attributes`` / ``index_all_attributes``; the others go to metadata. Here, not in
    spans_to_segments, so the daemon can hold it without loading the conversion."""

    indexed_attributes: frozenset[str] = frozenset()
    index_all_attributes: bool = False
