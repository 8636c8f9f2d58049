"""Span → segment conversion on data: OTLP requests built with the opentelemetry-proto classes,
the documents read back as JSON."""

from __future__ import annotations

import itertools

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from xrayd.otel.spans_to_segments import Options, Reason, convert_request, stack_frames

TRACE = bytes.fromhex("6b12e7b695d23dc8d904c0be5d3e6eae")
ROOT = bytes.fromhex("1111111111111111")
CHILD = bytes.fromhex("2222222222222222")
T0 = 1_765_000_000_000_000_000


def kv(key: str, value) -> KeyValue:
    any_value = AnyValue()
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    elif isinstance(value, list):
        any_value.array_value.values.extend(kv("x", v).value for v in value)
    else:
        any_value.string_value = value
    return KeyValue(key=key, value=any_value)


def span(name="op", kind=Span.SPAN_KIND_INTERNAL, span_id=CHILD, parent=ROOT, trace=TRACE,
         attrs=None, events=(), status=None, links=()) -> Span:
    result = Span(name=name, kind=kind, trace_id=trace, span_id=span_id, parent_span_id=parent,
                  start_time_unix_nano=T0, end_time_unix_nano=T0 + 1_500_000,
                  attributes=[kv(k, v) for k, v in (attrs or {}).items()], links=list(links))
    for event_name, event_attrs in events:
        result.events.add(name=event_name, time_unix_nano=T0 + 1000,
                          attributes=[kv(k, v) for k, v in event_attrs.items()])
    if status is not None:
        result.status.CopyFrom(status)
    return result


def request(*spans: Span, resource=None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kv(k, v) for k, v in (resource or {"service.name": "shop"}
                                                        ).items())
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    ss.spans.extend(spans)
    return req


def convert(*spans: Span, options: Options | None = None, **kw) -> list[dict]:
    counter = itertools.count(1)
    out = convert_request(request(*spans, **kw), options or Options(),
                          new_id=lambda: f"{next(counter):016x}")
    assert not out.rejected, out.messages
    return [orjson.loads(d) for d in out.documents]


def test_server_span_is_a_segment_named_after_the_service_with_ids_and_times():
    (doc,) = convert(span("GET /items", Span.SPAN_KIND_SERVER, ROOT, parent=b""))
    assert doc["name"] == "shop"
    assert doc["id"] == "1111111111111111"
    assert doc["trace_id"] == "1-6b12e7b6-95d23dc8d904c0be5d3e6eae"
    assert "parent_id" not in doc and "type" not in doc
    assert doc["start_time"] == pytest.approx(1_765_000_000.0)
    assert doc["end_time"] - doc["start_time"] == pytest.approx(0.0015, abs=1e-6)
    assert doc["metadata"]["otel"]["span_name"] == "GET /items"
    assert doc["metadata"]["otel"]["kind"] == "SERVER"


def test_server_span_with_a_remote_parent_stays_a_segment_under_that_parent():
    (doc,) = convert(span("GET", Span.SPAN_KIND_SERVER, CHILD, parent=ROOT))
    assert doc["parent_id"] == ROOT.hex() and "type" not in doc and doc["name"] == "shop"


def test_client_and_internal_children_are_subsegments():
    client = span("GET", Span.SPAN_KIND_CLIENT, attrs={
        "url.full": "https://api.example.com:8443/v1/x?q=1", "http.request.method": "GET",
        "http.response.status_code": 200})
    internal = span("compute", span_id=bytes.fromhex("3333333333333333"))
    first, second = convert(client, internal)
    assert first["type"] == "subsegment" and first["parent_id"] == ROOT.hex()
    assert first["namespace"] == "remote" and first["name"] == "api.example.com"
    assert first["http"] == {"request": {"method": "GET",
                                         "url": "https://api.example.com:8443/v1/x?q=1"},
                             "response": {"status": 200}}
    assert second["name"] == "compute" and "namespace" not in second


