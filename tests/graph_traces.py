"""A three-service trace set for the service graph tests: ``frontend`` (EC2) calls ``backend``
(ECS) and an uninstrumented HTTP API; ``backend`` calls DynamoDB, S3, SQS and ``worker``
(Lambda), which calls DynamoDB. Documents as the SDKs send them: a segment a service, calls as
subsegments (namespace ``aws`` or ``remote``), each downstream segment's ``parent_id`` the id of
the subsegment that called it."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import orjson

ACCOUNT = "123456789012"


@dataclass
class TraceSet:
    docs: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    worker_trace_ids: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    # what the set is made of, to derive the expected counts from
    traces: int = 0
    behind_balancer: int = 0  # roots whose parent (a load balancer) never reports here
    s3_faults: int = 0  # faults recorded only on backend's S3 subsegment
    sqs_throttles: int = 0  # throttles only on backend's SQS subsegment
    partner_errors: int = 0  # 4xx answers of the partner API, on frontend's subsegment
    backend_faults: int = 0  # backend's own segment fault (a 500 answered to frontend)


def offline_with_traces(start_xrayd, tmp_path) -> tuple[int, object, TraceSet, float]:
    """(port, boto3 client, trace set, its ``now``) of ``xrayd --offline`` holding the set,
    stored through PutTraceSegments (50 documents a call, as the service allows)."""
    from offline_support import start_offline, xray_client

    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    now = time.time()
    traces = three_services(now)
    for i in range(0, len(traces.docs), 50):
        answer = client.put_trace_segments(TraceSegmentDocuments=traces.docs[i:i + 50])
        assert answer["UnprocessedTraceSegments"] == []
    return port, client, traces, now


def _id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def _sub(rng: random.Random, name: str, namespace: str, start: float, took: float,
         **extra) -> dict:
    return {"id": _id(rng), "name": name, "namespace": namespace, "start_time": start,
            "end_time": start + took, **extra}


def three_services(now: float, count: int = 12, spread: float = 150.0, seed: int = 5
                   ) -> TraceSet:
    """``count`` traces with start times over the ``spread`` seconds before ``now``: every
    third goes through ``worker``; trace 1 has a fault only in backend's S3 call, trace 2 a
    throttle only in its SQS call, trace 4 a 404 from the partner API, trace 5 a fault of
    backend itself; every other trace enters behind a load balancer that does not report."""
    rng = random.Random(seed)
    out = TraceSet(traces=count)
    for i in range(count):
        start = now - spread + spread * i / count
        trace_id = f"1-{int(start):08x}-{rng.getrandbits(96):024x}"
        out.trace_ids.append(trace_id)
        out.starts.append(start)
        call_backend = _sub(rng, "backend", "remote", start + 0.01, 0.2,
                            http={"request": {"method": "GET", "url": "http://backend/items"},
                                  "response": {"status": 500 if i == 5 else 200}})
        if i == 5:
            call_backend["fault"] = True
            out.backend_faults += 1
        partner = _sub(rng, "api.partner.com", "remote", start + 0.22, 0.05,
                       http={"request": {"method": "GET", "url": "https://api.partner.com/x"},
                             "response": {"status": 404 if i == 4 else 200}})
        if i == 4:
            partner["error"] = True
            out.partner_errors += 1
        frontend = {
            "id": _id(rng), "trace_id": trace_id, "name": "frontend",
            "origin": "AWS::EC2::Instance", "start_time": start, "end_time": start + 0.3,
            "aws": {"account_id": ACCOUNT, "ec2": {"instance_id": "i-0123456789abcdef0"}},
            "http": {"request": {"method": "GET", "url": f"http://shop.local/p/{i}"},
                     "response": {"status": 200}},
            "subsegments": [call_backend, partner],
        }
        if i % 2:
            frontend["parent_id"] = _id(rng)  # the balancer's, never received
            out.behind_balancer += 1
        b0 = start + 0.02
        s3 = _sub(rng, "S3", "aws", b0 + 0.03, 0.02,
                  aws={"operation": "PutObject", "bucket_name": "uploads"})
        if i == 1:
            s3["fault"] = True
            out.s3_faults += 1
        sqs = _sub(rng, "SQS", "aws", b0 + 0.06, 0.01,
                   aws={"operation": "SendMessage", "queue_url": "https://sqs/q"})
        if i == 2:
            sqs["throttle"] = True
            sqs["error"] = True
            out.sqs_throttles += 1
        backend_subs = [
            _sub(rng, "DynamoDB", "aws", b0 + 0.005, 0.02,
                 aws={"operation": "GetItem", "table_name": "items"}),
            s3, sqs,
        ]
        worker_call = None
        if i % 3 == 0:
            worker_call = _sub(rng, "worker", "remote", b0 + 0.08, 0.1)
            backend_subs.append(worker_call)
            out.worker_trace_ids.append(trace_id)
        backend = {
            "id": _id(rng), "trace_id": trace_id, "name": "backend",
            "origin": "AWS::ECS::Container", "parent_id": call_backend["id"],
            "start_time": b0, "end_time": b0 + 0.18, "subsegments": backend_subs,
            "http": {"response": {"status": 500 if i == 5 else 200}},
        }
        if i == 5:
            backend["fault"] = True
        out.docs += [orjson.dumps(frontend).decode(), orjson.dumps(backend).decode()]
        if worker_call is not None:
            w0 = b0 + 0.09
            worker = {
                "id": _id(rng), "trace_id": trace_id, "name": "worker",
                "origin": "AWS::Lambda::Function", "parent_id": worker_call["id"],
                "start_time": w0, "end_time": w0 + 0.08,
                "subsegments": [_sub(rng, "DynamoDB", "aws", w0 + 0.01, 0.03,
                                     aws={"operation": "PutItem", "table_name": "jobs"})],
            }
            out.docs.append(orjson.dumps(worker).decode())
    return out
