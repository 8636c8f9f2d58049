"""OTLP spans → X-Ray segment documents, with the OpenTelemetry Collector's AWS X-Ray exporter
(exporter/awsxrayexporter/internal/translator) as the reference mapping. Pure: an
``ExportTraceServiceRequest`` in, JSON documents (bytes) and counted rejections out.

One span becomes one document. SERVER and CONSUMER spans and spans without a parent become
segments named after the service; the others become independent subsegments (``type``,
``parent_id``) named after what they call. Unlike the Collector, the trace id's epoch is not
checked here: the offline store keeps any id, and X-Ray's own answer (UnprocessedTraceSegments)
is counted by the uploader like for any segment.
"""

from __future__ import annotations

import base64
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from xrayd.numbers import parse_uint
from xrayd.otel import Options
from xrayd.otel import semconv as sc
from xrayd.otel.ids import IdError, xray_span_id, xray_trace_id

# Span kinds and status codes of opentelemetry.proto.trace.v1 (numbers, so this module does
# not need the generated classes).
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5
KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
              5: "CONSUMER"}
STATUS_ERROR = 2

MAX_NAME = 200
_NAME_JUNK = re.compile(r"[^\w\s.:/%&#=+\\\-@]")
_KEY_JUNK = re.compile(r"[^A-Za-z0-9]")


class Reason:
    """Why a span could not become a segment; each value is a counter label."""

    TRACE_ID = "bad_trace_id"
    SPAN_ID = "bad_span_id"
    PARENT_ID = "bad_parent_id"
    CONVERSION = "conversion_failed"  # a value the conversion could not handle


@dataclass
class Converted:
    documents: list[bytes] = field(default_factory=list)
    spans: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)  # a few examples for the logs/answers


