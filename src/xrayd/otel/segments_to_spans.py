"""X-Ray segment documents as OpenTelemetry spans (OTLP protobuf): the reverse of
spans_to_segments, after the OpenTelemetry Collector's awsxrayreceiver translator, written anew.

One document becomes one ``ResourceSpans``: the segment (or independent subsegment) and every
embedded subsegment, depth first, are sibling spans of one scope; a subsegment's parent span id
is the enclosing (sub)segment's id. Unlike the Collector, nothing here fails a whole document
for one field: a field that does not convert is left out and counted in the ``Report`` by
reason; a subsegment whose id is unusable is left out (its children hang from the nearest usable
ancestor); only a document without a usable trace id or segment id gives no spans at all.

The mapping table is in docs/otlp-export.md. Pure: no I/O, no clocks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from xrayd import __version__
from xrayd.numbers import parse_uint
from xrayd.otel.ids import IdError, otel_span_id, otel_trace_id

SCOPE = InstrumentationScope(name="xrayd.segments_to_spans", version=__version__)
MAX_DEPTH = 64  # deeper nesting than any SDK writes; the rest is left out and counted
_INT64 = (-(2**63), 2**63 - 1)

KIND_SERVER = Span.SpanKind.SPAN_KIND_SERVER
KIND_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
KIND_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR

# origin -> (cloud.platform, aws.ecs.launchtype)
ORIGINS = {
    "AWS::EC2::Instance": ("aws_ec2", ""),
    "AWS::ECS::Container": ("aws_ecs", ""),
    "AWS::ECS::EC2": ("aws_ecs", "ec2"),
    "AWS::ECS::Fargate": ("aws_ecs", "fargate"),
    "AWS::EKS::Container": ("aws_eks", ""),
    "AWS::ElasticBeanstalk::Environment": ("aws_elastic_beanstalk", ""),
    "AWS::Lambda::Function": ("aws_lambda", ""),
    "AWS::AppRunner::Service": ("aws_app_runner", ""),
}
# X-Ray ``http.request`` / ``http.response`` fields -> current OTel semantic conventions.
HTTP_REQUEST = {"method": "http.request.method", "url": "url.full",
                "user_agent": "user_agent.original", "client_ip": "client.address",
                "x_forwarded_for": "aws.xray.x_forwarded_for", "traced": "aws.xray.traced"}
HTTP_RESPONSE = {"status": "http.response.status_code",
                 "content_length": "http.response.body.size"}
SQL = {"sanitized_query": "db.query.text", "database_type": "db.system", "user": "db.user",
       "url": "db.connection_string", "database_version": "aws.xray.sql.database_version",
       "driver_version": "aws.xray.sql.driver_version", "preparation": "aws.xray.sql.preparation",
       "connection_string": "aws.xray.sql.connection_string"}
AWS_SPAN = {"operation": "aws.operation", "account_id": "aws.account_id",
            "region": "aws.region", "request_id": "aws.request_id",
            "queue_url": "aws.queue_url", "table_name": "aws.table_name",
            "retries": "aws.xray.retries", "bucket_name": "aws.s3.bucket", "key": "aws.s3.key",
            "resource_names": "aws.xray.resource_names"}
_DB_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/]*@)?([^/:?#]+)(?::(\d+))?(?:/([^?#]+))?")


@dataclass
class Report:
    """What a conversion left out, by reason (e.g. ``"subsegment_id"``, ``"http.response"``);
    ``documents`` counts documents that gave no span at all."""

    spans: int = 0
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


class Unconvertible(ValueError):
    """A document that gives no span (not JSON, not an object, no usable ids); the message is
    the reason, short enough for a counter label."""


# ---------------------------------------------------------------------------------------------
# Values


def any_value(value: Any, depth: int = 0) -> AnyValue | None:
    """A JSON value as an OTLP AnyValue; None for null (and for nesting beyond MAX_DEPTH)."""
    if value is None or depth > MAX_DEPTH:
        return None
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        items = [v for v in (any_value(item, depth + 1) for item in value) if v is not None]
        return AnyValue(array_value=ArrayValue(values=items))
    if isinstance(value, dict):
        pairs = [KeyValue(key=str(k), value=v) for k, v in
                 ((k, any_value(item, depth + 1)) for k, item in value.items()) if v is not None]
        return AnyValue(kvlist_value=KeyValueList(values=pairs))
    return AnyValue(string_value=str(value))


class _Attrs:
    """Attributes in insertion order, a later value for the same key replacing the earlier.
    Values stay Python values until ``write`` puts them into a message's repeated field in
    place (building AnyValue messages first and adding them would copy each one)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        if value is not None:
            self.values[key] = value

    def write(self, field: Any) -> None:
        """Append the attributes to a repeated KeyValue field."""
        for key, value in self.values.items():
            kind = type(value)
            if kind is str:
                field.add(key=key).value.string_value = value
            elif kind is bool:
                field.add(key=key).value.bool_value = value
            elif kind is int and _INT64[0] <= value <= _INT64[1]:
                field.add(key=key).value.int_value = value
            elif kind is float:
                field.add(key=key).value.double_value = value
            else:
                converted = any_value(value)
                if converted is not None:
                    field.add(key=key).value.CopyFrom(converted)

    def key_values(self) -> list[KeyValue]:
        holder = Resource()
        self.write(holder.attributes)
        return list(holder.attributes)


