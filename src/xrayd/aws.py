"""What the daemon needs from AWS, all through botocore: the region (flag, environment, ECS
metadata file, EC2 instance metadata), the credential chain (optionally through an assumed role),
the X-Ray endpoint, and an HTTP session with the daemon's proxy and TLS settings. botocore is
imported lazily: the UDP port is bound before it loads."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from xrayd import __version__

if TYPE_CHECKING:
    from botocore.httpsession import URLLib3Session
    from botocore.session import Session

NO_REGION_MESSAGE = (
    "Cannot fetch region variable from config file, environment variables, ecs metadata, or ec2 "
    "metadata. Use local-mode to use the local config region."
)
REQUEST_TIMEOUT = 2.0
# Instance metadata: short timeouts so that start-up off EC2 stays bounded (2 attempts of 1 s).
IMDS_TIMEOUT = 1.0
IMDS_ATTEMPTS = 2
IMDS_HINT = (
    "on an IMDSv2-only instance reached from a container the metadata hop limit must be at "
    "least 2; otherwise set the region with -n / AWS_REGION or use local mode (-o)"
)
ROLE_SESSION_NAME = "xray-daemon"
# After credentials could not be had, wait this long before asking their source again.
CREDENTIALS_RETRY_SECONDS = 10.0
PRIMARY_STS_REGION = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}

Environ = Mapping[str, str]


class AwsSetupError(Exception):
    """A fatal problem with the AWS settings (exit code 1)."""


class CredentialsError(Exception):
    """No credentials could be had right now; the message says why."""


# ---------------------------------------------------------------------------------------------
# Region


def ecs_region(environ: Environ, log: logging.Logger) -> str:
    """The region of the ECS task's ARN in the container metadata file, or ""."""
    if environ.get("ECS_ENABLE_CONTAINER_METADATA", "").lower() != "true":
        return ""
    path = environ.get("ECS_CONTAINER_METADATA_FILE", "")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("Unable to open ECS metadata file: %s", exc)
        return ""
    try:
        document = json.loads(text)
    except ValueError as exc:
        log.error("Unable to read ECS metadata file contents: %s", exc)
        return ""
    arn = document.get("TaskARN") if isinstance(document, dict) else None
    parts = arn.split(":") if isinstance(arn, str) else []
    if len(parts) < 4 or not parts[3]:
        # The original panics here; a missing or odd TaskARN is only a failed source.
        log.error("Unable to read ECS metadata file contents: no task ARN with a region "
                  "in TaskARN: %r", arn)
        return ""
    return parts[3]


def instance_metadata(session: Session, environ: Environ | None = None) -> Any:
    """botocore's IMDS client (IMDSv2 token first, IMDSv1 fall-back) with short timeouts, at
    the endpoint botocore's settings name (AWS_EC2_METADATA_SERVICE_ENDPOINT and friends)."""
    from botocore.utils import IMDSFetcher

    class InstanceMetadata(IMDSFetcher):
        def get(self, path: str) -> str:
            token = self._fetch_metadata_token()
            return self._get_request(path, None, token).text

    config = {
        name: session.get_config_variable(name)
        for name in ("ec2_metadata_service_endpoint", "ec2_metadata_service_endpoint_mode",
                     "ec2_metadata_v1_disabled")
    }
    return InstanceMetadata(
        timeout=IMDS_TIMEOUT, num_attempts=IMDS_ATTEMPTS,
        env=dict(os.environ if environ is None else environ),
        user_agent=user_agent(), config=config,
    )


