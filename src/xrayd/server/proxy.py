"""The TCP signing proxy: SDKs send their sampling calls (``POST /GetSamplingRules``,
``POST /SamplingTargets``) unsigned to the daemon, which signs them with SigV4 (service xray,
the daemon's region and credentials, via botocore) and forwards them to the X-Ray endpoint.

Unlike the original it forwards only the X-Ray API paths SDKs use, never forwards a request
unsigned, limits request bodies and times out upstream calls (docs/compatibility.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from xrayd.aws import AwsContext, CredentialsError
from xrayd.logs import RateLimitedLog
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
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hop_by_hop(headers: Mapping[str, str]) -> set[str]:
    """Hop-by-hop header names (lower case), including those the Connection header names."""
    named = {token.strip().lower() for value in _values(headers, "connection")
             for token in value.split(",") if token.strip()}
    return set(HOP_BY_HOP) | named


def _values(headers: Any, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [v for k, v in headers.items() if k.lower() == name and v]


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers to forward: hop-by-hop ones and those signing replaces dropped."""
    drop = hop_by_hop(headers) | REPLACED
    return {k: v for k, v in _items(headers) if k.lower() not in drop}


def response_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    drop = hop_by_hop(headers) | {"content-length"}
    return [(k, v) for k, v in _items(headers) if k.lower() not in drop]


def _items(headers: Any) -> Iterable[tuple[str, str]]:
    return headers.items()


def sign(credentials: Any, region: str, method: str, url: str, headers: dict[str, str],
         body: bytes) -> dict[str, str]:
    """The headers to send: ``headers`` plus Content-Length and the SigV4 headers."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    headers = {**headers, "Content-Length": str(len(body))}
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(credentials, "xray", region).add_auth(request)
    return dict(request.headers.items())


def error_response(status: int, error_type: str, message: str) -> web.Response:
    body = orjson.dumps({"__type": error_type, "message": message})
    return web.Response(status=status, body=body, content_type="application/json",
                        headers={"x-amzn-ErrorType": error_type})


class SigningProxy:
    """The aiohttp application of the proxy. ``upstream`` is scheme://host[:port]."""

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
        self._client: aiohttp.ClientSession | None = None

    def make_app(self) -> web.Application:
        middlewares = [self._count] if self.stats is not None else []
        app = web.Application(client_max_size=self.max_body, middlewares=middlewares)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Requests answered, by status (the admin endpoint's xrayd_proxy_requests_total)."""
        assert self.stats is not None
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.stats.add(PROXY_REQUESTS, label=str(exc.status))
            raise
        self.stats.add(PROXY_REQUESTS, label=str(response.status))
        return response

    async def _open(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            ssl=None if self.aws.verify else False,
            keepalive_timeout=self.idle_timeout, limit_per_host=0,
        )
        self._client = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def _close(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.log.debug("Received request on HTTP Proxy server : %s", request.path_qs)
        if request.path not in ALLOWED_PATHS:
            self.logs.warn("proxy-path", f"Proxy request refused: {request.method} "
                           f"{request.path[:200]} is not a sampling API path")
            return error_response(404, "NotFound", f"{request.path} is not forwarded by xrayd")
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", "the X-Ray API takes POST")
        if (request.content_length or 0) > self.max_body:
            return self._too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()

        loop = asyncio.get_running_loop()
        try:
            credentials = await loop.run_in_executor(None, self.aws.credentials)
        except CredentialsError as exc:
            self.logs.error("proxy-credentials", f"{exc} (sampling request not forwarded)")
            return error_response(503, "NoCredentials", str(exc))

        url = self.upstream + request.path_qs
        headers = sign(credentials, self.aws.region, "POST", url,
                       request_headers(request.headers), body)
        assert self._client is not None
        try:
            async with self._client.post(url, data=body, headers=headers, proxy=self.proxy,
                                         skip_auto_headers=SKIP_AUTO_HEADERS) as answer:
                content = await answer.read()
                return web.Response(status=answer.status, body=content,
                                    headers=response_headers(answer.headers))
        except TimeoutError:
            self.logs.error("proxy-upstream",
                            f"http: proxy error: no answer from {self.upstream} within "
                            f"{self.timeout:g} s")
            return error_response(504, "GatewayTimeout", "the X-Ray endpoint did not answer")
        except aiohttp.ClientError as exc:
            self.logs.error("proxy-upstream", f"http: proxy error: {exc}")
            return error_response(502, "BadGateway", f"the X-Ray endpoint failed: {exc}")

    def _too_large(self) -> web.Response:
        self.logs.warn("proxy-size", "Proxy request refused: body larger than "
                       f"{self.max_body} bytes")
        return error_response(413, "RequestEntityTooLarge",
                              f"request bodies are limited to {self.max_body} bytes")
