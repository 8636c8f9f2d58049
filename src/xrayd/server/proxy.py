"""The TCP signing proxy: SDKs send their sampling calls (``POST /GetSamplingRules``,
``POST /SamplingTargets``) unsigned to the daemon, which signs them with SigV4 (service xray,
the daemon's region and credentials, via botocore) and forwards them to the X-Ray endpoint.

Unlike the original it forwards only the X-Ray API paths SDKs use, never forwards a request
unsigned, limits request bodies and times out upstream calls (docs/compatibility.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from xrayd.aws import AwsContext, CredentialsError
from xrayd.exporters.signing import Signer
from xrayd.exporters.transport import DirectTransport, SessionTransport, Transport
from xrayd.logs import RateLimitedLog
from xrayd.server.threaded import Request, Response, ThreadedHttpServer
from xrayd.stats import PROXY_REQUESTS, Stats

# Sampling API paths: rules and targets (every SDK), and the read-only statistics summaries.
ALLOWED_PATHS = frozenset({"/GetSamplingRules", "/SamplingTargets",
                           "/GetSamplingStatisticSummaries"})
MAX_BODY_BYTES = 1024 * 1024
UPSTREAM_TIMEOUT = 10.0
HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers",
                        "transfer-encoding", "upgrade"})
# Replaced by the signature or recomputed for the upstream request.
REPLACED = frozenset({"host", "content-length", "authorization", "x-amz-date",
                      "x-amz-security-token", "x-amz-content-sha256", "expect"})
Headers = Mapping[str, str] | Iterable[tuple[str, str]]
# Upstream calls run on a few threads of their own, each with a kept-alive connection.
UPSTREAM_THREADS = 4


def hop_by_hop(headers: Headers) -> set[str]:
    """Hop-by-hop header names (lower case), including those the Connection header names."""
    named = {token.strip().lower() for value in _values(headers, "connection")
             for token in value.split(",") if token.strip()}
    return set(HOP_BY_HOP) | named


def _values(headers: Any, name: str) -> list[str]:
    return [v for k, v in _items(headers) if k.lower() == name and v]


def request_headers(headers: Headers) -> dict[str, str]:
    """The caller's headers to forward, each name once (repeated ones joined with ",", as a
    signature would see them): hop-by-hop ones and those signing replaces dropped."""
    drop = hop_by_hop(headers) | REPLACED
    kept: dict[str, tuple[str, str]] = {}
    for name, value in _items(headers):
        key = name.lower()
        if key in drop:
            continue
        first = kept.get(key)
        kept[key] = (name, value) if first is None else (first[0], f"{first[1]},{value}")
    return dict(kept.values())


def response_headers(headers: Headers) -> list[tuple[str, str]]:
    drop = hop_by_hop(headers) | {"content-length"}
    return [(k, v) for k, v in _items(headers) if k.lower() not in drop]


def _items(headers: Any) -> Iterable[tuple[str, str]]:
    """The (name, value) pairs of a mapping (or an http.client message), or of a list of
    pairs."""
    return headers.items() if hasattr(headers, "items") else headers


def error_response(status: int, error_type: str, message: str) -> Response:
    body = orjson.dumps({"__type": error_type, "message": message})
    return Response(status, body, [("x-amzn-ErrorType", error_type)],
                    content_type="application/json")


class SigningProxy:
    """The proxy's request handler. ``upstream`` is scheme://host[:port]. Upstream calls are
    signed and sent as the uploads are: botocore's SigV4Auth (exporters/signing.py), then
    kept-alive connections, or botocore's HTTP session when an outbound proxy is set
    (exporters/transport.py)."""

    def __init__(self, aws: AwsContext, upstream: str, logs: RateLimitedLog,
                 timeout: float = UPSTREAM_TIMEOUT, max_body: int = MAX_BODY_BYTES,
                 idle_timeout: float = 30.0, stats: Stats | None = None) -> None:
        self.aws = aws
        self.stats = stats
        self.upstream = upstream.rstrip("/")
        self.logs = logs
        self.log: logging.Logger = logs.logger
        self.timeout = timeout
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.proxy = aws.proxy_for(self.upstream) or None
        # Signed as the uploads are (exporters/signing.py): Host and the SigV4 headers, never
        # a framing header, which the transport (or botocore's session) sets once.
        self._signer = Signer(self.upstream, aws.region)
        self._transport: Transport = (
            SessionTransport(self.upstream, aws.http_session(UPSTREAM_THREADS, timeout),
                             timeout)
            if self.proxy else DirectTransport(self.upstream, aws.verify, timeout))
        self._pool = ThreadPoolExecutor(UPSTREAM_THREADS, thread_name_prefix="proxy-upstream")

    def server(self, address: str, allowed_hosts: str = "") -> ThreadedHttpServer:
        from xrayd.server.policy import api_policy

        return ThreadedHttpServer(address, self.handle, max_body=self.max_body,
                                  too_large=self._too_large, name="proxy-http",
                                  policy=api_policy(address, allowed_hosts).check,
                                  errors=error_response, logs=self.logs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._transport.close()

    def handle(self, request: Request) -> Response:
        response = self._answer(request)
        self._count(response.status)
        return response

    def _count(self, status: int) -> None:
        """Requests answered, by status (the admin endpoint's xrayd_proxy_requests_total)."""
        if self.stats is not None:
            self.stats.add(PROXY_REQUESTS, label=str(status))

    def _answer(self, request: Request) -> Response:
        self.log.debug("Received request on HTTP Proxy server : %s", request.target)
        path = request.path
        if path not in ALLOWED_PATHS:
            self.logs.warn("proxy-path", f"Proxy request refused: {request.method[:20]} "
                           f"{path[:200]} is not a sampling API path")
            return error_response(404, "NotFound", f"{path[:200]} is not forwarded by xrayd")
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", "the X-Ray API takes POST")
        try:
            credentials = self.aws.credentials()
        except CredentialsError as exc:
            self.logs.error("proxy-credentials", f"{exc} (sampling request not forwarded)")
            return error_response(503, "NoCredentials", str(exc))

        url = self.upstream + request.target
        headers = self._signer.sign(url, request_headers(request.headers), request.body,
                                    credentials)
        try:
            # The direct transport keeps to its timeout; botocore's session (through an
            # outbound proxy) times each read, so the caller's wait is bounded here too.
            status, content, answer_headers = self._pool.submit(
                self._send, request.target, request.body, headers).result(self.timeout + 1)
        except TimeoutError:
            self.logs.error("proxy-upstream",
                            f"http: proxy error: no answer from {self.upstream} within "
                            f"{self.timeout:g} s")
            return error_response(504, "GatewayTimeout", "the X-Ray endpoint did not answer")
        except Exception as exc:
            self.logs.error("proxy-upstream", f"http: proxy error: {exc}")
            return error_response(502, "BadGateway", f"the X-Ray endpoint failed: {exc}")
        return Response(status, content, response_headers(answer_headers))

    def _send(self, target: str, body: bytes, headers: dict[str, str]
              ) -> tuple[int, bytes, Any]:
        answer = self._transport.post(target, body, headers)
        return answer.status_code, answer.content, answer.headers

    def _too_large(self) -> Response:
        self._count(413)
        self.logs.warn("proxy-size", "Proxy request refused: body larger than "
                       f"{self.max_body} bytes")
        return error_response(413, "RequestEntityTooLarge",
                              f"request bodies are limited to {self.max_body} bytes")
