"""Fuzzing of the TCP server (server/threaded.py) and offline mode's X-Ray API behind it: random
request heads, framing, bodies and pipelining over real sockets, and every operation's path
with random JSON. Properties: no 500 (a 501 or 505 for what h11 cannot speak is fine), every
error answer in the service's JSON shape, every refused or malformed request counted and logged,
no server thread dies, and resident memory grows less than RSS_BOUND_MB over the run.

CI runs CASES (about 10,000) examples in all; FUZZ_EXAMPLES=N runs N per test for the long run
(docs/fuzzing.md)."""

from __future__ import annotations

import http.client
import json
import logging
import multiprocessing
import os
import random
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port
from xrayd.logs import RateLimitedLog
from xrayd.sampling.engine import SamplingEngine
from xrayd.server.viewer_routes import routes as viewer_routes
from xrayd.server.xray_api import StoreReader, XRayApi, make_server
from xrayd.store.writer import StoreWriter

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0"))
RSS_BOUND_MB = int(os.environ.get("FUZZ_RSS_BOUND_MB", "16"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def examples(default: int) -> settings:
    return settings(max_examples=SCALE or default, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


class LineCount(logging.Handler):
    """Counts the server's own lines (refusals, malformed requests, handler failures)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.server_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("offline-http:"):
            self.server_lines += 1


def serve(channel, tmp) -> None:
    """The child process: the offline API and viewer on a real port, in a process of its own so
    that its memory is measured apart from Hypothesis's; answers "stats" and "stop"."""
    errors: list[str] = []
    threading.excepthook = lambda args: errors.append(repr(args.exc_value))
    path = str(tmp / "fuzz.db")
    writer = StoreWriter(path)
    reader = StoreReader(path)
    api = XRayApi(writer, reader, SamplingEngine())
    logger = logging.getLogger("xrayd.fuzz-http")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    lines = LineCount()
    logger.addHandler(lines)
    # interval 0: every failure gets its line, so the count can be checked exactly
    server = make_server(f"127.0.0.1:{free_port()}", api, viewer_routes(reader, {"store": path}),
                         logs=RateLimitedLog(logger, interval=0.0))
    server.start()
    channel.send((server.bound[1], sorted(api.operations())))
    while channel.recv() != "stop":
        acceptor = server._acceptor
        channel.send({"counts": server.snapshot(), "lines": lines.server_lines,
                      "thread_errors": errors, "rss_mb": rss_mb(),
                      "acceptor_alive": acceptor is not None and acceptor.is_alive()})
    server.stop()
    reader.close()
    writer.close()
    channel.send(None)


class Target:
    def __init__(self, tmp) -> None:
        context = multiprocessing.get_context("fork")
        self.channel, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, tmp), daemon=True)
        self.process.start()
        self.port, self.operations = self.channel.recv()  # every operation's path
        self.statuses: list[int] = []

    def stats(self) -> dict:
        self.channel.send("stats")
        return self.channel.recv()

    def close(self) -> None:
        self.channel.send("stop")
        self.channel.recv()
        self.process.join(10)


def post(port: int, path: str, body: bytes, content_type: str | None = "application/json"
         ) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body,
                 headers={"Content-Type": content_type} if content_type else {})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, answer.getheader("Content-Type"), data


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    target = Target(tmp_path_factory.mktemp("fuzz-http"))
    rng = random.Random(1)
    for _ in range(300):  # warm up: threads, store pages, caches
        post(target.port, rng.choice(target.operations), json.dumps(random_body(rng)).encode())
    before = target.stats()["rss_mb"]
    try:
        yield target
        check_health(target, before)
    finally:
        target.close()


def check_health(target: Target, rss_before: float) -> None:
    assert post(target.port, "/GetSamplingRules", b"{}")[0] == 200
    stats = target.stats()
    counts = stats["counts"]
    grown = stats["rss_mb"] - rss_before
    print(f"\nfuzz-http: {len(target.statuses)} exchanges, statuses "
          f"{sorted(set(target.statuses))}, server counts {counts}, server RSS "
          f"{rss_before:.1f} MB -> {stats['rss_mb']:.1f} MB")
    assert stats["thread_errors"] == [] and stats["acceptor_alive"]
    assert counts.get("handler_error", 0) == 0, counts
    # Every refused or malformed request was logged (RateLimitedLog with no interval).
    assert stats["lines"] == sum(counts.values()), (stats["lines"], counts)
    assert grown < RSS_BOUND_MB


def statuses_in(answer: bytes) -> list[int]:
    return [int(line[9:12]) for line in answer.split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit()]


# -- random inputs: drawn from a seed Hypothesis chooses (generating nested JSON through
# Hypothesis's own strategies costs ~25 ms an example, ten times the exchange itself) -------

