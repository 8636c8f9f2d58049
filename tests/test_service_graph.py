"""GetServiceGraph, GetTraceGraph and GetTimeSeriesServiceStatistics of ``xrayd --offline``
through boto3, for a three-service trace set (tests/graph_traces.py) with DynamoDB, S3, SQS and
an uninstrumented HTTP API: the nodes, their X-Ray types, the edges and the counts, and
histograms that sum to the counts."""

from __future__ import annotations

import botocore.exceptions
import pytest

from graph_traces import ACCOUNT, offline_with_traces

NODES = {
    ("client", "client"), ("frontend", "AWS::EC2::Instance"),
    ("backend", "AWS::ECS::Container"), ("worker", "AWS::Lambda::Function"),
    ("items", "AWS::DynamoDB::Table"), ("jobs", "AWS::DynamoDB::Table"),
    ("uploads", "AWS::S3::Bucket"), ("q", "AWS::SQS::Queue"), ("api.partner.com", "remote"),
}
EDGES = {
    ("client", "frontend"), ("frontend", "backend"), ("frontend", "api.partner.com"),
    ("backend", "items"), ("backend", "uploads"), ("backend", "q"), ("backend", "worker"),
    ("worker", "jobs"),
}


@pytest.fixture
def daemon_with_traces(start_xrayd, tmp_path):
    _port, client, traces, now = offline_with_traces(start_xrayd, tmp_path)
    return client, traces, now


def by_name(services: list[dict]) -> dict[str, dict]:
    named = {s["Name"]: s for s in services}
    assert len(named) == len(services), "one node per name in this trace set"
    return named


def edges_of(services: list[dict]) -> dict[tuple[str, str], dict]:
    refs = {s["ReferenceId"]: s["Name"] for s in services}
    return {(s["Name"], refs[e["ReferenceId"]]): e for s in services for e in s["Edges"]}


def counts(stats: dict) -> tuple[int, int, int, int, int]:
    """(total, ok, other errors, throttles, faults)"""
    return (stats["TotalCount"], stats["OkCount"], stats["ErrorStatistics"]["OtherCount"],
            stats["ErrorStatistics"]["ThrottleCount"], stats["FaultStatistics"]["TotalCount"])


def assert_histograms_sum(services: list[dict]) -> None:
    for service in services:
        total = service["SummaryStatistics"]["TotalCount"]
        for key in ("ResponseTimeHistogram", "DurationHistogram"):
            assert sum(e["Count"] for e in service[key]) == total, (service["Name"], key)
            assert all(e["Value"] >= 0 for e in service[key])
        for edge in service["Edges"]:
            assert sum(e["Count"] for e in edge["ResponseTimeHistogram"]) == \
                edge["SummaryStatistics"]["TotalCount"], (service["Name"], edge["ReferenceId"])


