"""The deployment files: compose.yaml read as Compose would (no Docker engine needed),
the secrets script's output used by a real TLS Redis, and secrets kept out of git and images."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port, wait_for

TRADING = {"worker", "streams"}
# The API checks a signal's account against the configured names; it holds no exchange key.
KNOWS_ACCOUNTS = TRADING | {"api"}
USES_POSTGRES = {"worker", "migrate", "api", "streams"}
USES_REDIS = {"worker", "beat", "flower", "api", "streams"}
EXECQ_SERVICES = {"exchange-sim", "migrate", "worker", "beat", "flower", "api", "streams"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so merges stay readable"
    return {name: str(value) for name, value in env.items()}


def test_each_service_gets_only_the_settings_it_uses(compose):
    services = compose["services"]
    assert EXECQ_SERVICES <= services.keys()
    for name in EXECQ_SERVICES:
        env, secrets = environment(services[name]), set(services[name].get("secrets", []))
        # Exchange accounts only where orders are sent or checked
        assert ("EXECQ_ACCOUNTS" in env) == (name in KNOWS_ACCOUNTS), name
        # Postgres's password only where Postgres is used
        assert ("DATABASE_URL" in env) == (name in USES_POSTGRES), name
        assert ("postgres_password" in secrets) == (name in USES_POSTGRES), name
        # Redis's password only where Redis is used, over TLS, the password from a file
        assert ("redis_password" in secrets) == (name in USES_REDIS), name
        if name in USES_REDIS:
            assert env["REDIS_URL"].startswith("rediss://"), name
            assert env["EXECQ_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
            assert env["EXECQ_REDIS_TLS_CA_FILE"] == "/run/secrets/redis_ca"
        else:
            assert "REDIS_URL" not in env, name
        # and no password travels in a URL or an interpolated variable
        for variable, value in env.items():
            assert not re.search(r"://[^/@]*:[^/@]+@", value), (name, variable)
            if variable != "FLOWER_BASIC_AUTH":
                assert "PASSWORD" not in value, (name, variable)
    assert services["exchange-sim"].get("secrets") is None
    assert services["exchange-sim"]["profiles"] == ["sim"]


def test_redis_speaks_tls_only_with_a_password_from_its_secret(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    for flag in ("--port 0", "--tls-port 6379", "--tls-cert-file /run/secrets/redis_cert"):
        assert flag in command
    assert '--requirepass "$$(cat /run/secrets/redis_password)"' in command
    assert set(redis["secrets"]) == {"redis_password", "redis_cert", "redis_key", "redis_ca"}
    assert "ports" not in redis, "Redis is reachable from the compose network only"
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "ports" not in postgres


def test_secrets_are_files_under_deploy_secrets_and_published_ports_are_loopback(compose):
    for name, secret in compose["secrets"].items():
        assert secret["file"].startswith("./deploy/secrets/"), name
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], (name, secret)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_third_party_images_are_pinned_to_an_exact_version(compose):
    for name in ("redis", "postgres"):
        image = compose["services"][name]["image"]
        match = re.fullmatch(r"\$\{(\w+)_IMAGE:-([\w./-]+):(\d+\.\d+(?:\.\d+)?)-alpine\}", image)
        assert match, f"{name}: {image}"


def test_env_files_and_secrets_stay_out_of_git_and_of_the_image():
    for path in (".env", ".env.production", "deploy/secrets/redis_password"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"git would commit {path}"
    patterns = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".env", ".env.*", "deploy/secrets"):
        assert pattern in patterns, f"docker build would copy {pattern}"


def test_the_secrets_script_makes_what_a_tls_redis_and_execq_need(tmp_path: Path):
    # Given the secrets made by the script
    secrets = tmp_path / "secrets"
    made = subprocess.run(
        [str(ROOT / "deploy" / "make-secrets.sh"), str(secrets)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    password = (secrets / "redis_password").read_text().strip()
    assert len(password) == 64

    # When Redis runs with them as compose runs it
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(secrets / "redis.crt"),
            "--tls-key-file", str(secrets / "redis.key"),
            "--tls-ca-cert-file", str(secrets / "redis-ca.crt"),
            "--tls-auth-clients", "no", "--requirepass", password,
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        env = {
            **os.environ,
            "REDIS_URL": f"rediss://localhost:{port}/0",
            "EXECQ_REDIS_PASSWORD_FILE": str(secrets / "redis_password"),
            "EXECQ_REDIS_TLS_CA_FILE": str(secrets / "redis-ca.crt"),
        }
        ping = "from workers.redis_client import get_redis; print(get_redis().ping())"

        def answers() -> bool:
            assert server.poll() is None, "redis-server exited"
            result = subprocess.run(
                [sys.executable, "-c", ping], cwd=ROOT, env=env, capture_output=True, text=True
            )
            return result.stdout.strip() == "True"

        # Then execq reaches it, verifying its certificate and host name
        wait_for(answers, 30, interval_s=0.5, message="execq could not reach the TLS Redis")
    finally:
        server.terminate()
        server.wait(timeout=20)

    # and running the script again keeps every secret it made
    again = subprocess.run([str(ROOT / "deploy" / "make-secrets.sh"), str(secrets)])
    assert again.returncode == 0
    assert (secrets / "redis_password").read_text().strip() == password
