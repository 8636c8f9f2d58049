"""Query benchmark: GetTraceSummaries for the last hour on a store of 1,000,000 traces.

    .venv/bin/python bench/bench_queries.py [--traces 1000000] [--hours 24] [--runs 20]
                                            [--store PATH]   # kept and reused when given

The store is filled with SDK-like traces spread evenly over --hours ending now: a web segment
(HTTP fields, two annotations, a SQL and a DynamoDB call); one trace in ten also calls the
``payments`` service, whose segment is a second document; one in twenty answers 500 with the
fault in ``payments``. The rows are built by the store's own code (``rows.build``) and written
with the writer's own statements, in one thread and without the writer's queues, so that the
fill takes minutes, not an hour. Then each filter is asked --runs times for the last hour over
the daemon's X-Ray API (HTTP on loopback, as boto3 sends it); the median and the 95th
percentile of the whole call, first page of 100, and the CPU time a call takes (this process
runs both the server and the client), which a busy machine does not inflate.
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

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bench_store import query_times
from conftest import SAFE_ENV, free_udp_tcp_port
from xrayd.sampling.engine import SamplingEngine
from xrayd.server.xray_api import StoreReader, XRayApi, make_server
from xrayd.store import rows as store_rows
from xrayd.store import schema
from xrayd.store.writer import (
    _ANNOTATIONS_INSERT,
    _SEGMENT_UPSERT,
    _SERVICES_INSERT,
    _TRACE_UPSERT,
    _Insert,
)

FILTERS = {
    "annotation": 'annotation.customer = "c42"',
    "service { fault }": 'service("payments") { fault }',
    "rootcause": 'rootcause.fault.service { name = "payments" }',
}


def trace_documents(i: int, start: float, rng: random.Random) -> list[bytes]:
    trace_id = f"1-{int(start):08x}-{rng.getrandbits(96):024x}"
    root_id = f"{rng.getrandbits(64):016x}"
    pays = i % 10 == 0
    fault = pays and i % 20 == 0
    status = 500 if fault else rng.choice([200] * 19 + [404])
    calls = [
        {"id": f"{rng.getrandbits(64):016x}", "name": "postgres@db.local",
         "start_time": start + 0.01, "end_time": start + 0.02, "namespace": "remote",
         "sql": {"url": "postgresql://db.local/shop", "database_type": "PostgreSQL",
                 "sanitized_query": "SELECT * FROM items WHERE id = %s"}},
        {"id": f"{rng.getrandbits(64):016x}", "name": "DynamoDB", "start_time": start + 0.03,
         "end_time": start + 0.05, "namespace": "aws",
         "aws": {"operation": "GetItem", "region": "us-east-1", "table_name": "carts"},
         "http": {"response": {"status": 200}}},
    ]
    docs = []
    if pays:
        call_id = f"{rng.getrandbits(64):016x}"
        calls.append({"id": call_id, "name": "payments", "start_time": start + 0.06,
                      "end_time": start + 0.3, "namespace": "remote", "fault": fault,
                      "http": {"request": {"method": "POST", "url": "http://payments/charge"},
                               "response": {"status": 500 if fault else 200}}})
        payment = {"id": f"{rng.getrandbits(64):016x}", "trace_id": trace_id,
                   "parent_id": call_id, "name": "payments", "start_time": start + 0.07,
                   "end_time": start + 0.29, "fault": fault,
                   "http": {"request": {"method": "POST", "url": "http://payments/charge"},
                            "response": {"status": 500 if fault else 200}}}
        if fault:
            payment["cause"] = {"exceptions": [{"id": "1", "type": "CardError",
                                                "message": "card declined"}]}
        docs.append(orjson.dumps(payment))
    root = {
        "id": root_id, "trace_id": trace_id, "name": rng.choice(["checkout", "cart", "search"]),
        "start_time": start, "end_time": start + 0.35,
        "http": {"request": {"method": "GET", "url": f"http://shop.local/items/{i}",
                             "user_agent": "Mozilla/5.0", "client_ip": "10.0.0.1"},
                 "response": {"status": status}},
        "annotations": {"customer": f"c{i % 1000}", "tier": i % 3},
        "metadata": {"default": {"cart_items": i % 7}},
        "aws": {"xray": {"sdk": "X-Ray for Python", "sdk_version": "2.15.0"}},
        "subsegments": calls,
    }
    if status == 500:
        root["fault"] = True
    elif status == 404:
        root["error"] = True
    docs.append(orjson.dumps(root))
    return docs


def fill(path: str, count: int, hours: float, now: float) -> float:
    conn = schema.connect(path)
    limit = conn.getlimit(3)  # SQLITE_LIMIT_VARIABLE_NUMBER
    inserts = (
        (_Insert(_TRACE_UPSERT, store_rows.TRACE_COLUMNS, limit), "traces"),
        (_Insert(_SEGMENT_UPSERT, store_rows.SEGMENT_COLUMNS, limit), "segments"),
        (_Insert(_ANNOTATIONS_INSERT.replace("{bits}", str(schema.BUCKET_BITS)),
                 store_rows.ANNOTATION_COLUMNS, limit), "annotations"),
        (_Insert(_SERVICES_INSERT, store_rows.SERVICE_COLUMNS, limit), "services"),
    )
    rng = random.Random(7)
    started = time.perf_counter()
    span = hours * 3600
    next_pk = 1
    chunk = 5000
    for first in range(0, count, chunk):
        docs: list[bytes] = []
        for i in range(first, min(count, first + chunk)):
            docs.extend(trace_documents(i, now - span + span * i / count, rng))
        built, rejected = store_rows.build([(docs, now)])
        assert rejected == [[]]
        built.set_docs([(docs, now)], rejected)
        keys = list(range(next_pk, next_pk + len(built.trace_ids)))
        next_pk += len(keys)
        built.set_keys(keys)
        conn.execute("BEGIN")
        for insert, table in inserts:
            params = getattr(built, table)
            if params:
                insert.execute(conn, params)
        conn.execute("COMMIT")
        if first % 100_000 == 0:
            print(f"  {first:,} traces, {time.perf_counter() - started:.0f} s", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--store", help="store file to fill (or reuse, if it exists)")
    args = parser.parse_args()
    os.environ.update(SAFE_ENV)
    tmp = tempfile.mkdtemp(prefix="xrayd-bench-queries-")
    path = args.store or os.path.join(tmp, "traces.db")
    meta_path = path + ".bench.json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        print(f"reusing {path}: {meta}")
    else:
        now = time.time()
        seconds = fill(path, args.traces, args.hours, now)
        meta = {"traces": args.traces, "hours": args.hours, "now": now, "fill_s": seconds}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        print(f"filled {args.traces:,} traces in {seconds:.0f} s")
    now = meta["now"]
    port = free_udp_tcp_port()
    reader = StoreReader(path)
    api = XRayApi(None, reader, SamplingEngine())  # type: ignore[arg-type]  # reads only
    server = make_server(f"127.0.0.1:{port}", api)
    server.start()
    url = f"http://127.0.0.1:{port}/TraceSummaries"
    try:
        for label, expression in FILTERS.items():
            body = {"StartTime": now - 3600, "EndTime": now, "FilterExpression": expression}
            cpu = time.process_time()
            times = query_times(url, body, args.runs)
            cpu_ms = (time.process_time() - cpu) * 1000 / args.runs
            p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
            print(f"{label:18} {expression!r}: median {statistics.median(times):.0f} ms, "
                  f"p95 {p95:.0f} ms, CPU {cpu_ms:.0f} ms a call (server and client); "
                  f"{body['_found']} summaries of {body['_processed']:,} traces in the hour, "
                  f"load average {os.getloadavg()[0]:.1f}")
    finally:
        server.stop()
        reader.close()


if __name__ == "__main__":
    main()
