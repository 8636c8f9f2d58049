"""OpenTelemetry intake benchmark: ``.venv/bin/python -m bench.bench_otlp [--quick]``.

Two phases against one xrayd (normal mode, uploading to bench/sink.c with PutTraceSegments):

* OTLP/HTTP: ``--spans`` spans in ExportTraceServiceRequests of ``--batch`` spans (the
  BatchSpanProcessor's default export size is 512), sent as fast as xrayd answers over
  ``--connections`` kept-alive connections; a 503 is retried after its Retry-After, as the
  SDKs do. Figures: spans/s from the first request until the sink holds every span, lost spans
  (must be 0), 503 answers, xrayd's CPU per span.
* T1S over UDP (ADOT's UDP exporter format): datagrams of ``--udp-batch`` spans at each rate of
  ``--udp-rates`` spans/s for ``--udp-seconds``; lost spans and CPU per span at each rate.

Each span is a CLIENT span with the usual HTTP attributes and a few custom ones, named
``bench-<seq>-<ns>`` so the sink counts it exactly (the name lands in the document's
``metadata.otel.span_name``). Payloads are built before the clock starts.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from bench import procstat
from bench.run import RESULTS, SinkProcess, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import SAFE_ENV, free_port, free_udp_tcp_port

HEADER = b'{"format":"json","version":1}\n'


def _kv(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue()
    if isinstance(value, int):
        any_value.int_value = value
    else:
        any_value.string_value = value
    return KeyValue(key=key, value=any_value)


RESOURCE = [_kv("service.name", "bench-shop"), _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.language", "python"), _kv("telemetry.sdk.version", "1.44.0"),
            _kv("host.name", "bench-host"), _kv("service.instance.id", "instance-1")]


def build_request(first_seq: int, count: int) -> bytes:
    """``count`` spans numbered from ``first_seq``, 8 spans per trace."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(RESOURCE)
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "bench"
    now_ns = time.time_ns()
    epoch = (now_ns // 10**9).to_bytes(4, "big")
    for seq in range(first_seq, first_seq + count):
        trace = epoch + (seq // 8 + 1).to_bytes(12, "big")
        scope.spans.add(
            name=f"bench-{seq}-{now_ns}", kind=3, trace_id=trace,
            span_id=(seq + 1).to_bytes(8, "big"), parent_span_id=(seq // 8 + 1).to_bytes(8, "big"),
            start_time_unix_nano=now_ns, end_time_unix_nano=now_ns + 1_000_000,
            attributes=[_kv("http.request.method", "GET"),
                        _kv("url.full", f"http://backend.local/items/{seq % 100}"),
                        _kv("http.response.status_code", 200),
                        _kv("server.address", "backend.local"), _kv("server.port", 8080),
                        _kv("customer.id", f"c-{seq % 1000}"),
                        _kv("network.protocol.version", "1.1"),
                        _kv("thread.name", "worker-1")])
    return request.SerializeToString()


# --sample: a sitecustomize loaded by the daemon and its conversion workers that samples every
# thread's innermost Python frames each millisecond and writes, per process, the samples and
# each thread's CPU seconds (/proc), so the figures say where the daemon's CPU goes.
SAMPLER = r'''
import collections, json, os, sys, threading, time

def _run(out):
    samples = collections.Counter()
    me = threading.get_ident()
    start = {}
    def cpu(native):
        try:
            with open(f"/proc/self/task/{native}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0
    last = time.monotonic()
    while True:
        time.sleep(0.001)
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            stack = []
            while frame is not None and len(stack) < 3:
                code = frame.f_code
                stack.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            samples[(names.get(ident, "?"), " < ".join(stack))] += 1
        if time.monotonic() - last > 1:
            last = time.monotonic()
            threads = {t.name: cpu(t.native_id) for t in threading.enumerate() if t.native_id}
            with open(out + ".tmp", "w") as f:
                json.dump({"argv": sys.argv, "thread_cpu_seconds": threads,
                           "samples": [[n, s, c] for (n, s), c in samples.most_common(60)]}, f)
            os.replace(out + ".tmp", out)

if os.environ.get("XRAYD_SAMPLE_DIR") and "xrayd" in " ".join(sys.argv + sys.orig_argv):
    threading.Thread(target=_run, daemon=True, name="sampler", args=(
        os.path.join(os.environ["XRAYD_SAMPLE_DIR"], f"{os.getpid()}.json"),)).start()
'''


class Daemon:
    def __init__(self, sink: SinkProcess, workdir: Path, sample: bool = False) -> None:
        self.udp_port = free_udp_tcp_port()
        self.http_port = free_port()
        self.log = open(workdir / "xrayd.log", "wb")  # noqa: SIM115
        env = {**os.environ, **SAFE_ENV}
        if sample:
            self.sample_dir = workdir / "samples"
            self.sample_dir.mkdir(exist_ok=True)
            (self.sample_dir / "sitecustomize.py").write_text(SAMPLER)
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.sample_dir), env.get("PYTHONPATH")]))
            env["XRAYD_SAMPLE_DIR"] = str(self.sample_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrayd", "-b", f"127.0.0.1:{self.udp_port}",
             "-t", f"127.0.0.1:{self.udp_port}", "--endpoint", sink.url, "-n", "us-east-1",
             "-m", "64", "-o", "--otlp-http-address", f"127.0.0.1:{self.http_port}",
             "-l", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
            cwd=workdir)
        deadline = time.monotonic() + 30
        while not procstat.udp_port_bound(self.udp_port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("xrayd did not start")
            time.sleep(0.05)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("OTLP/HTTP port not listening") from None
                time.sleep(0.05)
        time.sleep(1.0)  # the rest of start-up does not count

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.proc.pid)

    def cpu_split(self) -> tuple[float, float, float]:
        """(the daemon process, its conversion workers, its other children: the upload
        helper forked by the X-Ray exporter) CPU seconds."""
        workers = others = 0.0
        for child in procstat.tree(self.proc.pid)[1:]:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            seconds = procstat.cpu_seconds(child) - sum(
                procstat.cpu_seconds(c) for c in procstat.tree(child)[1:])
            if b"convert_workers" in command:
                workers += seconds
            else:
                others += seconds
        return procstat.cpu_seconds(self.proc.pid) - workers - others, workers, others

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def wait_for_sink(sink: SinkProcess, expect: int, limit: float) -> tuple[dict, int]:
    """The sink's stats once it holds ``expect`` spans or stops growing; (stats, ns seen)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while True:
        stats = sink.stats()
        if stats["unique"] >= expect:
            return stats, time.monotonic_ns()
        if stats["unique"] != last:
            last, since = stats["unique"], time.monotonic()
        elif time.monotonic() - since > 3 or time.monotonic() > deadline:
            return stats, time.monotonic_ns()
        time.sleep(0.01)


def http_phase(daemon: Daemon, sink: SinkProcess, spans: int, batch: int,
               connections: int) -> dict:
    progress(f"OTLP/HTTP: building {spans} spans in requests of {batch}")
    bodies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for first in range(0, spans, batch):
        bodies.put(build_request(first, min(batch, spans - first)))
    # Warm-up: the conversion workers start with the first large requests (their start-up,
    # about half a CPU second each, is not part of the figures).
    warm = 8 * batch
    sink.reset(warm)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    for first in range(0, warm, batch):
        conn.request("POST", "/v1/traces", build_request(first, batch),
                     {"Content-Type": "application/x-protobuf"})
        conn.getresponse().read()
    conn.close()
    wait_for_sink(sink, warm, 30)
    sink.reset(spans)
    busy = [0]
    errors: list[str] = []

    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
        while True:
            try:
                body = bodies.get_nowait()
            except queue.Empty:
                break
            while True:
                conn.request("POST", "/v1/traces", body,
                             {"Content-Type": "application/x-protobuf"})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    break
                if response.status == 503:
                    busy[0] += 1
                    time.sleep(float(response.getheader("Retry-After", "1")))
                    continue
                errors.append(f"HTTP {response.status}")
                break
        conn.close()

    progress(f"OTLP/HTTP: sending over {connections} connections")
    cpu0 = daemon.cpu()
    main0, workers0, helper0 = daemon.cpu_split()
    sink0, sender0 = sink.cpu(), time.process_time()
    started = time.monotonic_ns()
    threads = [threading.Thread(target=send) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent_ns = time.monotonic_ns()
    sender_cpu = time.process_time() - sender0
    stats, done_ns = wait_for_sink(sink, spans, 120)
    cpu = daemon.cpu() - cpu0
    main1, workers1, helper1 = daemon.cpu_split()
    seconds = (done_ns - started) / 1e9
    delivered = max(stats["unique"], 1)
    return {"spans": spans, "batch": batch, "connections": connections,
            "delivered": stats["unique"], "lost": spans - stats["unique"],
            "answers_503": busy[0], "errors": errors[:5],
            "send_seconds": round((sent_ns - started) / 1e9, 3),
            "seconds_to_sink": round(seconds, 3),
            "spans_per_second": round(stats["unique"] / seconds),
            "xrayd_cpu_seconds": round(cpu, 2),
            "xrayd_cpu_us_per_span": round(cpu / delivered * 1e6, 1),
            "main_process_cpu_us_per_span": round((main1 - main0) / delivered * 1e6, 1),
            "workers_cpu_us_per_span": round((workers1 - workers0) / delivered * 1e6, 1),
            "upload_helper_cpu_us_per_span": round((helper1 - helper0) / delivered * 1e6, 1),
            "sender_cpu_us_per_span": round(sender_cpu / delivered * 1e6, 1),
            "sink_cpu_us_per_span": round((sink.cpu() - sink0) / delivered * 1e6, 1),
            "load_average_1min": os.getloadavg()[0]}


def udp_phase(daemon: Daemon, sink: SinkProcess, rate: int, seconds: float,
              batch: int) -> dict:
    total = int(rate * seconds) // batch * batch
    datagrams = [HEADER + b"T1S" + base64.b64encode(build_request(first, batch))
                 for first in range(0, total, batch)]
    sink.reset(total)
    interval = batch / rate
    cpu0 = daemon.cpu()
    drops0 = procstat.udp_receive_errors()
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        address = ("127.0.0.1", daemon.udp_port)
        for i, datagram in enumerate(datagrams):
            due = started + i * interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sock.sendto(datagram, address)
    send_seconds = time.monotonic() - started
    stats, _ = wait_for_sink(sink, total, 60)
    cpu = daemon.cpu() - cpu0
    return {"rate": rate, "spans": total, "spans_per_datagram": batch,
            "datagram_bytes": len(datagrams[0]), "send_rate": round(total / send_seconds),
            "delivered": stats["unique"], "lost": total - stats["unique"],
            "kernel_drops": procstat.udp_receive_errors() - drops0,
            "xrayd_cpu_us_per_span": round(cpu / max(stats["unique"], 1) * 1e6, 1),
            "load_average_1min": os.getloadavg()[0]}


# -- the alternative evaluated for --profile: reading the wire format in pure Python --------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    byte = buf[i]
    if byte < 0x80:  # most lengths and tags: one byte
        return byte, i + 1
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _wire_any_value(buf: bytes, i: int, end: int) -> object:
    value: object = None
    while i < end:
        tag = buf[i]
        i += 1
        if tag == 0x0A:  # string_value
            n, i = _varint(buf, i)
            value = buf[i:i + n].decode()
            i += n
        elif tag in (0x10, 0x18):  # bool_value, int_value
            raw, i = _varint(buf, i)
            value = bool(raw) if tag == 0x10 else raw - (1 << 64) if raw >> 63 else raw
        elif tag == 0x21:  # double_value
            (value,) = struct.unpack_from("<d", buf, i)
            i += 8
        else:
            raise ValueError(f"field tag {tag} not read by this sketch")
    return value


def _wire_span(buf: bytes, i: int, end: int) -> dict:
    span: dict = {}
    attrs: dict = {}
    while i < end:
        tag = buf[i]
        i += 1
        wire = tag & 7
        if wire == 2:
            n, i = _varint(buf, i)
            j = i + n
            if tag == 0x4A:  # attributes: KeyValue(key = 1, value = 2)
                key, value, k = "", None, i
                while k < j:
                    field = buf[k]
                    m, k = _varint(buf, k + 1)
                    if field == 0x0A:
                        key = buf[k:k + m].decode()
                    elif field == 0x12:
                        value = _wire_any_value(buf, k, k + m)
                    k += m
                attrs[key] = value
            elif tag == 0x2A:
                span["name"] = buf[i:j].decode()
            else:
                span[tag >> 3] = buf[i:j]
            i = j
        elif wire == 0:
            span[tag >> 3], i = _varint(buf, i)
        elif wire == 1:
            (span[tag >> 3],) = struct.unpack_from("<Q", buf, i)
            i += 8
        else:
            raise ValueError(f"wire type {wire} not read by this sketch")
    span["attributes"] = attrs
    return span


def _wire_fields(buf: bytes, i: int, end: int):
    while i < end:
        tag = buf[i]
        n, i = _varint(buf, i + 1)
        yield tag, i, i + n
        i += n


def wire_read_request(buf: bytes) -> list[dict]:
    """The spans of an ExportTraceServiceRequest as dicts, read from the wire format in pure
    Python: a sketch of the alternative to upb's accessors (no error handling), for --profile
    only; upb + accessors are faster (docs/benchmarks.md)."""
    spans = []
    for tag, i, end in _wire_fields(buf, 0, len(buf)):
        if tag != 0x0A:
            continue
        for tag2, i2, end2 in _wire_fields(buf, i, end):
            if tag2 != 0x12:
                continue
            for tag3, i3, end3 in _wire_fields(buf, i2, end2):
                if tag3 == 0x12:
                    spans.append(_wire_span(buf, i3, end3))
    return spans


def _per_span(step, make_input, rounds: int, spans: int) -> float:
    """Median over ``rounds`` of this thread's CPU µs a span for ``step(make_input())``
    (thread CPU, not wall time: the other sessions' load then inflates it less)."""
    import statistics

    times = []
    for _ in range(rounds):
        given = make_input()
        started = time.thread_time()
        step(given)
        times.append((time.thread_time() - started) / spans * 1e6)
    return round(statistics.median(times), 2)


def profile_phase(batch: int, rounds: int) -> dict:
    """Where one process's CPU goes for a request of ``batch`` spans: protobuf decode, reading
    the fields, conversion, and a conversion worker's round trip (both sides' CPU)."""
    import gc

    from xrayd.otel import Options
    from xrayd.otel.decode import traces_from_protobuf
    from xrayd.otel.spans_to_segments import attributes, convert_request
    from xrayd.receivers.convert_workers import Worker

    body = build_request(0, batch)

    def spans_of(_body: bytes):
        return traces_from_protobuf(body).resource_spans[0].scope_spans[0].spans

    def read_fields(spans) -> None:
        for span in spans:
            attributes(span.attributes)
            _ = (span.trace_id, span.span_id, span.parent_span_id, span.kind, span.name,
             span.start_time_unix_nano, span.end_time_unix_nano, span.status.code, span.events,
             span.links, span.status.message)

    gc.disable()  # as in the conversion workers
    try:
        result = {
            "spans_per_request": batch,
            "protobuf_decode_us": _per_span(traces_from_protobuf, lambda: body, rounds, batch),
            "upb_read_fields_and_attributes_us": _per_span(
                read_fields, lambda: spans_of(body), rounds, batch),
            "pure_python_wire_reader_us": _per_span(wire_read_request, lambda: body, rounds, batch),
            "decode_and_convert_us": _per_span(
                lambda b: convert_request(traces_from_protobuf(b)), lambda: body, rounds,
                batch),
        }
    finally:
        gc.enable()
    worker = Worker(Options())
    try:
        worker.convert(body, False, False, len(body) * 2)  # start-up not counted
        worker_cpu0, own0 = procstat.cpu_seconds(worker.process.pid), time.process_time()
        for _ in range(rounds):
            worker.convert(body, False, False, len(body) * 2)
        spans = rounds * batch
        result["worker_round_trip"] = {
            "worker_process_us": round((procstat.cpu_seconds(worker.process.pid) - worker_cpu0)
                                       / spans * 1e6, 2),
            "calling_process_us": round((time.process_time() - own0) / spans * 1e6, 2)}
    finally:
        worker.close()
    result["load_average_1min"] = os.getloadavg()[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--udp-rates", default="20000,30000")
    parser.add_argument("--udp-seconds", type=float, default=5.0)
    parser.add_argument("--udp-batch", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--profile", action="store_true",
                        help="only the in-process CPU breakdown of a --batch request")
    parser.add_argument("--rounds", type=int, default=40, help="requests per --profile step")
    parser.add_argument("--sample", action="store_true",
                        help="sample the daemon's and workers' threads (1 ms): where the CPU "
                             "goes, in the results file (costs some CPU itself)")
    args = parser.parse_args(argv)
    if args.profile:
        print(json.dumps(profile_phase(args.batch, args.rounds), indent=2))
        return 0
    if args.quick:
        args.spans, args.udp_rates, args.udp_seconds = 20_000, "5000", 1.0
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-otlp-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    sink = SinkProcess()
    daemon = Daemon(sink, workdir, args.sample)
    results: dict = {"machine_cpus": os.cpu_count(), "sink": sink.kind}
    try:
        results["otlp_http"] = http_phase(daemon, sink, args.spans, args.batch,
                                          args.connections)
        progress(json.dumps(results["otlp_http"]))
        results["udp_t1s"] = []
        for rate in (int(r) for r in args.udp_rates.split(",")):
            progress(f"T1S over UDP at {rate} spans/s")
            results["udp_t1s"].append(udp_phase(daemon, sink, rate, args.udp_seconds,
                                                args.udp_batch))
            progress(json.dumps(results["udp_t1s"][-1]))
    finally:
        if args.sample:
            time.sleep(1.5)  # a last write of the samples
            results["samples"] = [json.loads(p.read_text())
                                  for p in daemon.sample_dir.glob("*.json")]
        daemon.stop()
        sink.stop()
    out = RESULTS / f"otlp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
