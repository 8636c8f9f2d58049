"""What the daemon needs from AWS, all through botocore: the region, a session with the default
credential chain, the X-Ray endpoint, and an HTTP session with the daemon's proxy and TLS
settings. botocore is imported lazily: the UDP port is bound before it loads."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xrayd import __version__

if TYPE_CHECKING:
    from botocore.httpsession import URLLib3Session
    from botocore.session import Session

NO_REGION_MESSAGE = (
    "Cannot fetch region variable from config file, environment variables, ecs metadata, or ec2 "
    "metadata. Use local-mode to use the local config region."
)
REQUEST_TIMEOUT = 2.0


class AwsSetupError(Exception):
    """A fatal problem with the AWS settings (exit code 1)."""


def resolve_region(configured: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(region, where it came from): flag/config, then AWS_REGION."""
    env = os.environ if environ is None else environ
    if configured:
        return configured, "commandline/config file"
    if env.get("AWS_REGION"):
        return env["AWS_REGION"], "environment variables"
    raise AwsSetupError(NO_REGION_MESSAGE)


def proxy_url(configured: str, environ: dict[str, str] | None = None) -> str:
    """-p / ProxyAddress, else HTTPS_PROXY; checked to be a URL with scheme and host."""
    env = os.environ if environ is None else environ
    url = configured or env.get("HTTPS_PROXY", "")
    if not url:
        return ""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise AwsSetupError(f"Bad proxy URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise AwsSetupError(
            f"Bad proxy URL: {url!r} is not a URL such as http://host:port"
        )
    return url


def user_agent() -> str:
    import botocore

    exec_env = os.environ.get("AWS_EXECUTION_ENV") or "UNKNOWN"
    return (
        f"Botocore/{botocore.__version__} Python/{platform.python_version()} "
        f"xray-agent/xrayd/{__version__} exec-env/{exec_env} "
        f"OS/{sys.platform}-{platform.machine()}"
    )


@dataclass
class AwsContext:
    """The session, region and endpoint every X-Ray call of the daemon uses."""

    session: Session
    region: str
    endpoint: str
    verify: bool
    proxy: str

    def credentials(self) -> Any:
        """Frozen credentials (refreshed by botocore when they expire), or None."""
        creds = self.session.get_credentials()
        return None if creds is None else creds.get_frozen_credentials()

    def http_session(self, pool_size: int, timeout: float = REQUEST_TIMEOUT) -> URLLib3Session:
        from botocore.httpsession import URLLib3Session

        proxies = {"http": self.proxy, "https": self.proxy} if self.proxy else None
        import socket

        # TCP_NODELAY: urllib3 writes headers and body separately; without it the body waits
        # for the peer's delayed ACK (40 ms per call).
        return URLLib3Session(
            verify=self.verify, proxies=proxies, timeout=timeout,
            max_pool_connections=pool_size,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


def create_context(region: str, endpoint: str, no_verify_ssl: bool, proxy: str) -> AwsContext:
    import botocore.session

    session = botocore.session.get_session()
    if not endpoint:
        client = session.create_client("xray", region_name=region)
        endpoint = client.meta.endpoint_url
    return AwsContext(session, region, endpoint.rstrip("/"), not no_verify_ssl, proxy)