# Raw requests' targets (the API fuzz takes every operation the API has, from the server).
PATHS = ["/TraceSegments", "/TraceSummaries", "/Traces", "/ServiceGraph", "/GetSamplingRules",
         "/SamplingTargets", "/CreateSamplingRule", "/", "/api/stats", "/api/rejected?limit=3",
         "/viewer/viewer.js", "/viewer/../x", "/nothing"]
TCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~"
TEXT = "aZ09 _-.:/\\\"'{}[]()*?%\u00e9\u4e2d\U0001f600\x00\n\t"
HEADER_NAMES = ["Host", "Content-Length", "Transfer-Encoding", "Content-Type", "Origin",
                "Sec-Fetch-Site", "Expect", "Connection", "content-length", "HOST",
                "Transfer-encoding", "Keep-Alive", "Upgrade", "Trailer"]
HEADER_VALUES = [b"127.0.0.1", b"localhost:2000", b"evil.example", b"0", b"5", b"-1",
                 b"99999999999999999999", b"chunked", b"gzip, chunked", b"chunked, gzip",
                 b"identity", b"application/json", b"text/plain", b"100-continue", b"close",
                 b"keep-alive", b"http://evil.example", b"null", b"cross-site",
                 b"application/x-amz-json-1.1", b"3, 3", b" 4", b"+4", b"0x10"]
API_KEYS = ["StartTime", "EndTime", "FilterExpression", "NextToken", "TraceIds", "Period",
            "TraceSegmentDocuments", "TelemetryRecords", "SamplingRule", "SamplingRuleUpdate",
            "RuleName", "RuleARN", "SamplingStatisticsDocuments", "Sampling", "TimeRangeType",
            "EC2InstanceId", "Hostname", "ResourceARN", "GroupName", "GroupARN"]
RULE_KEYS = ["RuleName", "RuleARN", "ResourceARN", "Priority", "FixedRate", "ReservoirSize",
             "ServiceName", "ServiceType", "Host", "HTTPMethod", "URLPath", "Version",
             "Attributes", "ClientID", "RequestCount", "BorrowCount", "SampledCount",
             "Timestamp"]
DOC_KEYS = ["trace_id", "id", "name", "start_time", "end_time", "in_progress", "parent_id",
            "type", "subsegments", "annotations", "http", "error", "cause", "aws", "sql"]
FILTER_TOKENS = ["annotation.a", "annotation.b", 'service("x")', "responsetime", "duration",
                 "http.status", "error", "fault", "=", "!=", ">", "<=", "AND", "OR", "NOT",
                 "(", ")", "1", "2.5", '"x"', "true", "{", "}", ",", "id", "edge", "user",
                 "http.url", "CONTAINS", "BEGINSWITH", "traceid", "rootcause.fault", "ANY",
                 "ALL", "-1e400", '"\\"', "\u00f1"]
SPECIAL_NUMBERS = [0, -1, 1, 0.5, 1e20, -1e20, 2**63, 2**64 + 1, 10**30, 1e-300, 5e-324,
                   1.7976931348623157e308, 1700000000, 1700000000.123, 4e9]


def random_text(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choice(TEXT) for _ in range(rng.randint(0, size)))


def random_scalar(rng: random.Random):
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(SPECIAL_NUMBERS)
    if kind == 3:
        return rng.randint(-2**70, 2**70)
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    return random_text(rng)


def random_json(rng: random.Random, depth: int = 3, keys: list[str] | None = None):
    kind = rng.randrange(4) if depth > 0 else 0
    if kind <= 1:
        return random_scalar(rng)
    if kind == 2:
        return [random_json(rng, depth - 1, keys) for _ in range(rng.randint(0, 4))]
    names = keys or [random_text(rng, 6) for _ in range(3)]
    return {rng.choice(names): random_json(rng, depth - 1, keys)
            for _ in range(rng.randint(0, 5))}


def random_rule(rng: random.Random) -> dict:
    rule = {key: random_scalar(rng) for key in rng.sample(RULE_KEYS, rng.randint(0, 12))}
    if rng.random() < 0.3:
        rule["Attributes"] = {random_text(rng, 5): random_text(rng, 5)
                              for _ in range(rng.randint(0, 4))}
    return rule


