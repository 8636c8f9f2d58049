"""A batch of documents as the store's rows. Pure: documents in, parameter lists out. The writer
builds them in its own thread, or in the parse helper process under load.

Python's sqlite3 binds exact str, int, float and bytearray values directly, but None and bytes
through its adaptation protocol (a tuple, a dict lookup and a failed attribute lookup that
formats an exception message: about 1 µs each, with the GIL held). So rows carry documents as
bytearray, and NULL as a value of another type that the writer's statements turn back into
NULL: NULL_TEXT in a text column, NULL_NUMBER in a number column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import orjson

from xrayd.store.extract import BadDocument, Record, parse

NULL_TEXT = 0
NULL_NUMBER = ""

Jobs = Sequence[tuple[Sequence[bytes], float]]

# Values per row of each table, in the order of the writer's statements.
SEGMENT_COLUMNS = 11
TRACE_COLUMNS = 13
ANNOTATION_COLUMNS = 3
SERVICE_COLUMNS = 2


class Rejected(NamedTuple):
    """A document of a job that the store refuses, by its position in the job."""

    index: int
    code: str  # the service's ErrorCode
    message: str
    segment_id: str


class Rows:
    """Flat parameter lists, one per table. The first value of every row is its trace's position
    in ``trace_ids`` until ``set_keys`` puts the trace's key in its place."""

    __slots__ = ("annotations", "segments", "services", "trace_ids", "traces")

    def __init__(self) -> None:
        self.trace_ids: dict[str, int] = {}
        self.segments: list[object] = []
        self.traces: list[object] = []
        self.annotations: list[object] = []
        self.services: list[object] = []

    def add(self, r: Record, now: float) -> None:
        dumps = orjson.dumps
        trace_ids = self.trace_ids
        tpk = trace_ids.setdefault(r.trace_id, len(trace_ids))
        calls = r.calls
        # a call's service by its subsegment's name and by its node's (a DynamoDB call to
        # table "orders" is both service("DynamoDB") and service("orders"))
        names = {name: 1 for call in calls for name in (call[2], call[9])} if calls else {}
        # Bits as the statements read them. A segment row has the document's own flags (a
        # faulted subsegment does not fault its service); the trace row has the root
        # segment's error and fault (HasError, HasFault) and any entity's throttle.
        flags = r.own_flags
        start = r.start
        end = NULL_NUMBER if r.end is None else r.end
        segment = r.kind == "segment"
        self.segments.extend((
            tpk, r.id, NULL_TEXT if r.parent_id is None else r.parent_id, r.name,
            NULL_TEXT if r.origin is None else r.origin, start, end,
            flags + 8 * r.in_progress + (0 if segment else 16), now,
            dumps(calls).decode() if calls else NULL_TEXT, NULL_TEXT))  # set_docs fills it
        trace_flags = 4 * r.throttle
        if segment:
            names[r.name] = 1
            if r.parent_id is None:
                trace_flags += (flags & 3) + 8  # the root segment
        services = self.services
        for name in names:
            services.append(tpk)
            services.append(name)
        annotations = r.annotations
        if annotations:
            extend = self.annotations.extend
            for key, value in annotations:
                # Stored by kind (the statement tags the type): text, 0/1 for booleans, a
                # float for every number; filters compare values of the same kind only.
                kind = type(value)
                if kind is str:
                    extend((tpk, key, value))
                elif kind is bool:
                    extend((tpk, key, int(value)))
                else:
                    extend((tpk, key, float(value)))
            notes_json = dumps(dict(annotations)).decode()
        else:
            notes_json = "{}"
        method, status, url, user = r.http_method, r.http_status, r.http_url, r.user
        if not trace_flags & 8:  # HTTP is the root segment's: a root that has none, has none
            method = status = url = None
        self.traces.extend((
            tpk, r.trace_id, start, end, trace_flags, NULL_TEXT if method is None else method,
            NULL_NUMBER if status is None else status, NULL_TEXT if url is None else url,
            NULL_TEXT if user is None else user, r.name, now, notes_json,
            dumps(names).decode()))

    def set_keys(self, keys: list[int]) -> None:
        """Replace each row's trace position with ``keys[position]``."""
        for params, width in ((self.segments, SEGMENT_COLUMNS), (self.traces, TRACE_COLUMNS),
                              (self.annotations, ANNOTATION_COLUMNS),
                              (self.services, SERVICE_COLUMNS)):
            if params:
                params[0::width] = [keys[i] for i in params[0::width]]

    def set_docs(self, jobs: Jobs, rejected: list[list[Rejected]]) -> None:
        """Put each stored document in its segment row (rows are built without them, so that
        the parse helper does not send them back)."""
        docs: list[bytearray] = []
        for (job_docs, _), refused in zip(jobs, rejected, strict=True):
            skip = {r.index for r in refused}
            docs.extend(bytearray(doc) for i, doc in enumerate(job_docs) if i not in skip)
        self.segments[SEGMENT_COLUMNS - 1::SEGMENT_COLUMNS] = docs

    def as_tuple(self) -> tuple:
        return (self.trace_ids, self.segments, self.traces, self.annotations, self.services)

    @classmethod
    def from_tuple(cls, values: tuple) -> Rows:
        rows = cls()
        (rows.trace_ids, rows.segments, rows.traces, rows.annotations,
         rows.services) = values
        return rows


def build(jobs: Jobs) -> tuple[Rows, list[list[Rejected]]]:
    """The rows of every job's documents (each job a list of documents and the time they were
    received), and each job's rejected documents; ``Rows.set_docs`` adds the documents. Parses
    a document at a time: records kept for a whole batch would survive into the collector's
    older generations and make every collection slower."""
    rows = Rows()
    add = rows.add
    rejected: list[list[Rejected]] = []
    for docs, received in jobs:
        refused = []
        for index, doc in enumerate(docs):
            try:
                record = parse(doc)
            except BadDocument as bad:
                refused.append(Rejected(index, bad.code, str(bad), bad.segment_id))
                continue
            except Exception as exc:  # a parser bug must not fail the batch, or the writer
                refused.append(Rejected(index, "InvalidSegment",
                                        f"Unreadable document ({type(exc).__name__})", ""))
                continue
            add(record, received)
        rejected.append(refused)
    return rows, rejected
