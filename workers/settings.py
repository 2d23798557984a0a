"""Typed settings, read once per process from the environment.

Every variable is documented in the README's configuration table. Names:
``REDIS_URL`` and ``DATABASE_URL`` as-is; everything else under ``EXECQ_``,
nested fields separated by ``__`` (``EXECQ_RETRY__RATE_LIMITED__ATTEMPTS=7``).

Secrets (exchange keys) are ``SecretStr``: their repr is ``**********`` and
they only leave this module through ``ExchangeAccount.credentials()``, which
the exchange gateway alone calls.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

CcxtClass = Literal["binanceusdm", "bybit", "okx"]
AccountMode = Literal["sim", "demo", "testnet", "live"]


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class ExchangeAccount(BaseModel):
    """One trading account on one exchange.

    ``api_key``/``secret`` may be given inline or as ``api_key_file``/``secret_file``
    (Docker/Kubernetes secrets). In ``sim`` mode placeholder keys are used when
    none are given, because the simulator only checks that they are present.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    ccxt_class: CcxtClass
    mode: AccountMode = "sim"
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    api_key_file: Path | None = None
    secret_file: Path | None = None
    # A third credential some exchanges ask for with the key (an API passphrase).
    passphrase: SecretStr | None = None
    passphrase_file: Path | None = None

    @model_validator(mode="after")
    def _keys_present(self) -> ExchangeAccount:
        if self.mode == "sim":
            return self
        key = self.api_key or self.api_key_file
        secret = self.secret or self.secret_file
        if key is None or secret is None:
            raise ValueError(
                f"account {self.name!r} in mode {self.mode!r} needs api_key (or api_key_file) "
                "and secret (or secret_file)"
            )
        return self

    def credentials(self) -> tuple[str, str]:
        """The plain key and secret; only the exchange gateway should call this."""
        return _read_secret(self.api_key, self.api_key_file, "sim-key"), _read_secret(
            self.secret, self.secret_file, "sim-secret"
        )

    def passphrase_value(self) -> str | None:
        """The plain passphrase, when the account has one; only the gateway should call this."""
        if self.passphrase is None and self.passphrase_file is None:
            return "sim-passphrase" if self.mode == "sim" else None
        return _read_secret(self.passphrase, self.passphrase_file, "sim-passphrase")


def _read_secret(inline: SecretStr | None, path: Path | None, sim_default: str) -> str:
    if inline is not None:
        return inline.get_secret_value()
    if path is not None:
        return path.read_text().strip()
    return sim_default


def _default_accounts() -> list[ExchangeAccount]:
    return [
        ExchangeAccount(name="binance", ccxt_class="binanceusdm", mode="sim"),
        ExchangeAccount(name="bybit", ccxt_class="bybit", mode="sim"),
        ExchangeAccount(name="okx", ccxt_class="okx", mode="sim"),
    ]


ApiScope = Literal["signal", "read", "operate"]
# At least 128 bits of a random key written as text; a shorter one is guessable.
MIN_API_KEY_CHARS = 24


class ApiKeySettings(BaseModel):
    """One producer's (or operator's) key to the HTTP API (``EXECQ_API_KEYS``).

    Exactly one of ``key`` (the key itself), ``key_sha256`` (only its SHA-256, hex: the
    configuration then holds nothing that opens the API) or ``key_file`` (a Docker or
    Kubernetes secret holding the key). ``scopes``: ``signal`` sends signals, ``read``
    reads their state, ``operate`` is for the operator's actions. ``webhook_secret``
    (or ``webhook_secret_file``), a Standard Webhooks secret ``whsec_<base64>``, lets
    the producer sign requests instead of sending the key. ``symbols`` maps
    TradingView tickers to execq's symbols where the documented rule does not.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key_file: Path | None = None
    scopes: frozenset[ApiScope] = Field(min_length=1)
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    symbols: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeySettings:
        given = [self.key is not None, self.key_sha256 is not None, self.key_file is not None]
        if sum(given) != 1:
            raise ValueError(
                f"API key {self.name!r} needs exactly one of key, key_sha256, key_file"
            )
        if self.key is not None and len(self.key.get_secret_value()) < MIN_API_KEY_CHARS:
            raise ValueError(
                f"API key {self.name!r} is shorter than {MIN_API_KEY_CHARS} characters; "
                "use a random one (openssl rand -hex 32)"
            )
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError(
                f"API key {self.name!r}: webhook_secret or webhook_secret_file, not both"
            )
        return self

    def key_text(self) -> str | None:
        """The key itself (from ``key`` or ``key_file``); None when only its hash is known.
        Only the API's key ring should call this."""
        if self.key_file is not None:
            return _read_secret_file(self.key_file, f"EXECQ_API_KEYS ({self.name}: key_file)")
        return None if self.key is None else self.key.get_secret_value()

    def webhook_secret_text(self) -> str | None:
        """The Standard Webhooks secret, when the key has one; only the key ring should call this."""
        if self.webhook_secret_file is not None:
            return _read_secret_file(
                self.webhook_secret_file, f"EXECQ_API_KEYS ({self.name}: webhook_secret_file)"
            )
        return None if self.webhook_secret is None else self.webhook_secret.get_secret_value()


