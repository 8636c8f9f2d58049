"""Service graph benchmark: GetServiceGraph and GetTimeSeriesServiceStatistics for the last hour
on a store of --traces stored traces (default 1,000,000), over HTTP to the daemon's own X-Ray
API, as boto3 would send them.

    .venv/bin/python bench/bench_graph.py [--traces 1000000] [--hours 24] [--runs 10]
                                          [--store PATH]

The traces are bench_store.py's SDK-like documents (a web request segment with a SQL and a
DynamoDB call; 1 in 20 a fault), start times spread evenly over the last --hours, stored through
the store's writer (as the daemon stores them) without retention. With --store the file is kept
and reused by later runs if it already holds --traces traces (filling a million takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bench_store import sdk_like_document, speed_probe
from xrayd.sampling.engine import SamplingEngine
from xrayd.server.xray_api import StoreReader, XRayApi, make_server
from xrayd.store import schema
from xrayd.store.graph_cache import GraphCache
from xrayd.store.writer import Retention, StoreWriter

BATCH = 5000


def fill(writer: StoreWriter, traces: int, hours: float, now: float) -> float:
    """Store ``traces`` one-document traces with start times over the last ``hours``; seconds
    taken."""
    rng = random.Random(7)
    span = hours * 3600 - 60
    started = time.perf_counter()
    for first in range(0, traces, BATCH):
        docs = [sdk_like_document(i, now, rng, now - span + span * i / traces)
                for i in range(first, min(traces, first + BATCH))]
        writer.write(docs)
        if first % 100_000 == 0:
            print(f"  stored {first:,} of {traces:,} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    writer.flush()
    return time.perf_counter() - started


def stored(path: str) -> tuple[int, float | None]:
    if not os.path.exists(path):
        return 0, None
    conn = schema.connect(path, readonly=True)
    try:
        count, newest = conn.execute("SELECT count(*), max(start) FROM traces").fetchone()
    finally:
        conn.close()
    return count, newest


def timed(url: str, body: dict, runs: int) -> tuple[list[float], list[float], dict]:
    """Wall times and CPU times of this process (server and client: the CPU time moves less
    with the load of a shared host), in ms, and the last answer."""
    data = json.dumps(body).encode()
    times, cpu = [], []
    answer: dict = {}
    for _ in range(runs):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        started, cpu_started = time.perf_counter(), time.process_time()
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    return times, cpu, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--store", help="keep the store in this file and reuse it")
    args = parser.parse_args()
    tmp = None
    path = args.store
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "traces.db")
    count, newest = stored(path)
    now = time.time()
    writer = StoreWriter(path, retention=Retention(hours=1e9, max_bytes=1 << 60))
    if count != args.traces:
        if count:
            sys.exit(f"{path} holds {count:,} traces, not {args.traces:,}: use another --store")
        print(f"filling {args.traces:,} traces over {args.hours} h ...", flush=True)
        took = fill(writer, args.traces, args.hours, now)
        print(f"stored {args.traces:,} traces in {took:.0f} s ({args.traces / took:,.0f}/s)")
    else:
        now = (newest or now) + 60  # the hour the store was filled up to
        print(f"reusing {path}: {count:,} traces")
    size = os.path.getsize(path) / 2**20
    reader = StoreReader(path)
    api = XRayApi(writer, reader, SamplingEngine())
    # as if the store's last document had just arrived: its last minutes are not settled
    api.graphs = GraphCache(clock=lambda: now)
    group = {"GroupName": "dynamodb", "FilterExpression": 'service("DynamoDB")'}
    if "dynamodb" not in {g["GroupName"] for g in api.groups.list({})["Groups"]}:
        api.groups.create(group)
    server = make_server("127.0.0.1:0", api)
    server.start()
    host, port = server.bound
    base = f"http://{host}:{port}"
    print(speed_probe())
    print(f"store {size:,.0f} MiB; last hour {now - 3600:.0f}..{now:.0f}")
    try:
        hour = {"StartTime": now - 3600, "EndTime": now}
        api.stop_warming()  # measured by hand below
        for name, path_, body, runs in [
            ("GetServiceGraph, last hour, first (no minute kept yet)", "/ServiceGraph", hour,
             1),
            ("GetServiceGraph, last hour, again", "/ServiceGraph", hour, args.runs),
            ("GetTimeSeriesServiceStatistics, last hour, service(\"checkout\"), 60 s",
             "/TimeSeriesServiceStatistics",
             {**hour, "EntitySelectorExpression": 'service("checkout")', "Period": 60},
             args.runs),
            ("GetServiceGraph, last hour, GroupName (every trace read)", "/ServiceGraph",
             {**hour, "GroupName": "dynamodb"}, max(1, args.runs // 2)),
        ]:
            times, cpu, answer = timed(base + path_, body, runs)
            if "Services" in answer:
                total = sum(s["SummaryStatistics"]["TotalCount"] for s in answer["Services"]
                            if s.get("Type") == "client")
                what = f"{len(answer['Services'])} nodes, {total:,} requests from clients"
            else:
                points = answer["TimeSeriesServiceStatistics"]
                what = f"{len(points)} periods, " + "{:,} requests".format(sum(
                    p["ServiceSummaryStatistics"]["TotalCount"] for p in points))
            print(f"{name}: median {statistics.median(times):.0f} ms, "
                  f"p95 {sorted(times)[int(0.95 * (len(times) - 1))]:.0f} ms, "
                  f"best {min(times):.0f} ms; CPU median {statistics.median(cpu):.0f} ms "
                  f"({what})", flush=True)
        # as after a restart, once the warmer (graph_cache.Warmer) has read the hour
        api.graphs = GraphCache(clock=lambda: now)
        started, cpu_started = time.perf_counter(), time.process_time()
        api.warm_graph()
        print(f"warm-up read of the last hour (off the query path): "
              f"{(time.perf_counter() - started) * 1000:.0f} ms, CPU "
              f"{(time.process_time() - cpu_started) * 1000:.0f} ms")
        times, cpu, _answer = timed(base + "/ServiceGraph", hour, 1)
        print(f"GetServiceGraph, last hour, first after the warm-up: {times[0]:.0f} ms, "
              f"CPU {cpu[0]:.0f} ms", flush=True)
    finally:
        server.stop()
        reader.close()
        api.groups.close()
        writer.close()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