def _random_id() -> str:
    return os.urandom(8).hex()


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as plain Python (bytes as base64 text, as OTLP/JSON writes them)."""
    kind = value.WhichOneof("value")
    if kind == "int_value":  # the common case after strings (read by ``attributes`` first)
        return value.int_value
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        value = kv.value
        text = value.string_value  # most attributes are strings: one access instead of two
        out[kv.key] = text if text else any_value(value)
    return out


def _first(attrs: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return parse_uint(value)
    return None


def fix_name(name: str) -> str:
    """A segment name X-Ray accepts: allowed characters only, at most 200, never empty."""
    name = _NAME_JUNK.sub("", name)[:MAX_NAME]
    return name or "span"


def fix_annotation_key(key: str) -> str:
    return _KEY_JUNK.sub("_", key)


# -- resource: computed once per ResourceSpans ---------------------------------------------------


@dataclass
class ResourceFacts:
    service: str
    language: str
    origin: str | None
    aws: dict[str, Any]
    service_block: dict[str, Any] | None
    metadata: dict[str, Any]  # otel.resource.* for the segment's default metadata


def resource_facts(attrs: dict[str, Any]) -> ResourceFacts:
    aws: dict[str, Any] = {}
    get = attrs.get
    is_aws = get(sc.CLOUD_PROVIDER) == "aws"
    platform = get(sc.CLOUD_PLATFORM)
    origin = None
    if is_aws or get(sc.CLOUD_PROVIDER) is None:
        origin = sc.ORIGINS.get(platform) if isinstance(platform, str) else None
        if platform == "aws_ecs":
            origin = sc.ECS_ORIGINS.get(str(get(sc.ECS_LAUNCH, "")).lower(), origin)
    if is_aws:
        if get(sc.CLOUD_ACCOUNT):
            aws["account_id"] = get(sc.CLOUD_ACCOUNT)
        if platform == "aws_ec2":
            aws["ec2"] = _present(instance_id=get(sc.HOST_ID),
                                  availability_zone=get(sc.CLOUD_ZONE),
                                  instance_size=get(sc.HOST_TYPE), ami_id=get(sc.HOST_IMAGE))
        elif platform == "aws_ecs":
            aws["ecs"] = _present(container=get(sc.HOST_NAME) or get(sc.CONTAINER_NAME),
                                  container_id=get(sc.CONTAINER_ID),
                                  availability_zone=get(sc.CLOUD_ZONE),
                                  cluster_arn=get(sc.ECS_CLUSTER), task_arn=get(sc.ECS_TASK),
                                  task_family=get(sc.ECS_FAMILY),
                                  launch_type=get(sc.ECS_LAUNCH))
        elif platform == "aws_eks":
            aws["eks"] = _present(cluster_name=_first(attrs, sc.EKS_CLUSTER),
                                  pod=get(sc.K8S_POD), container_id=get(sc.CONTAINER_ID))
        elif platform == "aws_elastic_beanstalk":
            aws["elastic_beanstalk"] = _present(environment_name=get(sc.EB_ENVIRONMENT),
                                                deployment_id=_int(get(sc.EB_DEPLOYMENT)),
                                                version_label=get(sc.SERVICE_VERSION))
        elif platform == "aws_lambda":
            aws["lambda"] = _present(function_name=get(sc.FAAS_NAME),
                                     function_version=get(sc.FAAS_VERSION))
    names, arns = get(sc.LOG_GROUP_NAMES), get(sc.LOG_GROUP_ARNS)
    if isinstance(names, list) and names:
        arn_list = arns if isinstance(arns, list) else []
        aws["cloudwatch_logs"] = [
            _present(log_group=name, arn=arn_list[i] if i < len(arn_list) else None)
            for i, name in enumerate(names)
        ]
    xray = _present(sdk=get(sc.SDK_NAME), sdk_version=get(sc.SDK_VERSION))
    if _first(attrs, sc.AUTO_VERSION) is not None:
        xray["auto_instrumentation"] = True
    if xray:
        aws["xray"] = xray
    version = get(sc.SERVICE_VERSION)
    service = get(sc.SERVICE_NAME)
    return ResourceFacts(
        service=service if isinstance(service, str) else "",
        language=str(get(sc.SDK_LANGUAGE) or ""),
        origin=origin,
        aws=aws,
        service_block={"version": str(version)} if version is not None else None,
        metadata={f"otel.resource.{k}": v for k, v in attrs.items() if v is not None},
    )


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}


# -- span parts ------------------------------------------------------------------------------


def _first2(attrs: dict[str, Any], names: tuple[str, str]) -> Any:
    """``_first`` for the common two names (new convention, old one), without a loop."""
    value = attrs.get(names[0])
    if value is not None and value != "":
        return value
    value = attrs.get(names[1])
    return value if value is not None and value != "" else None


def http_block(attrs: dict[str, Any], kind: int) -> dict[str, Any] | None:
    method = _first2(attrs, sc.HTTP_METHOD)
    status = _int(_first2(attrs, sc.HTTP_STATUS))
    url = _first2(attrs, sc.HTTP_URL)
    if method is None and status is None and url is None:
        return None
    request: dict[str, Any] = {}
    if method is not None:
        request["method"] = str(method)
    if url is None:
        url = _build_url(attrs, kind)
    if url is not None:
        request["url"] = str(url)
    keys = attrs.keys()
    agent = _first(attrs, sc.USER_AGENT) if not keys.isdisjoint(sc.USER_AGENT) else None
    if agent is not None:
        request["user_agent"] = str(agent)
    client_ip = _first(attrs, sc.CLIENT_IP) if kind == SERVER else None
    if client_ip is not None:
        request["client_ip"] = str(client_ip)
        if "http.client_ip" in attrs:  # the X-Forwarded-For address, as the Collector says
            request["x_forwarded_for"] = True
    response: dict[str, Any] = {}
    if status is not None:
        response["status"] = status
    length = (_int(_first(attrs, sc.RESPONSE_LENGTH))
              if not keys.isdisjoint(sc.RESPONSE_LENGTH) else None)
    if length is not None:
        response["content_length"] = length
    block: dict[str, Any] = {}
    if request:
        block["request"] = request
    if response:
        block["response"] = response
    return block


def _build_url(attrs: dict[str, Any], kind: int) -> str | None:
    target = _first(attrs, sc.HTTP_TARGET)
    if target is None and attrs.get(sc.URL_PATH) is not None:
        target = str(attrs[sc.URL_PATH])
        if attrs.get(sc.URL_QUERY):
            target += "?" + str(attrs[sc.URL_QUERY])
    host = _first(attrs, sc.HTTP_HOST if kind == SERVER else sc.PEER_NAME)
    if host is None:
        return str(target) if target is not None else None
    scheme = str(_first(attrs, sc.HTTP_SCHEME) or "http")
    port = _first(attrs, sc.HTTP_PORT if kind == SERVER else sc.PEER_PORT)
    url = f"{scheme}://{host}"
    if port is not None and ":" not in str(host) and (scheme, str(port)) not in (
            ("http", "80"), ("https", "443")):
        url += f":{port}"
    return url + (str(target) if target is not None else "/")


def sql_block(attrs: dict[str, Any]) -> dict[str, Any] | None:
    system = _first(attrs, sc.DB_SYSTEM)
    if system is None or str(system) not in sc.SQL_SYSTEMS:
        return None
    block = _present(database_type=str(system),
                     sanitized_query=_first(attrs, sc.DB_STATEMENT),
                     user=_first(attrs, sc.DB_USER))
    connection = _first(attrs, sc.DB_CONNECTION)
    name = _first(attrs, sc.DB_NAME)
    if connection is not None:
        block["url"] = f"{connection}/{name}" if name is not None else str(connection)
    elif name is not None:
        block["url"] = str(name)
    return block


def is_aws_sdk(attrs: dict[str, Any]) -> bool:
    return attrs.get(sc.RPC_SYSTEM) == sc.AWS_API


def aws_span_block(attrs: dict[str, Any]) -> dict[str, Any]:
    operation = _first(attrs, sc.AWS_OPERATION)
    if operation is None and is_aws_sdk(attrs):
        operation = attrs.get(sc.RPC_METHOD)
    block = _present(operation=operation, region=_first(attrs, sc.AWS_REGION),
                     request_id=_first(attrs, sc.AWS_REQUEST_ID),
                     queue_url=_first(attrs, sc.AWS_QUEUE_URL),
                     table_name=_first(attrs, sc.AWS_TABLE_NAME),
                     account_id=_first(attrs, sc.AWS_ACCOUNT))
    tables = attrs.get(sc.AWS_TABLE_NAMES)
    if "table_name" not in block and isinstance(tables, list) and tables:
        if len(tables) == 1:
            block["table_name"] = tables[0]
        else:
            block["table_names"] = tables
    return block


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. "http://[": not a URL after all
        return None


_EARLY_NAMES = frozenset((sc.PEER_SERVICE, *sc.AWS_SERVICE, sc.RPC_SERVICE))


def subsegment_name(attrs: dict[str, Any], kind: int, span_name: str,
                    aws_sdk: bool | None = None) -> str:
    """What a subsegment calls, in the Collector's order of preference."""
    if aws_sdk is None:
        aws_sdk = is_aws_sdk(attrs)
    if kind in (CLIENT, PRODUCER, CONSUMER):
        remote = attrs.get(sc.AWS_REMOTE_SERVICE)
        if isinstance(remote, str) and remote:
            if aws_sdk:
                remote = remote.removeprefix("AWS::").removeprefix("AWS.SDK.")
            return remote
    keys = attrs.keys()
    if not keys.isdisjoint(_EARLY_NAMES):
        for value in (attrs.get(sc.PEER_SERVICE), _first(attrs, sc.AWS_SERVICE),
                      attrs.get(sc.RPC_SERVICE) if aws_sdk else None):
            if isinstance(value, str) and value:
                return value
    db_name = _first(attrs, sc.DB_NAME) if not keys.isdisjoint(sc.DB_NAME) else None
    if db_name is not None:
        name = str(db_name)
        connection = _first(attrs, sc.DB_CONNECTION)
        host = _host_of(str(connection).removeprefix("jdbc:")) if connection else None
        host = host or _first(attrs, sc.PEER_NAME)
        return f"{name}@{host}" if host else name
    for value in (attrs.get(sc.RPC_SERVICE), _first(attrs, sc.PEER_NAME)):
        if isinstance(value, str) and value:
            return value
    url = _first(attrs, sc.HTTP_URL)
    if isinstance(url, str) and kind == CLIENT:
        host = _host_of(url)
        if host:
            return host
    return span_name


