"""The settings that decide how execq reaches Redis and what it opens: no services needed."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from workers.settings import SettingsError, load_settings, redact_url, without_credentials


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for name in (
        "REDIS_URL",
        "EXECQ_REDIS_URL",
        "EXECQ_REDIS_PASSWORD_FILE",
        "EXECQ_REDIS_TLS_CA_FILE",
        "EXECQ_REDIS_TLS_CERT_FILE",
        "EXECQ_REDIS_TLS_KEY_FILE",
        "EXECQ_METRICS_HOST",
        "DATABASE_URL",
        "EXECQ_DATABASE_URL",
        "EXECQ_DATABASE_PASSWORD_FILE",
        "EXECQ_ACCOUNTS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch.setenv


def test_the_redis_password_file_goes_into_the_url_quoted(env, tmp_path: Path):
    (tmp_path / "pw").write_text("p@ss/w rd:\n")
    env("REDIS_URL", "rediss://execq@redis:6379/0")
    env("EXECQ_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))

    settings = load_settings()

    assert settings.redis_url == "rediss://execq:p%40ss%2Fw%20rd%3A@redis:6379/0"
    assert redact_url(settings.redis_url) == "rediss://execq:***@redis:6379/0"
    assert without_credentials(settings.redis_url) == "rediss://redis:6379/0"


def test_the_database_password_file_goes_into_the_url(env, tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret pw\n")
    env("DATABASE_URL", "postgresql://execq@postgres:5432/execq")
    env("EXECQ_DATABASE_PASSWORD_FILE", str(tmp_path / "pw"))

    settings = load_settings()

    assert settings.database_url == "postgresql+psycopg://execq:s3cret%20pw@postgres:5432/execq"


def test_a_password_in_both_the_url_and_a_file_is_refused(env, tmp_path: Path):
    (tmp_path / "pw").write_text("one")
    env("REDIS_URL", "redis://:two@redis:6379/0")
    env("EXECQ_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(SettingsError, match="REDIS_URL.*EXECQ_REDIS_PASSWORD_FILE is set"):
        load_settings()


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_password_file_is_refused(env, tmp_path: Path, content: str):
    (tmp_path / "pw").write_text(content)
    env("REDIS_URL", "rediss://redis:6379/0")
    env("EXECQ_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(SettingsError, match="is empty"):
        load_settings()


def test_rediss_always_verifies_the_server_and_redis_does_not_use_tls(env, tmp_path: Path):
    env("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings().redis_tls is None

    env("REDIS_URL", "rediss://redis:6379/0")
    assert load_settings().redis_tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED}

    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("pem")
    env("EXECQ_REDIS_TLS_CA_FILE", str(tmp_path / "ca.crt"))
    env("EXECQ_REDIS_TLS_CERT_FILE", str(tmp_path / "client.crt"))
    env("EXECQ_REDIS_TLS_KEY_FILE", str(tmp_path / "client.key"))
    assert load_settings().redis_tls == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(tmp_path / "ca.crt"),
        "ssl_certfile": str(tmp_path / "client.crt"),
        "ssl_keyfile": str(tmp_path / "client.key"),
    }


def test_tls_files_must_exist_and_a_client_cert_needs_its_key(env, tmp_path: Path):
    env("REDIS_URL", "rediss://redis:6379/0")
    env("EXECQ_REDIS_TLS_CA_FILE", str(tmp_path / "missing.crt"))
    with pytest.raises(SettingsError, match="EXECQ_REDIS_TLS_CA_FILE: .*no such file"):
        load_settings()

    (tmp_path / "client.crt").write_text("pem")
    env("EXECQ_REDIS_TLS_CA_FILE", str(tmp_path / "client.crt"))
    env("EXECQ_REDIS_TLS_CERT_FILE", str(tmp_path / "client.crt"))
    with pytest.raises(SettingsError, match="go together"):
        load_settings()


def test_the_metrics_endpoint_listens_on_loopback_unless_told(env):
    assert load_settings().metrics_host == "127.0.0.1"
    env("EXECQ_METRICS_HOST", "0.0.0.0")
    assert load_settings().metrics_host == "0.0.0.0"
    env("EXECQ_METRICS_HOST", "everywhere")
    with pytest.raises(SettingsError, match="EXECQ_METRICS_HOST"):
        load_settings()


def test_an_empty_variable_means_the_default(env):
    # compose passes ${EXECQ_ACCOUNTS:-} as an empty string when the operator set nothing
    env("EXECQ_ACCOUNTS", "")
    assert [account.name for account in load_settings().accounts] == ["binance", "bybit", "okx"]


def test_a_variable_that_is_not_json_is_named_in_one_line(env):
    env("EXECQ_ACCOUNTS", "[{")
    with pytest.raises(SettingsError, match="^invalid setting EXECQ_ACCOUNTS: not valid JSON$"):
        load_settings()


API_KEY = "k" * 32


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ([{"name": "a", "scopes": ["signal"]}], "exactly one of key, key_sha256, key_file"),
        (
            [{"name": "a", "key": API_KEY, "key_sha256": "0" * 64, "scopes": ["signal"]}],
            "exactly one of key, key_sha256, key_file",
        ),
        ([{"name": "a", "key": "short", "scopes": ["signal"]}], "shorter than 24"),
        ([{"name": "a", "key": API_KEY, "scopes": ["admin"]}], "EXECQ_API_KEYS"),
        ([{"name": "a", "key": API_KEY, "scopes": []}], "EXECQ_API_KEYS"),
        (
            [{"name": "a", "key": API_KEY, "scopes": ["read"]}] * 2,
            "duplicate key names",
        ),
    ],
)
def test_a_malformed_api_key_is_refused_in_one_line(env, keys, says):
    env("EXECQ_API_KEYS", json.dumps(keys))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert says in str(refused.value)
    assert API_KEY not in str(refused.value)


def test_an_api_key_file_is_read_by_the_key_ring_and_a_missing_one_is_one_line(env, tmp_path: Path):
    from workers.api.auth import KeyRing

    key_file = tmp_path / "bot_key"
    key_file.write_text(API_KEY + "\n")
    env(
        "EXECQ_API_KEYS",
        json.dumps([{"name": "bot", "key_file": str(key_file), "scopes": ["signal"]}]),
    )
    ring = KeyRing.from_settings(load_settings())
    assert ring.by_key(API_KEY).name == "bot"
    key_file.unlink()
    with pytest.raises(SettingsError) as refused:
        KeyRing.from_settings(load_settings())
    assert "bot" in str(refused.value) and "cannot read" in str(refused.value)
