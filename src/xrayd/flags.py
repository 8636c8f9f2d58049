"""Command-line flags with the semantics of Go's ``flag`` package, as the original daemon has.

``-x``, ``--x``, ``-long`` and ``--long`` are equivalent; values come as ``-x v`` or ``-x=v``;
a boolean flag takes no separate value; parsing stops at the first non-flag argument or ``--``.
Pure: the parser returns values or raises, printing is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

USAGE_HEADER = "Usage: X-Ray [options]"


@dataclass(frozen=True)
class Flag:
    long: str
    short: str  # "" for long-only flags
    kind: type  # bool, int or str
    field: str  # the Config field it sets ("" for flags that are not settings)
    help: str


class FlagError(Exception):
    """A bad command line (exit code 2, usage printed)."""


class HelpRequested(Exception):
    """``-h``/``--help`` (exit code 0, usage printed)."""


FLAGS: tuple[Flag, ...] = (
    Flag("resource-arn", "a", str, "resource_arn",
         "Amazon Resource Name (ARN) of the AWS resource running the daemon."),
    Flag("local-mode", "o", bool, "local_mode", "Don't check for EC2 instance metadata."),
    Flag("buffer-memory", "m", int, "buffer_memory_mb",
         "Change the amount of memory in MB that buffers can use (minimum 3)."),
    Flag("region", "n", str, "region", "Send segments to X-Ray service in a specific region."),
    Flag("bind", "b", str, "udp_address", "Overrides default UDP address (127.0.0.1:2000)."),
    Flag("bind-tcp", "t", str, "tcp_address", "Overrides default TCP address (127.0.0.1:2000)."),
    Flag("role-arn", "r", str, "role_arn",
         "Assume the specified IAM role to upload segments to a different account."),
    Flag("config", "c", str, "", "Load a configuration file from the specified path."),
    Flag("log-file", "f", str, "log_path", "Output logs to the specified file path."),
    Flag("log-level", "l", str, "log_level",
         "Log level, from most verbose to least: dev, debug, info, warn, error, prod (default)."),
    Flag("proxy-address", "p", str, "proxy_address",
         "Proxy address through which to upload segments."),
    Flag("version", "v", bool, "", "Show AWS X-Ray daemon version."),
    # Long-only flags for the config keys the original has no flag for (its issue #137).
    Flag("endpoint", "", str, "endpoint", "X-Ray API endpoint URL (config key Endpoint)."),
    Flag("concurrency", "", int, "concurrency",
         "Number of concurrent segment uploads (config key Concurrency, default 8)."),
    Flag("no-verify-ssl", "", bool, "no_verify_ssl",
         "Do not verify TLS certificates of the X-Ray API (config key NoVerifySSL)."),
    Flag("log-rotation", "", bool, "log_rotation",
         "Rotate the log file at 50 MiB, keeping one old file (config key Logging.LogRotation; "
         "default true, use --log-rotation=false to append only)."),
    Flag("spool-dir", "", str, "spool_dir",
         "Keep batches that cannot be uploaded now in this directory and upload them later, "
         "also after a restart (config key Spool.Directory; off by default)."),
    Flag("spool-max-mb", "", int, "spool_max_mb",
         "Size bound of the spool in MB; the oldest batches go first (config key "
         "Spool.MaxSizeMB, default 1024)."),
    Flag("spool-fsync-ms", "", int, "spool_fsync_interval_ms",
         "fsync spool files every this many ms; negative: as each is written (config key "
         "Spool.FsyncIntervalMs, default 1000)."),
    Flag("admin-address", "", str, "admin_address",
         "Serve /healthz, /readyz and /metrics on this TCP address, e.g. 127.0.0.1:2100 "
         "(config key AdminAddress; off by default)."),
    Flag("drain-seconds", "", int, "drain_seconds",
         "Seconds a shutdown may spend uploading buffered segments; what is left goes to the "
         "spool or is dropped (config key DrainSeconds, default 20)."),
    Flag("offline", "", bool, "offline",
         "Offline mode: keep traces in a local store, serve the X-Ray API and a trace viewer on "
         "the TCP address; no AWS account needed (config key Offline)."),
    Flag("store", "", str, "store_path",
         "Offline trace store file (config key Store.Path; default "
         "$XDG_DATA_HOME/xrayd/traces.db or ~/.local/share/xrayd/traces.db)."),
    Flag("retention-hours", "", int, "store_retention_hours",
         "Offline store: remove traces older than this (config key Store.RetentionHours, "
         "default 72)."),
    Flag("store-max-mb", "", int, "store_max_size_mb",
         "Offline store: remove the oldest traces above this size (config key "
         "Store.MaxSizeMB, default 1024)."),
    Flag("sampling-rules", "", str, "sampling_rules_file",
         "Offline mode: JSON file of sampling rules in the X-Ray SamplingRule shape (config key "
         "SamplingRulesFile)."),
    Flag("otlp-http-address", "", str, "otlp_http_address",
         "Receive OpenTelemetry spans by OTLP/HTTP on this TCP address (config key "
         "OTLPHTTPAddress; offline mode: 127.0.0.1:4318 unless off, normal mode: off)."),
    Flag("otlp-grpc-address", "", str, "otlp_grpc_address",
         "Receive OpenTelemetry spans by OTLP/gRPC on this TCP address (config key "
         "OTLPGRPCAddress; offline mode: 127.0.0.1:4317 unless off, normal mode: off)."),
    Flag("otel-indexed-attributes", "", str, "otel_indexed_attributes",
         "Comma-separated span attribute names that become X-Ray annotations (config key "
         "OpenTelemetry.IndexedAttributes); the others go to metadata."),
    Flag("otel-index-all-attributes", "", bool, "otel_index_all_attributes",
         "Every simple span attribute becomes an annotation (config key "
         "OpenTelemetry.IndexAllAttributes)."),
    Flag("otlp-endpoint", "", str, "otlp_endpoint",
         "Also export every trace as OTLP/HTTP (protobuf, gzip) to this URL, e.g. "
         "http://127.0.0.1:4318/v1/traces; off: never (config key OTLPEndpoint; default: "
         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT when set)."),
    Flag("otlp-sigv4-region", "", str, "otlp_sigv4_region",
         "Sign OTLP export requests with SigV4 (service xray) for this region; without "
         "--otlp-endpoint, export to https://xray.<region>.amazonaws.com/v1/traces (config key "
         "OTLPSigV4Region)."),
    Flag("allowed-hosts", "", str, "allowed_hosts",
         "Host names or addresses the TCP servers answer besides loopback and their listen "
         "address, comma-separated; * for any (config key AllowedHosts)."),
)

_BY_NAME: dict[str, Flag] = {}
for _flag in FLAGS:
    _BY_NAME[_flag.long] = _flag
    if _flag.short:
        _BY_NAME[_flag.short] = _flag


def usage_text() -> str:
    lines = [USAGE_HEADER]
    for flag in FLAGS:
        short = f"-{flag.short}" if flag.short else ""
        long = f"--{flag.long}"
        gap = "\t\t\t" if len(long) < 8 else "\t\t"
        lines.append(f"\t{short}\t{long}{gap}{flag.help}")
    lines.append("\t-h\t--help\t\t\tShow this screen")
    return "\n".join(lines) + "\n"


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _parse_int(text: str) -> int:
    """Go's strconv.ParseInt(text, 0, 64): decimal, 0x, 0o, 0b, and a leading 0 for octal."""
    body = text.lstrip("+-")
    if len(body) > 1 and body[0] == "0" and body[1].isdigit():
        text = text.replace("0", "0o", 1)
    value = int(text, 0)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def _convert(flag: Flag, text: str) -> Any:
    try:
        if flag.kind is bool:
            return _parse_bool(text)
        if flag.kind is int:
            return _parse_int(text)
    except ValueError:
        raise FlagError(f'invalid value "{text}" for flag -{_shown(flag)}: parse error') from None
    return text


def _shown(flag: Flag) -> str:
    return flag.short or flag.long


def parse(args: Sequence[str]) -> dict[str, Any]:
    """The flags given on the command line, by long name (last occurrence wins)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        dashes = 2 if arg[1] == "-" else 1
        name = arg[dashes:]
        if dashes == 2 and not name:
            break  # "--" ends the flags
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        i += 1
        name, has_value, text = name.partition("=")
        if name in ("h", "help") and name not in _BY_NAME:
            raise HelpRequested()
        flag = _BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.kind is bool:
            values[flag.long] = _convert(flag, text) if has_value else True
            continue
        if not has_value:
            if i >= len(args):
                raise FlagError(f"flag needs an argument: -{name}")
            text = args[i]
            i += 1
        values[flag.long] = _convert(flag, text)
    return values


def settings_from(values: dict[str, Any]) -> dict[str, Any]:
    """The Config fields the given flags set."""
    return {_BY_NAME[name].field: v for name, v in values.items() if _BY_NAME[name].field}
