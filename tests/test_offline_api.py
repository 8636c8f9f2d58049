"""Offline mode end to end: an app using the real aws-xray-sdk sends to ``xrayd --offline``;
boto3 reads its traces back from the daemon's X-Ray API; the answers agree with moto server's
for the same documents."""

from __future__ import annotations

import json
import sys
import time

import botocore.exceptions
import orjson
import pytest

from conftest import datagram, send_udp, wait_until
from offline_support import UdpCapture, recorder, start_offline, xray_client


def run_app(rec, requests: int = 3, fail_every: int = 0) -> list[str]:
    """A small 'web app': each request is a segment with an HTTP block, an annotation, a
    database subsegment and a remote call; every ``fail_every``-th one raises."""
    ids = []
    for i in range(requests):
        segment = rec.begin_segment("checkout-api")
        ids.append(segment.trace_id)
        segment.put_http_meta("method", "POST")
        segment.put_http_meta("url", f"http://shop.local/orders/{i}")
        segment.put_annotation("customer", f"c{i}")
        segment.put_annotation("order_total", 10 * i)
        segment.put_metadata("cart", {"items": i}, "shop")
        segment.set_user(f"user{i}")
        with rec.in_subsegment("SELECT orders") as sub:
            sub.namespace = "remote"
            sub.put_annotation("table", "orders")
            sub.set_sql({"url": "postgresql://db.local/shop", "database_type": "PostgreSQL",
                         "sanitized_query": "SELECT * FROM orders WHERE id = ?"})
        failing = fail_every and i % fail_every == 0
        try:
            with rec.in_subsegment("charge-card") as sub:
                sub.namespace = "remote"
                if failing:
                    raise ValueError("card declined")
        except ValueError:
            segment.put_http_meta("status", 500)
        else:
            segment.put_http_meta("status", 200)
        rec.end_segment()
    return ids


def test_sdk_app_traces_through_boto3(start_xrayd, tmp_path):
    daemon, port, _store = start_offline(start_xrayd, tmp_path)
    assert "botocore" not in daemon.output  # nothing about AWS set-up is logged or needed
    rec = recorder(f"127.0.0.1:{port}")
    started = time.time() - 5
    trace_ids = run_app(rec, requests=4, fail_every=2)
    client = xray_client(port)

    def all_stored():
        found = client.get_trace_summaries(StartTime=started, EndTime=time.time() + 5)
        return found if len(found["TraceSummaries"]) == 4 else None

    summaries = wait_until(all_stored, what="4 traces")["TraceSummaries"]
    assert {s["Id"] for s in summaries} == set(trace_ids)

    by_annotation = client.get_trace_summaries(
        StartTime=started, EndTime=time.time() + 5,
        FilterExpression='annotation.customer = "c2" AND service("checkout-api")',
    )["TraceSummaries"]
    assert [s["Id"] for s in by_annotation] == [trace_ids[2]]
    summary = by_annotation[0]
    assert summary["Http"] == {"HttpURL": "http://shop.local/orders/2", "HttpStatus": 500,
                               "HttpMethod": "POST"}
    assert summary["HasFault"] is True
    assert summary["Users"][0]["UserName"] == "user2"
    assert summary["Annotations"]["order_total"][0]["AnnotationValue"] == {"NumberValue": 20.0}

    for expression, expected in [
        ("http.status = 500", {trace_ids[0], trace_ids[2]}),
        ("fault", {trace_ids[0], trace_ids[2]}),
        ("!fault AND annotation.order_total >= 10", {trace_ids[1], trace_ids[3]}),
        ('http.url CONTAINS "orders/3" OR annotation.customer = "c0"',
         {trace_ids[0], trace_ids[3]}),
        ('service("SELECT orders") AND responsetime >= 0 AND duration < 60', set(trace_ids)),
        ("error", set()),
    ]:
        found = client.get_trace_summaries(StartTime=started, EndTime=time.time() + 5,
                                           FilterExpression=expression)["TraceSummaries"]
        assert {s["Id"] for s in found} == expected, expression

    traces = client.batch_get_traces(TraceIds=[trace_ids[0], "1-00000000-000000000000000000000000"])
    assert traces["UnprocessedTraceIds"] == ["1-00000000-000000000000000000000000"]
    [trace] = traces["Traces"]
    [segment] = trace["Segments"]
    document = json.loads(segment["Document"])
    assert document["name"] == "checkout-api"
    names = [sub["name"] for sub in document["subsegments"]]
    assert names == ["SELECT orders", "charge-card"]
    charge = document["subsegments"][1]
    assert charge["fault"] is True
    assert charge["cause"]["exceptions"][0]["message"] == "card declined"

    graph = client.get_service_graph(StartTime=started, EndTime=time.time() + 5)["Services"]
    nodes = {s["Name"]: s for s in graph}
    assert set(nodes) == {"client", "checkout-api", "SELECT orders", "charge-card"}
    edges = {nodes_by_ref["Name"] for e in nodes["checkout-api"]["Edges"]
             for nodes_by_ref in graph if nodes_by_ref["ReferenceId"] == e["ReferenceId"]}
    assert edges == {"SELECT orders", "charge-card"}
    charge_node = nodes["charge-card"]["SummaryStatistics"]
    assert charge_node["TotalCount"] == 4
    assert charge_node["FaultStatistics"]["TotalCount"] == 2
    trace_graph = client.get_trace_graph(TraceIds=[trace_ids[1]])["Services"]
    assert {s["Name"] for s in trace_graph} == {"client", "checkout-api", "SELECT orders",
                                                "charge-card"}


