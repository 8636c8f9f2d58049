"""cfg.yaml loading, merging and strict validation (checklist: cfg)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xrayd import config
from xrayd.config import Config, ConfigError

FULL_V2 = """
TotalBufferSizeMB: 24
Concurrency: 4
Region: us-west-1
Endpoint: https://xray.us-west-1.amazonaws.com
Socket:
  UDPAddress: 127.0.0.1:3000
  TCPAddress: 127.0.0.1:3000
Logging:
  LogRotation: false
  LogLevel: error
  LogPath: /var/log/xray/xray.log
LocalMode: true
ResourceARN: arn:aws:ec2:us-west-1:123:instance/i-1
RoleARN: arn:aws:iam::123:role/xray
NoVerifySSL: true
ProxyAddress: https://127.0.0.1:8888
Version: 2
"""


def test_full_version_2_populates_every_field(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(FULL_V2)
    cfg = config.load_explicit(str(path))
    assert cfg == Config(
        buffer_memory_mb=24, concurrency=4, region="us-west-1",
        endpoint="https://xray.us-west-1.amazonaws.com", udp_address="127.0.0.1:3000",
        tcp_address="127.0.0.1:3000", log_rotation=False, log_level="error",
        log_path="/var/log/xray/xray.log", local_mode=True,
        resource_arn="arn:aws:ec2:us-west-1:123:instance/i-1",
        role_arn="arn:aws:iam::123:role/xray", no_verify_ssl=True,
        proxy_address="https://127.0.0.1:8888", version=2,
    )


def test_type_error_is_fatal(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("TotalBufferSizeMB: NotExist\nVersion: 2\n")
    with pytest.raises(ConfigError, match="Error occur when using config flag"):
        config.load_explicit(str(path))


def test_missing_explicit_file():
    with pytest.raises(ConfigError, match="no such file or directory"):
        config.load_explicit("/nonexistent/missing.yaml")


def test_version_1_found_on_the_search_path(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("Socket:\n  UDPAddress: 127.0.0.1:2500\nVersion: 1\n")
    cfg, source = config.discover([str(tmp_path / "absent.yaml"), str(path)])
    assert source == str(path)
    assert cfg.version == 1
    assert cfg.udp_address == "127.0.0.1:2500"
    assert cfg.tcp_address == "127.0.0.1:2000"


def test_version_2_tcp_address(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text('Socket:\n  TCPAddress : "127.0.0.2:3000"\nVersion: 2\n')
    assert config.load_explicit(str(path)).tcp_address == "127.0.0.2:3000"


def test_no_file_on_search_path_gives_defaults(tmp_path):
    assert config.discover([str(tmp_path / "a.yaml")]) == (Config(), None)


def test_partial_file_merges_with_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("Logging:\n  LogRotation: false\nConcurrency: 0\nRegion: ''\nVersion: 2\n")
    cfg = config.load_explicit(str(path))
    assert cfg.tcp_address == "127.0.0.1:2000"
    assert cfg.log_level == "prod"
    assert cfg.log_rotation is False
    assert cfg.local_mode is False and cfg.no_verify_ssl is False
    assert cfg.concurrency == 8  # zero means "not set"
    assert cfg.region == ""


@pytest.mark.parametrize("text,message", [
    ("Region: x\n", "Config Version is missing."),
    ("ABCDE: true\nRegion: x\n", "Config Version is missing."),
    ("Version: 10000\n", "Config Version Setting is not correct."),
    ("", "Config Version Setting is not correct."),
    ("MemoryLimit: 5\nVersion: 2\n", "MemoryLimit flag is not supported. Use X-Ray Daemon "
                                      "Config Migration Script to update the config file."),
    ("Socket:\n  BufferSizeKB: 5\nVersion: 2\n",
     "Socket.BufferSizeKB flag is not supported any more."),
    ("Processor:\n  Region: x\nVersion: 2\n",
     "Processor.Region flag is not supported. Use X-Ray Daemon Config Migration Script"),
    ("ABCDE: true\nVersion: 2\n", "ABCDE flag is invalid."),
    ("Socket:\nVersion: 2\n", "Socket flag is invalid."),
    ("ProxyServer:\n  IdleConnTimeout: 3\nVersion: 2\n", "ProxyServer.IdleConnTimeout flag is"),
    ("Version: 2\nRegion: [a, b]\n", "Error occur when using config flag"),
    ("Version: 2\nLocalMode: 3\n", "Error occur when using config flag"),
    ("Version: 2\n  bad: [yaml\n", "Error occur when using config flag: yaml"),
])
def test_strict_validation_messages(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load_explicit(str(path))
    assert message in str(info.value)
    assert str(info.value).endswith("Please refer to AWS X-Ray Documentation for more "
                                    "information.") or "Error occur" in str(info.value)


def test_whitelist_is_the_originals_in_order():
    # xrayd's own keys (e.g. offline mode's) follow the original's whitelist.
    assert [k.path for k in config.KEYS][:18] == [
        "TotalBufferSizeMB", "Concurrency", "Endpoint", "Region", "Socket.UDPAddress",
        "Socket.TCPAddress", "proxyserver.idleconntimeout", "proxyserver.maxidleconnsperhost",
        "proxyserver.maxidleconns", "Logging.LogRotation", "Logging.LogLevel",
        "Logging.LogPath", "LocalMode", "ResourceARN", "RoleARN", "NoVerifySSL",
        "ProxyAddress", "Version",
    ]


def test_user_file_flattens_in_file_order():
    document = config.parse_yaml(
        "Socket:\n  UDPAddress: x\nMemoryLimit: 1\nRegion: r\nEndpoint: e\nResourceARN: a\n"
        "RoleARN: r\nVersion: 2\n")
    assert config.flatten_keys(document) == [
        "Socket.UDPAddress", "MemoryLimit", "Region", "Endpoint", "ResourceARN", "RoleARN",
        "Version"]


def test_string_keys_accept_scalars_as_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("Region: 123\nVersion: 2\n")
    assert config.load_explicit(str(path)).region == "123"


def test_auto_discovered_file_is_version_checked_but_keys_not(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("Unknown: 1\nVersion: 2\n")
    assert config.discover([str(path)])[0] == Config()
    path.write_text("Region: x\n")
    with pytest.raises(ConfigError, match="Config Version Setting is not correct"):
        config.discover([str(path)])


def test_broken_discovered_file_does_not_matter_with_explicit_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("Region: x\n")  # no Version
    good = tmp_path / "good.yaml"
    good.write_text("Region: eu-west-2\nVersion: 2\n")
    cfg, source = config.load(str(good), search_paths=[str(broken)])
    assert (cfg.region, source) == ("eu-west-2", str(good))


def _run(args, cwd, env_extra=None):
    return subprocess.run([sys.executable, "-m", "xrayd", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_bad_config_exits_1_with_message_on_stderr_and_early_log_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("ABCDE: true\nVersion: 2\n")
    log = tmp_path / "early.log"
    result = _run(["-c", str(path), "-f", str(log)], tmp_path)
    assert result.returncode == 1
    assert "[Error] ABCDE flag is invalid." in result.stderr
    assert "ABCDE flag is invalid." in log.read_text()


def test_missing_config_file_exits_1(tmp_path):
    result = _run(["-c", "missing.yaml"], tmp_path)
    assert result.returncode == 1
    assert "open missing.yaml: no such file or directory" in result.stderr


def test_shipped_cfg_yaml_is_valid_and_equals_defaults():
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "cfg.yaml"
    assert config.load_explicit(str(shipped)) == Config()