# -- exceptions --------------------------------------------------------------------------------

_PY_FRAME = re.compile(r'\s*File "([^"]*)", line (\d+), in (.*)')
# "at loader/module@version/pkg.Class.method(File.java:12)": the prefix up to the last "/" goes
_JAVA_FRAME = re.compile(r"\s*at (?:[^(]*/)?([^(/]+)\(([^:)]*)(?::(\d+))?\)")
_JS_FRAME = re.compile(r"\s*at (?:(.*?) \()?([^()]*?):(\d+):\d+\)?\s*$")
MAX_FRAMES = 100


def stack_frames(stacktrace: str, language: str) -> list[dict[str, Any]]:
    """Frames of a stack trace as X-Ray ``stack`` entries (path, line, label), innermost first."""
    frames: list[dict[str, Any]] = []
    lines = stacktrace.splitlines()
    if language == "python":
        for line in reversed(lines):  # Python prints the innermost frame last
            match = _PY_FRAME.match(line)
            if match:
                frames.append({"path": match[1], "line": int(match[2]), "label": match[3]})
    elif language in ("java", "php", "dotnet"):
        for line in lines:
            match = _JAVA_FRAME.match(line)
            if match:
                frames.append({"path": match[2], "line": int(match[3] or 0),
                               "label": match[1]})
    elif language in ("nodejs", "javascript", "webjs"):
        for line in lines:
            match = _JS_FRAME.match(line)
            if match:
                frames.append({"path": match[2], "line": int(match[3]),
                               "label": match[1] or ""})
    return frames[:MAX_FRAMES]


