"""Differential test of the span → segment conversion: the optimized conversion
(xrayd.otel.spans_to_segments) against the version before the speed work
(tests/otel_convert_reference.py) on random requests; the documents must be the same bytes,
the rejections the same counts and messages."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

import otel_convert_reference as reference
from test_otel_convert import KEYS, VALUES, any_value_of
from xrayd.otel import Options
from xrayd.otel.spans_to_segments import convert_request

T0 = 1_765_000_000_000_000_000
TRACES = [bytes.fromhex("6b12e7b695d23dc8d904c0be5d3e6eae"),
          bytes.fromhex("5f0000000000000000000000000000a1")]
IDS = [bytes.fromhex("1111111111111111"), bytes.fromhex("2222222222222222")]

# Attribute names the conversion reads (besides KEYS from test_otel_convert), and values that
# take its branches: HTTP statuses, SQL systems, AWS SDK calls, names with junk characters.
MORE_KEYS = st.sampled_from([
    "http.status_code", "http.response.status_code", "http.method", "http.target",
    "http.scheme", "url.scheme", "http.host", "net.host.port", "net.peer.name",
    "net.peer.port", "user_agent.original", "http.user_agent", "http.response.body.size",
    "http.response_content_length", "db.system.name", "db.statement", "db.query.text",
    "db.user", "db.namespace", "aws.service", "aws.operation", "aws.region", "aws.request_id",
    "aws.sqs.queue_url", "messaging.url", "aws.table_name", "aws.account_id", "rpc.method",
    "aws.local.service", "net.sock.peer.addr", "http.server_name", "custom.key"])
MORE_VALUES = st.one_of(
    VALUES, st.sampled_from([200, 404, 429, 503, 600, "404", 8080, 80, 443, "GET", "https",
                             "aws-api", "postgresql", "mysql", "AWS::DynamoDB",
                             "AWS.SDK.S3", "http://h.example:81/p?q=1", "jdbc:x://db:5/n",
                             "h.example", "a b<c>d", 1.0, 3.5, ["t1"], ["t1", "t2"],
                             ["http.method", "custom.key"]]))
ATTRS = st.dictionaries(st.one_of(KEYS, MORE_KEYS), MORE_VALUES, max_size=8)
STACKS = st.sampled_from([
    'Traceback (most recent call last):\n  File "/app/a.py", line 3, in f\n    x()\nValueError',
    "java.lang.X: m\n\tat com.a.B.c(B.java:12)\n\tat app//d.E.f(E.java)",
    "Error: m\n    at f (/app/x.js:3:9)\n    at /app/y.js:4:1"])
EVENT = st.tuples(st.sampled_from(["exception", "exception", "log"]), st.dictionaries(
    st.sampled_from(["exception.type", "exception.message", "exception.stacktrace", "x"]),
    st.one_of(VALUES, STACKS), max_size=3))
RESOURCE = st.dictionaries(st.sampled_from([
    "service.name", "service.version", "cloud.provider", "cloud.platform",
    "cloud.account.id", "telemetry.sdk.language", "telemetry.sdk.name",
    "telemetry.sdk.version", "telemetry.auto.version", "aws.log.group.names",
    "aws.log.group.arns", "aws.ecs.launchtype", "host.id", "host.name", "k8s.cluster.name",
    "service.namespace", "service.instance.id", "faas.name"]), st.one_of(VALUES, st.sampled_from(
        ["aws", "aws_ec2", "aws_ecs", "aws_eks", "aws_lambda", "aws_elastic_beanstalk",
         "fargate", "python", "java", "nodejs", "shop", ["g1", "g2"], "7"])), max_size=6)
SPAN = st.tuples(
    st.one_of(st.sampled_from(TRACES), st.binary(max_size=17)),
    st.one_of(st.sampled_from(IDS), st.binary(max_size=9)),
    st.one_of(st.just(b""), st.sampled_from(IDS), st.binary(max_size=9)),
    st.integers(0, 6), st.integers(0, 3), st.text(max_size=12), st.booleans(), ATTRS,
    st.lists(EVENT, max_size=2), st.text(max_size=6),
    st.lists(st.tuples(st.one_of(st.sampled_from(TRACES), st.binary(max_size=16)),
                       st.binary(max_size=8), st.dictionaries(KEYS, VALUES, max_size=2)),
             max_size=2))
OPTIONS = st.builds(Options, st.frozensets(st.one_of(KEYS, MORE_KEYS), max_size=3),
                    st.booleans())


def build(resources) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for resource, scopes in resources:
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(KeyValue(key=k, value=any_value_of(v))
                                      for k, v in resource.items())
        for scope_name, spans in scopes:
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = scope_name, scope_name[:2]
            for (trace, span_id, parent, kind, code, name, ended, attrs, events, message,
                 links) in spans:
                one = ss.spans.add(
                    name=name, kind=kind, trace_id=trace, span_id=span_id,
                    parent_span_id=parent, start_time_unix_nano=T0,
                    end_time_unix_nano=T0 + 5 if ended else 0,
                    attributes=[KeyValue(key=k, value=any_value_of(v))
                                for k, v in attrs.items()])
                one.status.code, one.status.message = code, message
                for event_name, event_attrs in events:
                    one.events.add(name=event_name, time_unix_nano=T0 + 1, attributes=[
                        KeyValue(key=k, value=any_value_of(v)) for k, v in event_attrs.items()])
                for link_trace, link_id, link_attrs in links:
                    one.links.add(trace_id=link_trace, span_id=link_id, attributes=[
                        KeyValue(key=k, value=any_value_of(v)) for k, v in link_attrs.items()])
    return ExportTraceServiceRequest.FromString(req.SerializeToString())


def both(req: ExportTraceServiceRequest, options: Options):
    old_ids, new_ids = itertools.count(1), itertools.count(1)
    old = reference.convert_request(req, options, new_id=lambda: f"{next(old_ids):016x}")
    new = convert_request(req, options, new_id=lambda: f"{next(new_ids):016x}")
    return old, new


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(RESOURCE, st.lists(st.tuples(st.text(max_size=4),
                                                        st.lists(SPAN, max_size=4)),
                                              max_size=2)), min_size=1, max_size=2),
       OPTIONS)
def test_optimized_conversion_writes_the_same_documents_as_the_reference(resources, options):
    old, new = both(build(resources), options)
    assert new.documents == old.documents
    assert (new.spans, new.rejected, new.messages) == (old.spans, old.rejected, old.messages)


def test_the_benchmark_request_converts_to_the_same_documents():
    from bench.bench_otlp import build_request

    req = ExportTraceServiceRequest.FromString(build_request(0, 64))
    old, new = both(req, Options())
    assert len(new.documents) == 64 and new.documents == old.documents