@pytest.mark.parametrize("attrs", [
    {"http.method": "POST", "http.scheme": "https", "http.host": "shop.local",
     "http.target": "/cart?id=7", "http.status_code": 201, "http.user_agent": "curl/8",
     "http.client_ip": "10.0.0.9"},
    {"http.request.method": "POST", "url.scheme": "https", "server.address": "shop.local",
     "url.path": "/cart", "url.query": "id=7", "http.response.status_code": 201,
     "user_agent.original": "curl/8", "client.address": "10.0.0.9"},
], ids=["old-semconv", "new-semconv"])
def test_http_server_attributes_old_and_new_names(attrs):
    (doc,) = convert(span("POST /cart", Span.SPAN_KIND_SERVER, ROOT, b"", attrs=attrs))
    request = doc["http"]["request"]
    assert request["method"] == "POST"
    assert request["url"] == "https://shop.local/cart?id=7"
    assert request["user_agent"] == "curl/8" and request["client_ip"] == "10.0.0.9"
    assert doc["http"]["response"] == {"status": 201}
    assert "http.method" not in doc["metadata"].get("default", {})
    assert "http.request.method" not in doc["metadata"].get("default", {})


@pytest.mark.parametrize(("status", "code", "flags"), [
    (404, Status.STATUS_CODE_UNSET, {"error"}),
    (429, Status.STATUS_CODE_UNSET, {"error", "throttle"}),
    (503, Status.STATUS_CODE_ERROR, {"fault"}),
    (None, Status.STATUS_CODE_ERROR, {"fault"}),
    (200, Status.STATUS_CODE_OK, set()),
])
def test_error_throttle_fault_from_http_status_then_span_status(status, code, flags):
    attrs = {"http.response.status_code": status} if status else {}
    (doc,) = convert(span(attrs=attrs, status=Status(code=code)))
    assert {f for f in ("error", "throttle", "fault") if doc.get(f)} == flags


PY_TRACE = '''Traceback (most recent call last):
  File "/app/server.py", line 10, in handle
    compute()
  File "/app/work.py", line 3, in compute
    raise ValueError("boom")
ValueError: boom
'''
JAVA_TRACE = '''java.lang.IllegalStateException: boom
\tat com.example.Work.compute(Work.java:42)
\tat app//com.example.Server.handle(Server.java:10)
'''
JS_TRACE = '''Error: boom
    at compute (/app/work.js:3:11)
    at /app/server.js:10:5
'''


@pytest.mark.parametrize(("language", "trace", "frames"), [
    ("python", PY_TRACE, [{"path": "/app/work.py", "line": 3, "label": "compute"},
                         {"path": "/app/server.py", "line": 10, "label": "handle"}]),
    ("java", JAVA_TRACE, [{"path": "Work.java", "line": 42, "label": "com.example.Work.compute"},
                          {"path": "Server.java", "line": 10,
                           "label": "com.example.Server.handle"}]),
    ("nodejs", JS_TRACE, [{"path": "/app/work.js", "line": 3, "label": "compute"},
                          {"path": "/app/server.js", "line": 10, "label": ""}]),
])
def test_exception_events_become_cause_with_stack(language, trace, frames):
    assert stack_frames(trace, language) == frames
    event = ("exception", {"exception.type": "ValueError", "exception.message": "boom",
                           "exception.stacktrace": trace})
    (doc,) = convert(span(events=[event, ("retry", {"attempt": 2})],
                          status=Status(code=Status.STATUS_CODE_ERROR, message="boom")),
                     resource={"service.name": "shop", "telemetry.sdk.language": language})
    assert doc["fault"] is True
    (exception,) = doc["cause"]["exceptions"]
    assert exception == {"id": "0000000000000001", "type": "ValueError", "message": "boom",
                         "stack": frames}
    # Other events are kept in metadata.
    assert doc["metadata"]["otel"]["events"] == [
        {"name": "retry", "time": pytest.approx(1_765_000_000.000001), "attributes":
         {"attempt": 2}}]


