"""Retries of unprocessed documents, throttling, credentials errors, the spool and the breaker,
and the accounting rule: every document ends in exactly one outcome or stays pending."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrayd import logs
from xrayd import stats as names
from xrayd.batcher import Batch, Batcher
from xrayd.exporters.xray import Unprocessed, UploadError
from xrayd.retry import Breaker, RateLimiter, RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.spool import Spool
from xrayd.stats import Stats
from xrayd.uploader import Uploader


def doc(n: int) -> bytes:
    return orjson.dumps({"id": f"{n:016x}", "trace_id": f"1-5f000000-{n:024x}"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    """put() answers from a script: an UploadError, a list of error codes per position (None =
    processed), or nothing (all processed)."""

    name = "scripted"

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.calls: list[list[bytes]] = []

    def put(self, docs):
        self.calls.append(list(docs))
        result = self.script.pop(0) if self.script else None
        if isinstance(result, Exception):
            raise result
        if result is None:
            return []
        entries = []
        for position, code in enumerate(result):
            if code is not None and position < len(docs):
                seg_id = orjson.loads(docs[position])["id"]
                entries.append(Unprocessed(seg_id, code, "injected"))
        return entries

    def close(self):
        pass


@pytest.fixture
def log_stream():
    out = io.StringIO()
    logs.configure(logging.DEBUG, stream=out)
    yield out
    logs.configure(logging.INFO, stream=io.StringIO())


def make(exporter, tmp_path=None, policy=None, threshold=3):
    clock = Clock()
    stats = Stats()
    spool = None
    if tmp_path is not None:
        spool = Spool(str(tmp_path), 10**7, fsync_interval=0, clock=clock)
        spool.open()
    up = Uploader(
        SegmentQueue(Batcher(budget=10**7), clock), exporter, stats,
        logs.RateLimitedLog(logs.get_logger(), clock=clock), concurrency=1,
        policy=policy or RetryPolicy(), sleep=clock.sleep, clock=clock, spool=spool,
        limiter=RateLimiter(clock), breaker=Breaker(clock, threshold=threshold),
    )
    return up, stats, clock


def throttle():
    return UploadError("HTTP 429 ThrottledException: Rate exceeded", "http_4xx", True, 429,
                       "ThrottledException")


def test_transient_unprocessed_documents_are_retried_alone_permanent_ones_dropped(log_stream):
    docs = [doc(n) for n in range(4)]
    exporter = Scripted(["ThrottledException", "InvalidTraceId", None, "InternalFailure"])
    up, stats, _ = make(exporter)
    up.deliver(Batch(docs, 1))
    assert exporter.calls == [docs, [docs[0], docs[3]]]
    assert stats.get(names.SEGMENTS_SENT) == 3
    assert stats.by_label(names.SEGMENTS_UNPROCESSED) == {"InvalidTraceId": 1}
    assert stats.get(names.SEGMENTS_RETRIED) == 2
    assert up.limiter.rate is not None  # a throttled entry slows the uploads down
    assert "ErrorCode InvalidTraceId" in log_stream.getvalue()


def test_unprocessed_retries_are_bounded():
    docs = [doc(n) for n in range(2)]
    exporter = Scripted(*[["InternalFailure", "InternalFailure"]] * 10)
    up, stats, _ = make(exporter, policy=RetryPolicy(max_attempts=3))
    up.deliver(Batch(docs, 1))
    assert len(exporter.calls) == 3
    assert stats.by_label(names.SEGMENTS_UNPROCESSED) == {"retries_exhausted": 2}


def test_throttling_slows_every_worker_down():
    exporter = Scripted(throttle(), throttle(), None)
    up, stats, clock = make(exporter)
    up.deliver(Batch([doc(1)], 1))
    assert stats.get(names.SEGMENTS_SENT) == 1
    assert up.limiter.rate is not None and up.limiter.throttled_count == 2
    # The next call of any worker waits its turn at the reduced rate.
    assert up.limiter.reserve() > 0
    assert clock.now >= up.limiter.pause


def test_credentials_errors_are_logged_once_per_period_with_the_fix(log_stream):
    denied = UploadError("HTTP 403 AccessDeniedException: no", "http_4xx", False, 403,
                         "AccessDeniedException")
    exporter = Scripted(*[denied] * 5)
    up, stats, clock = make(exporter)
    for n in range(5):
        up.deliver(Batch([doc(n)], 1))
        clock.now += 1
    assert len(exporter.calls) == 5  # no retries: waiting does not fix permissions
    assert stats.by_label(names.SEGMENTS_FAILED) == {"http_4xx": 5}
    text = log_stream.getvalue()
    assert text.count("To fix: allow xray:PutTraceSegments") == 1
    clock.now += 61
    exporter.script.append(denied)
    up.deliver(Batch([doc(9)], 1))
    assert log_stream.getvalue().count("To fix:") == 2


def test_exhausted_batch_goes_to_the_spool_and_is_replayed(tmp_path):
    boom = UploadError("HTTP 503", "http_5xx", True, 503)
    exporter = Scripted(*[boom] * 3)
    up, stats, _clock = make(exporter, tmp_path, policy=RetryPolicy(max_attempts=3), threshold=10)
    docs = [doc(n) for n in range(3)]
    up.deliver(Batch(docs, 1))
    assert stats.get(names.SEGMENTS_SPOOLED) == 3 and stats.get(names.SEGMENTS_FAILED) == 0
    assert up.spool.depth()[0] == 3
    entry = up.spool.claim()
    assert up.replay(entry)
    assert exporter.calls[-1] == docs
    assert stats.get(names.SEGMENTS_SENT) == 3 and stats.get(names.SEGMENTS_REPLAYED) == 3
    assert up.spool.depth() == (0, 0, 0)


def test_open_breaker_spools_at_once_and_a_failed_probe_keeps_the_file(tmp_path):
    boom = UploadError("HTTP 503", "http_5xx", True, 503)
    exporter = Scripted(*[boom] * 20)
    up, stats, _clock = make(exporter, tmp_path, threshold=2)
    up.deliver(Batch([doc(1)], 1))  # two failures open the breaker: the batch is spooled
    assert up.breaker.is_open and stats.get(names.SEGMENTS_SPOOLED) == 1
    calls = len(exporter.calls)
    up.deliver(Batch([doc(2)], 1))
    assert len(exporter.calls) == calls  # no call at all while the backend is down
    entry = up.spool.claim()
    assert not up.replay(entry)  # the probe fails: the file stays first in line
    assert up.spool.depth()[2] == 2 and stats.get(names.SEGMENTS_REPLAYED) == 0
    exporter.script = []
    while (entry := up.spool.claim()) is not None:
        assert up.replay(entry)
    sent = [d for call in exporter.calls[calls + 1:] for d in call]
    assert sent == [doc(1), doc(2)]  # in the order they were spooled
    assert not up.breaker.is_open


def test_invalid_request_is_not_spooled(tmp_path):
    bad = UploadError("HTTP 400 InvalidRequestException", "http_4xx", False, 400,
                      "InvalidRequestException")
    up, stats, _ = make(Scripted(bad), tmp_path)
    up.deliver(Batch([doc(1)], 1))
    assert stats.get(names.SEGMENTS_FAILED, "http_4xx") == 1
    assert up.spool.depth()[0] == 0


def test_damaged_spool_file_is_skipped_and_counted(tmp_path, log_stream):
    up, stats, _ = make(Scripted(), tmp_path)
    up.spool.put([doc(1), doc(2)])
    (path,) = tmp_path.glob("*.spool")
    path.write_bytes(path.read_bytes()[:-4])
    assert up.replay(up.spool.claim())
    assert stats.get(names.SEGMENTS_SENT) == 1
    assert stats.by_label(names.SEGMENTS_DROPPED) == {"spool_damaged": 1}
    assert "is damaged" in log_stream.getvalue()


OUTCOMES = st.one_of(
    st.none(),
    st.sampled_from(["5xx", "throttle", "timeout", "deny", "invalid"]),
    st.lists(st.sampled_from([None, "ThrottledException", "InternalFailure", "InvalidTraceId",
                              "MissingId"]), min_size=1, max_size=6),
)
ERRORS = {
    "5xx": UploadError("HTTP 500", "http_5xx", True, 500),
    "throttle": throttle(),
    "timeout": UploadError("timeout", "timeout", True),
    "deny": UploadError("HTTP 403", "http_4xx", False, 403, "AccessDeniedException"),
    "invalid": UploadError("HTTP 400", "http_4xx", False, 400, "ValidationException"),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.lists(OUTCOMES, max_size=30),
       st.booleans())
def test_every_document_is_counted_exactly_once(sizes, script, with_spool):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        exporter = Scripted(*[ERRORS[s] if isinstance(s, str) else s for s in script])
        up, stats, _clock = make(exporter, tmp if with_spool else None,
                                policy=RetryPolicy(max_attempts=4))
        total, n = 0, 0
        for size in sizes:
            up.deliver(Batch([doc(n + i) for i in range(size)], 1))
            n += size
            total += size
        replayed_rounds = 0
        while with_spool and (entry := up.spool.claim()) is not None and replayed_rounds < 50:
            if not up.replay(entry):
                up.spool.release(entry)
            replayed_rounds += 1
        terminal = sum(stats.get(name) for name in (
            names.SEGMENTS_SENT, names.SEGMENTS_UNPROCESSED, names.SEGMENTS_FAILED,
            names.SEGMENTS_DROPPED))
        spooled = up.spool.depth()[0] if with_spool else 0
        assert terminal + spooled == total
        assert stats.get(names.SEGMENTS_SPOOLED) - stats.get(names.SEGMENTS_REPLAYED) - (
            stats.get(names.SEGMENTS_DROPPED, "spool_full")) == spooled
