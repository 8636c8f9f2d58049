"""cfg.yaml: the original daemon's configuration file, versions 1 and 2.

Loading follows the original's rules (reference section 1.4-1.6): a file named with ``-c`` is
strictly validated against the key whitelist; an auto-discovered file is only checked for its
``Version``; a zero value (empty string, integer 0, null) means "not set" and takes the default.
Unlike the original, an auto-discovered file is not read at all when ``-c`` names a file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SEARCH_PATHS: tuple[str, ...] = ("/etc/amazon/xray/cfg.yaml", "cfg.yaml")

DOC_POINTER = "Please refer to AWS X-Ray Documentation for more information."
MIGRATION_HINT = "Use X-Ray Daemon Config Migration Script to update the config file."


@dataclass(frozen=True)
class Config:
    """Every setting of the daemon, from defaults, the config file and the command line."""

    buffer_memory_mb: int = 0
    concurrency: int = 8
    endpoint: str = ""
    region: str = ""
    udp_address: str = "127.0.0.1:2000"
    tcp_address: str = "127.0.0.1:2000"
    proxy_idle_conn_timeout: int = 30
    proxy_max_idle_conns_per_host: int = 2
    proxy_max_idle_conns: int = 0
    log_rotation: bool = True
    log_level: str = "prod"
    log_path: str = ""
    local_mode: bool = False
    resource_arn: str = ""
    role_arn: str = ""
    no_verify_ssl: bool = False
    proxy_address: str = ""
    version: int = 2
    # Reliability (xrayd only): the spool, the admin address and the shutdown drain.
    spool_dir: str = ""
    spool_max_mb: int = 1024
    spool_fsync_interval_ms: int = 1000  # < 0: fsync every spool file as it is written
    admin_address: str = ""
    drain_seconds: int = 20
    # Offline mode (docs/offline.md): the local trace store, X-Ray API and viewer.
    offline: bool = False
    store_path: str = ""
    store_retention_hours: int = 0  # 0: the default (72)
    store_max_size_mb: int = 0  # 0: the default (1024)
    sampling_rules_file: str = ""
    # OpenTelemetry intake (docs/opentelemetry.md). "" = the mode's default (offline:
    # 127.0.0.1:4318 and :4317, normal: off); "off" disables.
    otlp_http_address: str = ""
    otlp_grpc_address: str = ""
    otel_indexed_attributes: str = ""  # comma-separated span attribute names -> annotations
    otel_index_all_attributes: bool = False
    # OTLP export (docs/otlp-export.md): beside the X-Ray upload or the offline store.
    otlp_endpoint: str = ""  # "" = from OTEL_EXPORTER_OTLP_*; "off" = never
    otlp_sigv4_region: str = ""  # sign OTLP requests with SigV4 (service xray) for this region
    # HTTP servers (docs/operations.md, "Threat model"): Host names accepted besides loopback.
    allowed_hosts: str = ""

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


OTLP_HTTP_DEFAULT = "127.0.0.1:4318"  # the OpenTelemetry SDKs' default endpoints
OTLP_GRPC_DEFAULT = "127.0.0.1:4317"


def otlp_address(setting: str, offline: bool, default: str) -> str:
    """Where an OTLP receiver listens: the setting, else the default in offline mode; "" when
    off ("off", or not set in normal mode)."""
    if setting.strip().lower() == "off":
        return ""
    return setting or (default if offline else "")


@dataclass(frozen=True)
class Key:
    """One cfg.yaml key: its dotted path in the file and the Config field it sets."""

    path: str
    field: str
    kind: type


# The order is the original's whitelist order (reference 1.6).
KEYS: tuple[Key, ...] = (
    Key("TotalBufferSizeMB", "buffer_memory_mb", int),
    Key("Concurrency", "concurrency", int),
    Key("Endpoint", "endpoint", str),
    Key("Region", "region", str),
    Key("Socket.UDPAddress", "udp_address", str),
    Key("Socket.TCPAddress", "tcp_address", str),
    Key("proxyserver.idleconntimeout", "proxy_idle_conn_timeout", int),
    Key("proxyserver.maxidleconnsperhost", "proxy_max_idle_conns_per_host", int),
    Key("proxyserver.maxidleconns", "proxy_max_idle_conns", int),
    Key("Logging.LogRotation", "log_rotation", bool),
    Key("Logging.LogLevel", "log_level", str),
    Key("Logging.LogPath", "log_path", str),
    Key("LocalMode", "local_mode", bool),
    Key("ResourceARN", "resource_arn", str),
    Key("RoleARN", "role_arn", str),
    Key("NoVerifySSL", "no_verify_ssl", bool),
    Key("ProxyAddress", "proxy_address", str),
    Key("Version", "version", int),
    Key("Spool.Directory", "spool_dir", str),
    Key("Spool.MaxSizeMB", "spool_max_mb", int),
    Key("Spool.FsyncIntervalMs", "spool_fsync_interval_ms", int),
    Key("AdminAddress", "admin_address", str),
    Key("DrainSeconds", "drain_seconds", int),
    Key("Offline", "offline", bool),
    Key("Store.Path", "store_path", str),
    Key("Store.RetentionHours", "store_retention_hours", int),
    Key("Store.MaxSizeMB", "store_max_size_mb", int),
    Key("SamplingRulesFile", "sampling_rules_file", str),
    Key("OTLPHTTPAddress", "otlp_http_address", str),
    Key("OTLPGRPCAddress", "otlp_grpc_address", str),
    Key("OpenTelemetry.IndexedAttributes", "otel_indexed_attributes", list),
    Key("OpenTelemetry.IndexAllAttributes", "otel_index_all_attributes", bool),
    Key("OTLPEndpoint", "otlp_endpoint", str),
    Key("OTLPSigV4Region", "otlp_sigv4_region", str),
    Key("AllowedHosts", "allowed_hosts", str),
)
KEYS_BY_PATH: dict[str, Key] = {k.path: k for k in KEYS}

NOT_SUPPORTED_ANY_MORE = frozenset(
    {
        "Profile.CPU",
        "Profile.Memory",
        "Socket.BufferSizeKB",
        "Logging.LogFormat",
        "Processor.BatchProcessorQueueSize",
    }
)
NEED_MIGRATION = frozenset(
    {"LogRotation", "Processor.Region", "Processor.Endpoint", "Processor.Routine", "MemoryLimit"}
)
SUPPORTED_VERSIONS = (1, 2)


class ConfigError(Exception):
    """A configuration problem the daemon cannot start with (exit code 1)."""


def flatten_keys(document: Any) -> list[str]:
    """Key names of a parsed file, one level deep, in file order (reference 1.6)."""
    if not isinstance(document, Mapping):
        return []
    names: list[str] = []
    for key, value in document.items():
        if isinstance(value, Mapping):
            names.extend(f"{key}.{sub}" for sub in value)
        else:
            names.append(str(key))
    return names


def validate_keys(names: Sequence[str]) -> None:
    """Strict validation of a ``-c`` file's keys, stopping at the first problem."""
    if names and "Version" not in names:
        raise ConfigError(f"Config Version is missing. {MIGRATION_HINT} {DOC_POINTER}")
    for name in names:
        if name in KEYS_BY_PATH:
            continue
        if name in NOT_SUPPORTED_ANY_MORE:
            raise ConfigError(f"{name} flag is not supported any more. {DOC_POINTER}")
        if name in NEED_MIGRATION:
            raise ConfigError(f"{name} flag is not supported. {MIGRATION_HINT} {DOC_POINTER}")
        raise ConfigError(f"{name} flag is invalid. {DOC_POINTER}")