def cause_block(events: list[tuple[str, dict[str, Any]]], status_code: int, status_message: str,
                kind: int, language: str, new_id: Callable[[], str]) -> dict[str, Any] | None:
    exceptions = []
    remote = kind in (CLIENT, PRODUCER)
    for name, attrs in events:
        if name != sc.EXCEPTION_EVENT:
            continue
        entry = _present(id=new_id(), type=attrs.get(sc.EXCEPTION_TYPE),
                         message=attrs.get(sc.EXCEPTION_MESSAGE))
        if remote:
            entry["remote"] = True
        trace = attrs.get(sc.EXCEPTION_STACKTRACE)
        if isinstance(trace, str) and trace:
            frames = stack_frames(trace, language)
            if frames:
                entry["stack"] = frames
        exceptions.append(entry)
    if not exceptions and status_code == STATUS_ERROR and status_message:
        exceptions.append({"id": new_id(), "message": status_message})
    return {"exceptions": exceptions} if exceptions else None


def error_flags(status_code: int, http_status: int | None) -> tuple[bool, bool, bool]:
    """(error, throttle, fault) from the HTTP status when it is 4xx/5xx, else the span status."""
    if http_status is not None and 400 <= http_status <= 499:
        return True, http_status == 429, False
    if http_status is not None and 500 <= http_status <= 599:
        return False, False, True
    return False, False, status_code == STATUS_ERROR


# -- one span --------------------------------------------------------------------------------


