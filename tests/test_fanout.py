"""Fan-out (fanout.py): lanes side by side, each with its queue, workers and counters; a stuck or
failing exporter never holds up or loses the other's documents; Retry-After; per-exporter
metrics on the admin endpoint."""

from __future__ import annotations

import contextlib
import threading
import time

import orjson
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from test_uploader_reliability import Clock
from xrayd import logs
from xrayd import stats as names
from xrayd.admin import Sources, make_handler
from xrayd.batcher import Batch, Batcher
from xrayd.delivery import UploadError
from xrayd.fanout import Fanout, Lane, LaneStats, PrefixedLog
from xrayd.retry import Breaker, RateLimiter, RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.server.threaded import Request
from xrayd.spool import Spool
from xrayd.stats import Stats
from xrayd.uploader import MAX_RETRY_AFTER, Uploader


def doc(n: int, pad: int = 0) -> bytes:
    return orjson.dumps({"id": f"{n:016x}", "trace_id": f"1-5f000000-{n:024x}",
                         "pad": "x" * pad})


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.docs: list[bytes] = []
        self.lock = threading.Lock()

    def put(self, docs):
        with self.lock:
            self.docs.extend(docs)
        return []

    def close(self):
        pass


class Stuck(Recording):
    """Every call hangs until released."""

    name = "stuck"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def put(self, docs):
        self.release.wait(30)
        return super().put(docs)


class Refusing(Recording):
    name = "refusing"

    def put(self, docs):
        raise UploadError("connection refused", "connection_refused", True)


def lane(stats: Stats, name: str, exporter, budget: int, primary: bool) -> Lane:
    queue = SegmentQueue(Batcher(budget=budget, max_age=0.05), time.monotonic)
    lane_stats = LaneStats(stats, name, primary)
    base = logs.RateLimitedLog(logs.get_logger())
    lane_logs = base if primary else PrefixedLog(base, f"[{name}] ")
    uploader = Uploader(queue, exporter, lane_stats, lane_logs, concurrency=2,
                        policy=RetryPolicy(max_attempts=2, base_delay=0.01, max_elapsed=0.5))
    return Lane(name, queue, uploader, lane_stats, lane_logs)


@contextlib.contextmanager
def running(*lanes: Lane, release: threading.Event | None = None):
    """The lanes' workers started; at the end, a stuck exporter released and every lane
    drained."""
    for item in lanes:
        item.uploader.start()
    try:
        yield Fanout(lanes)
    finally:
        if release is not None:
            release.set()
        for item in lanes:
            item.queue.close()
        for item in lanes:
            item.queue.wait_drained(10)


def test_a_stuck_exporter_holds_up_nothing_and_spills_only_its_own_share():
    stats = Stats()
    fast, stuck = Recording(), Stuck()
    lanes = [lane(stats, "xray", fast, 10**7, True), lane(stats, "otlp", stuck, 40_000, False)]
    otlp = lanes[1].stats
    with running(*lanes, release=stuck.release) as fanout:
        spills = [fanout.put(doc(n, pad=500)) for n in range(300)]
        wait_until(lambda: len(fast.docs) == 300, timeout=10, what="every document delivered")
        assert spills == [None] * 300  # the primary lane let nothing go
        assert stats.get(names.SEGMENTS_SENT) == 300
        assert otlp.get(names.SEGMENTS_SPILLED) > 0  # its own share ran full
        assert stats.get(names.SEGMENTS_SPILLED) == 0  # not the daemon-wide (primary) count
        assert lanes[1].queue.snapshot()[0] <= 40_000
    held = 300 - otlp.get(names.SEGMENTS_SPILLED)
    assert len(stuck.docs) == held == otlp.get(names.SEGMENTS_SENT)
    assert "exporter otlp: sent" in lanes[1].summary()


def test_a_stuck_primary_exporter_does_not_hold_up_the_otlp_lane():
    stats = Stats()
    stuck, fast = Stuck(), Recording()
    lanes = [lane(stats, "xray", stuck, 40_000, True), lane(stats, "otlp", fast, 10**7, False)]
    with running(*lanes, release=stuck.release) as fanout:
        spills = [fanout.put(doc(n, pad=500)) for n in range(300)]
        wait_until(lambda: len(fast.docs) == 300, timeout=10, what="every document exported")
        assert any(spills)  # the primary's share ran full: the receiver counts it, as before
        assert lanes[1].stats.get(names.SEGMENTS_SPILLED) == 0


def test_a_failing_exporter_fails_alone_and_counts_under_its_name():
    stats = Stats()
    good, bad = Recording(), Refusing()
    lanes = [lane(stats, "xray", good, 10**7, True), lane(stats, "otlp", bad, 10**7, False)]
    with running(*lanes) as fanout:
        fanout.put_many([doc(n) for n in range(20)])
    assert len(good.docs) == 20
    assert stats.get(names.SEGMENTS_SENT) == 20 and stats.get(names.SEGMENTS_FAILED) == 0
    assert lanes[1].stats.get(names.SEGMENTS_FAILED, "connection_refused") == 20
    assert lanes[0].stats.get(names.SEGMENTS_SENT) == 20


