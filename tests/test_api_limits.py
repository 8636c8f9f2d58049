"""Requests that are valid but extreme: a group cycle made by an update, and graph ranges far
wider than anything stored (found by review: a range of 0..4e9 built an entry per minute and
took the daemon past 12 GB)."""

from __future__ import annotations

import time

import pytest

from conftest import send_udp
from offline_support import start_offline, xray_client
from xrayd.store.filters import FilterError
from xrayd.store.groups import GroupStore


def test_an_update_that_makes_two_groups_refer_to_each_other_is_refused(tmp_path):
    store = GroupStore(str(tmp_path / "t.db"))
    store.create({"GroupName": "A", "FilterExpression": "fault"})
    store.create({"GroupName": "B", "FilterExpression": 'group.name = "A"'})
    with pytest.raises(FilterError):
        store.update({"GroupName": "A", "FilterExpression": 'group.name = "B"'})
    assert store.get({"GroupName": "A"})["Group"]["FilterExpression"] == "fault"
    store.update({"GroupName": "A", "FilterExpression": "error"})  # no cycle: fine
    store.close()


def test_graph_and_time_series_over_a_range_of_a_century_read_only_what_is_stored(
        start_xrayd, tmp_path):
    daemon, port, _store = start_offline(start_xrayd, tmp_path)
    now = time.time()
    trace = f"1-{int(now):08x}-{'a' * 24}"
    send_udp(port, ('{"format":"json","version":1}\n' + (
        f'{{"trace_id":"{trace}","id":"{"b" * 16}","name":"svc","start_time":{now - 1},'
        f'"end_time":{now}}}')).encode())
    client = xray_client(port)
    deadline = time.monotonic() + 15
    while not client.get_trace_summaries(StartTime=now - 60, EndTime=now + 60)[
            "TraceSummaries"]:
        assert time.monotonic() < deadline, "the segment was not stored"
        time.sleep(0.2)
    graph = client.get_service_graph(StartTime=0, EndTime=4e9)
    assert {s["Name"] for s in graph["Services"]} >= {"svc"}
    series = client.get_time_series_service_statistics(
        StartTime=0, EndTime=4e9, EntitySelectorExpression='service("svc")', Period=3600)
    assert sum(e["ServiceSummaryStatistics"]["TotalCount"]
               for e in series["TimeSeriesServiceStatistics"]) == 1
    empty = client.get_service_graph(StartTime=0, EndTime=10)
    assert empty["Services"] == []
    assert daemon.proc.poll() is None
