"""Data for the viewer's browser tests and benchmark: traces from real aws-xray-sdk apps
(services calling each other, each on its own thread as a separate server would), and raw
documents the SDK would never write (hostile names, odd shapes, very large traces)."""

from __future__ import annotations

import json
import os
import threading
import time

from aws_xray_sdk.core import AWSXRayRecorder

from conftest import datagram, send_udp


def new_trace_id(at: float | None = None) -> str:
    return f"1-{int(at or time.time()):08x}-{os.urandom(12).hex()}"


def new_id() -> str:
    return os.urandom(8).hex()


def serve(rec: AWSXRayRecorder, name: str, trace_id: str, parent_id: str, work=None) -> None:
    """``name`` handles a request of the trace on its own thread (its own SDK context), as the
    called service would, with ``parent_id`` the calling subsegment."""

    def run() -> None:
        segment = rec.begin_segment(name, traceid=trace_id, parent_id=parent_id, sampling=1)
        segment.put_http_meta("method", "GET")
        segment.put_http_meta("url", f"http://{name}.local/")
        if work:
            work(segment)
        rec.end_segment()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def call(rec: AWSXRayRecorder, segment, callee: str, work=None) -> None:
    """A remote subsegment of the current segment that calls ``callee``."""
    with rec.in_subsegment(callee) as sub:
        sub.namespace = "remote"
        sub.put_http_meta("method", "GET")
        sub.put_http_meta("url", f"http://{callee}.local/")
        serve(rec, callee, segment.trace_id, sub.id, work)


def dynamodb_call(rec: AWSXRayRecorder, table: str) -> None:
    """A DynamoDB call's subsegment as the SDK's botocore patch records it."""
    with rec.in_subsegment("DynamoDB") as sub:
        sub.namespace = "aws"
        sub.set_aws({"operation": "GetItem", "region": "us-east-1", "table_name": table,
                     "request_id": new_id()})
        sub.put_http_meta("status", 200)


def six_services(rec: AWSXRayRecorder, rounds: int = 2) -> list[str]:
    """Two entry services (web-frontend, on EC2, and batch-worker) over orders-api, payments,
    reports-svc and a remote database: 6 services, two of them roots; reports-svc also reads
    a DynamoDB table. Returns the trace ids."""
    ids = []

    def reports(_segment) -> None:
        dynamodb_call(rec, "report-cache")

    def orders(segment) -> None:
        def payments(callee) -> None:
            if len(ids) % 2:
                callee.put_http_meta("status", 500)
                callee.add_fault_flag()

        call(rec, segment, "payments", payments)
        with rec.in_subsegment("inventory-db") as sub:
            sub.namespace = "remote"
            sub.set_sql({"url": "postgresql://inventory-db.local/stock",
                         "sanitized_query": "SELECT count FROM stock WHERE sku = ?"})

    for _ in range(rounds):
        for root, callees in (("web-frontend", ["orders-api"]),
                              ("batch-worker", ["orders-api", "reports-svc"])):
            segment = rec.begin_segment(root)
            if root == "web-frontend":
                segment.origin = "AWS::EC2::Instance"
            ids.append(segment.trace_id)
            segment.put_http_meta("method", "POST")
            segment.put_http_meta("url", f"http://{root}.local/run")
            for callee in callees:
                call(rec, segment, callee, orders if callee == "orders-api" else reports)
            segment.put_http_meta("status", 200)
            rec.end_segment()
    return ids


def bulk(rec: AWSXRayRecorder, count: int, name: str = "bulk-job") -> list[str]:
    """``count`` one-segment traces with response times from 50 to 500 ms."""
    ids = []
    for i in range(count):
        segment = rec.begin_segment(name)
        segment.start_time = time.time() - 0.05 * (i % 10 + 1)
        segment.put_annotation("n", i)
        ids.append(segment.trace_id)
        rec.end_segment()
    return ids


XSS = '<img src=x onerror="window.__xss=1">'


def hostile_document() -> dict:
    """A fault whose every field tries to be HTML."""
    now = time.time()
    return {
        "name": XSS, "id": new_id(), "trace_id": new_trace_id(now), "start_time": now - 0.2,
        "end_time": now, "fault": True,
        "http": {"request": {"method": "GET", "url": '<script>window.__xss=2</script>'},
                 "response": {"status": 500}},
        "annotations": {"who": '<svg onload="window.__xss=3">', "case": "xss"},
        "cause": {"exceptions": [{"id": new_id(), "type": "<b>Err</b>",
                                  "message": '<img src=y onerror="window.__xss=4">',
                                  "stack": [{"path": "<iframe src=javascript:alert(5)>",
                                             "line": 1, "label": "<i>f</i>"}]}]},
        "subsegments": [{"name": '<a href="javascript:window.__xss=6">x</a>', "id": new_id(),
                         "start_time": now - 0.1, "end_time": now - 0.05}],
    }


def odd_documents() -> list[dict]:
    """Documents the store accepts whose nested parts have unexpected shapes."""
    now = time.time()

    def base(name: str, **extra) -> dict:
        return {"name": name, "id": new_id(), "trace_id": new_trace_id(now),
                "start_time": now - 0.3, "end_time": now, **extra}

    good = {"name": "good-sub", "id": new_id(), "start_time": now - 0.2, "end_time": now - 0.1,
            "cause": {"exceptions": [{"message": "boom",
                                      "stack": [None, 7, {"path": "p.py", "line": "x"}]}]}}
    return [
        base("odd-object-subsegments", subsegments={"name": "not-a-list"}),
        base("odd-number-cause", cause={"exceptions": 3}, fault=True),
        base("odd-null-subsegments", subsegments=[None, good, 4, "text"], fault=True,
             cause={"exceptions": [None, {"message": "m", "stack": {"path": "p"}}]}),
        base("odd-cause", cause={"exceptions": {"message": "object"}}, error=True,
             subsegments=[{"name": "in-progress-sub", "id": new_id(), "start_time": now - 0.1,
                           "in_progress": True}]),
    ]


def big_trace(segments: int = 100, subsegments: int = 49) -> tuple[str, list[str]]:
    """A trace of ``segments`` documents with ``subsegments`` each (5,000 rows by default)."""
    trace_id = new_trace_id()
    now = time.time()
    docs = []
    for s in range(segments):
        start = now - 10 + s * 0.05
        subs = [{"name": f"step-{s}-{k}", "id": new_id(), "start_time": start + k * 0.0005,
                 "end_time": start + k * 0.0005 + 0.0004} for k in range(subsegments)]
        docs.append(json.dumps({"name": f"worker-{s % 7}", "id": new_id(), "trace_id": trace_id,
                                "start_time": start, "end_time": start + 0.04,
                                "subsegments": subs}))
    return trace_id, docs


def send_documents(port: int, docs: list[dict]) -> None:
    send_udp(port, *(datagram(json.dumps(doc)) for doc in docs))