def _annotation_value(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    return None


_ZERO_SPAN = bytes(8)
_HTTP_TRIGGERS = frozenset((*sc.HTTP_METHOD, *sc.HTTP_STATUS, *sc.HTTP_URL))
_SQL_TRIGGERS = frozenset(sc.DB_SYSTEM)
_AWS_TRIGGERS = sc.AWS_KEYS | {"messaging.url"}


def _trace_id(raw: bytes, known: dict[bytes, str]) -> str:
    try:
        return known[raw]
    except KeyError:
        pass
    try:
        text = xray_trace_id(raw)
    except IdError as exc:
        raise IdError(str(exc), Reason.TRACE_ID) from None
    if len(known) < 4096:
        known[raw] = text
    return text


def _span_id(raw: bytes, reason: str, what: str = "") -> str:
    if len(raw) == 8 and raw != _ZERO_SPAN:
        return raw.hex()
    try:
        return xray_span_id(raw)  # raises with the message
    except IdError as exc:
        raise IdError(f"{what}{exc}", reason) from None


@dataclass
class _Caches:
    """What the spans of one request share: id and name conversions (bounded), and the
    attribute names that never reach the metadata (from the options, computed once)."""

    options: Options
    trace_ids: dict[bytes, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()  # with no annotations to make: not in metadata
    skip_sql: frozenset[str] = frozenset()  # the same when the span has a sql block
    fast_split: bool = False

    def __post_init__(self) -> None:
        options = self.options
        self.fast_split = not options.indexed_attributes and not options.index_all_attributes
        self.skip = _CONSUMED
        self.skip_sql = _CONSUMED | sc.DB_KEYS


_MAX_CACHED = 4096


def span_document(span: Any, resource: ResourceFacts, scope: dict[str, Any] | None,
                  options: Options, new_id: Callable[[], str] = _random_id,
                  trace_ids: dict[bytes, str] | None = None,
                  caches: _Caches | None = None) -> dict[str, Any]:
    """The segment document of one span; IdError (with Reason in ``args[1]``) when its ids
    cannot be X-Ray's. ``caches`` are shared across the spans of a request (``trace_ids``:
    the id conversions only). The conversion's hot path: one read of each protobuf field,
    dict literals, and the common cases first."""
    if caches is None:
        caches = _Caches(options)
        if trace_ids is not None:
            caches.trace_ids = trace_ids
    trace_id = _trace_id(span.trace_id, caches.trace_ids)
    raw = span.span_id
    segment_id = raw.hex() if len(raw) == 8 and raw != _ZERO_SPAN else _span_id(
        raw, Reason.SPAN_ID)
    parent = span.parent_span_id
    if not parent:
        parent_id = None
    elif len(parent) == 8 and parent != _ZERO_SPAN:
        parent_id = parent.hex()
    else:
        parent_id = _span_id(parent, Reason.PARENT_ID, "parent ")
    kind = span.kind
    span_name = span.name
    attrs = attributes(span.attributes)
    get = attrs.get
    keys = attrs.keys()
    is_segment = kind in (SERVER, CONSUMER) or parent_id is None
    aws_sdk = get(sc.RPC_SYSTEM) == sc.AWS_API
    if is_segment:
        local = get(sc.AWS_LOCAL_SERVICE)
        name = local if isinstance(local, str) and local else resource.service or span_name
    else:
        name = subsegment_name(attrs, kind, span_name, aws_sdk)
    names = caches.names
    fixed = names.get(name)
    if fixed is None:
        fixed = fix_name(name)
        if len(names) < _MAX_CACHED:
            names[name] = fixed
    end = span.end_time_unix_nano
    if end:
        doc: dict[str, Any] = {"name": fixed, "id": segment_id, "trace_id": trace_id,
                               "start_time": span.start_time_unix_nano / 1e9,
                               "end_time": end / 1e9}
    else:
        doc = {"name": fixed, "id": segment_id, "trace_id": trace_id,
               "start_time": span.start_time_unix_nano / 1e9, "in_progress": True}
    if parent_id is not None:
        doc["parent_id"] = parent_id
    if not is_segment:
        doc["type"] = "subsegment"
        if aws_sdk or (not keys.isdisjoint(sc.AWS_SERVICE)
                       and _first(attrs, sc.AWS_SERVICE) is not None):
            doc["namespace"] = "aws"
        elif kind in (CLIENT, PRODUCER):
            doc["namespace"] = "remote"
    elif resource.origin:
        doc["origin"] = resource.origin

    http_status = None
    if not keys.isdisjoint(_HTTP_TRIGGERS):
        http = http_block(attrs, kind)
        if http is not None:
            doc["http"] = http
            response = http.get("response")
            if response is not None:
                http_status = response.get("status")
    status = span.status
    code = status.code
    status_message = status.message
    raw_events = span.events
    events = [(event.name, attributes(event.attributes)) for event in raw_events
              ] if raw_events else []
    if http_status is not None and 400 <= http_status <= 499:
        doc["error"] = True
        if http_status == 429:
            doc["throttle"] = True
    elif (http_status is not None and 500 <= http_status <= 599) or code == STATUS_ERROR:
        doc["fault"] = True
    if events or code == STATUS_ERROR:
        cause = cause_block(events, code, status_message, kind, resource.language, new_id)
        if cause is not None:
            doc["cause"] = cause

    if aws_sdk or not keys.isdisjoint(_AWS_TRIGGERS):
        block = aws_span_block(attrs)
        aws = {**resource.aws, **block} if is_segment else block
    else:
        aws = resource.aws if is_segment else None
    if aws:
        doc["aws"] = dict(aws) if aws is resource.aws else aws
    sql = sql_block(attrs) if not keys.isdisjoint(_SQL_TRIGGERS) else None
    if sql is not None:
        doc["sql"] = sql
    if is_segment and resource.service_block is not None:
        doc["service"] = resource.service_block
    user = get(sc.ENDUSER)
    if isinstance(user, str) and user:
        doc["user"] = user

    if caches.fast_split and not isinstance(get(sc.XRAY_ANNOTATIONS), list):
        skip = caches.skip if sql is None else caches.skip_sql
        default = {k: v for k, v in attrs.items() if v is not None and k not in skip}
    else:
        annotations, default = _split_attributes(attrs, sql is not None, options)
        if annotations:
            doc["annotations"] = annotations
    if is_segment:
        default.update(resource.metadata)
    meta: dict[str, Any] = {"span_name": span_name, "kind": KIND_NAMES.get(kind, str(kind))}
    if scope:
        meta["scope"] = scope
    if events:
        kept = _kept_events(events, raw_events)
        if kept:
            meta["events"] = kept
    links = span.links
    if links:
        meta["links"] = _links(links)
    if status_message:
        meta["status_message"] = status_message
    doc["metadata"] = {"default": default, "otel": meta} if default else {"otel": meta}
    return doc


_CONSUMED = sc.HTTP_KEYS | sc.AWS_KEYS | {sc.ENDUSER, sc.XRAY_ANNOTATIONS}


def _split_attributes(attrs: dict[str, Any], has_sql: bool,
                      options: Options) -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotations, default metadata) of the span attributes the blocks did not take."""
    indexed = options.indexed_attributes
    listed = attrs.get(sc.XRAY_ANNOTATIONS)
    if isinstance(listed, list):
        indexed = indexed | {k for k in listed if isinstance(k, str)}
    annotations: dict[str, Any] = {}
    default: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None or (key in _CONSUMED and key not in indexed):
            continue
        if has_sql and key in sc.DB_KEYS and key not in indexed:
            continue
        if options.index_all_attributes or key in indexed:
            simple = _annotation_value(value)
            if simple is not None:
                annotations[fix_annotation_key(key)] = simple
                continue
        default[key] = value
    return annotations, default


def _kept_events(events: list[tuple[str, dict[str, Any]]],
                 raw_events: Any) -> list[dict[str, Any]]:
    """Span events other than exceptions, for the metadata (X-Ray has no field for them)."""
    return [
        {"name": name, "time": event.time_unix_nano / 1e9, **({"attributes": a} if a else {})}
        for (name, a), event in zip(events, raw_events, strict=True)
        if name != sc.EXCEPTION_EVENT
    ]


def _links(links: Any) -> list[dict[str, Any]]:
    out = []
    for link in links:
        entry: dict[str, Any] = {"trace_id": _link_trace_id(link.trace_id),
                                 "id": link.span_id.hex()}
        if link.attributes:
            entry["attributes"] = attributes(link.attributes)
        out.append(entry)
    return out


def _link_trace_id(raw: bytes) -> str:
    try:
        return xray_trace_id(raw)
    except IdError:
        return raw.hex()


# -- a whole request ---------------------------------------------------------------------------


_DEFAULT_OPTIONS = Options()


def convert_request(request: Any, options: Options = _DEFAULT_OPTIONS,
                    new_id: Callable[[], str] = _random_id,
                    max_messages: int = 3) -> Converted:
    """Every span of an ExportTraceServiceRequest as a JSON document; the spans that cannot be
    converted are counted by reason (and the first few described in ``messages``)."""
    out = Converted()
    dumps = orjson.dumps
    append = out.documents.append
    caches = _Caches(options)
    def reject(reason: str, name: str, message: str, spans: int = 1) -> None:
        out.rejected[reason] += spans
        if len(out.messages) < max_messages:
            out.messages.append(f"{name}: {message}")

    for resource_spans in request.resource_spans:
        try:
            facts = resource_facts(attributes(resource_spans.resource.attributes))
        except Exception as exc:  # a bug must cost these spans, not the request
            spans = sum(len(ss.spans) for ss in resource_spans.scope_spans)
            out.spans += spans
            reject(Reason.CONVERSION, "resource", f"not converted ({exc!r:.200})", spans)
            continue
        for scope_spans in resource_spans.scope_spans:
            scope = _present(name=scope_spans.scope.name or None,
                             version=scope_spans.scope.version or None) or None
            spans = scope_spans.spans
            out.spans += len(spans)
            for span in spans:
                try:
                    append(dumps(span_document(span, facts, scope, options, new_id, None,
                                               caches)))
                except IdError as exc:
                    reject(exc.args[1], f"span {span.name[:60]!r}", exc.args[0])
                except Exception as exc:  # a bug must cost this span, not the request
                    reject(Reason.CONVERSION, f"span {span.name[:60]!r}",
                           f"not converted ({exc!r:.200})")
    return out
