"""Signing X-Ray API calls with botocore's SigV4Auth, on a light request object.

botocore's ``AWSRequest`` keeps its headers in an ``email.message.Message``; with it, signing a
PutTraceSegments call costs about twice what the signature itself does (docs/benchmarks.md).
SigV4Auth only reads ``method``, ``url``, ``params``, ``body`` and ``context`` and reads and
writes ``headers`` by item, so a plain object with a dict of headers is signed by the same code
into the same signature (tests/test_signing.py checks it against AWSRequest). What does not
change between calls is prepared once: the ``Host`` value (as botocore derives it from the URL)
and a SigV4Auth per set of credentials.
"""

from __future__ import annotations

import threading
from typing import Any


class SignableRequest:
    """What SigV4Auth.add_auth needs of a request. ``headers`` is a plain dict: callers and
    botocore use the same spelling for each name (``Authorization``, ``X-Amz-Date``, ...)."""

    __slots__ = ("body", "context", "headers", "method", "params", "url")

    def __init__(self, url: str, headers: dict[str, str], body: bytes,
                 method: str = "POST") -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self.context: dict[str, Any] = {}


class Signer:
    """Signs requests to one endpoint for one service and region. Thread-safe."""

    def __init__(self, endpoint: str, region: str, service: str = "xray") -> None:
        from botocore.auth import SigV4Auth

        self._auth_class = SigV4Auth
        self.region = region
        self.service = service
        probe = SigV4Auth(None, service, region)
        # The Host header botocore signs when the request has none: host[:port], without a
        # default port.
        self.host: str = probe.headers_to_sign(SignableRequest(endpoint, {}, b""))["host"]
        self._lock = threading.Lock()
        self._cached: tuple[Any, Any] = (None, None)  # (credentials, SigV4Auth for them)

    def _auth(self, credentials: Any) -> Any:
        cached_credentials, auth = self._cached
        if auth is not None and cached_credentials == credentials:
            return auth
        auth = self._auth_class(credentials, self.service, self.region)
        with self._lock:
            self._cached = (credentials, auth)
        return auth

    def sign(self, url: str, headers: dict[str, str], body: bytes,
             credentials: Any) -> dict[str, str]:
        """The headers to send (``headers`` plus Host, X-Amz-Date, the security token and
        Authorization); ``headers`` itself is left as it was."""
        request = SignableRequest(url, {"Host": self.host, **headers}, body)
        self._auth(credentials).add_auth(request)
        return request.headers