def test_client_exception_is_remote_and_error_status_without_events_keeps_its_message():
    event = ("exception", {"exception.type": "TimeoutError", "exception.message": "slow"})
    first, second = convert(
        span(kind=Span.SPAN_KIND_CLIENT, events=[event]),
        span(span_id=bytes.fromhex("4444444444444444"),
             status=Status(code=Status.STATUS_CODE_ERROR, message="it broke")))
    assert first["cause"]["exceptions"][0]["remote"] is True
    assert second["cause"] == {"exceptions": [{"id": "0000000000000002",
                                               "message": "it broke"}]}


def test_aws_sdk_span_is_an_aws_subsegment():
    attrs = {"rpc.system": "aws-api", "rpc.service": "DynamoDB", "rpc.method": "GetItem",
             "aws.region": "eu-west-1", "aws.request_id": "REQ1",
             "aws.dynamodb.table_names": ["orders"]}
    (doc,) = convert(span("DynamoDB.GetItem", Span.SPAN_KIND_CLIENT, attrs=attrs))
    assert doc["namespace"] == "aws" and doc["name"] == "DynamoDB"
    assert doc["aws"] == {"operation": "GetItem", "region": "eu-west-1", "request_id": "REQ1",
                          "table_name": "orders"}


@pytest.mark.parametrize(("attrs", "name"), [
    ({"db.system": "postgresql", "db.name": "orders", "db.statement": "SELECT 1",
      "db.user": "app", "db.connection_string": "postgresql://db.local:5432"},
     "orders@db.local"),
    ({"db.system.name": "postgresql", "db.namespace": "orders", "db.query.text": "SELECT 1",
      "db.user": "app", "server.address": "db.local"}, "orders@db.local"),
])
def test_sql_block_old_and_new_names(attrs, name):
    (doc,) = convert(span("SELECT", Span.SPAN_KIND_CLIENT, attrs=attrs))
    assert doc["name"] == name
    assert doc["sql"]["database_type"] == "postgresql"
    assert doc["sql"]["sanitized_query"] == "SELECT 1" and doc["sql"]["user"] == "app"


def test_rpc_and_messaging_names():
    rpc, producer = convert(
        span("Get", Span.SPAN_KIND_CLIENT, attrs={"rpc.system": "grpc",
                                                  "rpc.service": "inventory.Stock"}),
        span("send", Span.SPAN_KIND_PRODUCER, span_id=bytes.fromhex("5555555555555555"),
             attrs={"peer.service": "orders-queue"}))
    assert rpc["name"] == "inventory.Stock" and rpc["namespace"] == "remote"
    assert producer["name"] == "orders-queue" and producer["namespace"] == "remote"


def test_consumer_span_is_a_segment():
    (doc,) = convert(span("process", Span.SPAN_KIND_CONSUMER, attrs={}))
    assert "type" not in doc and doc["name"] == "shop" and doc["parent_id"] == ROOT.hex()


def test_resource_gives_origin_aws_block_service_and_metadata_on_segments_only():
    resource = {"service.name": "shop", "service.version": "1.2.3", "cloud.provider": "aws",
                "cloud.platform": "aws_ecs", "aws.ecs.launchtype": "fargate",
                "cloud.account.id": "123456789012", "container.id": "c0ffee",
                "aws.ecs.cluster.arn": "arn:aws:ecs:eu-west-1:1:cluster/main",
                "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.version": "1.44.0",
                "aws.log.group.names": ["/app/shop"]}
    segment, subsegment = convert(span("GET", Span.SPAN_KIND_SERVER, ROOT, b""), span(),
                                  resource=resource)
    assert segment["origin"] == "AWS::ECS::Fargate"
    assert segment["service"] == {"version": "1.2.3"}
    assert segment["aws"]["account_id"] == "123456789012"
    assert segment["aws"]["ecs"]["container_id"] == "c0ffee"
    assert segment["aws"]["ecs"]["cluster_arn"].endswith("cluster/main")
    assert segment["aws"]["xray"] == {"sdk": "opentelemetry", "sdk_version": "1.44.0"}
    assert segment["aws"]["cloudwatch_logs"] == [{"log_group": "/app/shop"}]
    assert segment["metadata"]["default"]["otel.resource.cloud.platform"] == "aws_ecs"
    assert "origin" not in subsegment and "aws" not in subsegment
    assert "default" not in subsegment["metadata"]