def _type_error(path: str, value: Any, kind: type) -> ConfigError:
    shown = "!!map" if isinstance(value, Mapping) else "!!seq" if isinstance(value, list) else (
        f"!!{type(value).__name__} `{value}`"
    )
    return ConfigError(
        f"Error occur when using config flag: yaml: unmarshal errors: "
        f"cannot unmarshal {shown} into {kind.__name__} (key {path})"
    )


def _coerce(key: Key, value: Any) -> Any:
    """A YAML value for ``key`` in the field's type, or None when it means "not set"."""
    if value is None:
        return None
    if key.kind is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key.path, value, bool)
    if key.kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value or None
        raise _type_error(key.path, value, int)
    if key.kind is list:  # a YAML list of names, or one comma-separated string
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value) or None
        if isinstance(value, str):
            return value or None
        raise _type_error(key.path, value, list)
    # Strings: like yaml.v2, a scalar of another type is taken as its text.
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str):
        return value or None
    raise _type_error(key.path, value, str)


def _lookup(document: Mapping[str, Any], path: str) -> Any:
    head, _, rest = path.partition(".")
    value = document.get(head)
    if not rest:
        return value
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _type_error(head, value, dict)
    return value.get(rest)


def config_from_document(document: Any, base: Config | None = None) -> Config:
    """Merge a parsed cfg.yaml over ``base`` (defaults when omitted), checking ``Version``."""
    base = base or Config()
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ConfigError(
            "Error occur when using config flag: yaml: unmarshal errors: "
            "the file's top level is not a mapping of keys"
        )
    changes: dict[str, Any] = {}
    for key in KEYS:
        value = _coerce(key, _lookup(document, key.path))
        if value is not None:
            changes[key.field] = value
    version = changes.get("version", 0)
    if version not in SUPPORTED_VERSIONS:
        raise ConfigError(f"Config Version Setting is not correct. {MIGRATION_HINT} {DOC_POINTER}")
    return base.replace(**changes)


def parse_yaml(text: str) -> Any:
    import yaml  # imported here: start-up binds the UDP port first when no file exists

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Error occur when using config flag: yaml: {exc}") from None
    except Exception as exc:
        # PyYAML's constructors raise ValueError, IndexError, AttributeError, ... on values
        # such as "2001-13-45" or a bare "!!int" (found by tests/test_fuzz.py).
        raise ConfigError(
            f"Error occur when using config flag: yaml: cannot read a value: {exc!r}"
        ) from None


def read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"Error occur when using config flag: open {path}: {reason.lower()}"
        ) from None


def load_explicit(path: str) -> Config:
    """A file named with ``-c``: strict key validation, then loading."""
    document = parse_yaml(read_file(path))
    validate_keys(flatten_keys(document))
    return config_from_document(document)


def discover(search_paths: Iterable[str] = DEFAULT_SEARCH_PATHS) -> tuple[Config, str | None]:
    """The first existing file of the search list (version check only), or the defaults."""
    for path in search_paths:
        if os.path.isfile(path):
            return config_from_document(parse_yaml(read_file(path))), path
    return Config(), None


def load(
    explicit_path: str | None, search_paths: Iterable[str] = DEFAULT_SEARCH_PATHS
) -> tuple[Config, str | None]:
    """The configuration and the file it came from (None when built-in defaults apply)."""
    if explicit_path:
        return load_explicit(explicit_path), explicit_path
    return discover(search_paths)
