"""Upload workers: ``Concurrency`` threads take batches from the queue and deliver them with an
exporter; a replay thread uploads what the spool holds.

Every document ends in exactly one terminal outcome (sent, unprocessed, failed, dropped) or
stays pending (queued, in flight, spooled). Transient failures are retried by the retry policy
at the rate the shared limiter allows; a batch that cannot be delivered goes to the spool when
one is configured, and while the backend is down (the breaker is open) batches go there at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from xrayd import stats as names
from xrayd.batcher import Batch
from xrayd.delivery import Unprocessed, UploadError
from xrayd.logs import RateLimitedLog
from xrayd.protocol import document_ids
from xrayd.retry import Breaker, RateLimiter, RetryPolicy
from xrayd.segment_queue import SegmentQueue
from xrayd.spool import Entry, Spool
from xrayd.stats import Histogram

# UnprocessedTraceSegments error codes worth another attempt; any other code (InvalidTraceId,
# InvalidSegment, MissingId, ...) describes the document itself and is final.
TRANSIENT_UNPROCESSED = frozenset({
    "ThrottledException", "ThrottlingException", "Throttling", "TooManyRequestsException",
    "InternalFailure", "InternalError", "InternalServerError", "InternalServiceError",
    "ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout", "Timeout",
})
THROTTLED_UNPROCESSED = frozenset({
    "ThrottledException", "ThrottlingException", "Throttling", "TooManyRequestsException",
})

# Answers that mean the daemon's credentials or permissions are wrong: waiting does not help,
# an operator does. What to do, by error code.
AUTH_FIXES = {
    "no_credentials": "give the daemon credentials (environment, profile, web identity or an "
                      "instance/task role)",
    "AccessDeniedException": "allow xray:PutTraceSegments (and xray:PutTelemetryRecords) in the "
                             "IAM policy of the daemon's role",
    "AccessDenied": "allow xray:PutTraceSegments in the IAM policy of the daemon's role",
    "UnrecognizedClientException": "the access key is not known: check AWS_ACCESS_KEY_ID / the "
                                   "profile, and the region",
    "InvalidClientTokenId": "the access key is not known: check the credentials and the region",
    "InvalidSignatureException": "the signature does not match: check the secret key and that "
                                 "the host clock is right",
    "SignatureDoesNotMatch": "the signature does not match: check the secret key and the clock",
    "IncompleteSignature": "the request signature is incomplete: check the proxy in between",
    "MissingAuthenticationToken": "no credentials were sent: check the daemon's credentials",
    "ExpiredTokenException": "the session token has expired: refresh the credentials",
    "ExpiredToken": "the session token has expired: refresh the credentials",
}
AUTH_LOG_INTERVAL = 60.0
EMPTY_SPOOL_WAIT = 5.0  # replay threads look at an empty spool this often (and when woken)
MAX_RETRY_AFTER = 60.0  # a peer's Retry-After is honoured up to this many seconds
INTERNAL_ERROR = "internal_error"  # the failure label of batches an exporter bug ended


def is_auth_error(error: UploadError) -> bool:
    return error.error_class == "no_credentials" or error.status in (401, 403) or (
        error.code in AUTH_FIXES)


def auth_fix(error: UploadError) -> str:
    key = "no_credentials" if error.error_class == "no_credentials" else error.code
    return AUTH_FIXES.get(key, "check the daemon's credentials and IAM permissions")


class Counters(Protocol):
    """Where the outcomes are counted: the daemon's Stats, or one exporter's (fanout.LaneStats)."""

    upload_latency: Histogram

    def add(self, name: str, amount: int = 1, label: str = "") -> None: ...


class Exporter(Protocol):
    name: str

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]: ...

    def close(self) -> None: ...


class Uploader:
    def __init__(
        self,
        queue: SegmentQueue,
        exporter: Exporter,
        stats: Counters,
        logs: RateLimitedLog,
        concurrency: int,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        spool: Spool | None = None,
        limiter: RateLimiter | None = None,
        breaker: Breaker | None = None,
        replay_threads: int = 4,
    ) -> None:
        self.queue = queue
        self.exporter = exporter
        self.stats = stats
        self.logs = logs
        self.log = logs.logger
        # Each unprocessed entry gets its line, up to a flood.
        self._entries = RateLimitedLog(logs.logger, logs.interval, burst=100, clock=logs.clock)
        self._auth_log = RateLimitedLog(logs.logger, AUTH_LOG_INTERVAL, clock=logs.clock)
        self.policy = policy or RetryPolicy()
        self._wakeup = threading.Event()
        self.sleep = sleep or self._wakeup.wait
        self.clock = clock
        self.spool = spool
        self.limiter = limiter or RateLimiter(clock)
        self.breaker = breaker or Breaker(clock)
        self._diverting = False
        self._not_before = float("-inf")  # no call before this time (a peer's Retry-After)
        self._stopping = threading.Event()
        self._spooled = threading.Event()  # set when a batch goes to the spool
        self._random = random.Random()
        # Batches being delivered, by id; those the shutdown settled (spooled or counted) while
        # their call was still out, whose outcome must then not be counted a second time.
        self._flight_lock = threading.Lock()
        self._in_flight: dict[int, Batch] = {}
        self._settled: set[int] = set()
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            for i in range(concurrency)
        ]
        # Spool files are claimed oldest first; a few are uploaded at once so that a backlog
        # drains faster than one call's latency allows.
        self._replayers = [
            threading.Thread(target=self._replay_loop, name=f"spool-replay-{i}", daemon=True)
            for i in range(max(1, min(replay_threads, concurrency)))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        if self.spool is not None:
            for thread in self._replayers:
                thread.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def divert(self) -> None:
        """From now on, batches go to the spool instead of being retried (the drain ran short)."""
        self._diverting = True
        self._wakeup.set()

    def stop_replay(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._spooled.set()
        deadline = time.monotonic() + timeout
        for thread in self._replayers:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            with self._flight_lock:
                self._in_flight[id(batch)] = batch
            try:
                self.deliver(batch)
            except Exception as exc:  # a bug must cost this batch, never the worker
                self.stats.add(names.SEGMENTS_FAILED, len(batch), label=INTERNAL_ERROR)
                self.logs.error("internal-error", f"Sending segment batch failed with an "
                                                  f"unexpected error: {exc!r} ({len(batch)} "
                                                  "segments dropped)")
            finally:
                with self._flight_lock:
                    self._in_flight.pop(id(batch), None)
                self.queue.done(batch)

    def settle_at_shutdown(self) -> int:
        """The drain time ran out: the batches still waiting (when there is a spool) and those
        whose call is still out go to the spool, or are counted dropped (``shutdown``) without
        one; the documents settled. A call that returns later is not counted again (delivery
        stays at least once)."""
        settled = 0
        if self.spool is not None:
            while (batch := self.queue.get(timeout=0.0)) is not None:
                settled += self._settle_one(batch)
                self.queue.done(batch)
        with self._flight_lock:
            batches = list(self._in_flight.values())
            self._in_flight.clear()
            self._settled.update(map(id, batches))
        for batch in batches:
            settled += self._settle_one(batch)
        return settled

    def _settle_one(self, batch: Batch) -> int:
        if not (self.spool is not None and self._to_spool(list(batch.docs))):
            self.stats.add(names.SEGMENTS_DROPPED, len(batch), label="shutdown")
        return len(batch)

    def _was_settled(self, batch: Batch) -> bool:
        with self._flight_lock:
            return id(batch) in self._settled

    def deliver(self, batch: Batch) -> None:
        """Upload one batch, with retries; count the outcome of every document."""
        self.log.debug("processor: segment batch size: %d", len(batch))
        left, error = self._send(batch, list(batch.docs), self.policy, spool_early=True)
        if left:
            self._give_up(left, error, batch.attempts)

    def _diverted(self) -> bool:
        return self.spool is not None and (self._diverting or self.breaker.is_open)

    def _send(self, batch: Batch, pending: list[bytes], policy: RetryPolicy,
              spool_early: bool) -> tuple[list[bytes], UploadError | None]:
        """Try until every document has an outcome or the policy gives up: the documents left
        (to spool or count as failed) and the last error."""
        started = self.clock()
        attempt = 0
        error: UploadError | None = None
        while pending:
            if spool_early and self._diverted():
                return pending, error
            hold = self._not_before - self.clock()
            if hold > 0:
                # The peer asked every caller to wait (Retry-After): wait with it; with a spool,
                # a batch that may not wait that long goes there instead.
                if self.spool is not None and self.clock() - started + hold > policy.max_elapsed:
                    return pending, error or UploadError(
                        f"the peer asked to wait {hold:.1f} s (Retry-After)", "retry_after", True)
                self.queue.kick()
                self.sleep(hold)
                continue
            wait = self.limiter.reserve()
            if wait > 0:
                self.queue.kick()
                self.sleep(wait)
            attempt += 1
            batch.attempts += 1
            if attempt > 1:
                self.stats.add(names.SEGMENTS_RETRIED, len(pending))
            attempt_start = self.clock()
            try:
                unprocessed = self._put(pending)
            except UploadError as exc:
                if self._was_settled(batch):
                    return [], None  # the shutdown spooled or counted it meanwhile
                error = exc
                retriable = self._failed_attempt(exc)
                wait = policy.next_delay(attempt, self.clock() - started, retriable,
                                         self._random.random())
                if exc.retry_after is not None and retriable:
                    after = min(exc.retry_after, MAX_RETRY_AFTER)
                    self._not_before = max(self._not_before, self.clock() + after)
                    if wait is not None:
                        wait = max(wait, after)
                    elif self.spool is None and attempt < policy.max_attempts:
                        wait = after  # the peer named the time; with no spool, wait for it
                    if wait is not None and self.spool is not None and \
                            self.clock() - started + wait > policy.max_elapsed:
                        wait = None  # to the spool; its replay waits for the same time
                if wait is None:
                    return pending, error
                self.stats.add(names.BATCHES_RETRIED)
                self.log.debug("Retrying batch of %d segments in %.3f s after: %s",
                               len(pending), wait, exc)
                self.queue.kick()
                self.sleep(wait)
                continue
            if self._was_settled(batch):
                return [], None
            elapsed = self.clock() - attempt_start
            self.stats.upload_latency.observe(elapsed)
            self.breaker.succeeded()
            self.limiter.succeeded()
            pending = self._settle(pending, unprocessed, elapsed)
            if not pending:
                return [], None
            error = UploadError("documents unprocessed with a transient error", "unprocessed",
                                True)
            wait = policy.next_delay(attempt, self.clock() - started, True, self._random.random())
            if wait is None:
                return pending, error
            self.queue.kick()
            self.sleep(wait)
        return [], error

    def _put(self, docs: list[bytes]) -> list[Unprocessed]:
        try:
            return self.exporter.put(docs)
        except UploadError:
            raise
        except Exception as exc:
            # An exporter bug (say a document it cannot handle): final for these documents,
            # counted as failed with the cause; the worker carries on.
            raise UploadError(f"unexpected {type(exc).__name__} in the {self.exporter.name} "
                              f"exporter: {exc}", INTERNAL_ERROR, False) from exc

    def _failed_attempt(self, error: UploadError) -> bool:
        """Count a failed call and feed the limiter and breaker; whether to try again."""
        self.stats.add(names.UPLOAD_ERRORS, label=error.error_class)
        if error.throttled:
            self.limiter.throttled()
        if is_auth_error(error):
            self._auth_log.error(
                f"auth:{error.code or error.error_class}",
                f"Sending segment batch failed with: {error}. To fix: {auth_fix(error)} "
                f"(logged once per {AUTH_LOG_INTERVAL:.0f} s)",
            )
            if self.spool is not None:
                self.breaker.trip()
            return False
        if error.retriable:
            self.breaker.failed()
        return error.retriable

    def _settle(self, docs: list[bytes], unprocessed: list[Unprocessed],
                elapsed: float) -> list[bytes]:
        """Count a successful call's outcome; the documents to try again."""
        size = len(docs)
        self.stats.add(names.BATCHES_SENT)
        unprocessed = unprocessed[:size]
        self.stats.add(names.SEGMENTS_SENT, size - len(unprocessed))
        if not unprocessed:
            self.logs.log(
                logging.INFO, "sent",
                f"Successfully sent batch of {size} segments ({elapsed:.3f} seconds)",
            )
            return []
        self.logs.log(
            logging.INFO, "sent-unprocessed",
            f"Sent batch of {size} segments but had {len(unprocessed)} Unprocessed segments "
            f"({elapsed:.3f} seconds)",
        )
        by_id: dict[str, list[int]] = {}
        traces: dict[str, str] = {}
        for index, doc in enumerate(docs):
            seg_id, trace_id = document_ids(doc)
            by_id.setdefault(seg_id, []).append(index)
            traces.setdefault(seg_id, trace_id)
        retry: list[bytes] = []
        throttled = False
        for entry in unprocessed:
            indices = by_id.get(entry.id) if entry.id else None
            if entry.error_code in TRANSIENT_UNPROCESSED and indices:
                retry.append(docs[indices.pop(0)])
                throttled = throttled or entry.error_code in THROTTLED_UNPROCESSED
                continue
            self.stats.add(names.SEGMENTS_UNPROCESSED, label=entry.error_code or "unknown")
            self._entries.error(
                "unprocessed",
                f"Unprocessed trace {traces.get(entry.id) or 'unknown'}, segment: "
                f"Id {entry.id or 'missing'}, ErrorCode {entry.error_code}, "
                f"Message {entry.message}",
            )
        if throttled:
            self.limiter.throttled()
        return retry

    def _give_up(self, docs: list[bytes], error: UploadError | None, attempts: int) -> None:
        """Documents that could not be delivered now: to the spool, or counted as failed."""
        error_class = error.error_class if error is not None else "spool_unavailable"
        spoolable = error is None or error.retriable or is_auth_error(error)
        if self.spool is not None and spoolable and self._to_spool(docs):
            return
        if error is not None and error.error_class == "unprocessed":
            self.stats.add(names.SEGMENTS_UNPROCESSED, len(docs), label="retries_exhausted")
        else:
            self.stats.add(names.SEGMENTS_FAILED, len(docs), label=error_class)
        if error is not None and is_auth_error(error):
            return  # already said, with the fix, once per AUTH_LOG_INTERVAL
        self.logs.error(
            f"failed:{error_class}",
            f"Sending segment batch failed with: {error or 'the spool could not take it'} "
            f"({len(docs)} segments dropped after {attempts} attempts)",
        )

    def _to_spool(self, docs: list[bytes]) -> bool:
        assert self.spool is not None
        try:
            stored = self.spool.put(docs)
        except OSError as exc:
            self.logs.error("spool-write", f"Cannot write to the spool {self.spool.directory}: "
                                           f"{exc}")
            return False
        if stored.evicted:
            self.stats.add(names.SEGMENTS_DROPPED, stored.evicted, label="spool_full")
            self.logs.warn("spool-full", f"Spool is full: dropped the oldest {stored.evicted} "
                                         "spooled segments")
        if not stored.stored:
            return False
        self.stats.add(names.SEGMENTS_SPOOLED, len(docs))
        self._spooled.set()
        self.logs.warn("spooled", f"Backend unavailable: spooled a batch of {len(docs)} segments")
        return True

    def _replay_loop(self) -> None:
        spool = self.spool
        assert spool is not None
        idle = 0.2
        while not self._stopping.is_set():
            spool.sync(force=False)
            if spool.depth()[2] == 0:
                # Nothing to replay: sleep until a batch is spooled, not in short polls (every
                # periodic wake-up costs CPU while the daemon is otherwise idle).
                self._spooled.wait(EMPTY_SPOOL_WAIT)
                self._spooled.clear()
                continue
            wait = self._not_before - self.clock()  # a peer's Retry-After first
            if wait <= 0:
                wait = self.breaker.probe_due()
            if wait > 0:
                self._stopping.wait(min(wait, 1.0))
                continue
            entry = spool.claim()
            if entry is None:
                self._stopping.wait(idle)
                continue
            try:
                if not self.replay(entry):
                    self._stopping.wait(self.policy.delay(1, self._random.random()))
            except Exception as exc:  # never let the replay thread die
                spool.release(entry)
                self.logs.error("replay", f"Spool replay failed: {exc!r}")
                self._stopping.wait(1.0)

    def replay(self, entry: Entry) -> bool:
        """Upload one claimed spool file; whether it left the spool."""
        spool = self.spool
        assert spool is not None
        decoded = spool.read(entry)
        lost = max(0, entry.count - len(decoded.docs))
        if decoded.error:
            self.logs.warn("spool-damaged",
                           f"Spool file {entry.name} is damaged ({decoded.error}): replaying "
                           f"{len(decoded.docs)} of its {entry.count} segments")
        if not decoded.docs:
            spool.remove(entry)
            self.stats.add(names.SEGMENTS_REPLAYED, entry.count)
            self.stats.add(names.SEGMENTS_DROPPED, entry.count, label="spool_damaged")
            return True
        batch = Batch(decoded.docs, 0)
        once = RetryPolicy(max_attempts=1)
        left, error = self._send(batch, list(decoded.docs), once, spool_early=False)
        keep = error is not None and (error.retriable or is_auth_error(error))
        if keep and len(left) == len(decoded.docs) and error.error_class != "unprocessed":
            spool.release(entry)  # nothing delivered: this file stays first in line
            return False
        # Every document got an outcome or goes back in line at the end of the spool.
        if left and not (keep and self._to_spool(left)):
            label = error.error_class if error is not None else "spool_replay"
            self.stats.add(names.SEGMENTS_FAILED, len(left), label=label)
        spool.remove(entry)
        self.stats.add(names.SEGMENTS_REPLAYED, entry.count)
        if lost:
            self.stats.add(names.SEGMENTS_DROPPED, lost, label="spool_damaged")
        return True