def test_service_graph_nodes_types_edges_and_counts(daemon_with_traces):
    client, traces, now = daemon_with_traces
    services = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    nodes = by_name(services)
    assert {(s["Name"], s.get("Type")) for s in services} == NODES
    edges = edges_of(services)
    assert set(edges) == EDGES
    n = traces.traces
    workers = len(traces.worker_trace_ids)

    # The client node: every request entered at frontend, also those whose parent (a load
    # balancer) never reported here.
    assert traces.behind_balancer > 0
    assert counts(edges["client", "frontend"]["SummaryStatistics"]) == (n, n, 0, 0, 0)
    assert [s["Name"] for s in services if s["Root"]] == ["frontend"]
    assert nodes["frontend"]["AccountId"] == ACCOUNT
    assert nodes["frontend"]["State"] == "active"
    assert nodes["items"]["State"] == "unknown"

    # A service's statistics are its own segments': faults, throttles and errors recorded only
    # on its subsegments count against the edge and the node downstream.
    assert counts(nodes["frontend"]["SummaryStatistics"]) == (n, n, 0, 0, 0)
    assert counts(nodes["backend"]["SummaryStatistics"]) == (
        n, n - traces.backend_faults, 0, 0, traces.backend_faults)
    assert counts(edges["backend", "uploads"]["SummaryStatistics"]) == (
        n, n - traces.s3_faults, 0, 0, traces.s3_faults)
    assert counts(nodes["uploads"]["SummaryStatistics"]) == (
        n, n - traces.s3_faults, 0, 0, traces.s3_faults)
    assert counts(edges["backend", "q"]["SummaryStatistics"]) == (
        n, n - traces.sqs_throttles, 0, traces.sqs_throttles, 0)
    assert counts(edges["frontend", "api.partner.com"]["SummaryStatistics"]) == (
        n, n - traces.partner_errors, traces.partner_errors, 0, 0)

    # Each call counted once: frontend -> backend is the calling subsegment (the client's view,
    # its fault included), not that plus backend's segment.
    assert counts(edges["frontend", "backend"]["SummaryStatistics"]) == (
        n, n - traces.backend_faults, 0, 0, traces.backend_faults)
    assert edges["frontend", "backend"]["SummaryStatistics"]["TotalResponseTime"] == \
        pytest.approx(0.2 * n)
    assert counts(edges["backend", "worker"]["SummaryStatistics"])[0] == workers
    assert counts(nodes["worker"]["SummaryStatistics"])[0] == workers
    assert counts(edges["worker", "jobs"]["SummaryStatistics"])[0] == workers
    assert counts(nodes["jobs"]["SummaryStatistics"])[0] == workers
    assert counts(nodes["items"]["SummaryStatistics"])[0] == n
    assert nodes["client"]["SummaryStatistics"]["TotalCount"] == n

    assert_histograms_sum(services)
    frontend_times = {e["Value"]: e["Count"] for e in nodes["frontend"]["ResponseTimeHistogram"]}
    assert frontend_times == {0.3: n}
    s3_edge = edges["backend", "uploads"]
    assert s3_edge["StartTime"].timestamp() == pytest.approx(traces.starts[0] + 0.05, abs=1e-3)
    assert s3_edge["EndTime"].timestamp() == pytest.approx(traces.starts[-1] + 0.07, abs=1e-3)
    assert "EdgeType" not in s3_edge  # synchronous calls only


def test_trace_graph_is_the_graph_of_the_given_traces(daemon_with_traces):
    client, traces, _now = daemon_with_traces
    one = traces.trace_ids[1]  # behind the balancer, a fault only in S3, no worker
    services = client.get_trace_graph(TraceIds=[one])["Services"]
    assert {(s["Name"], s.get("Type")) for s in services} == NODES - {
        ("worker", "AWS::Lambda::Function"), ("jobs", "AWS::DynamoDB::Table")}
    nodes = by_name(services)
    assert nodes["frontend"]["Root"] is True
    assert counts(nodes["backend"]["SummaryStatistics"]) == (1, 1, 0, 0, 0)
    assert counts(nodes["uploads"]["SummaryStatistics"]) == (1, 0, 0, 0, 1)
    assert_histograms_sum(services)
    both = client.get_trace_graph(TraceIds=[one, traces.worker_trace_ids[0]])["Services"]
    assert by_name(both)["worker"]["SummaryStatistics"]["TotalCount"] == 1
    assert by_name(both)["frontend"]["SummaryStatistics"]["TotalCount"] == 2


def test_time_series_per_period(daemon_with_traces):
    client, traces, now = daemon_with_traces
    n = traces.traces
    backend = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5, EntitySelectorExpression='service("Backend")',
        Period=60)["TimeSeriesServiceStatistics"]
    assert len(backend) >= 2  # the traces span 150 s
    stamps = [entry["Timestamp"].timestamp() for entry in backend]
    assert stamps == sorted(stamps) and all(stamp % 60 == 0 for stamp in stamps)
    assert sum(e["ServiceSummaryStatistics"]["TotalCount"] for e in backend) == n
    assert sum(e["ServiceSummaryStatistics"]["FaultStatistics"]["TotalCount"]
               for e in backend) == traces.backend_faults
    # the edges into backend: frontend's calls
    assert sum(e["EdgeSummaryStatistics"]["TotalCount"] for e in backend) == n
    for entry in backend:
        assert sum(h["Count"] for h in entry["ResponseTimeHistogram"]) == \
            entry["ServiceSummaryStatistics"]["TotalCount"]
        start = entry["Timestamp"].timestamp()
        in_period = sum(1 for s in traces.starts if start <= s + 0.02 < start + 60)
        assert entry["ServiceSummaryStatistics"]["TotalCount"] == in_period

    s3 = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5, EntitySelectorExpression='edge("backend", "uploads")',
        Period=120)["TimeSeriesServiceStatistics"]
    assert all(e["Timestamp"].timestamp() % 120 == 0 for e in s3)
    assert sum(e["EdgeSummaryStatistics"]["FaultStatistics"]["TotalCount"] for e in s3) == \
        traces.s3_faults
    assert all("ServiceSummaryStatistics" not in e for e in s3)

    by_id = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5,
        EntitySelectorExpression='id(name: "q", type: "AWS::SQS::Queue")',
    )["TimeSeriesServiceStatistics"]
    assert sum(e["ServiceSummaryStatistics"]["ErrorStatistics"]["ThrottleCount"]
               for e in by_id) == traces.sqs_throttles

    every_edge = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5)["TimeSeriesServiceStatistics"]
    total_edges = sum(e["EdgeSummaryStatistics"]["TotalCount"] for e in every_edge)
    services = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    assert total_edges == sum(e["SummaryStatistics"]["TotalCount"]
                              for s in services for e in s["Edges"])