@pytest.mark.parametrize(("platform", "origin"), [
    ("aws_ec2", "AWS::EC2::Instance"), ("aws_eks", "AWS::EKS::Container"),
    ("aws_elastic_beanstalk", "AWS::ElasticBeanstalk::Environment"),
    ("aws_lambda", "AWS::Lambda::Function"), ("gcp_compute_engine", None),
])
def test_origin_by_platform(platform, origin):
    (doc,) = convert(span(parent=b""), resource={"service.name": "s", "cloud.provider": "aws",
                                                  "cloud.platform": platform})
    assert doc.get("origin") == origin


def test_annotations_follow_the_allow_list_and_index_all():
    attrs = {"customer.tier": "gold", "order.count": 3, "debug.blob": {"k": "v"}, "ok": True,
             "enduser.id": "alice"}
    as_list = span(attrs={**attrs, "debug.blob": "x"})
    (listed,) = convert(as_list, options=Options(frozenset({"customer.tier", "order.count"})))
    assert listed["annotations"] == {"customer_tier": "gold", "order_count": 3}
    assert listed["metadata"]["default"] == {"debug.blob": "x", "ok": True}
    assert listed["user"] == "alice"
    (everything,) = convert(span(attrs={"a.b": 1.5, "list": ["x"]}),
                            options=Options(index_all_attributes=True))
    assert everything["annotations"] == {"a_b": 1.5}
    assert everything["metadata"]["default"] == {"list": ["x"]}
    # No configuration: everything is metadata; keys named in aws.xray.annotations are indexed.
    (marked,) = convert(span(attrs={"team": "core", "aws.xray.annotations": ["team"]}))
    assert marked["annotations"] == {"team": "core"}


def test_links_are_kept_in_metadata():
    link = Span.Link(trace_id=TRACE, span_id=ROOT, attributes=[kv("why", "batch")])
    (doc,) = convert(span(links=[link]))
    assert doc["metadata"]["otel"]["links"] == [
        {"trace_id": "1-6b12e7b6-95d23dc8d904c0be5d3e6eae", "id": ROOT.hex(),
         "attributes": {"why": "batch"}}]


def test_segment_names_are_cleaned_and_bounded():
    (doc,) = convert(span("a<b>c" + "x" * 300, Span.SPAN_KIND_INTERNAL))
    assert doc["name"] == "abc" + "x" * 197
    (empty,) = convert(span("<>"))
    assert empty["name"] == "span"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"trace": b""}, Reason.TRACE_ID),
    ({"trace": b"\x01" * 8}, Reason.TRACE_ID),
    ({"trace": b"\x00" * 16}, Reason.TRACE_ID),
    ({"span_id": b""}, Reason.SPAN_ID),
    ({"span_id": b"\x01" * 16}, Reason.SPAN_ID),
    ({"parent": b"\x01" * 3}, Reason.PARENT_ID),
])
def test_spans_with_missing_or_wrong_length_ids_are_counted_and_the_others_kept(changes, reason):
    good = span(span_id=bytes.fromhex("6666666666666666"))
    out = convert_request(request(span(**changes), good))
    assert out.spans == 2 and len(out.documents) == 1
    assert out.rejected == {reason: 1}
    assert out.messages and "'op'" in out.messages[0]
    assert orjson.loads(out.documents[0])["id"] == "6666666666666666"


