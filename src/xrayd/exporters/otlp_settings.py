"""The OTLP exporter's settings from --otlp-endpoint / OTLPEndpoint, --otlp-sigv4-region /
OTLPSigV4Region and the standard OTEL_EXPORTER_OTLP_* variables. Pure, and light to import: the
daemon resolves them at every start, the exporter (protobuf) is loaded only when they say so."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_TIMEOUT = 10.0  # seconds, the OTel SDKs' default (OTEL_EXPORTER_OTLP_TIMEOUT 10000 ms)


class OtlpConfigError(ValueError):
    """Settings the exporter cannot start with; the message says which."""


@dataclass(frozen=True)
class OtlpSettings:
    traces_url: str
    metrics_url: str  # "" when metrics requests are not forwarded
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    sigv4_region: str = ""
    verify: bool = True
    warnings: tuple[str, ...] = ()
    proxy: str = ""  # outbound proxy URL (--proxy-address / HTTPS_PROXY); "" = direct


def _with_path(url: str, path: str) -> str:
    return url.rstrip("/") + path


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpConfigError(f"{what} {url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise OtlpConfigError(f"{what} must not carry credentials in the URL (use "
                              "OTEL_EXPORTER_OTLP_HEADERS)")
    if not parts.path or parts.path == "/":
        url = urlunsplit(parts._replace(path="/v1/traces"))
    return url


def parse_headers(text: str) -> tuple[dict[str, str], list[str]]:
    """OTEL_EXPORTER_OTLP_HEADERS: ``name=value`` pairs separated by commas, values
    percent-encoded; (headers, warnings about entries left out)."""
    headers: dict[str, str] = {}
    warnings = []
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), unquote(value.strip())
        if not sep or not name or any(c in name for c in " \t\r\n:()<>@,;\\\"/[]?={}") or \
                any(c in value for c in "\r\n\0"):
            warnings.append(f"ignored a malformed OTLP header entry {item.strip()[:40]!r}")
            continue
        headers[name.lower()] = value
    return headers, warnings


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        millis = float(text)
    except ValueError:
        raise OtlpConfigError(f"OTLP timeout {text!r} is not a number of milliseconds") from None
    if not 0 < millis <= 600_000:
        raise OtlpConfigError(f"OTLP timeout {text!r} ms is not within (0, 600000]")
    return millis / 1000


def resolve_settings(endpoint: str, sigv4_region: str, environ: Mapping[str, str],
                     verify: bool = True) -> OtlpSettings | None:
    """The OTLP exporter's settings, or None when it is off. ``endpoint`` (--otlp-endpoint /
    OTLPEndpoint) wins over OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given), which wins over
    OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces); with only a SigV4 region, X-Ray's endpoint of
    that region. ``off`` turns the exporter off whatever the environment says."""
    endpoint = endpoint.strip()
    if endpoint.lower() == "off":
        return None
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    metrics = environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    if endpoint:
        traces = _check_url(endpoint, "--otlp-endpoint")
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        traces = _check_url(environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip(),
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    elif generic:
        _check_url(generic, "OTEL_EXPORTER_OTLP_ENDPOINT")
        traces = _with_path(generic, "/v1/traces")
        metrics = metrics or _with_path(generic, "/v1/metrics")
    elif sigv4_region:
        traces = f"https://xray.{sigv4_region}.amazonaws.com/v1/traces"
    else:
        return None
    if not metrics and not sigv4_region:
        parts = urlsplit(traces)
        if parts.path.endswith("/v1/traces"):
            metrics = urlunsplit(parts._replace(path=parts.path[:-len("traces")] + "metrics"))
    if metrics:
        metrics = _check_url(metrics, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    headers, warnings = parse_headers(environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    specific, more = parse_headers(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""))
    headers.update(specific)
    warnings += more
    for reserved in ("host", "content-length", "content-encoding", "content-type",
                     "transfer-encoding", "connection"):
        if headers.pop(reserved, None) is not None:
            warnings.append(f"ignored the OTLP header {reserved!r}: the exporter sets it")
    if sigv4_region:
        for signed in ("authorization", "x-amz-date", "x-amz-security-token"):
            if headers.pop(signed, None) is not None:
                warnings.append(f"ignored the OTLP header {signed!r}: SigV4 signing sets it")
        if urlsplit(traces).scheme != "https":
            warnings.append("SigV4-signed OTLP export over plain http: credentials' signatures "
                            "travel unencrypted")
    return OtlpSettings(traces, metrics, headers, _timeout(environ), sigv4_region, verify,
                        tuple(warnings))


def _addresses(host: str, port: int) -> set[str]:
    """The addresses a host name stands for (an empty set when it does not resolve)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {info[4][0] for info in found}


def _is_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def exports_to_itself(traces_url: str, receiver: tuple[str, int] | None) -> bool:
    """Whether the export URL reaches this daemon's own OTLP/HTTP receiver (``receiver``: the
    host and port it listens on, "" or a wildcard for every interface): spans sent there would
    come back in and be exported again, forever. Names are compared by the addresses they
    resolve to (an alias in /etc/hosts, 2130706433 and 127.0.0.1 are one place); with a
    wildcard receiver, only loopback addresses are recognised, not the host's others."""
    if receiver is None:
        return False
    parts = urlsplit(traces_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host, listening = receiver
    if port != listening:
        return False
    wanted = _addresses(parts.hostname or "", port)
    if host in ("", "0.0.0.0", "::"):  # every interface: loopback at least (see otlp-export.md)
        return any(_is_local(a) for a in wanted)
    return bool(wanted & _addresses(host, port))