class RetryClassSettings(BaseModel):
    """One retry class: how many attempts in all, and the exponential wait bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(ge=1, le=20)
    base_s: float = Field(ge=0, le=60)
    cap_s: float = Field(ge=0, le=600)


_RETRY_CLASS_DEFAULTS: dict[str, dict[str, float]] = {
    "rate_limited": {"attempts": 5, "base_s": 2, "cap_s": 60},
    "transient": {"attempts": 3, "base_s": 1, "cap_s": 10},
    "unknown": {"attempts": 2, "base_s": 0.5, "cap_s": 5},
}


class RetrySettings(BaseModel):
    """Seed 000's numbers are the defaults; permanent errors are never retried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_limited: RetryClassSettings = RetryClassSettings(**_RETRY_CLASS_DEFAULTS["rate_limited"])
    transient: RetryClassSettings = RetryClassSettings(**_RETRY_CLASS_DEFAULTS["transient"])
    unknown: RetryClassSettings = RetryClassSettings(**_RETRY_CLASS_DEFAULTS["unknown"])

    @model_validator(mode="before")
    @classmethod
    def _override_per_field(cls, data: object) -> object:
        # EXECQ_RETRY__TRANSIENT__BASE_S alone must keep that class's other defaults.
        if isinstance(data, dict):
            data = dict(data)
            for name, defaults in _RETRY_CLASS_DEFAULTS.items():
                if isinstance(data.get(name), dict):
                    data[name] = {**defaults, **data[name]}
        return data

    # Lookups of an order after an ambiguous create: Binance may hide a fresh
    # order for seconds, so the window must outlast that lag (seed 003: 0.5 s x 1.5^n).
    lookup_attempts: int = Field(default=6, ge=1, le=20)
    lookup_base_s: float = Field(default=0.5, ge=0, le=10)
    lookup_factor: float = Field(default=1.5, ge=1, le=4)