def test_pagination_with_next_token(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    now = time.time()
    docs = [
        {"name": "svc", "id": f"{i:016x}", "trace_id": f"1-{int(now):08x}-{i:024x}",
         "start_time": now - i * 0.01, "end_time": now - i * 0.01 + 0.005}
        for i in range(250)
    ]
    send_udp(port, *[datagram(orjson.dumps(d)) for d in docs])
    client = xray_client(port)
    wait_until(lambda: client.get_trace_summaries(StartTime=now - 60, EndTime=now + 60)[
        "TracesProcessedCount"] == 250, what="250 traces")
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"NextToken": token} if token else {}
        page = client.get_trace_summaries(StartTime=now - 60, EndTime=now + 60, **kwargs)
        seen.extend(s["Id"] for s in page["TraceSummaries"])
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert pages == 3
    assert seen == [d["trace_id"] for d in docs]  # newest first, each once
    paginator = client.get_paginator("get_trace_summaries")
    ids = [s["Id"] for p in paginator.paginate(StartTime=now - 60, EndTime=now + 60)
           for s in p["TraceSummaries"]]
    assert len(ids) == 250


def test_streamed_subsegments_and_in_progress_segments_are_merged(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    rec = recorder(f"127.0.0.1:{port}", streaming_threshold=1)
    segment = rec.begin_segment("streamer")
    for i in range(4):
        with rec.in_subsegment(f"step-{i}"), rec.in_subsegment(f"inner-{i}"):
            pass
    rec.end_segment()
    client = xray_client(port)
    trace_id = segment.trace_id

    def merged():
        traces = client.batch_get_traces(TraceIds=[trace_id])["Traces"]
        if not traces:
            return None
        docs = [json.loads(s["Document"]) for s in traces[0]["Segments"]]
        names = {sub["name"] for d in docs for sub in d.get("subsegments", [])}
        return docs if len(names) == 4 else None

    [document] = wait_until(merged, what="merged trace")
    assert [s["name"] for s in document["subsegments"]] == [f"step-{i}" for i in range(4)]
    assert all(s["subsegments"][0]["name"] == f"inner-{i}"
               for i, s in enumerate(document["subsegments"]))

    # An in-progress segment completed later: one segment, with the final end time.
    now = time.time()
    tid = f"1-{int(now):08x}-{'a' * 24}"
    started = {"name": "slow", "id": "b" * 16, "trace_id": tid, "start_time": now,
               "in_progress": True}
    send_udp(port, datagram(orjson.dumps(started)))
    wait_until(lambda: client.get_trace_summaries(
        StartTime=now - 5, EndTime=now + 5, FilterExpression="partial")["TraceSummaries"],
        what="partial trace")
    send_udp(port, datagram(orjson.dumps({**started, "in_progress": False,
                                          "end_time": now + 2, "error": True})))
    summary = wait_until(lambda: [s for s in client.get_trace_summaries(
        StartTime=now - 5, EndTime=now + 5, FilterExpression="error")["TraceSummaries"]],
        what="completed trace")[0]
    assert summary["Id"] == tid and summary["IsPartial"] is False
    assert summary["Duration"] == pytest.approx(2.0, abs=0.01)
    [trace] = client.batch_get_traces(TraceIds=[tid])["Traces"]
    assert len(trace["Segments"]) == 1


def test_same_answers_as_moto_for_the_same_documents(start_xrayd, tmp_path, moto):
    """Differential: the SDK's documents go to moto (PutTraceSegments) and to xrayd (UDP);
    the fields both implement agree."""
    capture = UdpCapture()
    try:
        run_app(recorder(f"127.0.0.1:{capture.port}"), requests=5, fail_every=3)
        wait_until(lambda: len(capture.bodies) == 5, what="5 captured documents")
    finally:
        capture.close()
    bodies = capture.bodies
    started, ended = time.time() - 30, time.time() + 30
    mclient = moto.xray()
    response = mclient.put_trace_segments(TraceSegmentDocuments=[b.decode() for b in bodies])
    assert response["UnprocessedTraceSegments"] == []
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    send_udp(port, *[datagram(b) for b in bodies])
    client = xray_client(port)
    wait_until(lambda: len(client.get_trace_summaries(StartTime=started, EndTime=ended)[
        "TraceSummaries"]) == 5, what="5 traces in xrayd")

    ours = client.get_trace_summaries(StartTime=started, EndTime=ended)["TraceSummaries"]
    theirs = mclient.get_trace_summaries(StartTime=started, EndTime=ended)["TraceSummaries"]
    assert {s["Id"] for s in ours} == {s["Id"] for s in theirs}
    by_id = {s["Id"]: s for s in theirs}
    for summary in ours:
        other = by_id[summary["Id"]]
        assert int(summary["Duration"]) == other["Duration"]
        # moto reports a flag when the key is present at all; the SDK writes it only when true
        assert summary["HasFault"] == other["HasFault"]
        assert summary["HasError"] == other["HasError"]

    ids = sorted(by_id)
    ours_traces = client.batch_get_traces(TraceIds=ids)["Traces"]
    theirs_traces = mclient.batch_get_traces(TraceIds=ids)["Traces"]
    assert len(ours_traces) == len(theirs_traces) == 5

    def shape(traces):
        return {t["Id"]: (int(t["Duration"]),
                          {s["Id"]: json.loads(s["Document"]) for s in t["Segments"]})
                for t in traces}

    assert shape(ours_traces) == shape(theirs_traces)


def test_bad_requests_get_the_service_error_shape(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.get_trace_summaries(StartTime=time.time() - 60, EndTime=time.time(),
                                   FilterExpression="annotation.x ==")
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "InvalidRequestException"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.batch_get_traces(TraceIds=[f"1-00000000-{i:024x}" for i in range(6)])
    assert info.value.response["Error"]["Code"] == "InvalidRequestException"

    import urllib.error
    import urllib.request

    for path, body, code in [
        ("/TraceSummaries", b"{not json", "SerializationException"),
        ("/TraceSummaries", b'{"EndTime": 5}', "InvalidRequestException"),
        ("/TraceSegments", b'{"TraceSegmentDocuments": "x"}', "InvalidRequestException"),
    ]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                         method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(request, timeout=5)
        assert http_error.value.code == 400
        answer = json.loads(http_error.value.read())
        assert answer["__type"] == code and answer["message"]


def test_rejected_documents_are_kept_and_reported(start_xrayd, tmp_path):
    daemon, port, _store = start_offline(start_xrayd, tmp_path)
    now = time.time()
    send_udp(port, datagram(b"{this is not json"),
             datagram(orjson.dumps({"name": "x", "trace_id": f"1-{int(now):08x}-{'c' * 24}",
                                    "start_time": now, "end_time": now})))
    import urllib.request

    def rejected():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/rejected", timeout=5) as r:
            found = json.loads(r.read())["Rejected"]
        return found if len(found) == 2 else None

    found = wait_until(rejected, what="2 rejected documents")
    assert {r["ErrorCode"] for r in found} == {"InvalidSegment", "MissingId"}
    assert any(r["Document"] == "{this is not json" for r in found)
    # PutTraceSegments through the API answers UnprocessedTraceSegments the same way
    client = xray_client(port)
    answer = client.put_trace_segments(TraceSegmentDocuments=['{"id": "0123456789abcdef"}'])
    assert answer["UnprocessedTraceSegments"][0]["Id"] == "0123456789abcdef"
    assert answer["UnprocessedTraceSegments"][0]["ErrorCode"] == "InvalidTraceId"
    wait_until(lambda: "ErrorCode MissingId" in daemon.output, what="the rejection logged")
    assert "{this is not json" not in daemon.output  # no segment contents in the log


def test_offline_mode_does_not_load_botocore(tmp_path):
    """Offline start-up needs no region, no credentials and no botocore."""
    import subprocess

    from conftest import SAFE_ENV, free_udp_tcp_port

    port = free_udp_tcp_port()
    code = f"""
import sys, time
from xrayd.config import Config
from xrayd.daemon import Daemon
d = Daemon(Config(offline=True, store_path={str(tmp_path / 'db.sqlite')!r},
                  udp_address='127.0.0.1:{port}', tcp_address='127.0.0.1:{port}'))
d.start()
loaded = 'botocore' in sys.modules
d.stop(1.0)
print('botocore loaded' if loaded else 'no botocore')
"""
    env = {k: v for k, v in SAFE_ENV.items() if not k.startswith("AWS_")}
    env.update({"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"})
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no botocore"


def test_viewer_files_unknown_paths_and_body_limit(start_xrayd, tmp_path):
    import http.client

    from xrayd.server.xray_api import MAX_BODY

    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(path: str, method: str = "GET", body: bytes | None = None):
        conn.request(method, path, body=body)
        answer = conn.getresponse()
        return answer, answer.read()

    answer, page = get("/")
    assert answer.status == 200 and b"/viewer/viewer.js" in page
    assert answer.getheader("Content-Type").startswith("text/html")
    assert answer.getheader("Cache-Control") == "no-cache"
    answer, _script = get("/viewer/viewer.js")
    assert answer.status == 200 and "javascript" in answer.getheader("Content-Type")
    for path in ("/viewer/../offline.py", "/viewer/%2e%2e/offline.py", "/viewer/nope.js",
                 "/viewer/", "/nothing"):
        answer, body = get(path)
        assert answer.status == 404, path
        assert json.loads(body)["__type"] == "UnknownOperationException"
    answer, body = get("/TraceSummaries")  # an operation's path, not POST
    assert answer.status == 404
    answer, body = get("/api/stats")
    assert answer.status == 200 and "store" in json.loads(body)
    answer, body = get("/TraceSegments", "POST", b"x" * (MAX_BODY + 1))
    assert answer.status == 413 and json.loads(body)["__type"] == "InvalidRequestException"
