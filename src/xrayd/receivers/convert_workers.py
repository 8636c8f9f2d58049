"""Decoding and converting large OTLP requests in worker processes, so that OTLP intake uses
every core: reading the protobuf fields of a span and building its document is pure Python
(13 to 15 µs a span in one process, ~0.5 µs an attribute through upb's accessors; see
docs/benchmarks.md), and in one process it would hold the daemon's one GIL against the uploads.

Each worker is a child process (``python -m xrayd.receivers.convert_workers OPTIONS``) that
reads a request body on its stdin and writes back the converted documents; framing as the
store's parse helper (4-byte length + MessagePack). A receiver thread borrows an idle worker,
sends the body, waits for the answer with the GIL released, and queues the documents itself.
Small requests are converted in-process (the round trip would cost more). When a worker fails,
the request is converted in-process and the pool carries on with one worker fewer.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import msgspec

from xrayd.otel.decode import MAX_BODY, DecodeError, TooLarge, gunzip, traces_from_json
from xrayd.otel.decode import traces_from_protobuf as _from_protobuf
from xrayd.otel.spans_to_segments import Converted, Options, convert_request
from xrayd.store.parse_helper import HelperFailed, _grow_pipe, _read, _write

MIN_POOLED_BYTES = 16 * 1024  # about 50 spans: smaller requests are converted in-process
REPLY_TIMEOUT = 60.0
GC_EVERY = 64
TRIM_AFTER_BYTES = 4 * 1024 * 1024  # a request this large (body + answer): trim the heap after
CONVERSION_FAILED = "conversion_failed"  # the reason of requests the conversion failed on

# request: (body, json?, gzip?, limit); answer: (error reason, message) or
# (spans, {reason: count}, messages, documents)
_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(tuple[bytes, bool, bool, int]).decode
_decode_answer = msgspec.msgpack.Decoder().decode


def decode_and_convert(body: bytes, is_json: bool, gzipped: bool, limit: int,
                       options: Options) -> Converted:
    """A request body to documents; DecodeError when it does not decode."""
    if gzipped:
        body = gunzip(body, limit)
    request = traces_from_json(body) if is_json else _from_protobuf(body)
    try:
        return convert_request(request, options)
    except DecodeError:
        raise
    except Exception as exc:  # a bug: the request is refused (400), the thread lives on
        raise DecodeError(CONVERSION_FAILED, f"the request could not be converted "
                                             f"({exc!r:.200})") from exc


class Worker:
    def __init__(self, options: Options) -> None:
        argument = json.dumps({"indexed": sorted(options.indexed_attributes),
                               "all": options.index_all_attributes})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xrayd.receivers.convert_workers", argument],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        _grow_pipe(self.process.stdin.fileno())
        _grow_pipe(self.process.stdout.fileno())

    def convert(self, body: bytes, is_json: bool, gzipped: bool, limit: int) -> Converted:
        import time

        assert self.process.stdin is not None and self.process.stdout is not None
        _write(self.process.stdin.fileno(), _encode((body, is_json, gzipped, limit)))
        answer = _read(self.process.stdout.fileno(), time.monotonic() + REPLY_TIMEOUT)
        if answer is None:
            raise HelperFailed("the conversion worker exited")
        fields = _decode_answer(answer)
        if len(fields) == 2:
            reason, message = fields
            raise TooLarge(limit) if reason == "too_large" else DecodeError(reason, message)
        spans, rejected, messages, documents = fields
        return Converted(documents, spans, Counter(rejected), messages)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class ConvertPool:
    """Up to ``size`` workers, started on first use. When all are busy a receiver thread
    waits for one (back-pressure on the sender) rather than converting in-process."""

    def __init__(self, options: Options, size: int = 2, log: Any = None) -> None:
        self.options = options
        self.size = size
        self.log = log
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._all: list[Worker] = []
        self._closed = False

    def convert(self, body: bytes, is_json: bool, gzipped: bool,
                limit: int = MAX_BODY) -> Converted:
        if len(body) < MIN_POOLED_BYTES or self._closed:
            return decode_and_convert(body, is_json, gzipped, limit, self.options)
        worker = self._borrow()
        if worker is None:
            return decode_and_convert(body, is_json, gzipped, limit, self.options)
        try:
            converted = worker.convert(body, is_json, gzipped, limit)
        except DecodeError:
            self._idle.put(worker)
            raise
        except (HelperFailed, OSError, ValueError, msgspec.DecodeError) as exc:
            self._retire(worker, exc)
            return decode_and_convert(body, is_json, gzipped, limit, self.options)
        self._idle.put(worker)
        return converted

    def _borrow(self) -> Worker | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._started < self.size:
                self._started += 1
                try:
                    worker = Worker(self.options)
                except OSError as exc:
                    self._started -= 1
                    if self.log is not None:
                        self.log.error("OTLP conversion worker did not start: %s", exc)
                    return None
                self._all.append(worker)
                return worker
        return self._idle.get()  # every worker busy: wait for one (back-pressure)

    def _retire(self, worker: Worker, exc: Exception) -> None:
        if self.log is not None:
            self.log.error("OTLP conversion worker failed (%s): converting in-process", exc)
        with self._lock:
            self._all.remove(worker)
            self._started -= 1
        with contextlib.suppress(Exception):
            worker.process.kill()
            worker.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.close()


def main() -> int:
    """The worker: answer request bodies until stdin ends."""
    import gc
    import signal

    from xrayd.memory import trim

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon ends us by closing stdin
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = json.loads(sys.argv[1])
    options = Options(frozenset(settings["indexed"]), bool(settings["all"]))
    # A request makes thousands of small dicts and no reference cycles (an exception's
    # traceback may): automatic collections, triggered by the allocations, would cost a third
    # of the conversion time. One collection every GC_EVERY requests instead.
    gc.freeze()
    gc.disable()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    served = 0
    while True:
        request = _read(stdin)
        if request is None:
            return 0
        served += 1
        if served % GC_EVERY == 0:
            gc.collect()
        body, is_json, gzipped, limit = _decode_request(request)
        try:
            out = decode_and_convert(body, is_json, gzipped, limit, options)
        except DecodeError as exc:
            _write(stdout, _encode((exc.reason, str(exc))))
            continue
        except Exception as exc:  # a bug must cost this request, not the worker
            _write(stdout, _encode((CONVERSION_FAILED, f"not converted ({exc!r:.200})")))
            continue
        answer = _encode((out.spans, dict(out.rejected), out.messages, out.documents))
        del out
        _write(stdout, answer)
        if len(body) + len(answer) >= TRIM_AFTER_BYTES:
            # A large request's objects are freed now, but glibc keeps the pages: give them
            # back, or every worker stays at its largest request's size (GBs) while idle.
            del body, answer
            gc.collect()
            trim()


if __name__ == "__main__":
    sys.exit(main())