def imds_error(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "_RetriesExceededError":
        return "no answer from the instance metadata service (or it is disabled)"
    return str(exc) or name


def ec2_region(imds: Any) -> str:
    """The region of the instance identity document; raises on failure."""
    document = json.loads(imds.get("latest/dynamic/instance-identity/document"))
    region = document.get("region") if isinstance(document, dict) else None
    if not isinstance(region, str) or not region:
        raise ValueError("no region in the instance identity document")
    return region


def resolve_region(
    configured: str,
    local_mode: bool = False,
    environ: Environ | None = None,
    log: logging.Logger | None = None,
    session_factory: Callable[[], Session] | None = None,
) -> tuple[str, str]:
    """(region, where it came from), in the original's order; AwsSetupError when none."""
    env = os.environ if environ is None else environ
    log = log or logging.getLogger("xrayd")
    if configured:
        return configured, "commandline/config file"
    if env.get("AWS_REGION"):
        return env["AWS_REGION"], "environment variables"
    session = (session_factory or new_session)()
    if not local_mode:
        region = ecs_region(env, log)
        if region:
            return region, "ECS metadata file"
        try:
            return ec2_region(instance_metadata(session, env)), "ec2 metadata"
        except Exception as exc:
            log.error("Unable to fetch region from EC2 metadata: %s (%s)", imds_error(exc),
                      IMDS_HINT)
    else:
        region = session.get_config_variable("region")
        if region:
            return region, "config"
    raise AwsSetupError(NO_REGION_MESSAGE)


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    if region.startswith("us-iso-"):
        return "aws-iso"
    return "aws"


def xray_endpoint_for(region: str, configured: str = "") -> str:
    """The TCP proxy's upstream (reference 7): scheme and host of ``Endpoint``, else the
    region's X-Ray endpoint."""
    if configured:
        parts = urlsplit(configured)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
        return configured.rstrip("/")
    if not region:
        raise AwsSetupError("Cannot compute the X-Ray endpoint: no region")
    suffix = {"aws-cn": "amazonaws.com.cn", "aws-iso": "c2s.ic.gov",
              "aws-iso-b": "sc2s.sgov.gov"}.get(partition_of(region), "amazonaws.com")
    return f"https://xray.{region}.{suffix}"


# ---------------------------------------------------------------------------------------------
# Outbound proxy


def proxy_url(configured: str, environ: Environ | None = None) -> str:
    """-p / ProxyAddress, else HTTPS_PROXY; checked to be a URL with scheme and host."""
    env = os.environ if environ is None else environ
    url = configured or env.get("HTTPS_PROXY", "")
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise AwsSetupError(f"Bad proxy URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url \
            or "%" in parts.hostname:
        raise AwsSetupError(
            f"Bad proxy URL: {url!r} is not a URL such as http://host:port"
        )
    return url


def proxy_for(url: str, proxy: str, environ: Environ | None = None) -> str:
    """``proxy``, unless NO_PROXY (or no_proxy) names the host of ``url``."""
    if not proxy:
        return ""
    env = os.environ if environ is None else environ
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    host = urlsplit(url).netloc
    if no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):
        return ""
    return proxy


def user_agent() -> str:
    import botocore

    exec_env = os.environ.get("AWS_EXECUTION_ENV") or "UNKNOWN"
    return (
        f"Botocore/{botocore.__version__} Python/{platform.python_version()} "
        f"xray-agent/xrayd/{__version__} exec-env/{exec_env} "
        f"OS/{sys.platform}-{platform.machine()}"
    )


# ---------------------------------------------------------------------------------------------
# Credentials


def new_session() -> Session:
    import botocore.session

    session = botocore.session.get_session()
    session.set_config_variable("sts_regional_endpoints", "regional")
    return session


def describe_credential_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class AssumedRole:
    """STS AssumeRole with the chain's credentials on the regional STS endpoint; when STS is
    disabled in that region, the partition's primary region (as the original before 3.6)."""

    def __init__(self, session: Session, role_arn: str, region: str,
                 log: logging.Logger) -> None:
        self.session = session
        self.role_arn = role_arn
        self.region = region
        self.log = log
        self._announced = False

    def _client(self, region: str, source: Any) -> Any:
        from botocore.config import Config as BotoConfig

        client = self.session.create_client(
            "sts", region_name=region,
            aws_access_key_id=source.access_key, aws_secret_access_key=source.secret_key,
            aws_session_token=source.token,
            config=BotoConfig(connect_timeout=REQUEST_TIMEOUT, read_timeout=5,
                              retries={"max_attempts": 2}),
        )
        if not self._announced:
            self.log.info("STS Endpoint : %s", client.meta.endpoint_url)
            self._announced = True
        return client

    def fetch(self) -> dict[str, Any]:
        """The refresh function of botocore's refreshable credentials."""
        from botocore.exceptions import ClientError

        chain = self.session.get_credentials()
        if chain is None:
            raise CredentialsError(
                f"no source credentials to assume role {self.role_arn} with")
        source = chain.get_frozen_credentials()
        try:
            response = self._assume(self.region, source)
        except ClientError as exc:
            primary = PRIMARY_STS_REGION.get(partition_of(self.region))
            code = exc.response.get("Error", {}).get("Code")
            if code != "RegionDisabledException" or not primary or primary == self.region:
                raise
            self.log.error("Unable to assume role in the regional STS endpoint: %s", exc)
            self.log.info("Credentials for provided RoleARN will be fetched from STS primary "
                          "region endpoint instead of regional endpoint.")
            self.region = primary
            self._announced = False
            response = self._assume(primary, source)
        creds = response["Credentials"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    def _assume(self, region: str, source: Any) -> dict[str, Any]:
        return self._client(region, source).assume_role(
            RoleArn=self.role_arn, RoleSessionName=ROLE_SESSION_NAME)


@dataclass
class CredentialSource:
    """The daemon's credentials: resolved at first use, refreshed by botocore before they
    expire; after a failure (nothing found, STS refused) the source is asked again at most every
    CREDENTIALS_RETRY_SECONDS. Thread-safe."""

    session: Session
    role: AssumedRole | None = None
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _credentials: Any = None
    _failed_at: float | None = None
    _failure: str = ""

    def _resolve(self) -> Any:
        if self.role is not None:
            from botocore.credentials import DeferredRefreshableCredentials

            return DeferredRefreshableCredentials(self.role.fetch, "assume-role")
        creds = self.session.get_credentials()
        if creds is None:
            raise CredentialsError(
                "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, a web identity token, container credentials or an instance role)")
        return creds

    def frozen(self) -> Any:
        """Current credentials (access_key, secret_key, token); CredentialsError if none."""
        with self._lock:
            now = self.clock()
            if self._failed_at is not None and now - self._failed_at < \
                    CREDENTIALS_RETRY_SECONDS:
                raise CredentialsError(self._failure)
            try:
                if self._failed_at is not None:
                    self._renew_session()
                if self._credentials is None:
                    self._credentials = self._resolve()
                creds = self._credentials
            except Exception as exc:
                raise self._failed(now, exc) from None
        try:
            return creds.get_frozen_credentials()
        except Exception as exc:
            with self._lock:
                raise self._failed(now, exc) from None

    def _renew_session(self) -> None:
        """A fresh botocore session: its providers re-read files and settings that appeared
        since (botocore caches what it found, or did not find, in a session)."""
        self.session = new_session()
        if self.role is not None:
            self.role.session = self.session
        else:
            self._credentials = None
        self._failed_at = None

    def _failed(self, now: float, exc: Exception) -> CredentialsError:
        """Remember a failure: the source is not asked again for a while (a flood of uploads
        or sampling calls must not become a flood of STS or metadata calls)."""
        self._failed_at, self._failure = now, self._message(exc)
        return CredentialsError(self._failure)

    @staticmethod
    def _message(exc: Exception) -> str:
        text = str(exc) if isinstance(exc, CredentialsError) else describe_credential_error(exc)
        return f"Unable to retrieve credentials: {text}"


# ---------------------------------------------------------------------------------------------
# Context


@dataclass
class AwsContext:
    """The credentials, region and endpoint every X-Ray call of the daemon uses."""

    session: Session
    region: str
    endpoint: str
    verify: bool
    proxy: str
    source: CredentialSource | None = None

    def credentials(self) -> Any:
        """Frozen credentials (refreshed by botocore when they expire); CredentialsError when
        none can be had."""
        if self.source is None:
            self.source = CredentialSource(self.session)
        return self.source.frozen()

    def proxy_for(self, url: str) -> str:
        return proxy_for(url, self.proxy)

    def http_session(self, pool_size: int, timeout: float = REQUEST_TIMEOUT) -> URLLib3Session:
        import socket

        from botocore.httpsession import URLLib3Session

        proxy = self.proxy_for(self.endpoint)
        proxies = {"http": proxy, "https": proxy} if proxy else None
        # TCP_NODELAY: urllib3 writes headers and body separately; without it the body waits
        # for the peer's delayed ACK (40 ms per call).
        return URLLib3Session(
            verify=self.verify, proxies=proxies, timeout=timeout,
            max_pool_connections=pool_size,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


def xray_api_endpoint(session: Session, region: str) -> str:
    """The X-Ray endpoint a botocore client for ``region`` would use: a configured endpoint URL
    (AWS_ENDPOINT_URL_XRAY, AWS_ENDPOINT_URL, endpoint_url in the config file) unless those are
    ignored, else botocore's endpoint rules for X-Ray with the FIPS and dual-stack settings.

    Resolved from the X-Ray rule set and the partitions table only: creating a client would load
    the endpoint table of every AWS service and X-Ray's API model, about 9 MB of resident memory
    kept for the session's life. Should that botocore API change, a client is created."""
    try:
        from botocore.configprovider import ConfiguredEndpointProvider
        from botocore.endpoint_provider import EndpointProvider

        if not session.get_config_variable("ignore_configured_endpoint_urls"):
            configured = ConfiguredEndpointProvider(
                full_config=session.full_config, scoped_config=session.get_scoped_config(),
                client_name="xray").provide()
            if configured:
                return configured
        loader = session.get_component("data_loader")
        provider = EndpointProvider(loader.load_service_model("xray", "endpoint-rule-set-1"),
                                    loader.load_data("partitions"))
        resolved = provider.resolve_endpoint(
            Region=region,
            UseFIPS=bool(session.get_config_variable("use_fips_endpoint")),
            UseDualStack=bool(session.get_config_variable("use_dualstack_endpoint")),
        )
        return resolved.url
    except (ImportError, AttributeError, TypeError):
        return session.create_client("xray", region_name=region).meta.endpoint_url


def create_context(region: str, endpoint: str, no_verify_ssl: bool, proxy: str,
                   role_arn: str = "", log: logging.Logger | None = None) -> AwsContext:
    session = new_session()
    if not endpoint:
        endpoint = xray_api_endpoint(session, region)
    role = AssumedRole(session, role_arn, region, log or logging.getLogger("xrayd")) \
        if role_arn else None
    return AwsContext(session, region, endpoint.rstrip("/"), not no_verify_ssl, proxy,
                      CredentialSource(session, role))
