"""X-Ray groups on ``xrayd --offline``: CRUD through the AWS CLI (a subprocess with an endpoint
URL and dummy credentials), kept in the store file across a restart, filter expressions checked
when set, and a group's filter narrowing GetServiceGraph and GetTimeSeriesServiceStatistics."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import SAFE_ENV
from graph_traces import offline_with_traces
from offline_support import start_offline, xray_client
from xrayd.store.groups import GroupStore, resolver

AWS = str(Path(sys.executable).with_name("aws"))


def aws(port: int, *args: str) -> tuple[int, dict | str]:
    """``aws xray <args>`` against the daemon: (exit code, parsed JSON output or stderr)."""
    done = subprocess.run(
        [AWS, "xray", *args, "--endpoint-url", f"http://127.0.0.1:{port}", "--region",
         "us-east-1", "--output", "json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, **SAFE_ENV, "AWS_EC2_METADATA_DISABLED": "true",
             "AWS_PAGER": ""},
    )
    if done.returncode:
        return done.returncode, done.stderr
    return 0, json.loads(done.stdout) if done.stdout.strip() else {}


def test_groups_round_trip_through_the_aws_cli(start_xrayd, tmp_path):
    daemon, port, store = start_offline(start_xrayd, tmp_path)
    code, created = aws(port, "create-group", "--group-name", "workers",
                        "--filter-expression", 'service("worker")',
                        "--insights-configuration", "InsightsEnabled=true")
    assert code == 0, created
    group = created["Group"]
    assert group["GroupName"] == "workers"
    assert group["FilterExpression"] == 'service("worker")'
    assert group["InsightsConfiguration"] == {"InsightsEnabled": True,
                                              "NotificationsEnabled": False}
    arn = group["GroupARN"]
    assert arn.startswith("arn:aws:xray:local:000000000000:group/workers/")

    code, got = aws(port, "get-group", "--group-arn", arn)
    assert code == 0 and got["Group"] == group
    client = xray_client(port)
    assert client.get_group(GroupName="workers")["Group"] == group

    code, updated = aws(port, "update-group", "--group-name", "workers",
                        "--filter-expression", 'service("worker") AND fault')
    assert code == 0, updated
    assert updated["Group"]["FilterExpression"] == 'service("worker") AND fault'
    assert updated["Group"]["GroupARN"] == arn
    assert updated["Group"]["InsightsConfiguration"]["InsightsEnabled"] is True

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.create_group(GroupName="workers")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "already exists" in caught.value.response["Error"]["Message"]

    # kept in the store file: a new daemon on the same store has the group
    daemon.kill()
    _daemon, port2, _ = start_offline(start_xrayd, tmp_path, name=store.name)
    code, listed = aws(port2, "get-groups")
    assert code == 0
    assert [(g["GroupName"], g.get("FilterExpression")) for g in listed["Groups"]] == [
        ("Default", None), ("workers", 'service("worker") AND fault')]

    code, deleted = aws(port2, "delete-group", "--group-arn", arn)
    assert code == 0, deleted
    code, error = aws(port2, "get-group", "--group-name", "workers")
    assert code != 0 and "InvalidRequestException" in error
    assert [g["GroupName"] for g in xray_client(port2).get_groups()["Groups"]] == ["Default"]


@pytest.mark.parametrize("call, body", [
    ("create_group", {"GroupName": "Default"}),
    ("create_group", {"GroupName": "a/b"}),
    ("create_group", {"GroupName": "g", "FilterExpression": "nosuchkeyword > 1"}),
    ("create_group", {"GroupName": "g", "FilterExpression": "service("}),
    ("create_group", {"GroupName": "g", "InsightsConfiguration": {
        "InsightsEnabled": False, "NotificationsEnabled": True}}),
    ("get_group", {"GroupName": "missing"}),
    ("get_group", {}),
    ("update_group", {"GroupName": "missing", "FilterExpression": "fault"}),
    ("delete_group", {"GroupName": "Default"}),
])
def test_bad_group_requests_are_invalid_request(start_xrayd, tmp_path, call, body):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        getattr(client, call)(**body)
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_groups_filter_narrows_the_service_graph_and_time_series(start_xrayd, tmp_path):
    port, client, traces, now = offline_with_traces(start_xrayd, tmp_path)
    code, created = aws(port, "create-group", "--group-name", "page-1",
                        "--filter-expression", 'http.url ENDSWITH "/p/1"')
    assert code == 0, created
    workers = client.create_group(GroupName="workers",
                                  FilterExpression='service("worker")')["Group"]

    everything = client.get_service_graph(StartTime=now - 300, EndTime=now + 5)["Services"]
    assert "worker" in {s["Name"] for s in everything}
    total = {s["Name"]: s["SummaryStatistics"]["TotalCount"] for s in everything}
    assert total["frontend"] == traces.traces

    narrowed = client.get_service_graph(StartTime=now - 300, EndTime=now + 5,
                                        GroupName="workers")["Services"]
    counts = {s["Name"]: s["SummaryStatistics"]["TotalCount"] for s in narrowed}
    assert counts["frontend"] == counts["worker"] == len(traces.worker_trace_ids)
    assert len(traces.worker_trace_ids) < traces.traces
    by_arn = client.get_service_graph(StartTime=now - 300, EndTime=now + 5,
                                      GroupARN=workers["GroupARN"])["Services"]
    assert {s["Name"]: s["SummaryStatistics"]["TotalCount"] for s in by_arn} == counts

    code, page = aws(port, "get-service-graph", "--start-time", str(now - 300),
                     "--end-time", str(now + 5), "--group-name", "page-1")
    assert code == 0, page
    page_counts = {s["Name"]: s["SummaryStatistics"] for s in page["Services"]}
    assert page_counts["frontend"]["TotalCount"] == 1
    assert page_counts["uploads"]["FaultStatistics"]["TotalCount"] == traces.s3_faults == 1
    assert traces.trace_ids[1] not in traces.worker_trace_ids
    assert "worker" not in page_counts

    series = client.get_time_series_service_statistics(
        StartTime=now - 300, EndTime=now + 5, GroupName="workers",
        EntitySelectorExpression='service("backend")')["TimeSeriesServiceStatistics"]
    assert sum(e["ServiceSummaryStatistics"]["TotalCount"] for e in series) == \
        len(traces.worker_trace_ids)

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_service_graph(StartTime=now - 300, EndTime=now, GroupName="nosuchgroup")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"


def test_resolver_gives_a_groups_filter_by_name_or_arn(tmp_path):
    """What filters.py's ``group.name``/``group.arn`` use: name or ARN to filter expression."""
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path)
    assert resolver(conn)("workers") is None  # no table yet: no group
    store = GroupStore(path)
    arn = store.create({"GroupName": "workers", "FilterExpression": 'service("worker")'})[
        "Group"]["GroupARN"]
    store.create({"GroupName": "all"})
    resolve = resolver(conn)
    assert resolve("workers") == resolve(arn) == 'service("worker")'
    assert resolve("all") == "" and resolve("Default") == ""
    assert resolve("nosuch") is None
    store.close()
    conn.close()
