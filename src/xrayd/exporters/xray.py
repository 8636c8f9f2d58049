"""PutTraceSegments to the X-Ray API: signed by botocore's SigV4 signer (exporters/signing.py),
sent on kept-alive connections (exporters/transport.py; through botocore's HTTP session when an
outbound proxy is set). Building the request body directly (the documents are already JSON)
skips the botocore client's per-call work, which costs more than the upload."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson

from xrayd.aws import REQUEST_TIMEOUT, AwsContext, CredentialsError, user_agent

# The delivery types live in xrayd.delivery; imported here under their old home too.
from xrayd.delivery import (
    THROTTLING_CODES,
    Unprocessed,
    UploadError,
    classify_send_error,
)
from xrayd.exporters.offload import Helper, HelperUnavailable
from xrayd.exporters.signing import Signer
from xrayd.exporters.transport import DirectTransport, SessionTransport, Transport

# Above this many calls a second (50 documents each: 10,000 segments/s) signing and sending move
# to a helper process (exporters/offload.py), off the GIL the UDP reader needs. Below it a call
# in-process costs less CPU than the round trip through the helper (docs/benchmarks.md).
OFFLOAD_CALLS_PER_SECOND = 200
# After a helper ended (idle, or it died), wait this long before forking another.
REFORK_SECONDS = 10.0
UPLOAD_NICENESS = 5


def classify_http_error(status: int, body: bytes, headers: dict) -> UploadError:
    code, message = "", ""
    try:
        parsed = orjson.loads(body) if body else {}
        if isinstance(parsed, dict):
            code = str(parsed.get("__type") or parsed.get("code") or "")
            message = str(parsed.get("message") or parsed.get("Message") or "")
    except orjson.JSONDecodeError:
        message = body[:200].decode("utf-8", "replace")
    code = (headers.get("x-amzn-ErrorType") or code).split(":")[0].split("#")[-1]
    retriable = status >= 500 or status in (408, 429) or code in THROTTLING_CODES
    error_class = "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else "other"
    return UploadError(f"HTTP {status} {code}: {message}".strip(), error_class, retriable,
                       status, code)


def lower_thread_priority() -> None:
    """Run the calling (upload) thread at a lower CPU priority than the UDP reader: uploads can
    wait within the memory budget, datagrams cannot once the kernel buffer is full. Only a
    raise of niceness, which needs no privilege; Linux sets it per thread."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + UPLOAD_NICENESS))


def request_body(docs: Sequence[bytes]) -> bytes:
    return orjson.dumps({"TraceSegmentDocuments": [d.decode("utf-8") for d in docs]})


class XRayExporter:
    """Uploads batches with PutTraceSegments. Thread-safe: one instance serves every worker."""

    name = "xray"

    def __init__(self, aws: AwsContext, pool_size: int, offload: bool = True) -> None:
        self.aws = aws
        self.url = aws.endpoint + "/TraceSegments"
        # Through a proxy, botocore's session (CONNECT tunnels, proxy TLS); else plain
        # kept-alive connections, which cost half the CPU per call.
        proxy = aws.proxy_for(aws.endpoint)  # "" when NO_PROXY names the endpoint
        self._proxy = proxy
        self._transport: Transport = (
            SessionTransport(aws.endpoint, aws.http_session(pool_size), REQUEST_TIMEOUT) if proxy
            else DirectTransport(aws.endpoint, aws.verify, REQUEST_TIMEOUT))
        self._signer = Signer(aws.endpoint, aws.region)
        self._prefix = urlsplit(aws.endpoint).path  # requests go to prefix + path
        self._user_agent = user_agent()
        self._channels = pool_size + 1  # the upload workers and telemetry
        self._offload = offload
        self._helper: Helper | None = None
        self._window = (0.0, 0)  # (start of the current second, calls in it)
        self._helper_ended = -REFORK_SECONDS  # monotonic time the last helper was given up
        self._lock = threading.Lock()
        self._niced = threading.local()

    def send(self, path: str, body: bytes) -> bytes:
        """POST a signed request to the X-Ray API; the response body, or UploadError."""
        return self._call(path, body, None)

    def _call(self, path: str, body: bytes | None, docs: Sequence[bytes] | None) -> bytes:
        """``send`` of ``body``, or of the PutTraceSegments body of ``docs``: built in the
        helper process when it makes the call (the daemon only joins the documents), else
        here."""
        if not getattr(self._niced, "done", False):
            lower_thread_priority()
            self._niced.done = True
        try:
            credentials = self.aws.credentials()
        except CredentialsError as exc:
            raise UploadError(str(exc), "no_credentials", False) from None
        url = self.aws.endpoint + path
        headers = {
            "Content-Type": "application/json",
            "X-Amzn-Xray-Timestamp": f"{time.time():.9f}",
            "User-Agent": self._user_agent,
        }
        helper = self._helper_for_call() if self._offload else None
        if helper is not None:
            meta = {"path": path, "headers": headers, "credentials": list(credentials)}
            if body is None:
                assert docs is not None
                meta["documents"] = [len(doc) for doc in docs]
            try:
                reply = helper.call(meta, body if body is not None else b"".join(docs or ()))
            except HelperUnavailable:
                pass
            else:
                if reply.error is not None:
                    raise UploadError(reply.error["message"], reply.error["error_class"],
                                      reply.error["retriable"])
                if reply.status != 200:
                    raise classify_http_error(reply.status, reply.content, reply.headers)
                return reply.content
        if body is None:
            body = request_body(docs or ())
        try:
            signed = self._signer.sign(url, headers, body, credentials)
            response = self._transport.post(self._prefix + path, body, signed)
        except Exception as exc:
            raise classify_send_error(exc) from exc
        content = response.content
        if response.status_code != 200:
            raise classify_http_error(response.status_code, content, response.headers)
        return content

    def _helper_for_call(self) -> Helper | None:
        """The helper process once calls come faster than OFFLOAD_CALLS_PER_SECOND (started
        then); None while it is starting, or when it failed."""
        helper = self._helper
        if helper is not None:
            if helper.usable or not helper.broken:
                return helper if helper.usable else None
            self._retire(helper)
            return None
        now = time.monotonic()
        with self._lock:
            start, calls = self._window
            if now - start >= 1.0:
                self._window = (now, 1)
                return None
            self._window = (start, calls + 1)
            if calls + 1 < OFFLOAD_CALLS_PER_SECOND or self._helper is not None or \
                    now - self._helper_ended < REFORK_SECONDS:
                return None
            try:
                self._helper = Helper(self.aws.endpoint, self.aws.region, self.aws.verify,
                                      self._proxy, REQUEST_TIMEOUT, self._channels)
            except OSError:
                self._offload = False
        return None

    def _retire(self, helper: Helper) -> None:
        """A helper that ended (idle for IDLE_EXIT_SECONDS, or died): reap it; a new one is
        forked when calls come often again."""
        with self._lock:
            if self._helper is not helper:
                return
            self._helper = None
            self._helper_ended = time.monotonic()
        helper.close()

    def put(self, docs: Sequence[bytes]) -> list[Unprocessed]:
        content = self._call("/TraceSegments", None, docs)
        try:
            parsed = orjson.loads(content) if content else {}
        except orjson.JSONDecodeError:
            return []
        entries = parsed.get("UnprocessedTraceSegments") or [] if isinstance(parsed, dict) else []
        return [
            Unprocessed(str(e.get("Id") or ""), str(e.get("ErrorCode") or ""),
                        str(e.get("Message") or ""))
            for e in entries if isinstance(e, dict)
        ]

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
        self._transport.close()