class AgedSettings(BaseModel):
    """Aged-position policy. Durations in seconds so tests and the demo can compress time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_age_s: float = Field(default=3 * 3600, gt=0)
    grace_period_s: float = Field(default=8 * 3600, ge=0)
    loss_step_percent: Decimal = Field(default=Decimal("0.5"), ge=0)
    # The "hour" of "loss step per hour"; compressible like every other duration.
    loss_step_interval_s: float = Field(default=3600, gt=0)
    max_loss_percent: Decimal = Field(default=Decimal("10"), ge=0, le=100)
    commission_percent: Decimal = Field(default=Decimal("0.1"), ge=0, le=5)
    # The policy after failed closes (workers.execution.aged_close, docs/aged.md):
    # counts of consecutive failed close attempts of one episode.
    failures_before_alert: int = Field(default=3, ge=1)
    failures_before_chunks: int = Field(default=3, ge=1)
    failures_before_widen: int = Field(default=6, ge=1)
    # 0: never give up. Each failure is spaced by the backoff, so the default
    # gives up after about 15 minutes of refused closes.
    failures_before_give_up: int = Field(default=20, ge=0)
    chunk_count: int = Field(default=3, ge=2, le=20)
    tolerance_widen_step_percent: Decimal = Field(default=Decimal("2"), ge=0)
    tolerance_widen_cap_percent: Decimal = Field(default=Decimal("20"), ge=0, le=100)
    # After the n-th failure the next close waits base * 2^(n-1), at most the cap.
    close_backoff_base_s: float = Field(default=1.0, ge=0)
    close_backoff_cap_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> AgedSettings:
        if self.close_backoff_cap_s < self.close_backoff_base_s:
            raise ValueError(
                "EXECQ_AGED__CLOSE_BACKOFF_CAP_S must not be below EXECQ_AGED__CLOSE_BACKOFF_BASE_S"
            )
        return self


class StreamSettings(BaseModel):
    """The WebSocket streams (``execq streams``) and how the rest of execq leans on them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A stream with no message for this long is stale: consumers poll again and
    # the holder raises a warning alert, until it delivers again.
    stale_after_s: float = Field(default=10.0, gt=0)
    # How long an order run waits for the stream's word on a create whose answer
    # carries no fill (Bybit) before it asks the exchange by REST.
    fill_wait_s: float = Field(default=1.0, ge=0, le=30)
    # Reconnects wait base * 2^(n-1), at most the cap, with jitter.
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)
    # One holder per account across the cluster: a Redis lease renewed every third
    # of this; a standby takes over this long after the holder dies.
    lease_ttl_s: float = Field(default=10.0, ge=2, le=600)
    # How often the holder re-reads which symbols to watch prices for and the
    # aged targets they are compared with.
    targets_refresh_s: float = Field(default=1.0, gt=0, le=60)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXECQ_",
        env_nested_delimiter="__",
        # An empty variable is an unset one: compose's ``${EXECQ_ACCOUNTS:-}`` means the default.
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    # Read before ``redis_url``, whose validator puts the password into the URL.
    # A file (a Docker or Kubernetes secret) keeps the password out of the
    # environment, which ``docker inspect`` and /proc show.
    redis_password_file: Path | None = None
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "EXECQ_REDIS_URL"),
    )
    # TLS to Redis, for rediss:// URLs: the server's certificate is always verified,
    # against this CA bundle (the system's when unset). A client certificate and
    # key only for a server that asks for one (redis.conf ``tls-auth-clients``).
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Like the Redis password: read before ``database_url``, which it goes into.
    database_password_file: Path | None = None
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/execq",
        validation_alias=AliasChoices("DATABASE_URL", "EXECQ_DATABASE_URL"),
    )
    sim_url: str = "http://127.0.0.1:8765"
    # The simulator's WebSocket port (``exchange_sim --ws-port``), for sim-mode streams.
    sim_ws_url: str = "ws://127.0.0.1:8766"
    accounts: list[ExchangeAccount] = Field(default_factory=_default_accounts)

    # Task time limits and the broker visibility timeout belong together: the
    # visibility timeout must outlast the hard limit, or the broker redelivers a
    # task that is still running.
    task_soft_time_limit_s: int = Field(default=60, ge=5)
    task_hard_time_limit_s: int = Field(default=90, ge=10)
    visibility_timeout_s: int = Field(default=300, ge=15)
    worker_concurrency: int = Field(default=32, ge=1, le=512)
    exchange_timeout_ms: int = Field(default=10_000, ge=100)

    aged: AgedSettings = AgedSettings()
    retry: RetrySettings = RetrySettings()
    streams: StreamSettings = StreamSettings()

    aged_sweep_interval_s: float = Field(default=2.0, gt=0)
    # Beat holds a Redis lock renewed every second; a standby beat takes over
    # this long after the active one dies.
    beat_lock_timeout_s: int = Field(default=10, ge=3, le=600)
    recovery_sweep_interval_s: float = Field(default=60.0, gt=0)
    # An order in submitting/unknown younger than this is still being worked on.
    recovery_stuck_after_s: float = Field(default=30.0, ge=0)
    recover_on_worker_start: bool = True
    # An order the exchange never got, or a recorded signal no worker got, is
    # sent again by the recovery sweep only while the signal is this fresh; an
    # older one is rejected as stale.
    recovery_resubmit_max_age_s: float = Field(default=300.0, ge=0)
    # An order whose create may have executed but that no lookup found is looked for
    # by the recovery sweep this long after its last send, then recorded as rejected
    # (not found) with a critical alert. Never resent where a resend could double it.
    unknown_give_up_s: float = Field(default=3600.0, ge=0)
    # At most this many creates of one order reach the exchange (resends where they
    # cannot double it: reduce-only orders, exchanges that refuse a reused client id).
    order_max_sends: int = Field(default=6, ge=1, le=50)
    # Every create is signed valid for at most this long (the exchange's recvWindow),
    # and never past the run's lease on the order minus the clock skew allowed between
    # this host and the exchange: a paused worker's late request is refused.
    recv_window_ms: int = Field(default=5000, ge=1000, le=60000)
    clock_skew_ms: int = Field(default=1000, ge=0, le=30000)
    # Resting and unknown orders are followed by this sweep (fills, cancels, expiry).
    tracking_sweep_interval_s: float = Field(default=5.0, gt=0)
    verify_budget_s: float = Field(default=10.0, gt=0)
    flat_check_attempts: int = Field(default=10, ge=1)
    flat_check_budget_s: float = Field(default=10.0, gt=0)
    position_cache_ttl_s: int = Field(default=15, ge=1)
    position_lock_ttl_s: int = Field(default=180, ge=1)
    conflict_tolerance_percent: Decimal = Field(default=Decimal("1"), ge=0)
    # Shared per-account request budget (weight units per second). Unset: 20/s
    # for real exchanges (well inside Binance's 2,400 weight/min), 5,000/s for sim.
    rate_limit_per_s: float | None = Field(default=None, gt=0)
    rate_limit_burst: float = Field(default=40, ge=1)

    max_signal_id_length: int = Field(default=64, ge=8, le=256)
    max_metadata_bytes: int = Field(default=4096, ge=0)
    alert_webhook_url: str | None = None
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Loopback by default: the endpoint has no authentication; 0.0.0.0 (or one
    # interface's address) opens it to whoever can reach the host.
    metrics_host: str = "127.0.0.1"
    # The HTTP API (``execq api``, docs/api.md). Keys: a JSON list of ApiKeySettings.
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    # A request body larger than this is refused (413) before it is parsed: a signal
    # is a few hundred bytes, its metadata at most EXECQ_MAX_METADATA_BYTES.
    api_max_body_bytes: int = Field(default=16384, ge=1024, le=1024 * 1024)
    # Requests per second each key may make (GCRA in Redis, shared by every API
    # process), with bursts of up to ``api_rate_limit_burst`` requests.
    api_rate_limit_per_s: float = Field(default=20.0, gt=0)
    api_rate_limit_burst: float = Field(default=40.0, ge=1)
    # A TradingView alert whose ``timestamp`` is further than this from now is refused
    # as stale (a replay, or a queue that held it): TradingView retries within seconds.
    api_tradingview_max_lag_s: float = Field(default=300.0, gt=0)
    # A Standard Webhooks ``webhook-timestamp`` further than this from now is refused
    # (the scheme's recommended five minutes), which bounds a replay of a signed request.
    api_signature_tolerance_s: float = Field(default=300.0, gt=0)
    # The operator's console (/console): a login lasts this long from the moment it was
    # made; its pages refresh every ``console_refresh_s``. Its cookie is marked Secure
    # when the request came over HTTPS, and always with ``console_secure_cookie`` (set it
    # behind a TLS proxy, which hands the API plain HTTP).
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    console_refresh_s: float = Field(default=5.0, ge=0.5, le=300)
    console_secure_cookie: bool = False
    # Register the benchmark's reference tasks (``execq bench`` sets it for its own
    # workers); a production worker does not know them.
    harness_tasks: bool = False

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: str, info: ValidationInfo) -> str:
        scheme = urlsplit(value).scheme
        if not scheme.startswith("postgresql"):
            raise ValueError("must be a postgresql:// URL")
        if scheme in ("postgresql", "postgres"):
            value = "postgresql+psycopg" + value[len(scheme) :]
        return _with_password_from(
            value, info.data.get("database_password_file"), "EXECQ_DATABASE_PASSWORD_FILE"
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_redis(cls, value: str, info: ValidationInfo) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return _with_password_from(
            value, info.data.get("redis_password_file"), "EXECQ_REDIS_PASSWORD_FILE"
        )

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _tls_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("metrics_host")
    @classmethod
    def _metrics_host_is_an_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from None
        return value

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts_from_json(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys_from_json(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.task_hard_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError(
                "EXECQ_TASK_HARD_TIME_LIMIT_S must be greater than EXECQ_TASK_SOFT_TIME_LIMIT_S"
            )
        if self.visibility_timeout_s <= self.task_hard_time_limit_s:
            raise ValueError(
                "EXECQ_VISIBILITY_TIMEOUT_S must be greater than EXECQ_TASK_HARD_TIME_LIMIT_S"
            )
        names = [account.name for account in self.accounts]
        if len(names) != len(set(names)):
            raise ValueError("EXECQ_ACCOUNTS has duplicate account names")
        key_names = [key.name for key in self.api_keys]
        if len(key_names) != len(set(key_names)):
            raise ValueError("EXECQ_API_KEYS has duplicate key names")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("EXECQ_REDIS_TLS_CERT_FILE and EXECQ_REDIS_TLS_KEY_FILE go together")
        return self

    def account(self, name: str) -> ExchangeAccount:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)

    @property
    def run_budget_s(self) -> float:
        """How long one task run may work before it requeues itself: well inside the soft limit."""
        return self.task_soft_time_limit_s * 0.6

    @property
    def aged_sweep_lock_ttl_s(self) -> float:
        """The aged sweep's lock lives 1.5 intervals and is renewed every half interval
        while the sweep runs, so a worker killed mid-sweep holds the sweeps up for at
        most 1.5 intervals (the next beat-sent sweep runs at most an interval later)."""
        return max(1.5 * self.aged_sweep_interval_s, 1.0)

    @property
    def order_lock_ttl_s(self) -> float:
        """A run holds its order lock at most its budget plus one exchange call in flight.

        Short on purpose: a SIGKILLed worker's lock must expire soon, so the
        recovery sweep can take over its order.
        """
        return self.run_budget_s + self.exchange_timeout_ms / 1000 + 5

    @property
    def redis_tls(self) -> dict[str, Any] | None:
        """redis-py's TLS keywords for a ``rediss://`` REDIS_URL; None for ``redis://``.

        The same dictionary serves Celery's ``broker_use_ssl`` and
        ``redis_backend_use_ssl``, RedBeat and execq's own client: every
        connection to Redis verifies the server's certificate (and its host name).
        """
        if urlsplit(self.redis_url).scheme != "rediss":
            return None
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.redis_tls_ca_file is not None:
            options["ssl_ca_certs"] = str(self.redis_tls_ca_file)
        if self.redis_tls_cert_file is not None and self.redis_tls_key_file is not None:
            options["ssl_certfile"] = str(self.redis_tls_cert_file)
            options["ssl_keyfile"] = str(self.redis_tls_key_file)
        return options

    def rate_limit_for(self, account: ExchangeAccount) -> float:
        if self.rate_limit_per_s is not None:
            return self.rate_limit_per_s
        return 5000.0 if account.mode == "sim" else 20.0


def _with_password_from(url: str, password_file: Path | None, variable: str) -> str:
    """``url`` with the password read from ``password_file`` (a secret) put into it."""
    if password_file is None:
        return url
    parts = urlsplit(url)
    if parts.password:
        raise ValueError(f"has a password and {variable} is set: use one")
    password = quote(_read_secret_file(password_file, variable), safe="")
    user = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _read_secret_file(path: Path, variable: str) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"{variable}: {path} is empty")
    return secret


def without_credentials(url: str) -> str:
    """``url`` without its user name and password (for settings Celery may show)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _variable_name(loc: tuple[object, ...]) -> str:
    head = str(loc[0]).upper() if loc else "?"
    if head in ("REDIS_URL", "DATABASE_URL", "EXECQ_REDIS_URL", "EXECQ_DATABASE_URL"):
        return head
    return "EXECQ_" + "__".join(str(part).upper() for part in loc if not isinstance(part, int))


def load_settings() -> Settings:
    """Read the environment; raise SettingsError naming the first bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = _variable_name(tuple(error.get("loc", ())))
        message = error.get("msg", "invalid")
        if not error.get("loc"):
            raise SettingsError(f"invalid settings: {message}") from None
        raise SettingsError(f"invalid setting {variable}: {message}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"invalid setting EXECQ_ACCOUNTS: not JSON ({exc.msg})") from None
    except SourceError as exc:
        # pydantic-settings could not decode a variable that holds JSON (accounts, retry...).
        field = re.search(r'field "(\w+)"', str(exc))
        variable = _variable_name((field.group(1),)) if field else "EXECQ_*"
        raise SettingsError(f"invalid setting {variable}: not valid JSON") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
