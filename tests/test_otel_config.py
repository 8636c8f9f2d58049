"""The OpenTelemetry settings: cfg.yaml keys, flags, and where the OTLP receivers listen."""

from __future__ import annotations

import pytest

from xrayd import flags
from xrayd.config import (
    OTLP_GRPC_DEFAULT,
    OTLP_HTTP_DEFAULT,
    ConfigError,
    config_from_document,
    flatten_keys,
    otlp_address,
    parse_yaml,
    validate_keys,
)


def test_keys_from_the_file():
    document = parse_yaml(
        "Version: 2\nOTLPHTTPAddress: 127.0.0.1:5318\nOTLPGRPCAddress: 'off'\n"
        "OpenTelemetry:\n  IndexedAttributes: [customer.tier, http.route]\n"
        "  IndexAllAttributes: true\n")
    validate_keys(flatten_keys(document))
    config = config_from_document(document)
    assert config.otlp_http_address == "127.0.0.1:5318"
    assert config.otlp_grpc_address == "off"
    assert config.otel_indexed_attributes == "customer.tier,http.route"
    assert config.otel_index_all_attributes is True


def test_indexed_attributes_as_one_string_and_bad_types():
    document = parse_yaml("Version: 2\nOpenTelemetry:\n  IndexedAttributes: a.b,c\n")
    assert config_from_document(document).otel_indexed_attributes == "a.b,c"
    with pytest.raises(ConfigError, match=r"OpenTelemetry\.IndexedAttributes"):
        config_from_document(parse_yaml("Version: 2\nOpenTelemetry:\n  IndexedAttributes: [1]\n"))


def test_flags():
    values = flags.parse(["--otlp-http-address", "off", "--otlp-grpc-address=:4317",
                          "--otel-indexed-attributes", "a,b", "--otel-index-all-attributes"])
    assert flags.settings_from(values) == {
        "otlp_http_address": "off", "otlp_grpc_address": ":4317",
        "otel_indexed_attributes": "a,b", "otel_index_all_attributes": True}


@pytest.mark.parametrize(("setting", "offline", "default", "address"), [
    ("", True, OTLP_HTTP_DEFAULT, "127.0.0.1:4318"),
    ("", True, OTLP_GRPC_DEFAULT, "127.0.0.1:4317"),
    ("", False, OTLP_HTTP_DEFAULT, ""),
    ("off", True, OTLP_HTTP_DEFAULT, ""),
    ("OFF", False, OTLP_HTTP_DEFAULT, ""),
    ("0.0.0.0:4318", False, OTLP_HTTP_DEFAULT, "0.0.0.0:4318"),
])
def test_where_the_receivers_listen(setting, offline, default, address):
    assert otlp_address(setting, offline, default) == address
