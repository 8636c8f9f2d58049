"""The credential chain is botocore's: shared files with AWS_PROFILE and credential_process,
web identity (EKS IRSA) against moto's STS, container credentials (ECS, EKS Pod Identity) from a
local endpoint, refreshed before expiry; missing credentials never stop start-up."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import datagram, free_udp_tcp_port, send_udp, wait_until
from xrayd import aws

NO_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture
def no_env_keys(monkeypatch):
    for name in NO_ENV_KEYS:
        monkeypatch.delenv(name)


def frozen():
    return aws.CredentialSource(aws.new_session()).frozen()


def test_profile_with_credential_process(no_env_keys, monkeypatch, tmp_path):
    script = tmp_path / "creds.py"
    script.write_text('import json; print(json.dumps({"Version": 1, "AccessKeyId": '
                      '"AKIDPROCESS", "SecretAccessKey": "s"}))')
    config = tmp_path / "config"
    config.write_text(f"[profile tracing]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "tracing")
    assert frozen().access_key == "AKIDPROCESS"


def test_shared_credentials_file(no_env_keys, monkeypatch, tmp_path):
    shared = tmp_path / "credentials"
    shared.write_text("[ops]\naws_access_key_id = AKIDSHARED\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_PROFILE", "ops")
    assert frozen().access_key == "AKIDSHARED"


def test_web_identity_irsa_with_moto_sts(no_env_keys, monkeypatch, tmp_path, moto):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/irsa")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.url)
    creds = frozen()
    assert creds.access_key.startswith("ASIA") and creds.token


class ContainerCredentials:
    """The ECS / EKS Pod Identity credentials endpoint, with short-lived credentials."""

    def __init__(self, lifetime: timedelta) -> None:
        server = self
        self.calls: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.calls.append(self.headers.get("Authorization"))
                expiry = (datetime.now(UTC) + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = json.dumps({"AccessKeyId": f"ASIACONTAINER{len(server.calls)}",
                                   "SecretAccessKey": "s", "Token": "t",
                                   "Expiration": expiry}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/credentials"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_container_credentials_refreshed_before_expiry(no_env_keys, monkeypatch):
    endpoint = ContainerCredentials(lifetime=timedelta(minutes=5))  # inside botocore's window
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-identity-token")
    try:
        source = aws.CredentialSource(aws.new_session())
        first = source.frozen().access_key
        second = source.frozen().access_key
    finally:
        endpoint.stop()
    # Each use of credentials within botocore's refresh window fetches fresh ones.
    assert first != second and second == f"ASIACONTAINER{len(endpoint.calls)}"
    assert endpoint.calls[0] == "pod-identity-token"


def test_no_credentials_is_an_error_with_a_reason(no_env_keys):
    source = aws.CredentialSource(aws.new_session())
    with pytest.raises(aws.CredentialsError) as err:
        source.frozen()
    assert "Unable to retrieve credentials: no credentials found" in str(err.value)


def test_daemon_starts_without_credentials_and_logs_rate_limited(start_xrayd, moto):
    port = free_udp_tcp_port()
    daemon = start_xrayd(["-b", f"127.0.0.1:{port}", "-t", f"127.0.0.1:{port}", "-l", "debug",
                          "--endpoint", moto.url],
                         env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    doc = ('{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"%016x",'
           '"start_time":1.0,"end_time":2.0,"name":"n"}')
    for i in range(5):
        send_udp(port, datagram(doc % i))
        wait_until(lambda: "Unable to retrieve credentials" in daemon.output)
    wait_until(lambda: daemon.output.count("segment batch size") >= 2)
    errors = [line for line in daemon.output.splitlines()
              if "Unable to retrieve credentials" in line and "[Error]" in line]
    assert len(errors) == 1, errors  # one line per 10 s, not one per batch
    assert daemon.proc.poll() is None


def test_a_failed_source_is_asked_again_only_after_a_pause(no_env_keys, monkeypatch, tmp_path):
    clock = [0.0]
    source = aws.CredentialSource(aws.new_session(), clock=lambda: clock[0])
    with pytest.raises(aws.CredentialsError):
        source.frozen()
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = AKIDLATER\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    clock[0] = aws.CREDENTIALS_RETRY_SECONDS / 2
    with pytest.raises(aws.CredentialsError):  # not asked again yet
        source.frozen()
    clock[0] = aws.CREDENTIALS_RETRY_SECONDS + 0.1
    assert source.frozen().access_key == "AKIDLATER"  # credentials that appear later are used
