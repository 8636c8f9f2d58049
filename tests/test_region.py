"""Region discovery (aws.resolve_region) and the telemetry identity, against a fake instance
metadata service on loopback and real ECS metadata files."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest

from fakes.imds import FakeImds
from xrayd import aws, telemetry

LOG = logging.getLogger("xrayd-test-region")


@pytest.fixture
def imds(monkeypatch) -> Iterator[FakeImds]:
    server = FakeImds()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    yield server
    server.stop()
    assert server.refused == []  # botocore's IMDS requests, judged from their raw bytes


def no_region_env(**extra: str) -> dict[str, str]:
    return {"AWS_EC2_METADATA_DISABLED": "false", **extra}


def test_imdsv2_token_flow(imds):
    region, source = aws.resolve_region("", environ=no_region_env(), log=LOG)
    assert (region, source) == ("eu-west-3", "ec2 metadata")
    assert imds.calls[0] == ("PUT", "/latest/api/token", False)
    assert ("GET", "/latest/dynamic/instance-identity/document", True) in imds.calls


def test_imdsv1_fall_back(imds):
    imds.tokens = False  # the token PUT answers 403: IMDSv1 only
    region, _ = aws.resolve_region("", environ=no_region_env(), log=LOG)
    assert region == "eu-west-3"
    assert ("GET", "/latest/dynamic/instance-identity/document", False) in imds.calls


def test_imdsv2_enforced_without_token_fails_with_hint(imds, caplog):
    imds.tokens, imds.v1 = False, False  # e.g. hop limit 1 from a container
    with caplog.at_level(logging.ERROR, LOG.name), pytest.raises(aws.AwsSetupError) as err:
        aws.resolve_region("", environ=no_region_env(), log=LOG)
    assert str(err.value) == aws.NO_REGION_MESSAGE
    assert "Unable to fetch region from EC2 metadata" in caplog.text
    assert "hop limit" in caplog.text


def test_hanging_imds_is_bounded(imds):
    imds.hang = 30
    started = time.monotonic()
    with pytest.raises(aws.AwsSetupError):
        aws.resolve_region("", environ=no_region_env(), log=LOG)
    # 2 attempts of 1 s for the token and for the document, well under the 30 s hang.
    assert time.monotonic() - started < 15


def test_precedence(imds, tmp_path):
    meta = tmp_path / "ecs.json"
    meta.write_text(json.dumps({"TaskARN": "arn:aws:ecs:ap-south-1:123456789012:task/c/abc"}))
    ecs = {"ECS_ENABLE_CONTAINER_METADATA": "true", "ECS_CONTAINER_METADATA_FILE": str(meta)}
    assert aws.resolve_region("ap-northeast-1", environ=no_region_env(AWS_REGION="us-west-2"),
                              log=LOG) == ("ap-northeast-1", "commandline/config file")
    assert aws.resolve_region("", environ=no_region_env(AWS_REGION="us-west-2", **ecs),
                              log=LOG) == ("us-west-2", "environment variables")
    assert aws.resolve_region("", environ=no_region_env(**ecs), log=LOG) == \
        ("ap-south-1", "ECS metadata file")
    assert imds.calls == []
    # AWS_DEFAULT_REGION is not a source outside local mode
    assert aws.resolve_region("", environ=no_region_env(AWS_DEFAULT_REGION="sa-east-1"),
                              log=LOG)[0] == "eu-west-3"


@pytest.mark.parametrize("case,content,message", [
    ("malformed", "{not json", "Unable to read ECS metadata file contents"),
    ("no-task-arn", json.dumps({"Cluster": "c"}), "Unable to read ECS metadata file contents"),
    ("short-arn", json.dumps({"TaskARN": "arn:aws"}), "Unable to read ECS metadata file contents"),
    ("missing-file", None, "Unable to open ECS metadata file"),
])
def test_ecs_metadata_file_problems_fall_through(case, content, message, tmp_path, caplog):
    meta = tmp_path / "ecs.json"
    if content is not None:
        meta.write_text(content)
    env = {"ECS_ENABLE_CONTAINER_METADATA": "TRUE", "ECS_CONTAINER_METADATA_FILE": str(meta),
           "AWS_EC2_METADATA_DISABLED": "true"}
    with caplog.at_level(logging.ERROR, LOG.name), pytest.raises(aws.AwsSetupError):
        aws.resolve_region("", environ=env, log=LOG)
    assert message in caplog.text


def test_ecs_metadata_needs_the_enable_variable(tmp_path):
    meta = tmp_path / "ecs.json"
    meta.write_text(json.dumps({"TaskARN": "arn:aws:ecs:ap-south-1:1:task/c/abc"}))
    assert aws.ecs_region({"ECS_CONTAINER_METADATA_FILE": str(meta)}, LOG) == ""
    assert aws.ecs_region({}, LOG) == ""
    assert aws.ecs_region({"ECS_ENABLE_CONTAINER_METADATA": "true",
                           "ECS_CONTAINER_METADATA_FILE": str(meta)}, LOG) == "ap-south-1"


def test_local_mode_uses_the_sdk_default_region_and_never_imds(imds, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    assert aws.resolve_region("", True, environ=no_region_env(), log=LOG) == \
        ("ca-central-1", "config")
    config = tmp_path / "config"
    config.write_text("[profile tracing]\nregion = eu-north-1\n")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "tracing")
    assert aws.resolve_region("", True, environ=no_region_env(), log=LOG)[0] == "eu-north-1"
    assert imds.calls == []


def test_identity_from_imds_and_overrides(imds):
    session = aws.new_session()
    fetch = aws.instance_metadata(session).get
    identity = telemetry.resolve_identity("arn:x", False, {}, fetch, LOG)
    assert identity == telemetry.Identity(imds.hostname, imds.instance_id, "arn:x")
    env = {"AWS_HOSTNAME": "my-host", "AWS_INSTANCE_ID": "i-override"}
    assert telemetry.resolve_identity("", False, env, fetch, LOG) == \
        telemetry.Identity("my-host", "i-override", "")
    assert telemetry.resolve_identity("", True, {}, fetch, LOG) == telemetry.Identity()


def test_daemon_region_from_imds(imds, start_xrayd):
    from conftest import free_udp_tcp_port

    port = free_udp_tcp_port()
    env = {"AWS_REGION": "", "AWS_EC2_METADATA_DISABLED": "false",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "-l", "debug"],
                         env=env)
    assert "Fetch region eu-west-3 from ec2 metadata" in daemon.output
    assert "Using region: eu-west-3" in daemon.output


def test_daemon_without_region_exits_1_bounded(imds, start_xrayd):
    from conftest import free_udp_tcp_port

    imds.hang = 30
    port = free_udp_tcp_port()
    env = {"AWS_REGION": "", "AWS_EC2_METADATA_DISABLED": "false",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}"], env=env, ready=None)
    assert daemon.wait(timeout=20) == 1
    assert aws.NO_REGION_MESSAGE in daemon.output