def random_document(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return random_text(rng, 40)
    doc = {key: random_json(rng, 2, DOC_KEYS) for key in rng.sample(DOC_KEYS, rng.randint(0, 9))}
    if rng.random() < 0.5:
        doc.update(trace_id="1-5f000000-0123456789abcdef01234567", id="0123456789abcdef",
                   start_time=rng.choice(SPECIAL_NUMBERS))
    return json.dumps(doc)


def random_value(rng: random.Random, key: str):
    if rng.random() < 0.2:
        return random_json(rng)
    if key == "FilterExpression":
        return " ".join(rng.choice(FILTER_TOKENS) for _ in range(rng.randint(0, 30)))
    if key in ("SamplingRule", "SamplingRuleUpdate"):
        return random_rule(rng)
    if key == "SamplingStatisticsDocuments":
        return [random_rule(rng) for _ in range(rng.randint(0, 3))]
    if key == "TraceSegmentDocuments":
        return [random_document(rng) for _ in range(rng.randint(0, 5))]
    if key == "TraceIds":
        return [rng.choice(["1-5f000000-0123456789abcdef01234567", random_text(rng, 40)])
                for _ in range(rng.randint(0, 7))]
    if key in ("StartTime", "EndTime"):
        return rng.choice([rng.choice(SPECIAL_NUMBERS), random_text(rng, 25),
                           "2026-12-04T10:00:00Z", "2026-13-45"])
    return random_scalar(rng)


def random_body(rng: random.Random):
    keys = rng.sample(API_KEYS, rng.randint(0, 6))
    return {key: random_value(rng, key) for key in keys}


def chunked(rng: random.Random, body: bytes) -> bytes:
    out = b""
    rest = body
    while rest and rng.random() < 0.8:
        piece, rest = rest[:rng.randint(1, 30)], rest[30:]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n" + rng.choice([b"", b"X-Trailer: 1\r\n", b"bad trailer\r\n"]) + b"\r\n"


def random_request(rng: random.Random, framing: str, path: str) -> bytes:
    """A request head and body with random parts and the given framing."""
    if framing == "bytes":
        return rng.randbytes(rng.randint(0, 200))
    end = rng.choice([b"\r\n", b"\n", b"\r"]) if rng.random() < 0.1 else b"\r\n"
    method = rng.choice([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS",
                         "".join(rng.choice(TCHARS) for _ in range(5)).encode(),
                         rng.randbytes(3)])
    target = path.encode() if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 30))
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"])
    lines = [method + b" " + target + b" " + version]
    if rng.random() < 0.8:
        lines.append(b"Host: " + rng.choice([b"127.0.0.1", b"localhost", b"evil.example"]))
    for _ in range(rng.randint(0, 8)):
        name = rng.choice([rng.choice(HEADER_NAMES).encode(), rng.randbytes(4),
                           "".join(rng.choice(TCHARS) for _ in range(6)).encode()])
        value = rng.choice([rng.choice(HEADER_VALUES), rng.randbytes(rng.randint(0, 20))])
        lines.append(name + rng.choice([b": ", b":", b":  "]) + value)
        if rng.random() < 0.05:
            lines.append(rng.choice([b" folded", b"\tfolded"]))
    if rng.random() < 0.03:
        lines.extend(b"X-Many: v" for _ in range(rng.randint(90, 120)))
    body = (json.dumps(random_body(rng)).encode() if rng.random() < 0.5
            else rng.randbytes(rng.randint(0, 80)))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        lines.append(b"Content-Length: %d" % rng.randint(0, 200))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = chunked(rng, body)
    elif framing == "both":
        lines.append(b"Content-Length: %d" % len(body))
        lines.insert(rng.randint(1, len(lines)), b"Transfer-Encoding: chunked")
    data = end.join(lines) + end + end + body
    if rng.random() < 0.2:  # pipelined: a second request behind it
        data += b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\n\r\n"
    if rng.random() < 0.1:
        data = data[:rng.randint(0, len(data))]
    return data


SEEDS = st.integers(0, 2**64 - 1)


@pytest.mark.slow
@examples(5000)
@given(seed=SEEDS, path=st.sampled_from(PATHS),
       framing=st.sampled_from(["length", "chunked", "none", "wrong-length", "both", "bytes"]))
def test_fuzz_raw_requests(target, seed, path, framing):
    data = random_request(random.Random(seed), framing, path)
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # nothing more: the server must not wait for it
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    statuses = statuses_in(answer)
    target.statuses.extend(statuses)
    assert 500 not in statuses, answer[:300]
    assert all(s < 500 or s in (501, 505) for s in statuses), answer[:300]


@pytest.mark.slow
@examples(5000)
@given(seed=SEEDS, operation=st.integers(0, 1000),
       shape=st.sampled_from(["api", "api", "api", "json", "bytes"]),
       content_type=st.sampled_from([None, "application/json", "application/x-amz-json-1.1"]))
def test_fuzz_api_operations(target, seed, operation, shape, content_type):
    path = target.operations[operation % len(target.operations)]
    rng = random.Random(seed)
    body = (json.dumps(random_body(rng)) if shape == "api" else json.dumps(random_json(rng))
            if shape == "json" else rng.randbytes(rng.randint(0, 60)))
    status, answer_type, data = post(
        target.port, path, body.encode() if isinstance(body, str) else body, content_type)
    target.statuses.append(status)
    assert status < 500, (status, data[:300])
    assert answer_type == "application/json"
    parsed = json.loads(data)
    if status >= 400:
        assert isinstance(parsed.get("__type"), str) and isinstance(parsed.get("message"), str)