def test_otel_spans_pass_through_to_otlp_lanes_and_converted_documents_to_the_others():
    stats = Stats()
    xray, otlp = Recording(), Recording()
    lanes = [lane(stats, "xray", xray, 10**7, True), lane(stats, "otlp", otlp, 10**7, False)]
    lanes[1].takes_otlp = True
    with running(*lanes) as fanout:
        fanout.put_otel([doc(1), doc(2)], [b"rs-bytes"], lambda b: b"\x00tag" + b)
    assert xray.docs == [doc(1), doc(2)]
    assert otlp.docs == [b"\x00tag" + b"rs-bytes"]


class Scripted(Recording):
    def __init__(self, *errors) -> None:
        super().__init__()
        self.errors = list(errors)
        self.times: list[float] = []
        self.clock: Clock | None = None

    def put(self, docs):
        assert self.clock is not None
        self.times.append(self.clock.now)
        if self.errors:
            raise self.errors.pop(0)
        return super().put(docs)


def uploader_with(exporter: Scripted, spool: Spool | None = None) -> tuple[Uploader, Stats,
                                                                            Clock]:
    clock = Clock()
    exporter.clock = clock
    stats = Stats()
    up = Uploader(SegmentQueue(Batcher(budget=10**7), clock), exporter, stats,
                  logs.RateLimitedLog(logs.get_logger(), clock=clock), concurrency=1,
                  policy=RetryPolicy(), sleep=clock.sleep, clock=clock, spool=spool,
                  limiter=RateLimiter(clock), breaker=Breaker(clock, threshold=100))
    return up, stats, clock


def unavailable(after: float) -> UploadError:
    return UploadError("HTTP 503", "http_5xx", True, 503, "", retry_after=after)


def test_retry_after_is_honoured_by_the_retry_and_by_later_batches():
    exporter = Scripted(unavailable(3.0))
    up, stats, clock = uploader_with(exporter)
    up.deliver(Batch([doc(1)], 1))
    assert exporter.times[1] - exporter.times[0] >= 3.0
    assert stats.get(names.SEGMENTS_SENT) == 1
    # Longer than the retry policy's time: with no spool the batch waits for the time named,
    # and so does the next batch; a peer asking for more than MAX_RETRY_AFTER gets that.
    exporter.errors = [unavailable(3600.0)]
    start = clock.now
    up.deliver(Batch([doc(2)], 1))
    up.deliver(Batch([doc(3)], 1))
    assert exporter.times[-2] == start + MAX_RETRY_AFTER
    assert exporter.times[-1] >= start + MAX_RETRY_AFTER
    assert stats.get(names.SEGMENTS_SENT) == 3 and stats.get(names.SEGMENTS_FAILED) == 0


def test_with_a_spool_a_long_retry_after_sends_the_batch_there(tmp_path):
    clock_spool = Spool(str(tmp_path), 10**7, fsync_interval=0)
    clock_spool.open()
    exporter = Scripted(unavailable(40.0))
    up, stats, clock = uploader_with(exporter, clock_spool)
    up.deliver(Batch([doc(1)], 1))
    up.deliver(Batch([doc(2)], 1))  # within the hold: straight to the spool, no call
    assert len(exporter.times) == 1
    assert stats.get(names.SEGMENTS_SPOOLED) == 2 and clock_spool.depth()[0] == 2
    entry = clock_spool.claim()
    assert up.replay(entry) is False  # still within the hold: the file stays first in line
    assert len(exporter.times) == 1
    clock.sleep(40.0)  # what the replay loop waits before it claims again
    assert up.replay(entry) is True
    assert stats.get(names.SEGMENTS_SENT) == 1


def test_without_retry_after_the_policy_decides_alone():
    exporter = Scripted(UploadError("HTTP 503", "http_5xx", True, 503))
    up, stats, _ = uploader_with(exporter)
    up.deliver(Batch([doc(1)], 1))
    assert exporter.times[1] - exporter.times[0] < RetryPolicy().max_delay
    assert stats.get(names.SEGMENTS_SENT) == 1


def test_per_exporter_metrics_on_the_admin_endpoint():
    stats = Stats()
    lanes = [lane(stats, "xray", Recording(), 10**6, True),
             lane(stats, "otlp", Recording(), 10**6, False)]
    lanes[0].stats.add(names.SEGMENTS_SENT, 5)
    lanes[1].stats.add(names.SEGMENTS_SENT, 3)
    lanes[1].stats.add(names.SEGMENTS_FAILED, 2, "http_4xx")
    lanes[1].stats.add("otlp_fields_skipped", 4, "sql")
    lanes[1].queue.put(doc(1))
    sources = Sources(stats, lambda: True, lambda: (True, ""), lanes=lambda: lanes)
    body = make_handler(sources)(Request("GET", "/metrics", [])).body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    assert samples['xrayd_exporter_segments_sent_total{exporter="xray"}'] == 5
    assert samples['xrayd_exporter_segments_sent_total{exporter="otlp"}'] == 3
    assert samples['xrayd_exporter_segments_failed_total{class="http_4xx",exporter="otlp"}'] == 2
    assert samples['xrayd_otlp_fields_skipped_total{exporter="otlp",reason="sql"}'] == 4
    assert samples['xrayd_exporter_queue_segments{exporter="otlp"}'] == 1
    assert samples['xrayd_exporter_queue_segments{exporter="xray"}'] == 0
    assert samples['xrayd_exporter_up{exporter="otlp"}'] == 1
    assert samples["xrayd_segments_sent_total{}"] == 5  # the daemon-wide name: primary only
