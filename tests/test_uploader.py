"""Upload workers and the request they build (checklist: processor batch workers)."""

from __future__ import annotations

import io
import logging
import threading
import time

import orjson
import pytest

from xrayd import logs
from xrayd import stats as names
from xrayd.batcher import Batch, Batcher
from xrayd.exporters.xray import Unprocessed, UploadError, classify_http_error, request_body
from xrayd.retry import RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.stats import Stats
from xrayd.uploader import Uploader


class ScriptedExporter:
    """Answers put() from a script of results (a list of Unprocessed, or an UploadError)."""

    name = "scripted"

    def __init__(self, *script):
        self.script = list(script)
        self.calls: list[list[bytes]] = []

    def put(self, docs):
        self.calls.append(list(docs))
        result = self.script.pop(0) if self.script else []
        if isinstance(result, Exception):
            raise result
        return result

    def close(self):
        pass


@pytest.fixture
def log_stream():
    out = io.StringIO()
    logs.configure(logs.TRACE, stream=out)
    yield out
    logs.configure(logging.INFO, stream=io.StringIO())


def make_uploader(exporter, stats=None, policy=None, sleeps=None):
    queue = SegmentQueue(Batcher(budget=10**7), clock=lambda: 0.0)
    return Uploader(queue, exporter, stats or Stats(), logs.RateLimitedLog(logs.get_logger()),
                    concurrency=1, policy=policy or RetryPolicy(),
                    sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_success_logs_and_counts(log_stream):
    exporter, stats = ScriptedExporter([]), Stats()
    up = make_uploader(exporter, stats)
    up.deliver(Batch([b'{"id":"1"}'], 10))
    assert exporter.calls == [[b'{"id":"1"}']]
    assert stats.get(names.SEGMENTS_SENT) == 1
    text = log_stream.getvalue()
    assert "[Debug] processor: segment batch size: 1" in text
    assert "[Info] Successfully sent batch of 1 segments (" in text


def test_unprocessed_entries_logged_with_trace_id_and_counted(log_stream):
    docs = [b'{"trace_id":"1-5f-abc","id":"aaaaaaaaaaaaaaaa"}', b'{"trace_id":"1-5f-def",'
            b'"id":"bbbbbbbbbbbbbbbb"}']
    exporter = ScriptedExporter([Unprocessed("", "MissingId", "no id"),
                                 Unprocessed("bbbbbbbbbbbbbbbb", "InvalidTraceId", "too old")])
    stats = Stats()
    make_uploader(exporter, stats).deliver(Batch(docs, 100))
    text = log_stream.getvalue()
    assert "Sent batch of 2 segments but had 2 Unprocessed segments" in text
    # An entry without an id does not stop the processing of the rest (a bug of the original).
    assert "segment: Id missing, ErrorCode MissingId, Message no id" in text
    assert ("Unprocessed trace 1-5f-def, segment: Id bbbbbbbbbbbbbbbb, ErrorCode InvalidTraceId, "
            "Message too old") in text
    assert stats.by_label(names.SEGMENTS_UNPROCESSED) == {"MissingId": 1, "InvalidTraceId": 1}
    assert stats.get(names.SEGMENTS_SENT) == 0


def test_transient_error_is_retried_with_backoff():
    exporter = ScriptedExporter(UploadError("boom", "http_5xx", True, 503), [])
    stats, sleeps = Stats(), []
    make_uploader(exporter, stats, policy=RetryPolicy(base_delay=0.1),
                  sleeps=sleeps).deliver(Batch([b"{}"], 10))
    assert len(exporter.calls) == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.1
    assert stats.get(names.SEGMENTS_SENT) == 1
    assert stats.get(names.UPLOAD_ERRORS, "http_5xx") == 1
    assert stats.get(names.BATCHES_RETRIED) == 1


def test_permanent_error_drops_batch_and_counts_it(log_stream):
    exporter = ScriptedExporter(UploadError("HTTP 403 AccessDenied", "http_4xx", False, 403))
    stats = Stats()
    make_uploader(exporter, stats).deliver(Batch([b"{}", b"{}"], 10))
    assert len(exporter.calls) == 1
    assert stats.get(names.SEGMENTS_FAILED, "http_4xx") == 2
    assert "Sending segment batch failed with: HTTP 403 AccessDenied" in log_stream.getvalue()


def test_retries_are_bounded():
    errors = [UploadError("t", "timeout", True) for _ in range(10)]
    exporter = ScriptedExporter(*errors)
    stats = Stats()
    make_uploader(exporter, stats, policy=RetryPolicy(max_attempts=3)).deliver(Batch([b"{}"], 1))
    assert len(exporter.calls) == 3
    assert stats.get(names.SEGMENTS_FAILED, "timeout") == 1


def test_policy_full_jitter_and_bounds():
    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=1.0, max_elapsed=3.0)
    assert policy.delay(1, 0.999) < 0.1
    assert policy.delay(10, 0.5) == pytest.approx(0.5)
    assert policy.next_delay(1, 0.0, retriable=False, draw=0.5) is None
    assert policy.next_delay(5, 0.0, retriable=True, draw=0.5) is None
    assert policy.next_delay(2, 2.95, retriable=True, draw=0.9) is None
    assert policy.next_delay(2, 0.0, retriable=True, draw=0.5) == pytest.approx(0.1)


