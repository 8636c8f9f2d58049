"""Segment documents as OTLP spans (otel/segments_to_spans.py), on the datagrams the real
aws-xray-sdk sent (tests/data/sdk-datagrams.txt, a copy of the shared capture) and on documents
with every block."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from xrayd.otel.segments_to_spans import Report, convert

DATAGRAMS = Path(__file__).parent / "data" / "sdk-datagrams.txt"
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET
TRACE = "1-5759e988-bd862e3fe1be46a994272793"


def sdk_bodies() -> list[bytes]:
    bodies = []
    for line in DATAGRAMS.read_text().splitlines():
        match = re.match(r"^\d+ (b'.*')$", line)
        if match:
            data = ast.literal_eval(match.group(1))
            if not data.startswith(b"#"):
                bodies.append(data.split(b"\n", 1)[1])
    assert bodies
    return bodies


def attrs(item) -> dict:
    out = {}
    for kv in item.attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


def one(doc: dict, report: Report | None = None) -> ResourceSpans:
    result = convert(json.dumps(doc).encode(), report or Report())
    assert result is not None
    # What goes on the wire decodes back to the same message.
    assert ResourceSpans.FromString(result.SerializeToString()) == result
    return result


def spans_by_name(rs: ResourceSpans) -> dict[str, Span]:
    return {s.name: s for s in rs.scope_spans[0].spans}


def nesting(entity: dict, parent: str) -> list[tuple[str, str]]:
    """(id, parent id) of every embedded subsegment, depth first."""
    found = []
    for sub in entity.get("subsegments", []):
        found.append((sub["id"], parent))
        found += nesting(sub, sub["id"])
    return found


def test_every_sdk_datagram_converts_with_its_ids_and_nesting():
    report = Report()
    for body in sdk_bodies():
        doc = json.loads(body)
        rs = convert(body, report)
        assert rs is not None
        spans = rs.scope_spans[0].spans
        top = spans[0]
        assert top.trace_id.hex() == doc["trace_id"][2:10] + doc["trace_id"][11:]
        assert top.span_id.hex() == doc["id"]
        assert top.parent_span_id.hex() == doc.get("parent_id", "")
        assert top.start_time_unix_nano == pytest.approx(doc["start_time"] * 1e9, abs=1000)
        assert top.end_time_unix_nano == pytest.approx(doc["end_time"] * 1e9, abs=1000)
        # Every embedded subsegment is a span whose parent is the enclosing entity.
        expected = nesting(doc, doc["id"])
        got = [(s.span_id.hex(), s.parent_span_id.hex()) for s in spans[1:]]
        assert got == expected
        assert all(s.trace_id == top.trace_id for s in spans)
    assert report.documents == 0 and not report.skipped


def test_sdk_segment_blocks_become_attributes_and_resource():
    basic = next(b for b in sdk_bodies() if b'"probe-svc"' in b)
    doc = json.loads(basic)
    rs = convert(basic, Report())
    resource = attrs(rs.resource)
    assert resource["service.name"] == "probe-svc"
    assert resource["telemetry.sdk.name"] == "X-Ray for Python"
    assert resource["telemetry.sdk.language"] == "python"
    assert resource["cloud.provider"] == "aws"
    root = rs.scope_spans[0].spans[0]
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    a = attrs(root)
    for key, value in doc["annotations"].items():
        assert a[key] == value
    assert sorted(a["aws.xray.annotations"]) == sorted(doc["annotations"])
    assert json.loads(a["aws.xray.metadata.my-ns"]) == doc["metadata"]["my-ns"]
    assert a["http.request.method"] == doc["http"]["request"]["method"]
    assert a["http.response.status_code"] == doc["http"]["response"]["status"]
    assert root.status.code == UNSET


def test_sdk_exception_becomes_an_event_and_error_status():
    body = next(b for b in sdk_bodies() if b'"probe-err"' in b)
    doc = json.loads(body)
    failing = spans_by_name(convert(body, Report()))["failing"]
    exception = doc["subsegments"][0]["cause"]["exceptions"][0]
    assert failing.status.code == ERROR
    assert failing.status.message == exception["message"]
    (event,) = failing.events
    assert event.name == "exception"
    e = attrs(event)
    assert e["exception.type"] == exception["type"]
    assert e["exception.message"] == exception["message"]
    assert e["aws.xray.exception.id"] == exception["id"]
    frame = exception["stack"][0]
    assert f"at {frame['label']}({frame['path']}: {frame['line']})" in e["exception.stacktrace"]


def full_document() -> dict:
    return {
        "trace_id": TRACE, "id": "53995c3f42cd8ad8", "name": "web", "start_time": 1700000000.5,
        "end_time": 1700000001.25, "origin": "AWS::ECS::Fargate", "user": "alice",
        "resource_arn": "arn:aws:ecs:us-east-1:123:task/x",
        "aws": {"account_id": "123456789012",
                "ecs": {"container": "web-1", "container_id": "abc"},
                "ec2": {"instance_id": "i-1", "availability_zone": "us-east-1a"},
                "xray": {"sdk": "X-Ray for Go", "sdk_version": "1.8"},
                "cloudwatch_logs": [{"log_group": "/app", "arn": "arn:aws:logs:x"}]},
        "service": {"version": "1.2.3"},
        "http": {"request": {"method": "POST", "url": "https://x/y", "client_ip": "10.0.0.1",
                             "user_agent": "curl", "x_forwarded_for": True},
                 "response": {"status": 503, "content_length": "42"}},
        "fault": True,
        "subsegments": [
            {"id": "0000000000000001", "name": "DynamoDB", "namespace": "aws",
             "start_time": 1700000000.6, "end_time": 1700000000.7,
             "aws": {"operation": "PutItem", "table_name": "t", "region": "us-west-2",
                     "request_id": "R1", "retries": 2},
             "http": {"response": {"status": 400}}, "error": True},
            {"id": "0000000000000002", "name": "db@host", "namespace": "remote",
             "start_time": 1700000000.8, "end_time": 1700000000.9,
             "sql": {"url": "postgresql://db.example:5432/orders?ssl=1",
                     "database_type": "PostgreSQL", "sanitized_query": "SELECT ?",
                     "user": "app", "driver_version": "42"}},
            {"id": "0000000000000003", "name": "local-work", "start_time": 1700000000.95,
             "in_progress": True, "cause": "ffffffffffffffff"},
        ],
    }


def test_full_document_mapping():
    rs = one(full_document())
    resource = attrs(rs.resource)
    assert resource["cloud.platform"] == "aws_ecs"
    assert resource["aws.ecs.launchtype"] == "fargate"
    assert resource["cloud.account.id"] == "123456789012"
    assert resource["container.name"] == "web-1"
    assert resource["host.id"] == "i-1"
    assert resource["cloud.availability_zone"] == "us-east-1a"
    assert resource["telemetry.sdk.language"] == "go"
    assert resource["service.version"] == "1.2.3"
    assert resource["aws.log.group.names"] == ["/app"]
    assert resource["aws.xray.resource_arn"].startswith("arn:aws:ecs")
    spans = spans_by_name(rs)
    web = spans["web"]
    a = attrs(web)
    assert web.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert web.status.code == ERROR  # fault and a 503
    assert a["client.address"] == "10.0.0.1"
    assert a["http.response.body.size"] == 42  # a string in the document
    assert a["enduser.id"] == "alice"
    assert a["aws.xray.fault"] is True
    assert web.start_time_unix_nano == 1_700_000_000_500_000_000
    assert web.end_time_unix_nano == 1_700_000_001_250_000_000
    ddb = spans["DynamoDB"]
    a = attrs(ddb)
    assert ddb.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert ddb.parent_span_id == web.span_id
    assert ddb.status.code == ERROR  # a 4xx on a client span
    assert a["aws.service"] == "DynamoDB" and a["rpc.method"] == "PutItem"
    assert a["aws.table_name"] == "t" and a["aws.xray.retries"] == 2
    db = spans["db@host"]
    a = attrs(db)
    assert a["db.system"] == "PostgreSQL" and a["db.query.text"] == "SELECT ?"
    assert a["server.address"] == "db.example" and a["server.port"] == 5432
    assert a["db.namespace"] == "orders"
    assert a["aws.xray.sql.driver_version"] == "42"
    work = spans["local-work"]
    assert work.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert attrs(work)["aws.xray.inprogress"] is True
    assert work.end_time_unix_nano == work.start_time_unix_nano
    assert work.status.code == ERROR and work.status.message == "ffffffffffffffff"


def test_server_4xx_is_not_an_error_status():
    doc = {"trace_id": TRACE, "id": "53995c3f42cd8ad8", "name": "s", "start_time": 1.0,
           "end_time": 2.0, "error": True, "http": {"response": {"status": 404}}}
    assert one(doc).scope_spans[0].spans[0].status.code == UNSET


def test_independent_subsegment_has_its_parent_and_no_service_name():
    doc = {"trace_id": TRACE, "id": "53995c3f42cd8ad8", "parent_id": "1111111111111111",
           "type": "subsegment", "name": "sub", "start_time": 1.0, "end_time": 2.0,
           "namespace": "remote"}
    rs = one(doc)
    span = rs.scope_spans[0].spans[0]
    assert span.parent_span_id.hex() == "1111111111111111"
    assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert "service.name" not in attrs(rs.resource)


def test_bad_fields_are_skipped_and_counted_not_the_document():
    doc = full_document()
    doc["http"]["response"]["status"] = "five hundred"
    doc["sql"] = "not an object"
    doc["annotations"] = {"ok": 1, "nested": {"no": 1}}
    doc["metadata"] = ["not", "a", "mapping"]
    doc["subsegments"].append({"id": "short", "name": "bad-id", "start_time": 1.0,
                               "subsegments": [{"id": "0000000000000009", "name": "orphan",
                                                "start_time": 1.0, "end_time": 1.5}]})
    doc["subsegments"].append("not a subsegment")
    report = Report()
    spans = spans_by_name(one(doc, report))
    assert "bad-id" not in spans
    assert spans["orphan"].parent_span_id == spans["web"].span_id
    assert attrs(spans["web"])["ok"] == 1
    assert "nested" not in attrs(spans["web"])
    assert report.skipped == {"http.response.status": 1, "sql": 1, "annotation": 1,
                              "metadata": 1, "subsegment_id": 1, "subsegment": 1}
    assert report.documents == 0


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "json"),
    (b"[1, 2]", "not_an_object"),
    (json.dumps({"id": "53995c3f42cd8ad8", "name": "x", "start_time": 1}).encode(), "trace_id"),
    (json.dumps({"trace_id": "1-123-456", "id": "53995c3f42cd8ad8"}).encode(), "trace_id"),
    (json.dumps({"trace_id": TRACE, "id": "xyz", "name": "x"}).encode(), "id"),
    (json.dumps({"trace_id": TRACE, "id": "0" * 16, "name": "x"}).encode(), "id"),
    (json.dumps({"trace_id": "1-00000000-" + "0" * 24, "id": "1" * 16}).encode(), "trace_id"),
])
def test_documents_without_usable_ids_give_no_span_and_a_reason(body, reason):
    report = Report()
    assert convert(body, report) is None
    assert report.documents == 1
    assert report.skipped == {f"document:{reason}": 1}


def test_deep_nesting_is_cut_and_counted():
    doc = {"trace_id": TRACE, "id": "53995c3f42cd8ad8", "name": "x", "start_time": 1.0,
           "end_time": 2.0}
    node = doc
    for i in range(100):
        child = {"id": f"{i + 1:016x}", "name": f"n{i}", "start_time": 1.0, "end_time": 2.0}
        node["subsegments"] = [child]
        node = child
    report = Report()
    rs = one(doc, report)
    assert 60 < len(rs.scope_spans[0].spans) < 100
    assert report.skipped["depth"] == 1


def test_links_and_uppercase_ids():
    doc = {"trace_id": TRACE.upper().replace("1-", "1-", 1), "id": "53995C3F42CD8AD8",
           "name": "x", "start_time": 1.0, "end_time": 2.0,
           "links": [{"trace_id": TRACE, "id": "0000000000000001", "attributes": {"k": "v"}},
                     {"trace_id": "bad", "id": "1"}]}
    report = Report()
    span = one(doc, report).scope_spans[0].spans[0]
    assert span.span_id.hex() == "53995c3f42cd8ad8"
    (link,) = span.links
    assert link.span_id.hex() == "0000000000000001" and attrs(link) == {"k": "v"}
    assert report.skipped == {"link": 1}
