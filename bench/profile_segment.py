"""Where a segment's CPU time goes, stage by stage, measured in this process with the daemon's
own code: ``.venv/bin/python -m bench.profile_segment``.

receive (recvmmsg through ctypes, kernel copy included) · validate (header and body checks) ·
batch (the queue's put_many and take) · serialize (the PutTraceSegments body) · sign (botocore
SigV4) · send (HTTP on a kept-alive connection to the C sink, kernel included) · and the daemon's
share when signing and sending are offloaded to the helper process. CPU time of this process
(time.process_time), so the sink's own work is not counted; per segment, 1 KB segments,
50 per call.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from bench.loadgen import build_datagram


def per(total: float, count: int) -> float:
    return total / count * 1e6


def main() -> int:
    os.environ.update({"AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                       "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from bench.run import SinkProcess
    from xrayd import aws
    from xrayd.batcher import Batcher
    from xrayd.exporters.signing import Signer
    from xrayd.exporters.transport import DirectTransport
    from xrayd.exporters.xray import XRayExporter, request_body
    from xrayd.protocol import HeaderCache, classify
    from xrayd.receivers.mmsg import open_reader
    from xrayd.segment_queue import SegmentQueue

    rows: list[tuple[str, float]] = []
    datagrams = [build_datagram(1024, i, time.monotonic_ns()) for i in range(50)]
    docs = [d.split(b"\n", 1)[1] for d in datagrams]

    # receive
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader = open_reader(rx.fileno())
    total, count = 0.0, 0
    for _ in range(20):
        for d in datagrams * 40:
            tx.sendto(d, rx.getsockname())
        start = time.process_time()
        got = 0
        while got < 2000:
            got += len(reader.read()) if reader else len([rx.recv(65536)])
        total += time.process_time() - start
        count += got
    rows.append(("receive (recvmmsg, 32 per call)", per(total, count)))

    headers = HeaderCache()
    n = 200_000
    batch = datagrams * (n // 50)
    start = time.process_time()
    for d in batch:
        classify(d, headers)
    rows.append(("validate (header, body)", per(time.process_time() - start, n)))

    queue = SegmentQueue(Batcher(budget=1 << 30), clock=time.monotonic)
    start = time.process_time()
    for i in range(0, n, 32):
        queue.put_many(docs[: 32] if i % 64 else docs[18:])
        while queue.batcher.waiting_count:
            queue.done(queue.get(timeout=0))
    rows.append(("batch (put_many + take + done)", per(time.process_time() - start, n)))

    calls = 2000
    start = time.process_time()
    for _ in range(calls):
        body = request_body(docs)
    rows.append(("serialize (request body)", per(time.process_time() - start, calls * 50)))

    sink = SinkProcess()
    try:
        context = aws.create_context("us-east-1", sink.url, False, "")
        credentials = context.credentials()
        url, headers = sink.url + "/TraceSegments", {"Content-Type": "application/json"}
        start = time.process_time()
        for _ in range(calls):
            request = AWSRequest(method="POST", url=url, data=body, headers=headers)
            SigV4Auth(credentials, "xray", "us-east-1").add_auth(request)
        rows.append(("sign (botocore SigV4Auth on an AWSRequest, before)",
                     per(time.process_time() - start, calls * 50)))
        signer = Signer(sink.url, "us-east-1")
        start = time.process_time()
        for _ in range(calls):
            signed = signer.sign(url, headers, body, credentials)
        rows.append(("sign (botocore SigV4Auth on a light request)",
                     per(time.process_time() - start, calls * 50)))
        transport = DirectTransport(sink.url, True, 2.0)
        start = time.process_time()
        for _ in range(calls):
            transport.post("/TraceSegments", body, signed)
        rows.append(("send (one write, httptools parser, kernel)",
                     per(time.process_time() - start, calls * 50)))
        transport.close()

        for offload in (False, True):
            exporter = XRayExporter(context, pool_size=2, offload=offload)
            for _ in range(300):
                exporter.put(docs)
                if exporter._helper is not None:
                    exporter._helper.ready.wait(10)
            start = time.process_time()
            for _ in range(calls):
                exporter.put(docs)
            label = ("upload, daemon's share with the helper" if offload
                     else "upload in-process (serialize+sign+send)")
            rows.append((label, per(time.process_time() - start, calls * 50)))
            exporter.close()
    finally:
        sink.stop()

    print("| stage | CPU µs per segment |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