def test_workers_deliver_everything_put_then_stop_when_closed():
    exporter = ScriptedExporter()
    stats = Stats()
    queue = SegmentQueue(Batcher(budget=10**7), clock=__import__("time").monotonic)
    up = Uploader(queue, exporter, stats, logs.RateLimitedLog(logs.get_logger()), concurrency=4)
    up.start()
    docs = [b'{"n":%d}' % i for i in range(1234)]
    threads = [threading.Thread(target=lambda part=docs[i::2]: [queue.put(d) for d in part])
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.close()
    assert queue.wait_drained(10)
    assert up.join(5)
    sent = [d for call in exporter.calls for d in call]
    assert sorted(sent) == sorted(docs)
    assert all(len(call) <= 50 for call in exporter.calls)
    assert stats.get(names.SEGMENTS_SENT) == 1234


def test_request_body_keeps_documents_exactly():
    docs = [b'{"name":"caf\xc3\xa9","x":"a\\"b"}\n', b'{"ctl":"\\u0001"}', b"[]"]
    parsed = orjson.loads(request_body(docs))
    assert [d.encode() for d in parsed["TraceSegmentDocuments"]] == docs


@pytest.mark.parametrize("status,body,headers,cls,retriable,throttled", [
    (429, b'{"__type":"ThrottledException","message":"Rate exceeded"}', {}, "http_4xx", True,
     True),
    (400, b'{"__type":"com.amazon#ThrottlingException"}', {}, "http_4xx", True, True),
    (503, b"", {}, "http_5xx", True, False),
    (403, b'{"message":"denied"}', {"x-amzn-ErrorType": "AccessDeniedException:http://x"},
     "http_4xx", False, False),
    (302, b"<html>", {}, "other", False, False),
])
def test_http_error_classification(status, body, headers, cls, retriable, throttled):
    error = classify_http_error(status, body, headers)
    assert (error.error_class, error.retriable, error.throttled) == (cls, retriable, throttled)


class BuggyExporter:
    """An exporter with a bug: put() raises ValueError for batches holding a "bad" document."""

    name = "buggy"

    def __init__(self):
        self.sent: list[bytes] = []

    def put(self, docs):
        if b"bad" in b"".join(docs):
            raise ValueError("invalid literal for int() with base 10: '\u00b2'")
        self.sent.extend(docs)
        return []

    def close(self):
        pass


def test_an_exporter_bug_fails_its_batch_and_the_worker_lives_on(log_stream):
    exporter = BuggyExporter()
    stats = Stats()
    queue = SegmentQueue(Batcher(budget=10**7, max_batch=2), clock=time.monotonic)
    uploader = Uploader(queue, exporter, stats, logs.RateLimitedLog(logs.get_logger()),
                        concurrency=1, sleep=lambda s: None)
    uploader.start()
    queue.put_many([b'{"bad":1}', b'{"bad":2}'])  # a full batch: the worker takes it
    queue.put_many([b'{"good":1}', b'{"good":2}'])
    queue.close()
    assert queue.wait_drained(10)
    assert uploader.join(5)
    assert exporter.sent == [b'{"good":1}', b'{"good":2}']
    assert stats.get(names.SEGMENTS_FAILED, "internal_error") == 2
    assert stats.get(names.SEGMENTS_SENT) == 2
    assert "unexpected ValueError in the buggy exporter" in log_stream.getvalue()
