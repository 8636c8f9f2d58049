"""A stored trace as X-Ray describes it: its root, its service nodes and edges, its root causes,
and the GetTraceSummaries fields computed from them. Pure: merged documents in.

Definitions (the API reference's TraceSummary and RootCause shapes):
- root: the segment without ``parent_id``; else the segment whose parent is no entity of the
  trace (entered through a service that does not report here); the earliest such one.
- ResponseTime, Http, EntryPoint, HasFault, HasError: of the root segment. HasThrottle and
  IsPartial: of any entity / any document.
- service nodes: each segment is an occurrence of its service (name, ``origin`` as type,
  ``aws.account_id``); a subsegment of namespace ``aws`` or ``remote`` that no segment of the
  trace continues is an inferred node.
- fault and error root causes: each faulted (errored) entity none of whose descendants (its
  subsegments, and the segments whose parent it is) is faulted (errored): the deepest on its
  path from the root. Its path is listed by service, each with the entities walked through.
- response time root cause: from the root, the slowest child at each step down to a leaf;
  ``Coverage`` is an entity's duration over the root's response time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

REMOTE = ("aws", "remote")
MAX_WALK = 4096  # entities visited per trace at most (documents are bounded, cycles are not)

# X-Ray's node types for AWS calls (API_Service, Type): a call that names a resource is a node
# of the resource, named by it (AWS::DynamoDB::Table for a table); one that names none is a node
# of the service (AWS::DynamoDB); others become AWS::<name>.
AWS_TYPES = {"dynamodb": "AWS::DynamoDB", "s3": "AWS::S3", "sqs": "AWS::SQS", "sns": "AWS::SNS",
             "lambda": "AWS::Lambda", "kinesis": "AWS::Kinesis"}
# The resource fields of an AWS SDK call's ``aws`` block, in this order, with their node type.
RESOURCE_FIELDS = ("table_name", "bucket_name", "queue_url", "topic_arn", "function_name")
RESOURCE_TYPES = ("AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::SQS::Queue",
                  "AWS::SNS::Topic", "AWS::Lambda")
SQL_TYPE = "Database::SQL"


def aws_type(name: str) -> str:
    """The node type of an AWS call's subsegment that names no resource, by its name (the SDKs
    name it after the service: DynamoDB, S3, ...)."""
    return AWS_TYPES.get(name.lower(), f"AWS::{name}")


def _resource_name(field: int, value: str) -> str:
    """A resource's name as X-Ray names its node: a queue's from its URL, a topic's or a
    function's from its ARN."""
    if field == 2:  # https://sqs.<region>.amazonaws.com/<account>/<queue>
        return value.rstrip("/").rsplit("/", 1)[-1] or value
    if field == 3:  # arn:aws:sns:<region>:<account>:<topic>
        return value.rsplit(":", 1)[-1] or value
    if field == 4 and value.startswith("arn:"):  # arn:aws:lambda:<region>:<acct>:function:<n>
        parts = value.split(":")
        return parts[6] if len(parts) > 6 and parts[6] else value
    return value


def inferred_node(name: str, namespace: str | None, resources: tuple | None, sql: bool
                  ) -> tuple[str, str]:
    """(name, type) of the node a downstream call's subsegment makes when no segment answers
    it: ``resources`` the values of RESOURCE_FIELDS in its ``aws`` block, ``sql`` whether it
    has a ``sql`` block."""
    if namespace == "aws":
        for field, value in enumerate(resources or ()):
            if type(value) is str and value:
                return _resource_name(field, value), RESOURCE_TYPES[field]
        return name, aws_type(name)
    return name, SQL_TYPE if sql else "remote"


def _inferred(e: Entity) -> tuple[str, str]:
    aws = _dict(e.doc.get("aws"))
    return inferred_node(e.name, e.namespace, tuple(aws.get(key) for key in RESOURCE_FIELDS),
                         type(e.doc.get("sql")) is dict)