def _nanos(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < 9.2e9:
        return None
    seconds = int(value)
    # The fraction apart: float seconds near 1.8e9 times 1e9 would lose the last digits.
    return seconds * 1_000_000_000 + round((value - seconds) * 1e9)


def _int(value: Any) -> int | None:
    """An integer from a number or a numeric string (SDKs write content_length both ways)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return parse_uint(value)
    return None


# ---------------------------------------------------------------------------------------------
# Resource


def resource_of(doc: Mapping[str, Any], report: Report, resource: Resource | None = None
                ) -> Resource:
    attrs = _Attrs()
    is_segment = doc.get("type") != "subsegment"
    name = doc.get("name")
    if is_segment and isinstance(name, str) and name:
        attrs.put("service.name", name)
    aws = doc.get("aws")
    attrs.put("cloud.provider", "aws" if isinstance(aws, dict) else "unknown")
    origin = doc.get("origin")
    if isinstance(origin, str) and origin:
        attrs.put("aws.xray.origin", origin)
        platform, launch = ORIGINS.get(origin, ("", ""))
        if platform:
            attrs.put("cloud.platform", platform)
        if launch:
            attrs.put("aws.ecs.launchtype", launch)
    if isinstance(aws, dict):
        _aws_resource(aws, attrs, report)
    service = doc.get("service")
    if isinstance(service, dict):
        for key, target in (("version", "service.version"), ("runtime", "process.runtime.name"),
                            ("runtime_version", "process.runtime.version")):
            if isinstance(service.get(key), str):
                attrs.put(target, service[key])
    arn = doc.get("resource_arn")
    if isinstance(arn, str) and arn:
        attrs.put("aws.xray.resource_arn", arn)
        attrs.put("cloud.resource_id", arn)
    if resource is None:
        resource = Resource()
    attrs.write(resource.attributes)
    return resource


def _aws_resource(aws: Mapping[str, Any], attrs: _Attrs, report: Report) -> None:
    if isinstance(aws.get("account_id"), str):
        attrs.put("cloud.account.id", aws["account_id"])
    blocks = {
        "ec2": (("availability_zone", "cloud.availability_zone"), ("instance_id", "host.id"),
                ("instance_size", "host.type"), ("ami_id", "host.image.id")),
        "ecs": (("container", "container.name"), ("container_id", "container.id"),
                ("availability_zone", "cloud.availability_zone"),
                ("task_arn", "aws.ecs.task.arn"), ("task_family", "aws.ecs.task.family"),
                ("cluster_arn", "aws.ecs.cluster.arn")),
        "eks": (("cluster_name", "k8s.cluster.name"), ("pod", "k8s.pod.name"),
                ("container_id", "container.id")),
        "elastic_beanstalk": (("environment_name", "service.namespace"),
                              ("deployment_id", "service.instance.id"),
                              ("version_label", "service.version")),
        "lambda": (("function_arn", "cloud.resource_id"), ("name", "faas.name"),
                   ("function_version", "faas.version")),
    }
    for block, fields in blocks.items():
        data = aws.get(block)
        if data is None:
            continue
        if not isinstance(data, dict):
            report.skipped[f"aws.{block}"] += 1
            continue
        for source, target in fields:
            value = data.get(source)
            if isinstance(value, str | int) and not isinstance(value, bool):
                attrs.put(target, str(value))
    xray = aws.get("xray")
    if isinstance(xray, dict):
        sdk = xray.get("sdk")
        if isinstance(sdk, str) and sdk:
            attrs.put("telemetry.sdk.name", sdk)
            _, sep, language = sdk.partition(" for ")
            if sep and language:
                attrs.put("telemetry.sdk.language", language.strip().lower())
        if isinstance(xray.get("sdk_version"), str):
            attrs.put("telemetry.sdk.version", xray["sdk_version"])
    logs = aws.get("cloudwatch_logs")
    if isinstance(logs, list):
        groups = [g for g in logs if isinstance(g, dict)]
        names = [g["log_group"] for g in groups if isinstance(g.get("log_group"), str)]
        arns = [g["arn"] for g in groups if isinstance(g.get("arn"), str)]
        if names:
            attrs.put("aws.log.group.names", names)
        if arns:
            attrs.put("aws.log.group.arns", arns)


# ---------------------------------------------------------------------------------------------
# Spans


@dataclass
class _Context:
    trace_id: bytes
    report: Report
    spans: Any  # the ScopeSpans' repeated Span field: spans are built in place (no copies)


def _kind(entity: Mapping[str, Any], top_level: bool) -> Span.SpanKind.ValueType:
    namespace = entity.get("namespace")
    if namespace in ("remote", "aws"):
        return KIND_CLIENT
    if top_level and entity.get("type") != "subsegment":
        return KIND_SERVER
    return KIND_INTERNAL


def _span(entity: Mapping[str, Any], span_id: bytes, parent: bytes, top_level: bool,
          ctx: _Context) -> Span:
    """The span of one (sub)segment, appended to the scope's spans."""
    report = ctx.report
    attrs = _Attrs()
    name = entity.get("name")
    if not isinstance(name, str):
        report.skipped["name"] += 1
        name = ""
    kind = _kind(entity, top_level)
    start = _nanos(entity.get("start_time"))
    if start is None:
        report.skipped["start_time"] += 1
        start = 0
    end = _nanos(entity.get("end_time"))
    if entity.get("in_progress") is True or end is None:
        if entity.get("in_progress") is not True and "end_time" in entity:
            report.skipped["end_time"] += 1
        attrs.put("aws.xray.inprogress", True)
        end = start
    annotations = entity.get("annotations")
    if isinstance(annotations, dict) and annotations:
        kept = []
        for key, value in annotations.items():
            if isinstance(value, str | int | float | bool) and (
                    not isinstance(value, int) or isinstance(value, bool)
                    or _INT64[0] <= value <= _INT64[1]):
                attrs.put(key, value)
                kept.append(key)
            else:
                report.skipped["annotation"] += 1
        if kept:
            attrs.put("aws.xray.annotations", kept)
    elif annotations is not None and not isinstance(annotations, dict):
        report.skipped["annotations"] += 1
    namespace = entity.get("namespace")
    if isinstance(namespace, str) and namespace not in ("remote", "aws", "local", ""):
        attrs.put("aws.xray.namespace", namespace)
    if namespace == "aws":
        attrs.put("aws.service", name)
        attrs.put("rpc.system", "aws-api")
        attrs.put("rpc.service", name)
    if entity.get("type") == "subsegment" and top_level:
        attrs.put("aws.xray.type", "subsegment")
    user = entity.get("user")
    if isinstance(user, str) and user:
        attrs.put("enduser.id", user)
    http_status = _http(entity.get("http"), attrs, report)
    _aws_span(entity.get("aws"), attrs, report)
    _sql(entity.get("sql"), attrs, report)
    _metadata(entity.get("metadata"), attrs, report)
    for flag in ("error", "fault", "throttle"):
        if entity.get(flag) is True:
            attrs.put(f"aws.xray.{flag}", True)
    traced = entity.get("traced")
    if isinstance(traced, bool):
        attrs.put("aws.xray.traced", traced)
    precursors = entity.get("precursor_ids")
    if isinstance(precursors, list):
        attrs.put("aws.xray.precursor_ids", [p for p in precursors if isinstance(p, str)])
    events, message = _cause(entity.get("cause"), end, attrs, report)
    span = ctx.spans.add(trace_id=ctx.trace_id, span_id=span_id, parent_span_id=parent,
                         name=name, kind=kind, start_time_unix_nano=start,
                         end_time_unix_nano=end)
    if events:
        span.events.extend(events)
    links = _links(entity.get("links"), report)
    if links:
        span.links.extend(links)
    errored = (entity.get("fault") is True or entity.get("cause") is not None
               or (http_status is not None and http_status >= 500))
    client_error = entity.get("error") is True or entity.get("throttle") is True or (
        http_status is not None and 400 <= http_status < 500)
    # OTel's conventions: a 4xx is the client's error, so not an error status for a server span.
    if errored or (client_error and kind != KIND_SERVER):
        span.status.code = STATUS_ERROR
        if message:
            span.status.message = message
    attrs.write(span.attributes)
    return span


def _http(http: Any, attrs: _Attrs, report: Report) -> int | None:
    """HTTP fields as attributes; the response status (None when absent)."""
    if http is None:
        return None
    if not isinstance(http, dict):
        report.skipped["http"] += 1
        return None
    status = None
    for part, table in (("request", HTTP_REQUEST), ("response", HTTP_RESPONSE)):
        block = http.get(part)
        if block is None:
            continue
        if not isinstance(block, dict):
            report.skipped[f"http.{part}"] += 1
            continue
        for key, value in block.items():
            target = table.get(key, f"aws.xray.http.{part}.{key}")
            if key in ("status", "content_length"):
                number = _int(value)
                if number is None:
                    report.skipped[f"http.{part}.{key}"] += 1
                    continue
                if key == "status":
                    status = number
                attrs.put(target, number)
            elif isinstance(value, str | bool | int | float):
                attrs.put(target, value)
            else:
                report.skipped[f"http.{part}.{key}"] += 1
    return status


def _aws_span(aws: Any, attrs: _Attrs, report: Report) -> None:
    if aws is None:
        return
    if not isinstance(aws, dict):
        report.skipped["aws"] += 1
        return
    for key, target in AWS_SPAN.items():
        value = aws.get(key)
        if value is None:
            continue
        if key == "retries":
            number = _int(value)
            if number is None:
                report.skipped["aws.retries"] += 1
                continue
            value = number
        elif key == "resource_names":
            if not isinstance(value, list):
                report.skipped["aws.resource_names"] += 1
                continue
            value = [v for v in value if isinstance(v, str)]
        elif not isinstance(value, str):
            report.skipped[f"aws.{key}"] += 1
            continue
        attrs.put(target, value)
        if key == "operation":
            attrs.put("rpc.method", value)


def _sql(sql: Any, attrs: _Attrs, report: Report) -> None:
    if sql is None:
        return
    if not isinstance(sql, dict):
        report.skipped["sql"] += 1
        return
    for key, value in sql.items():
        if not isinstance(value, str):
            report.skipped[f"sql.{key}"] += 1
            continue
        attrs.put(SQL.get(key, f"aws.xray.sql.{key}"), value)
    url = sql.get("url")
    if isinstance(url, str):
        match = _DB_URL.match(url)
        if match is None:
            return  # kept whole in db.connection_string; no host or database to take from it
        host, port, database = match.groups()
        attrs.put("server.address", host)
        if port:
            attrs.put("server.port", int(port))
        if database:
            attrs.put("db.namespace", database)


def _metadata(metadata: Any, attrs: _Attrs, report: Report) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        report.skipped["metadata"] += 1
        return
    for namespace, value in metadata.items():
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            report.skipped["metadata"] += 1
            continue
        attrs.put(f"aws.xray.metadata.{namespace}", text)


def _stacktrace(exception: Mapping[str, Any]) -> str:
    lines = [f"{exception.get('type') or ''}: {exception.get('message') or ''}"]
    for frame in exception.get("stack") or ():
        if not isinstance(frame, dict):
            continue
        line = frame.get("line")
        lines.append(f"\tat {frame.get('label') or ''}({frame.get('path') or ''}: "
                     f"{line if isinstance(line, int) else '<unknown>'})")
    return "\n".join(lines) + "\n"


def _cause(cause: Any, when: int, attrs: _Attrs,
           report: Report) -> tuple[list[Span.Event], str]:
    """Exception events and the status message of a ``cause``."""
    if cause is None:
        return [], ""
    if isinstance(cause, str):
        return [], cause  # the id of an exception recorded in another subsegment
    if not isinstance(cause, dict):
        report.skipped["cause"] += 1
        return [], ""
    if isinstance(cause.get("working_directory"), str):
        attrs.put("aws.xray.cause.working_directory", cause["working_directory"])
    paths = cause.get("paths")
    if isinstance(paths, list):
        attrs.put("aws.xray.cause.paths", [p for p in paths if isinstance(p, str)])
    events = []
    message = ""
    exceptions = cause.get("exceptions")
    if exceptions is not None and not isinstance(exceptions, list):
        report.skipped["cause.exceptions"] += 1
        exceptions = []
    for exception in exceptions or ():
        if not isinstance(exception, dict):
            report.skipped["cause.exception"] += 1
            continue
        event = _Attrs()
        for key, target, kinds in (
                ("id", "aws.xray.exception.id", str), ("message", "exception.message", str),
                ("type", "exception.type", str), ("remote", "aws.xray.exception.remote", bool),
                ("truncated", "aws.xray.exception.truncated", int),
                ("skipped", "aws.xray.exception.skipped", int),
                ("cause", "aws.xray.exception.cause", str)):
            value = exception.get(key)
            if isinstance(value, kinds) and (kinds is bool or not isinstance(value, bool)):
                event.put(target, value)
        if isinstance(exception.get("stack"), list) and exception["stack"]:
            event.put("exception.stacktrace", _stacktrace(exception))
        if not message and isinstance(exception.get("message"), str):
            message = exception["message"]
        events.append(Span.Event(time_unix_nano=when, name="exception",
                                 attributes=event.key_values()))
    return events, message


def _links(links: Any, report: Report) -> list[Span.Link]:
    if not isinstance(links, list):
        if links is not None:
            report.skipped["links"] += 1
        return []
    result = []
    for link in links:
        try:
            trace_id = otel_trace_id(str(link["trace_id"]).lower())
            span_id = otel_span_id(str(link["id"]).lower())
        except (KeyError, TypeError, IdError):
            report.skipped["link"] += 1
            continue
        attrs = _Attrs()
        extra = link.get("attributes")
        if isinstance(extra, dict):
            for key, value in extra.items():
                attrs.put(str(key), value)
        result.append(Span.Link(trace_id=trace_id, span_id=span_id,
                                attributes=attrs.key_values()))
    return result


def _walk(entity: Mapping[str, Any], span_id: bytes, parent: bytes, top_level: bool,
          ctx: _Context, depth: int) -> Span:
    span = _span(entity, span_id, parent, top_level, ctx)
    children = entity.get("subsegments")
    if children is None:
        return span
    if not isinstance(children, list):
        ctx.report.skipped["subsegments"] += 1
        return span
    _children(children, span_id, ctx, depth + 1)
    return span


def _children(children: Iterable[Any], parent_id: bytes, ctx: _Context, depth: int) -> None:
    for child in children:
        if depth > MAX_DEPTH:
            ctx.report.skipped["depth"] += 1
            continue
        if not isinstance(child, dict):
            ctx.report.skipped["subsegment"] += 1
            continue
        try:
            child_id = otel_span_id(str(child.get("id", "")).lower())
            if not any(child_id):
                raise IdError("span id is all zeros")
        except IdError:
            # Left out; its own subsegments hang from the nearest usable ancestor.
            ctx.report.skipped["subsegment_id"] += 1
            grand = child.get("subsegments")
            if isinstance(grand, list):
                _children(grand, parent_id, ctx, depth + 1)
            continue
        _walk(child, child_id, parent_id, False, ctx, depth)


def resource_spans(doc: Mapping[str, Any], report: Report) -> ResourceSpans:
    """One parsed document as a ResourceSpans; Unconvertible when it has no usable trace or
    segment id."""
    trace_text = doc.get("trace_id")
    if not isinstance(trace_text, str):
        raise Unconvertible("trace_id")
    try:
        trace_id = otel_trace_id(trace_text.lower())
    except IdError:
        raise Unconvertible("trace_id") from None
    try:
        span_id = otel_span_id(str(doc.get("id", "")).lower())
    except IdError:
        raise Unconvertible("id") from None
    if not any(trace_id):
        raise Unconvertible("trace_id")  # all zeros: an invalid id in OTLP
    if not any(span_id):
        raise Unconvertible("id")
    parent = b""
    parent_text = doc.get("parent_id")
    if parent_text is not None:
        try:
            parent = otel_span_id(str(parent_text).lower())
        except IdError:
            report.skipped["parent_id"] += 1
        if parent and not any(parent):
            parent = b""
            report.skipped["parent_id"] += 1
    result = ResourceSpans()
    scope = result.scope_spans.add()
    scope.scope.CopyFrom(SCOPE)
    ctx = _Context(trace_id, report, scope.spans)
    _walk(doc, span_id, parent, True, ctx, 0)
    report.spans += len(scope.spans)
    resource_of(doc, report, result.resource)
    return result


def convert(document: bytes, report: Report) -> ResourceSpans | None:
    """A segment document's JSON as a ResourceSpans; None (counted in ``report``, with the
    reason in ``skipped["document:<reason>"]``) when it gives no span."""
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError:
        reason = "json"
    else:
        if not isinstance(doc, dict):
            reason = "not_an_object"
        else:
            try:
                return resource_spans(doc, report)
            except Unconvertible as exc:
                reason = str(exc)
            except RecursionError:
                reason = "nesting"
            except Exception:  # a bug must cost this document, not its batch
                reason = "conversion_failed"
    report.documents += 1
    report.skipped[f"document:{reason}"] += 1
    return None