def test_ten_thousand_spans_in_one_request():
    spans = [span(span_id=(i + 1).to_bytes(8, "big")) for i in range(10_000)]
    out = convert_request(request(*spans))
    assert out.spans == 10_000 and len(out.documents) == 10_000 and not out.rejected
    assert len({orjson.loads(d)["id"] for d in out.documents}) == 10_000


def test_urls_that_do_not_parse_do_not_break_the_name():
    (client,) = convert(span("GET", Span.SPAN_KIND_CLIENT, attrs={"url.full": "http://[oops/x",
                                                                  "http.request.method": "GET"}))
    assert client["name"] == "GET" and client["http"]["request"]["url"] == "http://[oops/x"
    (db,) = convert(span("q", attrs={"db.name": "d", "db.connection_string": "jdbc:x://[zz"}))
    assert db["name"] == "d"


# Random requests: whatever decodes as OTLP converts without an exception (every span either
# a document or a counted rejection).
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALUES = st.recursive(
    st.one_of(st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.booleans(),
              st.floats(allow_nan=True), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
KEYS = st.one_of(st.sampled_from(sorted({
    "http.method", "http.request.method", "http.status_code", "http.response.status_code",
    "url.full", "http.url", "server.address", "server.port", "url.path", "url.query",
    "db.system", "db.name", "db.connection_string", "rpc.system", "rpc.service",
    "aws.remote.service", "peer.service", "enduser.id", "aws.xray.annotations",
    "aws.dynamodb.table_names", "client.address", "http.client_ip"})), st.text(max_size=10))


def any_value_of(value) -> AnyValue:
    result = AnyValue()
    if isinstance(value, bool):
        result.bool_value = value
    elif isinstance(value, int):
        result.int_value = value
    elif isinstance(value, float):
        result.double_value = value
    elif isinstance(value, bytes):
        result.bytes_value = value
    elif isinstance(value, list):
        result.array_value.values.extend(any_value_of(v) for v in value)
    elif isinstance(value, dict):
        result.kvlist_value.values.extend(KeyValue(key=k, value=any_value_of(v))
                                          for k, v in value.items())
    else:
        result.string_value = value
    return result


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.binary(max_size=17), st.binary(max_size=9), st.binary(max_size=9),
    st.integers(0, 7), st.integers(0, 3), st.text(max_size=10),
    st.dictionaries(KEYS, VALUES, max_size=6),
    st.lists(st.dictionaries(st.sampled_from(["exception.type", "exception.message",
                                              "exception.stacktrace", "x"]), VALUES,
                             max_size=3), max_size=2)), max_size=4),
    st.dictionaries(st.sampled_from(["service.name", "cloud.provider", "cloud.platform",
                                     "telemetry.sdk.language", "aws.log.group.names",
                                     "aws.ecs.launchtype"]), VALUES, max_size=4))
def test_random_spans_convert_or_are_counted(spans, resource):
    built = []
    for trace, span_id, parent, kind, code, name, attrs, events in spans:
        one = Span(name=name, kind=kind, trace_id=trace, span_id=span_id, parent_span_id=parent,
                   start_time_unix_nano=T0, end_time_unix_nano=T0 + 5,
                   attributes=[KeyValue(key=k, value=any_value_of(v)) for k, v in attrs.items()])
        one.status.code = code
        for event in events:
            one.events.add(name="exception", attributes=[
                KeyValue(key=k, value=any_value_of(v)) for k, v in event.items()])
        built.append(one)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(KeyValue(key=k, value=any_value_of(v))
                                  for k, v in resource.items())
    rs.scope_spans.add().spans.extend(built)
    out = convert_request(ExportTraceServiceRequest.FromString(req.SerializeToString()))
    assert out.spans == len(built)
    assert len(out.documents) + sum(out.rejected.values()) == len(built)
    for document in out.documents:
        parsed = orjson.loads(document)
        assert parsed["name"] and len(parsed["name"]) <= 200