@pytest.mark.parametrize("request_body", [
    {"EntitySelectorExpression": "fault = true"},
    {"EntitySelectorExpression": 'service("a"'},
    {"EntitySelectorExpression": 'id(colour: "x")'},
    {"Period": 90},
    {"Period": 0},
])
def test_time_series_bad_input_is_invalid_request(daemon_with_traces, request_body):
    client, _traces, now = daemon_with_traces
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_time_series_service_statistics(StartTime=now - 60, EndTime=now,
                                                  **request_body)
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# One test per point of issue 13's "Why" about the graph, each failing on the code before it.
def test_why_a_subsegments_fault_does_not_count_against_its_service(daemon_with_traces):
    client, traces, now = daemon_with_traces
    nodes = by_name(client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"])
    # backend's only own fault is trace 5's; trace 1's S3 fault is on its subsegment
    assert nodes["backend"]["SummaryStatistics"]["FaultStatistics"]["TotalCount"] == \
        traces.backend_faults
    # frontend never faulted itself; its call to backend and the partner's 404 did
    assert nodes["frontend"]["SummaryStatistics"]["FaultStatistics"]["TotalCount"] == 0
    assert nodes["frontend"]["SummaryStatistics"]["ErrorStatistics"]["TotalCount"] == 0


def test_why_client_node_and_x_ray_node_types(daemon_with_traces):
    client, _traces, now = daemon_with_traces
    services = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    types = {s["Name"]: s.get("Type") for s in services}
    assert types["client"] == "client"
    assert types["items"] == types["jobs"] == "AWS::DynamoDB::Table"
    assert types["uploads"] == "AWS::S3::Bucket"
    assert types["q"] == "AWS::SQS::Queue"
    assert ("client", "frontend") in edges_of(services)


def test_why_histograms_are_filled(daemon_with_traces):
    client, _traces, now = daemon_with_traces
    services = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    for service in services:
        assert service["ResponseTimeHistogram"] and service["DurationHistogram"], service["Name"]
        for edge in service["Edges"]:
            assert edge["ResponseTimeHistogram"], (service["Name"], edge["ReferenceId"])
    assert_histograms_sum(services)


def test_aws_resource_and_sql_nodes_as_x_ray_names_them(start_xrayd, tmp_path):
    """One node per AWS resource, named by it (a queue by its URL's last part, a topic by its
    ARN's); a call that names no resource is the service's node (AWS::DynamoDB); a subsegment
    with a ``sql`` block is a Database::SQL node."""
    import json
    import time

    from offline_support import start_offline, xray_client

    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    now = time.time()
    docs = []
    for i, table in enumerate(("orders", "orders", "carts")):
        start = now - 30 + i
        trace_id = f"1-{int(start):08x}-{i:024x}"

        def sub(n: int, name: str, namespace: str, i: int = i, start: float = start,
                **extra) -> dict:
            return {"id": f"{i:08x}{n:08x}", "name": name, "namespace": namespace,
                    "start_time": start + 0.01 * n, "end_time": start + 0.01 * n + 0.005,
                    **extra}

        docs.append(json.dumps({
            "id": f"{i:08x}0000ffff", "trace_id": trace_id, "name": "shop", "start_time": start,
            "end_time": start + 0.5, "subsegments": [
                sub(1, "DynamoDB", "aws", aws={"operation": "GetItem", "table_name": table}),
                sub(2, "DynamoDB", "aws", aws={"operation": "ListTables"}),
                sub(3, "SQS", "aws", aws={"operation": "SendMessage", "queue_url":
                    "https://sqs.us-east-1.amazonaws.com/123456789012/jobs-queue"}),
                sub(4, "SNS", "aws", aws={"operation": "Publish", "topic_arn":
                    "arn:aws:sns:us-east-1:123456789012:alerts"}),
                sub(5, "shop@db.local", "remote", sql={
                    "url": "postgresql://db.local/shop", "database_type": "PostgreSQL"}),
                sub(6, "api.example.com", "remote", http={"request": {"method": "GET"}}),
            ]}))
    assert client.put_trace_segments(TraceSegmentDocuments=docs)["UnprocessedTraceSegments"] == []
    deadline = time.time() + 10
    services: list[dict] = []
    while time.time() < deadline:
        services = client.get_service_graph(StartTime=now - 60, EndTime=now + 5)["Services"]
        if len(services) >= 9:
            break
        time.sleep(0.1)
    totals = {(s["Name"], s.get("Type")): s["SummaryStatistics"]["TotalCount"] for s in services}
    assert totals == {
        ("client", "client"): 3, ("shop", None): 3,
        ("orders", "AWS::DynamoDB::Table"): 2, ("carts", "AWS::DynamoDB::Table"): 1,
        ("DynamoDB", "AWS::DynamoDB"): 3, ("jobs-queue", "AWS::SQS::Queue"): 3,
        ("alerts", "AWS::SNS::Topic"): 3, ("shop@db.local", "Database::SQL"): 3,
        ("api.example.com", "remote"): 3,
    }
    assert {edge for edge in edges_of(services) if edge[0] == "shop"} == {
        ("shop", name) for name in ("orders", "carts", "DynamoDB", "jobs-queue", "alerts",
                                    "shop@db.local", "api.example.com")}


def test_a_kept_minute_sees_completed_segments_and_late_documents(start_xrayd, tmp_path):
    """Through the daemon: a graph of minutes read before sees an in-progress segment completed
    since (replaced in place in the store) and a late document of one of its traces."""
    import json
    import time

    from offline_support import start_offline, xray_client

    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    start = (time.time() // 60 - 10) * 60 + 5  # ten minutes ago: long settled
    trace_id = f"1-{int(start):08x}-{7:024x}"
    call = {"id": "00000000000000c1", "name": "api", "namespace": "remote",
            "start_time": start + 0.1, "end_time": start + 0.3}
    segment = {"id": "00000000000000a1", "trace_id": trace_id, "name": "slow",
               "start_time": start}
    other = {"id": "00000000000000b1", "trace_id": f"1-{int(start):08x}-{8:024x}",
             "name": "slow", "start_time": start + 1, "end_time": start + 2}

    def put(*docs: dict) -> None:
        answer = client.put_trace_segments(TraceSegmentDocuments=[json.dumps(d) for d in docs])
        assert answer["UnprocessedTraceSegments"] == []

    def graph() -> dict[str, dict]:
        services = client.get_service_graph(StartTime=start - 65, EndTime=start + 120)["Services"]
        return {s["Name"]: s for s in services}

    def eventually(check) -> dict[str, dict]:
        deadline = time.time() + 10
        while True:
            found = graph()
            if check(found) or time.time() > deadline:
                return found
            time.sleep(0.1)

    # an older trace: the minute of the store's oldest trace is never kept (retention may have
    # removed part of it)
    put({"id": "00000000000000e1", "trace_id": f"1-{int(start - 300):08x}-{9:024x}",
         "name": "old", "start_time": start - 300, "end_time": start - 299})
    put({**segment, "in_progress": True}, other)
    found = eventually(lambda g: "slow" in g)
    assert found["slow"]["SummaryStatistics"]["TotalCount"] == 1  # the other; one in progress
    put({**segment, "end_time": start + 0.5, "subsegments": [call]})
    found = eventually(lambda g: g["slow"]["SummaryStatistics"]["TotalCount"] == 2)
    assert found["slow"]["SummaryStatistics"]["TotalCount"] == 2
    assert found["api"]["Type"] == "remote"
    put({"id": "00000000000000d1", "trace_id": trace_id, "name": "api", "parent_id": call["id"],
         "start_time": start + 0.15, "end_time": start + 0.25, "origin": "AWS::ECS::Container"})
    found = eventually(lambda g: g["api"].get("Type") == "AWS::ECS::Container")
    assert found["api"]["Type"] == "AWS::ECS::Container"
