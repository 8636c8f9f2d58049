"""The daemon as a subprocess with OpenTelemetry apps (real SDK and exporters from PyPI):
ADOT's UDP exporter in offline and normal mode, the standard OTLP exporters with default
settings against ``xrayd --offline`` without OTLP flags, a mixed X-Ray SDK → OTel trace, and
the counters in the shutdown summary and on the admin endpoint."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from amazon.opentelemetry.distro.otlp_udp_exporter import OTLPUdpSpanExporter

from conftest import SAFE_ENV, free_port, free_udp_tcp_port, wait_until
from offline_support import recorder, start_offline, xray_client
from test_otlp_receivers import check_documents, run_app

OTLP_OFF = ("--otlp-http-address", "off", "--otlp-grpc-address", "off")


def summaries(client, trace_id: str):
    now = datetime.datetime.now(datetime.UTC)
    found = client.get_trace_summaries(StartTime=now - datetime.timedelta(minutes=10),
                                       EndTime=now + datetime.timedelta(minutes=1))
    return [s for s in found["TraceSummaries"] if s["Id"] == trace_id]


def stored_documents(client, trace_id: str, expected: int) -> list[dict]:
    """The trace's documents with the store's merged subsegments flattened out again."""

    def flat():
        traces = client.batch_get_traces(TraceIds=[trace_id])["Traces"]
        if not traces:
            return None
        docs = []
        for segment in traces[0]["Segments"]:
            doc = json.loads(segment["Document"])
            stack = [doc]
            while stack:
                node = stack.pop()
                docs.append(node)
                for sub in node.get("subsegments", []):
                    sub.setdefault("trace_id", doc["trace_id"])
                    sub.setdefault("parent_id", node["id"])
                    sub.setdefault("type", "subsegment")
                    stack.append(sub)
        return docs if len(docs) >= expected else None

    return wait_until(flat, what=f"{expected} documents of {trace_id}")


def test_adot_udp_exporter_offline(start_xrayd, tmp_path):
    daemon, port, _ = start_offline(start_xrayd, tmp_path, *OTLP_OFF)
    trace_id = run_app(OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}"))
    client = xray_client(port)
    [summary] = wait_until(lambda: summaries(client, trace_id), what="trace summary")
    assert summary["HasFault"] is True
    assert summary["Http"]["HttpStatus"] == 500
    assert summary["Http"]["HttpURL"] == "http://shop.local/items"
    check_documents(stored_documents(client, trace_id, 3), trace_id)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "intake[otlp-udp] 3" in daemon.output
    assert "otel_spans_received[otlp-udp] 3" in daemon.output


def test_adot_udp_exporter_normal_mode_reaches_the_api(moto, start_xrayd, tmp_path):
    port = free_udp_tcp_port()
    admin = free_port()
    start_xrayd(["-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "--endpoint", moto.url,
                 "-n", "us-east-1", "-o", "--admin-address", f"127.0.0.1:{admin}"])
    trace_id = run_app(OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}"))
    api = moto.xray()

    def uploaded():
        traces = api.batch_get_traces(TraceIds=[trace_id])["Traces"]
        if not traces or len(traces[0]["Segments"]) < 3:
            return None
        return [json.loads(s["Document"]) for s in traces[0]["Segments"]]

    check_documents(wait_until(uploaded, what="3 segments in moto"), trace_id)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read()
    assert b'xrayd_intake_segments_total{source="otlp-udp"} 3.0' in metrics
    assert b'xrayd_otel_spans_received_total{source="otlp-udp"} 3.0' in metrics


SCENARIO = r'''
import datetime, json, os, subprocess, sys, time
import boto3
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as G
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as H
sys.path.insert(0, sys.argv[1])
from test_otlp_receivers import run_app

tmp = sys.argv[2]
log = open(os.path.join(tmp, "xrayd.log"), "wb")
daemon = subprocess.Popen([sys.executable, "-m", "xrayd", "--offline", "--store",
                           os.path.join(tmp, "t.db"), "-l", "info"], stdout=log,
                          stderr=subprocess.STDOUT, cwd=tmp)
deadline = time.monotonic() + 20
while b"Ready: receiving" not in open(os.path.join(tmp, "xrayd.log"), "rb").read():
    assert time.monotonic() < deadline and daemon.poll() is None, "xrayd did not start"
    time.sleep(0.05)
ids = {"http": run_app(H(), "shop-http"), "grpc": run_app(G(insecure=True), "shop-grpc")}
client = boto3.client("xray", endpoint_url="http://127.0.0.1:2000", region_name="us-east-1",
                      aws_access_key_id="a", aws_secret_access_key="b")
found = {}
deadline = time.monotonic() + 15
while len(found) < 2 and time.monotonic() < deadline:
    now = datetime.datetime.now(datetime.timezone.utc)
    summaries = client.get_trace_summaries(StartTime=now - datetime.timedelta(minutes=5),
                                           EndTime=now + datetime.timedelta(minutes=1))
    for s in summaries["TraceSummaries"]:
        found[s["Id"]] = [json.loads(seg["Document"]) for seg in
                          client.batch_get_traces(TraceIds=[s["Id"]])["Traces"][0]["Segments"]]
    time.sleep(0.1)
daemon.terminate()
daemon.wait(30)
print(json.dumps({"ids": ids, "found": found}))
'''


def test_standard_exporters_with_defaults_reach_offline_xrayd_without_flags(tmp_path):
    """The SDKs' default endpoints (localhost:4318 and :4317) are xrayd --offline's defaults.
    Run in a network namespace of its own (only loopback) where ``unshare -rn`` works, so the
    fixed ports cannot collide with anything else on the machine; else on the machine's
    loopback, when those ports are free."""
    unshare = shutil.which("unshare")
    private = unshare is not None and subprocess.run(
        [unshare, "-rn", "true"], capture_output=True).returncode == 0
    if not private:  # no namespaces here: the machine's own ports, which must be free
        for port in (2000, 4317, 4318):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    pytest.fail(f"port {port} is taken and unshare -rn is not available")
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    env = {**SAFE_ENV, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": ":".join(sys.path)}
    command = [sys.executable, str(script), tests_dir, str(tmp_path)]
    if private:
        command = [unshare, "-rn", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh",
                   *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    log = (tmp_path / "xrayd.log").read_text(errors="replace") if (
        tmp_path / "xrayd.log").exists() else ""
    assert result.returncode == 0, result.stderr + log
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert "OTLP/HTTP on 127.0.0.1:4318" in log and "OTLP/gRPC on 127.0.0.1:4317" in log
    for kind in ("http", "grpc"):
        trace_id = outcome["ids"][kind]
        assert trace_id in outcome["found"], (kind, outcome, log)
        [root] = outcome["found"][trace_id]
        assert root["name"] == f"shop-{kind}"
        assert {s["name"] for s in root["subsegments"]} == {"backend.local", "compute"}
    assert "intake[otlp-http] 3" in log and "intake[otlp-grpc] 3" in log


def test_offline_default_ports_taken_is_logged_not_fatal(start_xrayd, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        daemon, port, _ = start_offline(start_xrayd, tmp_path, "--otlp-http-address",
                                        f"127.0.0.1:{taken}", "--otlp-grpc-address",
                                        f"127.0.0.1:{taken}")
        output = daemon.output
    assert f"OTLP/HTTP receiver not started: cannot listen on 127.0.0.1:{taken}" in output
    assert f"OTLP/gRPC receiver not started: cannot listen on 127.0.0.1:{taken}" in output
    trace_id = run_app(OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}"))
    assert wait_until(lambda: summaries(xray_client(port), trace_id), what="trace")


class OtelService(BaseHTTPRequestHandler):
    """An HTTP service instrumented with OpenTelemetry, reading X-Ray trace headers."""

    tracer = None
    propagator = None

    def do_GET(self):
        from opentelemetry.trace import SpanKind

        context = self.propagator.extract(dict(self.headers))
        attributes = {"http.request.method": "GET", "url.path": "/stock",
                      "server.address": "stock.local", "http.response.status_code": 200}
        with (self.tracer.start_as_current_span("GET /stock", context=context,
                                                kind=SpanKind.SERVER, attributes=attributes),
              self.tracer.start_as_current_span("lookup")):
            pass
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_mixed_trace_xray_sdk_caller_and_otel_service(start_xrayd, tmp_path):
    from aws_xray_sdk.ext.util import inject_trace_header
    from opentelemetry.propagators.aws import AwsXRayPropagator
    from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    _, port, _ = start_offline(start_xrayd, tmp_path, *OTLP_OFF)
    provider = TracerProvider(resource=Resource.create({"service.name": "stock"}),
                              id_generator=AwsXRayIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPUdpSpanExporter(endpoint=f"127.0.0.1:{port}")))
    OtelService.tracer = provider.get_tracer("stock")
    OtelService.propagator = AwsXRayPropagator()
    server = HTTPServer(("127.0.0.1", 0), OtelService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        xray = recorder(f"127.0.0.1:{port}")
        segment = xray.begin_segment("frontend")
        with xray.in_subsegment("call stock") as subsegment:
            headers: dict[str, str] = {}
            inject_trace_header(headers, subsegment)
            request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/stock",
                                             headers=headers)
            assert urllib.request.urlopen(request, timeout=5).read() == b"ok"
            call_id = subsegment.id
        xray.end_segment()
        trace_id = segment.trace_id
    finally:
        server.shutdown()
        provider.shutdown()
    docs = stored_documents(xray_client(port), trace_id, 4)
    by_name = {d["name"]: d for d in docs}
    assert by_name["call stock"]["id"] == call_id
    stock = by_name["stock"]
    assert stock["trace_id"] == trace_id and stock["parent_id"] == call_id
    assert "type" not in stock  # a segment of its own, under the caller's subsegment
    assert by_name["lookup"]["parent_id"] == stock["id"]
    [summary] = wait_until(lambda: summaries(xray_client(port), trace_id), what="one trace")
    assert summary["Id"] == trace_id