def _num(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


def _dict(value: Any) -> dict:
    return value if type(value) is dict else {}


class Service:
    """One occurrence of a service node: a segment, or an inferred downstream node."""

    def __init__(self, name: str, type_: str | None, account: str | None, inferred: bool,
                 entity: Entity) -> None:
        self.name = name
        self.type = type_
        self.account = account
        self.inferred = inferred
        self.entity = entity
        self.root = False

    def key(self) -> tuple[str, str | None, str | None]:
        return (self.name, self.type, self.account)

    def shape(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"Name": self.name, "Names": [self.name]}
        if self.account:
            answer["AccountId"] = self.account
        if self.type:
            answer["Type"] = self.type
        return answer

    def get(self, keyword: str) -> Any:
        """A filter keyword's value on this node (service() { ... })."""
        e = self.entity
        if keyword == "name":
            return self.name
        if keyword == "type":
            return self.type
        if keyword == "root":
            return self.root
        if keyword == "inferred":
            return self.inferred
        if keyword in ("account.id", "accountid"):
            return self.account
        return e.get(keyword)


class Entity:
    """A segment or subsegment of the merged trace."""

    def __init__(self, doc: dict, segment: bool) -> None:
        self.doc = doc
        self.segment = segment
        self.id = _str(doc.get("id"))
        self.name = _str(doc.get("name")) or ""
        self.namespace = _str(doc.get("namespace"))
        self.start = _num(doc.get("start_time"))
        self.end = None if doc.get("in_progress") is True else _num(doc.get("end_time"))
        self.error = doc.get("error") is True
        self.fault = doc.get("fault") is True
        self.throttle = doc.get("throttle") is True
        self.children: list[Entity] = []
        self.service: Service | None = None

    @property
    def remote(self) -> bool:
        return not self.segment and self.namespace in REMOTE

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    def http(self) -> tuple[dict, dict]:
        http = _dict(self.doc.get("http"))
        return _dict(http.get("request")), _dict(http.get("response"))

    def exceptions(self) -> list[dict[str, str]]:
        cause = _dict(self.doc.get("cause"))
        found = []
        items = cause.get("exceptions")
        for item in items if type(items) is list else ():
            if type(item) is dict:
                exc: dict[str, str] = {}
                if _str(item.get("type")):
                    exc["Name"] = item["type"]
                if _str(item.get("message")):
                    exc["Message"] = item["message"]
                found.append(exc)
        return found

    def get(self, keyword: str) -> Any:
        request, response = self.http()
        if keyword == "fault":
            return self.fault
        if keyword == "error":
            return self.error
        if keyword == "throttle":
            return self.throttle
        if keyword == "ok":
            return not (self.fault or self.error or self.throttle)
        if keyword == "partial":
            return self.end is None
        if keyword in ("responsetime", "duration"):
            return self.duration
        if keyword == "http.status":
            return _num(response.get("status"))
        if keyword == "http.url":
            return _str(request.get("url"))
        if keyword == "http.method":
            return _str(request.get("method"))
        if keyword == "http.useragent":
            return _str(request.get("user_agent"))
        if keyword == "http.clientip":
            return _str(request.get("client_ip"))
        if keyword == "user":
            return _str(self.doc.get("user"))
        if keyword == "name":
            return self.name
        return None


class Edge:
    """A call from one service occurrence to another; its values are the calling entity's."""

    def __init__(self, source: Service, target: Service, call: Entity) -> None:
        self.source = source
        self.target = target
        self.call = call

    def get(self, keyword: str) -> Any:
        return self.call.get(keyword)


class Trace:
    def __init__(self, trace_id: str, segments: list[dict], orphans: list[dict],
                 revision: int = 0, updated: float | None = None) -> None:
        self.id = trace_id
        self.revision = revision
        self.updated = updated
        self.segments = [Entity(doc, True) for doc in segments if type(doc) is dict]
        self.orphans = [Entity(doc, False) for doc in orphans if type(doc) is dict]
        self.entities: dict[str, Entity] = {}
        self.all: list[Entity] = []
        self.services: list[Service] = []
        self.edges: list[Edge] = []
        self._causes: dict[str, list[dict[str, Any]]] = {}
        for segment in self.segments:
            segment.service = Service(segment.name, _str(segment.doc.get("origin")),
                                      _str(_dict(segment.doc.get("aws")).get("account_id")),
                                      False, segment)
            self.services.append(segment.service)
            self._index(segment, segment.service)
        for orphan in self.orphans:
            self._index(orphan, None)
        self.root = self._find_root()
        if self.root is not None and self.root.service is not None:
            self.root.service.root = True
        self._link()

    def _index(self, entity: Entity, service: Service | None) -> None:
        stack = [entity]
        while stack and len(self.all) < MAX_WALK:
            e = stack.pop()
            e.service = e.service or service
            self.all.append(e)
            if e.id is not None:
                self.entities.setdefault(e.id, e)
            subs = e.doc.get("subsegments")
            for sub in subs if type(subs) is list else ():
                if type(sub) is dict:
                    child = Entity(sub, False)
                    e.children.append(child)
                    stack.append(child)

    def _find_root(self) -> Entity | None:
        def start(e: Entity) -> float:
            return e.start if e.start is not None else float("inf")

        parentless = [s for s in self.segments if not _str(s.doc.get("parent_id"))]
        if parentless:
            return min(parentless, key=start)
        entered = [s for s in self.segments if s.doc.get("parent_id") not in self.entities]
        return min(entered, key=start) if entered else None

    def _link(self) -> None:
        continued: set[int] = set()
        for segment in self.segments:
            parent = self.entities.get(_str(segment.doc.get("parent_id")) or "")
            if parent is None or parent is segment:
                continue
            parent.children.append(segment)
            continued.add(id(parent))
            if parent.service is not None and segment.service is not None:
                self.edges.append(Edge(parent.service, segment.service, parent))
        for e in self.all:
            if e.remote and id(e) not in continued:
                node = Service(*_inferred(e), None, True, e)
                self.services.append(node)
                if e.service is not None:
                    self.edges.append(Edge(e.service, node, e))
                e.service = node

    # --- walking ---------------------------------------------------------------------
    def _paths(self, flagged: str) -> list[list[Entity]]:
        """Paths from the root to each deepest entity with ``flagged`` set."""
        if self.root is None or not any(getattr(e, flagged) for e in self.all):
            return []
        found: list[list[Entity]] = []
        seen: set[int] = set()
        # Iterative DFS: (entity, path, next child index, any flagged below)
        stack: list[tuple[Entity, list[Entity]]] = [(self.root, [self.root])]
        below: dict[int, bool] = {}
        order: list[tuple[Entity, list[Entity]]] = []
        while stack:
            e, path = stack.pop()
            if id(e) in seen or len(seen) >= MAX_WALK:
                continue
            seen.add(id(e))
            order.append((e, path))
            for child in e.children:
                stack.append((child, [*path, child]))
        for e, path in reversed(order):  # children before their parents
            deeper = any(below.get(id(c), False) for c in e.children)
            mine = getattr(e, flagged)
            if mine and not deeper:
                found.append(path)
            below[id(e)] = deeper or mine
        found.reverse()
        return found

    def _slowest_path(self) -> list[Entity]:
        if self.root is None or self.root.duration is None:
            return []
        path = [self.root]
        seen = {id(self.root)}
        e = self.root
        while len(path) < MAX_WALK:
            timed = [c for c in e.children if c.duration is not None and id(c) not in seen]
            if not timed:
                break
            e = max(timed, key=lambda c: c.duration or 0.0)
            seen.add(id(e))
            path.append(e)
        return path

    @staticmethod
    def _by_service(path: list[Entity]) -> list[tuple[Service, list[Entity]]]:
        grouped: list[tuple[Service, list[Entity]]] = []
        for e in path:
            service = e.service
            if service is None:
                continue
            if grouped and grouped[-1][0] is service:
                grouped[-1][1].append(e)
            else:
                grouped.append((service, [e]))
        return grouped

    def root_causes(self, kind: str) -> list[dict[str, Any]]:
        """FaultRootCauses, ErrorRootCauses (kind fault, error) or ResponseTimeRootCauses."""
        causes = self._causes.get(kind)
        if causes is None:
            causes = self._causes[kind] = self._root_causes(kind)
        return causes

    def _root_causes(self, kind: str) -> list[dict[str, Any]]:
        if kind == "responsetime":
            slowest = self._slowest_path()
            paths = [slowest] if slowest else []
        else:
            paths = self._paths(kind)
        root = self.root
        causes = []
        for path in paths:
            services = []
            for service, entities in self._by_service(path):
                shape = service.shape()
                if kind == "responsetime":
                    total = root.duration if root is not None else None
                    shape["EntityPath"] = [
                        {"Name": e.name, "Coverage": (e.duration / total)
                         if total and e.duration is not None else 0.0, "Remote": e.remote}
                        for e in entities]
                else:
                    shape["EntityPath"] = [{"Name": e.name, "Exceptions": e.exceptions(),
                                            "Remote": e.remote} for e in entities]
                shape["Inferred"] = service.inferred
                services.append(shape)
            impacting = True if kind == "responsetime" else bool(
                root is not None and getattr(root, kind))
            causes.append({"Services": services, "ClientImpacting": impacting})
        return causes

    # --- trace-level filter keywords -------------------------------------------------
    def values(self, keyword: str) -> list[Any]:
        """Every value of a trace-level keyword (several for ``user``, ``resource.arn``...)."""
        root = self.root
        if keyword in ("user", "resource.arn", "instance.id", "availabilityzone"):
            return list(self._each(keyword))
        if keyword == "duration":
            return [self.duration()]
        if keyword == "partial":
            return [self.partial()]
        if keyword == "throttle":
            return [self.throttle()]
        if keyword == "inferred":
            return [any(s.inferred for s in self.services)]
        if keyword == "type":
            return [root.service.type if root is not None and root.service else None]
        if root is None:
            return [False] if keyword in ("fault", "error", "ok") else [None]
        if keyword == "ok":
            return [not (root.fault or root.error)]
        return [root.get(keyword)]

    def _each(self, keyword: str) -> Iterator[str]:
        seen: set[str] = set()
        for value in self._values_of(keyword):
            if value not in seen:
                seen.add(value)
                yield value

    def _values_of(self, keyword: str) -> Iterator[str]:
        for e in self.all:
            doc = e.doc
            if keyword == "user":
                value = _str(doc.get("user"))
            elif keyword == "resource.arn":
                value = _str(doc.get("resource_arn")) if e.segment else None
            else:
                ec2 = _dict(_dict(doc.get("aws")).get("ec2"))
                value = _str(ec2.get("instance_id" if keyword == "instance.id"
                                     else "availability_zone"))
            if value:
                yield value

    def duration(self) -> float:
        starts = [e.start for e in self.all if e.start is not None]
        ends = [e.end for e in self.all if e.end is not None]
        return (max(ends) - min(starts)) if starts and ends else 0.0

    def partial(self) -> bool:
        return any(e.doc.get("in_progress") is True for e in self.segments + self.orphans)

    def throttle(self) -> bool:
        return any(e.throttle for e in self.all)

    # --- the summary -----------------------------------------------------------------
    def _client(self) -> list[Service]:
        """The node of the client that sent the request entering the trace (X-Ray lists it in
        ServiceIds under the root segment's name, type ``client``)."""
        if self.root is None:
            return []
        return [Service(self.root.name, "client", None, False, self.root)]

    def service_ids(self, services: list[Service]) -> list[dict[str, Any]]:
        unique: dict[tuple, Service] = {}
        for s in services:
            unique.setdefault(s.key(), s)
        return [unique[k].shape() for k in sorted(unique, key=lambda k: (k[0], k[1] or ""))]

    def summary(self, matched_event_time: float | None = None) -> dict[str, Any]:
        root = self.root
        starts = [e.start for e in self.segments + self.orphans if e.start is not None]
        summary: dict[str, Any] = {
            "Id": self.id,
            "StartTime": min(starts) if starts else 0.0,
            "Duration": self.duration(),
            "HasFault": bool(root is not None and root.fault),
            "HasError": bool(root is not None and root.error),
            "HasThrottle": self.throttle(),
            "IsPartial": self.partial(),
            "Http": {},
            "Annotations": self._annotations(),
            "Users": self._users(),
            "ServiceIds": self.service_ids(self.services + self._client()),
            "ResourceARNs": [{"ARN": v} for v in self._each("resource.arn")],
            "InstanceIds": [{"Id": v} for v in self._each("instance.id")],
            "AvailabilityZones": [{"Name": v} for v in self._each("availabilityzone")],
            "FaultRootCauses": self.root_causes("fault"),
            "ErrorRootCauses": self.root_causes("error"),
            "ResponseTimeRootCauses": self.root_causes("responsetime"),
            "Revision": self.revision,
        }
        if matched_event_time is not None:
            summary["MatchedEventTime"] = matched_event_time
        if root is not None:
            if root.duration is not None:
                summary["ResponseTime"] = root.duration
            request, response = root.http()
            http: dict[str, Any] = {}
            for key, value in (("HttpURL", request.get("url")),
                               ("HttpMethod", request.get("method")),
                               ("UserAgent", request.get("user_agent")),
                               ("ClientIp", request.get("client_ip"))):
                if _str(value) is not None:
                    http[key] = value
            status = response.get("status")
            if type(status) is int:
                http["HttpStatus"] = status
            summary["Http"] = http
            if root.service is not None:
                summary["EntryPoint"] = root.service.shape()
        return summary

    def annotation_values(self, key: str) -> list[Any]:
        values = []
        for e in self.all:
            notes = e.doc.get("annotations")
            if type(notes) is dict and key in notes:
                value = notes[key]
                if type(value) in (str, int, float, bool):
                    values.append(value)
        return values

    def _annotations(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, dict[tuple, list[Service]]] = {}
        for e in self.all:
            notes = e.doc.get("annotations")
            if type(notes) is not dict:
                continue
            for key, value in notes.items():
                if type(value) in (str, int, float, bool):
                    tag = (type(value) is bool, value)
                    owners = found.setdefault(key, {}).setdefault(tag, [])
                    if e.service is not None:
                        owners.append(e.service)
        return {key: [{"AnnotationValue": _annotation_json(tag[1]),
                       "ServiceIds": self.service_ids(owners)}
                      for tag, owners in values.items()]
                for key, values in found.items()}

    def _users(self) -> list[dict[str, Any]]:
        found: dict[str, list[Service]] = {}
        for e in self.all:
            user = _str(e.doc.get("user"))
            if user:
                owners = found.setdefault(user, [])
                if e.service is not None:
                    owners.append(e.service)
        return [{"UserName": user, "ServiceIds": self.service_ids(owners)}
                for user, owners in found.items()]


def _annotation_json(value: Any) -> dict[str, Any]:
    if type(value) is bool:
        return {"BooleanValue": value}
    if type(value) in (int, float):
        return {"NumberValue": float(value)}
    return {"StringValue": str(value)}
