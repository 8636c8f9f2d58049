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
    ("DynamoDB", "AWS::DynamoDB::Table"), ("S3", "AWS::S3::Bucket"),
    ("SQS", "AWS::SQS::Queue"), ("api.partner.com", "remote"),
}
EDGES = {
    ("client", "frontend"), ("frontend", "backend"), ("frontend", "api.partner.com"),
    ("backend", "DynamoDB"), ("backend", "S3"), ("backend", "SQS"), ("backend", "worker"),
    ("worker", "DynamoDB"),
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
    assert nodes["DynamoDB"]["State"] == "unknown"

    # A service's statistics are its own segments': faults, throttles and errors recorded only
    # on its subsegments count against the edge and the node downstream.
    assert counts(nodes["frontend"]["SummaryStatistics"]) == (n, n, 0, 0, 0)
    assert counts(nodes["backend"]["SummaryStatistics"]) == (
        n, n - traces.backend_faults, 0, 0, traces.backend_faults)
    assert counts(edges["backend", "S3"]["SummaryStatistics"]) == (
        n, n - traces.s3_faults, 0, 0, traces.s3_faults)
    assert counts(nodes["S3"]["SummaryStatistics"]) == (
        n, n - traces.s3_faults, 0, 0, traces.s3_faults)
    assert counts(edges["backend", "SQS"]["SummaryStatistics"]) == (
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
    assert counts(edges["worker", "DynamoDB"]["SummaryStatistics"])[0] == workers
    assert counts(nodes["DynamoDB"]["SummaryStatistics"])[0] == n + workers
    assert nodes["client"]["SummaryStatistics"]["TotalCount"] == n

    assert_histograms_sum(services)
    frontend_times = {e["Value"]: e["Count"] for e in nodes["frontend"]["ResponseTimeHistogram"]}
    assert frontend_times == {0.3: n}
    s3_edge = edges["backend", "S3"]
    assert s3_edge["StartTime"].timestamp() == pytest.approx(traces.starts[0] + 0.05, abs=1e-3)
    assert s3_edge["EndTime"].timestamp() == pytest.approx(traces.starts[-1] + 0.07, abs=1e-3)
    assert "EdgeType" not in s3_edge  # synchronous calls only


def test_trace_graph_is_the_graph_of_the_given_traces(daemon_with_traces):
    client, traces, _now = daemon_with_traces
    one = traces.trace_ids[1]  # behind the balancer, a fault only in S3, no worker
    services = client.get_trace_graph(TraceIds=[one])["Services"]
    assert {(s["Name"], s.get("Type")) for s in services} == NODES - {
        ("worker", "AWS::Lambda::Function")}
    nodes = by_name(services)
    assert nodes["frontend"]["Root"] is True
    assert counts(nodes["backend"]["SummaryStatistics"]) == (1, 1, 0, 0, 0)
    assert counts(nodes["S3"]["SummaryStatistics"]) == (1, 0, 0, 0, 1)
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
        StartTime=now - 300, EndTime=now + 5, EntitySelectorExpression='edge("backend", "S3")',
        Period=120)["TimeSeriesServiceStatistics"]
    assert all(e["Timestamp"].timestamp() % 120 == 0 for e in s3)
    assert sum(e["EdgeSummaryStatistics"]["FaultStatistics"]["TotalCount"] for e in s3) == \
        traces.s3_faults
    assert all("ServiceSummaryStatistics" not in e for e in s3)

    by_id = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5,
        EntitySelectorExpression='id(name: "SQS", type: "AWS::SQS::Queue")',
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
    assert types["DynamoDB"] == "AWS::DynamoDB::Table"
    assert types["S3"] == "AWS::S3::Bucket"
    assert types["SQS"] == "AWS::SQS::Queue"
    assert ("client", "frontend") in edges_of(services)


def test_why_histograms_are_filled(daemon_with_traces):
    client, _traces, now = daemon_with_traces
    services = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    for service in services:
        assert service["ResponseTimeHistogram"] and service["DurationHistogram"], service["Name"]
        for edge in service["Edges"]:
            assert edge["ResponseTimeHistogram"], (service["Name"], edge["ReferenceId"])
    assert_histograms_sum(services)
