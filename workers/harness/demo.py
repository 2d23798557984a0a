"""``execq demo``: the whole system end to end, with time compressed to seconds.

What it does, in order (docs/demo.md has the narrative):

1. **Services.** A private ``redis-server`` of the demo's own (or an empty
   Redis database given with ``--redis-url``), and a database of its own on the
   PostgreSQL server at ``DATABASE_URL`` (``execq_demo`` unless ``--database``
   says otherwise; dropped and recreated at the start, dropped at the end unless
   the stack is kept running); a private PostgreSQL from the binaries on the PATH
   when that server does not answer (``workers.harness.services``). The demo
   never touches the user's data.
2. **Processes.** Simulator, two workers, beat, Flower, the HTTP API and the stream
   holder (``workers.harness.stack``)
   with compressed durations: aged after a few seconds, progressive loss steps
   every 2 s, sweeps every 1 s / 5 s. The simulator's and Flower's ports are free
   ones unless ``--sim-port`` / ``--flower-port`` fix them.
3. **Scenario.** Opens on all three exchanges under injected timeouts, rate limits,
   5xx and visibility lag; a redelivered signal; a refused bad signal; aged
   closes in grace and progressive phases driven by price moves; a close that
   needs the chunk fallback; a close triggered by a price the exchange pushed; a worker SIGKILLed with an order in flight and
   the recovery sweep repairing it; the kill switch refusing an open; an
   emergency liquidation leaving everything flat.
4. **Summary.** Every figure is read back from Postgres and the simulator's
   ledger (``workers.harness.audit`` and SQL), never counted in memory; then the
   checks. Exit 0 when all hold, 1 when one fails, 2 when the demo could not
   run (services, processes).

Nothing that reads settings is imported at module level: ``run_demo`` first
puts the demo's own environment in ``os.environ`` (settings are read once per
process), then imports the app.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import psycopg
import redis
import requests
from psycopg import sql

from workers.execution.client_ids import client_order_id
from workers.harness.bench import RedisNotEmpty, require_empty
from workers.harness.compressed import FAST_RETRY_ENV
from workers.harness.polling import wait_for
from workers.harness.services import (
    Services,
    ServicesUnavailable,
    ensure_services,
    libpq_url,
)
from workers.harness.sim_client import SimulatorClient, SimulatorError, exchange_client_id
from workers.harness.stack import Stack, StackError
from workers.settings import redact_url

T = TypeVar("T")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CANNOT_RUN = 2

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/execq"
DEFAULT_DEMO_DATABASE = "execq_demo"

WORKERS = ("demo1", "demo2")
# The price move that keeps a position away from any aged target: beyond the
# demo's 2 % maximum loss tolerance plus commission.
HOLD_MOVE = Decimal("0.05")
# The price move that puts a long past its grace (breakeven + commission) target.
PROFIT_MOVE = Decimal("0.01")


# --- the scenario's shape -------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One opening signal. ``role`` says what the scenario does with its position later."""

    key: str
    account: str
    symbol: str
    side: str
    amount: str
    role: str  # grace | chunk | progressive | stream | hold


@dataclass(frozen=True)
class Profile:
    """How long and how big the run is; ``short`` is the test suite's form."""

    name: str
    legs: tuple[Leg, ...]
    max_age_s: float
    grace_s: float
    loss_step_interval_s: float
    duplicate_of: str

    @property
    def by_role(self) -> dict[str, Leg]:
        return {leg.role: leg for leg in self.legs if leg.role != "hold"}


BTC, ETH, SOL, XRP, DOGE = (f"{base}/USDT:USDT" for base in ("BTC", "ETH", "SOL", "XRP", "DOGE"))

_CORE_LEGS = (
    # 0.015 BTC closes in three chunks of 0.005 (the minimum, step 0.001).
    Leg("bn-btc", "binance", BTC, "buy", "0.015", "chunk"),
    # OKX counts contracts: 0.5 ETH is 5 contracts of 0.1 ETH, and so is its close.
    Leg("ok-eth", "okx", ETH, "buy", "0.5", "grace"),
    # Closed by a price the exchange pushes, not by a sweep.
    Leg("bn-xrp", "binance", XRP, "buy", "100", "stream"),
    Leg("by-sol", "bybit", SOL, "sell", "12", "progressive"),
    Leg("by-doge", "bybit", DOGE, "buy", "500", "hold"),
    Leg("ok-doge", "okx", DOGE, "sell", "400", "hold"),
)
_MORE_LEGS = (
    Leg("bn-sol", "binance", SOL, "sell", "10", "hold"),
    Leg("bn-eth", "binance", ETH, "buy", "0.5", "hold"),
    Leg("by-btc", "bybit", BTC, "sell", "0.01", "hold"),
    Leg("by-eth", "bybit", ETH, "buy", "0.3", "hold"),
    Leg("ok-btc", "okx", BTC, "sell", "0.012", "hold"),
)

PROFILES = {
    # Grace outlasts the opens (up to ~10 s under the injected faults), so the
    # grace-phase close happens in grace whichever open settled first.
    "full": Profile("full", _CORE_LEGS + _MORE_LEGS, 4.0, 12.0, 2.0, "by-eth"),
    "short": Profile("short", _CORE_LEGS, 3.0, 10.0, 2.0, "ok-doge"),
}

# The in-flight order a worker dies with, the open the kill switch refuses, and
# a signal that fails validation (below BTC's 0.005 minimum).
KILL_LEG = Leg("bn-doge", "binance", DOGE, "buy", "200", "killed")
REFUSED_LEG = Leg("by-xrp", "bybit", XRP, "buy", "100", "refused")
BAD_LEG = Leg("bn-btc-tiny", "binance", BTC, "buy", "0.001", "bad")


def demo_env(profile: Profile, redis_url: str, database_url: str) -> dict[str, str]:
    """The settings every demo process runs with (workers, beat, Flower and this one)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        # Always the simulator: whatever accounts the caller configured, the
        # demo must never reach a real exchange.
        "EXECQ_ACCOUNTS": json.dumps(
            [
                {"name": "binance", "ccxt_class": "binanceusdm", "mode": "sim"},
                {"name": "bybit", "ccxt_class": "bybit", "mode": "sim"},
                {"name": "okx", "ccxt_class": "okx", "mode": "sim"},
            ]
        ),
        "EXECQ_AGED__MAX_AGE_S": str(profile.max_age_s),
        "EXECQ_AGED__GRACE_PERIOD_S": str(profile.grace_s),
        "EXECQ_AGED__LOSS_STEP_PERCENT": "0.5",
        "EXECQ_AGED__LOSS_STEP_INTERVAL_S": str(profile.loss_step_interval_s),
        "EXECQ_AGED__MAX_LOSS_PERCENT": "2",
        "EXECQ_AGED__FAILURES_BEFORE_ALERT": "3",
        "EXECQ_AGED__FAILURES_BEFORE_CHUNKS": "3",
        "EXECQ_AGED__CLOSE_BACKOFF_BASE_S": "0.5",
        "EXECQ_AGED_SWEEP_INTERVAL_S": "1",
        "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "5",
        "EXECQ_RECOVERY_STUCK_AFTER_S": "2",
        "EXECQ_UNKNOWN_GIVE_UP_S": "20",
        "EXECQ_TRACKING_SWEEP_INTERVAL_S": "1",
        "EXECQ_RECOVER_ON_WORKER_START": "true",
        # A run's budget is 60 % of the soft limit; the order lock a killed
        # worker leaves behind lives budget + exchange timeout + 5 s (about 14 s).
        "EXECQ_TASK_SOFT_TIME_LIMIT_S": "9",
        "EXECQ_TASK_HARD_TIME_LIMIT_S": "10",
        # Longer than the demo: the killed task's message must not be
        # redelivered, so that it is the recovery sweep that repairs the order.
        "EXECQ_VISIBILITY_TIMEOUT_S": "300",
        "EXECQ_POSITION_LOCK_TTL_S": "30",
        "EXECQ_EXCHANGE_TIMEOUT_MS": "4000",
        # The lookup window after an ambiguous create (0.25 s x 1.5^n, 5 waits:
        # 3.3 s) must fit in one run's deadline (60 % of the soft limit), or
        # the order is requeued before the window ever completes.
        "EXECQ_RETRY__LOOKUP_BASE_S": "0.25",
        "EXECQ_RETRY__LOOKUP_ATTEMPTS": "5",
        **FAST_RETRY_ENV,
        "EXECQ_VERIFY_BUDGET_S": "8",
        "EXECQ_FLAT_CHECK_BUDGET_S": "4",
        "EXECQ_WORKER_CONCURRENCY": "4",
        # Two workers on one host: a fixed metrics port would collide.
        "EXECQ_METRICS_PORT": "0",
        # The HTTP API's key for the signal the demo sends over HTTP (new for every run).
        "EXECQ_API_KEYS": json.dumps(
            [
                {
                    "name": DEMO_API_KEY_NAME,
                    "key": secrets.token_hex(24),
                    "scopes": ["signal", "read"],
                }
            ]
        ),
    }


DEMO_API_KEY_NAME = "demo"


def demo_api_key() -> str:
    """The demo's API key, from the environment ``demo_env`` made."""
    [key] = json.loads(os.environ["EXECQ_API_KEYS"])
    return key["key"]


def opens_fault_plan() -> dict[str, Any]:
    """Faults while the opens run: each kind fires a known number of times."""
    create = {"operation": "create_order"}
    return {
        "seed": 7,
        "rules": [
            {"kind": "latency", "latency_ms": 10, "jitter_ms": 20},
            {"kind": "visibility_lag", "exchange": "binance", "lag_ms": 1500, "count": 2},
            {"kind": "visibility_lag", "exchange": "bybit", "lag_ms": 1000, "count": 1},
            {"kind": "visibility_lag", "exchange": "okx", "lag_ms": 1000, "count": 1},
            # Binance and OKX drop the connection after accepting; Bybit hangs past the
            # client's 4 s timeout: all ambiguous, resolved by lookup (never resent
            # where a finished order's client id can be used again: Binance, OKX).
            {"kind": "timeout_after_accept", "exchange": "binance", "hang_ms": 1200, "count": 1}
            | create,
            {"kind": "timeout_after_accept", "exchange": "bybit", "hang_ms": 4500, "count": 1}
            | create,
            {"kind": "timeout_after_accept", "exchange": "okx", "hang_ms": 1200, "count": 1}
            | create,
            {"kind": "rate_limit", "exchange": "binance", "retry_after_s": 1, "count": 2} | create,
            {"kind": "rate_limit", "exchange": "bybit", "retry_after_s": 1, "count": 1} | create,
            {"kind": "rate_limit", "exchange": "okx", "retry_after_s": 1, "count": 1} | create,
            {"kind": "server_error", "exchange": "bybit", "status": 503, "count": 1} | create,
        ],
    }


# --- where the demo's data lives --------------------------------------------------------------


class DemoError(Exception):
    """The demo cannot run here; the message is one line for the operator."""


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "execq"


def _port(value: str | None, name: str) -> int:
    try:
        port = int(value or 0)
    except ValueError:
        raise DemoError(f"{name} must be a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise DemoError(f"{name} must be a port number, got {value!r}")
    return port


@dataclass(frozen=True)
class DemoTargets:
    """What the demo owns: its database on the configured server, its Redis, its ports.

    ``redis_url`` None: a private ``redis-server``. A port 0 is any free one.
    """

    configured_database_url: str
    database_url: str
    redis_url: str | None = None
    sim_port: int = 0
    flower_port: int = 0

    @property
    def database(self) -> str:
        return _database_name(self.database_url)

    @classmethod
    def from_environment(
        cls,
        database: str | None = None,
        redis_url: str | None = None,
        sim_port: int | None = None,
        flower_port: int | None = None,
    ) -> DemoTargets:
        """The options given, else ``EXECQ_DEMO_DATABASE``, ``EXECQ_DEMO_REDIS_URL``,
        ``EXECQ_DEMO_SIM_PORT``, ``EXECQ_DEMO_FLOWER_PORT``, else the defaults."""
        env = os.environ
        database_url = (
            env.get("DATABASE_URL") or env.get("EXECQ_DATABASE_URL") or DEFAULT_DATABASE_URL
        )
        database = database or env.get("EXECQ_DEMO_DATABASE") or DEFAULT_DEMO_DATABASE
        if database == _database_name(database_url):
            raise DemoError(
                f"the demo database {database!r} is DATABASE_URL's own database; "
                "name another with --database (the demo drops it)"
            )
        return cls(
            configured_database_url=database_url,
            database_url=_with_path(database_url, f"/{database}"),
            redis_url=redis_url or env.get("EXECQ_DEMO_REDIS_URL") or None,
            sim_port=(
                sim_port
                if sim_port is not None
                else _port(env.get("EXECQ_DEMO_SIM_PORT"), "EXECQ_DEMO_SIM_PORT")
            ),
            flower_port=(
                flower_port
                if flower_port is not None
                else _port(env.get("EXECQ_DEMO_FLOWER_PORT"), "EXECQ_DEMO_FLOWER_PORT")
            ),
        )


def drop_demo_database(database_url: str) -> None:
    """Drop the demo database on its server, if the server is reachable.

    Unreachable: ``ensure_services`` decides what to use. Not allowed (no
    access to the maintenance database): the tables are truncated after the
    migration instead.
    """
    admin_url = libpq_url(_with_path(database_url, "/postgres"))
    name = _database_name(database_url)
    try:
        with psycopg.connect(admin_url, connect_timeout=3, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except psycopg.Error:
        return


def flush_redis_db(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def install_environment(env: dict[str, str]) -> None:
    """Make ``env`` this process's settings (and its children's), dropping the caller's ``EXECQ_*``.

    The demo's behaviour must not depend on what the caller happened to export
    (a live account, a fixed metrics port, a test suite's timeouts).
    """
    for key in list(os.environ):
        if (key.startswith("EXECQ_") and not key.startswith("EXECQ_DEMO_")) or key in (
            "PROMETHEUS_MULTIPROC_DIR",
        ):
            del os.environ[key]
    os.environ.update(env)
    if "workers.app" in sys.modules:
        from workers.app import app

        if app.conf.broker_url != env["REDIS_URL"]:
            raise DemoError("workers.app was imported before the demo set its environment")
    from workers import redis_client
    from workers.settings import get_settings
    from workers.store.db import dispose_engine

    get_settings.cache_clear()
    dispose_engine()
    # The per-process Redis client caches its URL; a fresh one reads the new settings.
    redis_client._client = None


def migrate_and_truncate() -> None:
    from workers.store.db import truncate_all
    from workers.store.migrate import run_migrations

    run_migrations()
    truncate_all()


# --- a kept stack: where its processes are, and how to stop it --------------------------------


def state_file(targets: DemoTargets) -> Path:
    """Where a running demo records its processes, per demo database."""
    return Path(tempfile.gettempdir()) / f"execq-demo-{os.getuid()}-{targets.database}.json"


# What the demo's processes run; a recorded pid whose command line has none of
# these was reused by something else and must not be signalled.
_OUR_COMMANDS = (b"celery", b"exchange_sim", b"workers.cli", b"redis-server", b"postgres")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is still one of the demo's processes (Linux /proc check)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the pid
    return any(name in command for name in _OUR_COMMANDS)


def write_state(path: Path, stack: Stack, services: Services, workdir: Path) -> dict[str, Any]:
    groups = [p.pid for p in stack.processes.values() if p.alive and p.pid is not None]
    private: list[dict[str, Any]] = []
    for name, server in (("redis", services._redis), ("postgres", services._postgres)):
        if server is not None and server.process is not None:
            private.append(
                {"name": name, "pid": server.process.pid, "directory": str(server.directory)}
            )
    state = {
        "process_groups": groups,
        "private_services": private,
        "workdir": str(workdir),
        # What --stop cleans up on servers the demo did not start.
        "database_url": None if services._postgres is not None else services.database_url,
        "redis_url": None if services._redis is not None else services.redis_url,
    }
    path.write_text(json.dumps(state))
    return state


def stop_kept_stack(path: Path, timeout_s: float = 30.0) -> list[int]:
    """Stop what a ``--keep-running`` demo left up (recorded in ``path``); returns the pids."""
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    stopped: list[int] = []
    for pgid in state.get("process_groups", []):
        if _alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopped.append(pgid)
    # PostgreSQL: SIGINT to the postmaster is its fast shutdown; Redis stops on SIGTERM.
    for server in state.get("private_services", []):
        if _alive(server["pid"]):
            os.kill(
                server["pid"], signal.SIGINT if server["name"] == "postgres" else signal.SIGTERM
            )
            stopped.append(server["pid"])
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in state.get("process_groups", []):
        if _alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for server in state.get("private_services", []):
        shutil.rmtree(server["directory"], ignore_errors=True)
    if state.get("database_url"):
        drop_demo_database(state["database_url"])
    if state.get("redis_url"):
        try:
            flush_redis_db(state["redis_url"])
        except redis.RedisError:
            pass  # the given server is gone: nothing of the demo's is left on it
    if state.get("workdir"):
        shutil.rmtree(state["workdir"], ignore_errors=True)
    path.unlink(missing_ok=True)
    return stopped


def execq_command() -> str:
    """How to run ``execq`` from a shell: the script beside this Python when there is one."""
    script = Path(sys.executable).parent / "execq"
    return str(script) if script.exists() else f"{sys.executable} -m workers.cli"


def refuse_if_running(path: Path) -> None:
    if not path.exists():
        return
    state = json.loads(path.read_text())
    alive = [pid for pid in state.get("process_groups", []) if _alive(pid)]
    if alive:
        raise DemoError(
            f"a demo stack is still running (pids {' '.join(map(str, alive))}); "
            f"stop it first: {execq_command()} demo --stop"
        )
    path.unlink(missing_ok=True)


# --- the live progress view -----------------------------------------------------------------


class Progress:
    """One line per phase and an updating status line under it.

    On a terminal the status line is redrawn in place; otherwise (CI, a pipe)
    a status is printed when it changed and a couple of seconds passed.
    """

    def __init__(self, stream: TextIO, started: float) -> None:
        self.stream = stream
        self.started = started
        self.tty = stream.isatty()
        self._open_status = False
        self._last_text = ""
        self._last_print = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _end_status(self) -> None:
        if self._open_status:
            self.stream.write("\n")
            self._open_status = False
        self._last_text = ""

    def phase(self, title: str) -> None:
        self._end_status()
        self.stream.write(f"[{self.elapsed():5.1f}s] {title}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self._end_status()
        self.stream.write(f"         {text}\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        if text == self._last_text:
            return
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            line = f"         {text}"[:width]
            self.stream.write(f"\r\033[K{line}")
            self._open_status = True
        elif now - self._last_print >= 2.0:
            self.stream.write(f"         .. {text}\n")
            self._last_print = now
        else:
            return
        self._last_text = text
        self.stream.flush()

    def close(self) -> None:
        self._end_status()


class ScenarioFailed(Exception):
    """A scenario step did not reach its state in time; the summary still runs."""


def wait_until(
    progress: Progress,
    what: str,
    condition: Callable[[], T],
    timeout_s: float,
    status: Callable[[], str] | None = None,
    interval_s: float = 0.2,
) -> T:
    """Poll ``condition`` until truthy (returned), showing ``status`` meanwhile;
    ScenarioFailed after ``timeout_s``."""
    return wait_for(
        condition,
        timeout_s,
        interval_s=interval_s,
        message=f"{what}: not reached within {timeout_s:.0f}s",
        while_waiting=(lambda: progress.status(status())) if status is not None else None,
        error=ScenarioFailed,
    )


# --- the simulator ----------------------------------------------------------------------------


def faults_fired(sim: SimulatorClient) -> dict[str, int]:
    """How often each injected fault fired, latency (on every request) left out."""
    return {kind: count for kind, count in sim.fired().items() if kind != "latency"}


def on_tick(price: Decimal, like: str, rounding: str) -> str:
    """``price`` with as many decimals as the simulator's quote ``like`` (its tick)."""
    places = len(like.split(".")[1]) if "." in like else 0
    return str(price.quantize(Decimal(1).scaleb(-places), rounding=rounding))


# --- reading state back from Postgres -------------------------------------------------------------


def query(statement: str, **params: Any) -> list[dict[str, Any]]:
    from sqlalchemy import text

    from workers.store.db import session_scope

    with session_scope() as session:
        return [dict(row) for row in session.execute(text(statement), params).mappings()]


def scalar(statement: str, **params: Any) -> Any:
    rows = query(statement, **params)
    return next(iter(rows[0].values())) if rows else None


def order_row(cid: str) -> dict[str, Any] | None:
    rows = query("SELECT * FROM orders WHERE client_order_id = :cid", cid=cid)
    return rows[0] if rows else None


def open_position(account: str, symbol: str) -> dict[str, Any] | None:
    rows = query(
        "SELECT * FROM positions WHERE account = :a AND symbol = :s AND status = 'open'",
        a=account,
        s=symbol,
    )
    return rows[0] if rows else None


def aged_of(position_id: int) -> dict[str, Any] | None:
    rows = query(
        "SELECT * FROM aged_positions WHERE position_id = :p ORDER BY id DESC LIMIT 1",
        p=position_id,
    )
    return rows[0] if rows else None


def counts(statement: str, **params: Any) -> dict[str, int]:
    """``SELECT key, count`` rows as a dict."""
    return {str(row["key"]): int(row["n"]) for row in query(statement, **params)}


def _num(value: Decimal | None) -> str:
    """A price or amount for the progress view: about 8 significant digits, never exponents."""
    if value is None:
        return "-"
    number = Decimal(value)
    places = max(0, 8 - len(str(abs(int(number)))))
    return format(round(number, places).normalize(), "f")


def fmt_counts(values: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(values.items())) or "none"


# --- the scenario ---------------------------------------------------------------------------------


@dataclass
class Demo:
    profile: Profile
    sim: SimulatorClient
    stack: Stack
    progress: Progress
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    # Ids the checks look up afterwards (never counts: those come from the database).
    facts: dict[str, Any] = field(default_factory=dict)
    api_url: str | None = None

    def signal_id(self, leg: Leg) -> str:
        return f"demo-{self.run_id}-{leg.key}"

    def cid(self, leg: Leg) -> str:
        return client_order_id(self.signal_id(leg), "open")

    def submit(self, leg: Leg) -> Any:
        from workers.producer import submit_market_order

        return submit_market_order(
            self.signal_id(leg), leg.account, leg.symbol, leg.side, leg.amount
        )

    def submit_over_http(self, leg: Leg) -> dict[str, Any]:
        """Send ``leg`` through ``execq api`` as a producer in any language would."""
        assert self.api_url is not None
        response = requests.post(
            f"{self.api_url}/v1/signals",
            json={
                "signal_id": self.signal_id(leg),
                "exchange": leg.account,
                "symbol": leg.symbol,
                "side": leg.side,
                "amount": str(leg.amount),
            },
            headers={"Authorization": f"Bearer {demo_api_key()}"},
            timeout=10,
        )
        if response.status_code != 202:
            raise ScenarioFailed(
                f"the API refused {leg.key}: {response.status_code} {response.text[:200]}"
            )
        return response.json()

    def http_signal_state(self, status_url: str) -> dict[str, Any]:
        assert self.api_url is not None
        response = requests.get(
            f"{self.api_url}{status_url}",
            headers={"Authorization": f"Bearer {demo_api_key()}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    # --- 1. opens under faults ---------------------------------------------------------------

    def opens(self) -> None:
        legs = self.profile.legs
        self.progress.phase(
            f"opens: {len(legs)} signals on binance, bybit and okx, with timeouts, 429s, "
            "a 503 and visibility lag injected"
        )
        self.sim.faults(opens_fault_plan())
        over_http = legs[0]
        accepted = self.submit_over_http(over_http)
        self.progress.note(
            f"{over_http.key} sent over HTTP (POST /v1/signals): 202, status at "
            f"{accepted['status_url']}"
        )
        for leg in legs[1:]:
            self.submit(leg)
        duplicate = next(leg for leg in legs if leg.key == self.profile.duplicate_of)
        self.submit(duplicate)
        self.submit(BAD_LEG)
        self.progress.note(
            f"also re-sent {duplicate.key} (same signal id: at-least-once producer) and one "
            "signal below BTC's minimum amount"
        )
        self.facts["open_cids"] = [self.cid(leg) for leg in legs]
        self.facts["duplicate_cid"] = self.cid(duplicate)
        self.facts["bad_signal"] = self.signal_id(BAD_LEG)
        wait_until(
            self.progress,
            "every open filled, verified and booked",
            lambda: self._opens_settled(legs),
            timeout_s=90,
            status=lambda: self._opens_status(legs),
        )
        self.progress.note(self._opens_status(legs))
        state = self.http_signal_state(accepted["status_url"])
        orders = state["orders"]
        self.facts["http_signal"] = {
            "state": state["state"],
            "orders": [(order["status"], order["filled"]) for order in orders],
        }
        self.progress.note(
            f"GET {accepted['status_url']}: {state['state']}, "
            + ", ".join(f"{order['status']} {order['filled']}" for order in orders)
        )
        self.progress.note(
            f"each position's price was moved {HOLD_MOVE:.0%} against it once booked: no aged "
            "target is reached until the scenario moves that price"
        )

    def _opens_settled(self, legs: Sequence[Leg]) -> bool:
        settled = True
        for leg in legs:
            order = order_row(self.cid(leg))
            if order is None or order["status"] != "filled" or order["verification"] is None:
                settled = False
                continue
            position = open_position(leg.account, leg.symbol)
            if position is None:
                settled = False
                continue
            self._hold(leg, position)
        rejected = scalar("SELECT count(*) FROM events WHERE type = 'signal_rejected'")
        return settled and bool(rejected)

    def _opens_status(self, legs: Sequence[Leg]) -> str:
        cids = [self.cid(leg) for leg in legs]
        by_status = counts(
            "SELECT status AS key, count(*) AS n FROM orders WHERE client_order_id = ANY(:c) "
            "GROUP BY status",
            c=cids,
        )
        verified = scalar(
            "SELECT count(*) FROM orders WHERE client_order_id = ANY(:c) "
            "AND verification = 'verified'",
            c=cids,
        )
        return (
            f"orders {fmt_counts(by_status)}; verified {verified}/{len(legs)} | "
            f"faults fired: {fmt_counts(faults_fired(self.sim))}"
        )

    # --- 2. hold every position away from its aged target ------------------------------------

    def _hold(self, leg: Leg, position: dict[str, Any]) -> None:
        """Move the symbol against a freshly booked position, once.

        Every position ages; at an unchanged price a progressive target is
        reached by itself. Held 5 % against, beyond the 2 % maximum loss, a
        position closes only when the scenario moves its price.
        """
        key = f"position_{leg.role}_{leg.key}"
        if key in self.facts:
            return
        self.facts[key] = position["id"]
        move = -HOLD_MOVE if position["side"] == "long" else HOLD_MOVE
        self.sim.set_prices([self._price_change(leg, position["entry_price"] * (1 + move))])

    def _price_change(self, leg: Leg, price: Decimal, rounding: str = ROUND_FLOOR) -> dict:
        like = self.sim.price(leg.account, leg.symbol)
        return {
            "exchange": leg.account,
            "symbol": leg.symbol,
            "price": on_tick(price, like, rounding),
        }

    # --- 3. grace close and the chunk fallback ---------------------------------------------

    def grace_and_chunks(self) -> None:
        grace, chunk = self.profile.by_role["grace"], self.profile.by_role["chunk"]
        self.progress.phase(
            f"aged: {grace.key} and {chunk.key} are in profit when they age "
            f"(max age {self.profile.max_age_s:g}s), so they close in grace"
        )
        grace_pos = self._position_id(grace)
        chunk_pos = self._position_id(chunk)
        # The first three closes of the BTC position are refused by the exchange,
        # so consecutive failures reach the chunk threshold.
        self.sim.faults(
            {
                "rules": [
                    {
                        "kind": "insufficient_margin",
                        "exchange": chunk.account,
                        "operation": "create_order",
                        "symbol": chunk.symbol,
                        "count": 3,
                    }
                ]
            }
        )
        # Prices move before the positions age, not after: the grace window then
        # starts with the price past its target, whenever the other opens settled
        # and however loaded the machine is (moving it after both had aged let a
        # slow open use up the first position's grace).
        changes = []
        for leg, position_id in ((grace, grace_pos), (chunk, chunk_pos)):
            entry = self._entry(position_id)
            changes.append(self._price_change(leg, entry * (1 + PROFIT_MOVE), ROUND_CEILING))
        self.sim.set_prices(changes)
        self.progress.note(
            f"{grace.key} and {chunk.key} prices +{PROFIT_MOVE:.0%} over entry; the exchange "
            f"refuses the next 3 closes of {chunk.key} (insufficient margin)"
        )
        for leg, position_id in ((grace, grace_pos), (chunk, chunk_pos)):
            aged = wait_until(
                self.progress,
                f"{leg.key} closed by the aged monitor",
                lambda p=position_id: self._closed_aged(p),
                timeout_s=60,
                status=lambda: self._aged_status((grace, grace_pos), (chunk, chunk_pos)),
            )
            self.facts[f"aged_{leg.role}"] = aged["id"]
            self.progress.note(self._describe_close(leg, aged))

    def _position_id(self, leg: Leg) -> int:
        return int(self.facts[f"position_{leg.role}_{leg.key}"])

    def _entry(self, position_id: int) -> Decimal:
        return Decimal(scalar("SELECT entry_price FROM positions WHERE id = :p", p=position_id))

    @staticmethod
    def _closed_aged(position_id: int) -> dict[str, Any] | None:
        aged = aged_of(position_id)
        return aged if aged is not None and aged["status"] == "closed" else None

    def _aged_status(self, *watched: tuple[Leg, int]) -> str:
        parts = []
        for leg, position_id in watched:
            aged = aged_of(position_id)
            if aged is None:
                parts.append(f"{leg.key}: not aged yet")
                continue
            target = aged["target_price"]
            part = f"{leg.key}: {aged['status']} {aged['phase']} target {_num(target)}"
            if aged["consecutive_failures"]:
                part += f", {aged['consecutive_failures']} failed closes"
            parts.append(part)
        return " | ".join(parts)

    def _describe_close(self, leg: Leg, aged: dict[str, Any]) -> str:
        orders = counts(
            "SELECT purpose || ' ' || status AS key, count(*) AS n FROM orders "
            "WHERE aged_id = :a GROUP BY 1",
            a=aged["id"],
        )
        return (
            f"{leg.key} closed: reason {aged['close_reason']}, close price "
            f"{_num(aged['close_price'])}, {aged['attempts']} attempts ({fmt_counts(orders)})"
        )

    # --- 4. a worker dies with an order in flight --------------------------------------------

    def kill_worker_in_flight(self) -> None:
        leg = KILL_LEG
        cid = self.cid(leg)
        self.facts["killed_cid"] = cid
        self.progress.phase(
            f"worker crash: {leg.key} is accepted by the exchange, whose reply never comes; "
            "the worker is SIGKILLed meanwhile"
        )
        self.sim.faults(
            {
                "rules": [
                    {
                        "kind": "timeout_after_accept",
                        "exchange": leg.account,
                        "operation": "create_order",
                        "symbol": leg.symbol,
                        "hang_ms": 20_000,
                        "count": 1,
                    }
                ]
            }
        )
        result = self.submit(leg)
        wait_until(
            self.progress,
            "the order accepted by the exchange while the worker waits",
            lambda: self._in_flight(cid),
            timeout_s=30,
        )
        node = self._node_running(result.id)
        self.stack.kill_worker(node)
        self.facts["killed_at"] = datetime.now(UTC).isoformat()
        self.facts["killed_worker"] = node
        order = order_row(cid) or {}
        self.progress.note(
            f"SIGKILLed {node}; order {cid} is '{order.get('status')}' in Postgres "
            f"and filled on the exchange; the order lock it held expires in {self._lock_ttl(cid)}"
        )
        # Its position is booked only after the repair; keep it away from its aged target too.
        current = Decimal(self.sim.price(leg.account, leg.symbol))
        self.sim.set_prices([self._price_change(leg, current * (1 - HOLD_MOVE))])
        self.stack.restart_worker(node)
        self.progress.note(f"{node} restarted (a restarted worker asks for a recovery sweep)")

    def _in_flight(self, cid: str) -> bool:
        order = order_row(cid)
        if order is None or order["status"] != "submitting":
            return False
        return bool(self.sim.orders_for(cid))

    def _node_running(self, task_id: str) -> str:
        from workers.app import app

        active = app.control.inspect(timeout=2.0).active() or {}
        for node, tasks in active.items():
            if any(task.get("id") == task_id for task in tasks):
                return node
        raise ScenarioFailed(f"no worker reports running task {task_id}")

    # --- 5. progressive close ----------------------------------------------------------------

    def progressive_close(self) -> None:
        leg = self.profile.by_role["progressive"]
        position_id = self._position_id(leg)
        self.progress.phase(
            f"aged: {leg.key} (a short) leaves grace; the progressive phase "
            f"widens its accepted loss 0.5% every {self.profile.loss_step_interval_s:g}s"
        )
        aged = wait_until(
            self.progress,
            f"{leg.key} in the progressive phase",
            lambda: self._in_phase(position_id, "progressive"),
            timeout_s=60,
            status=lambda: self._aged_status((leg, position_id)),
        )
        # A short closes at or below its target: put the price on the target's tick.
        target = Decimal(aged["target_price"])
        self.sim.set_prices([self._price_change(leg, target, ROUND_FLOOR)])
        self.progress.note(f"{leg.key} price moved to its progressive target {_num(target)}")
        closed = wait_until(
            self.progress,
            f"{leg.key} closed by the aged monitor",
            lambda: self._closed_aged(position_id),
            timeout_s=45,
            status=lambda: self._aged_status((leg, position_id)),
        )
        self.facts["aged_progressive"] = closed["id"]
        self.progress.note(self._describe_close(leg, closed))

    @staticmethod
    def _in_phase(position_id: int, phase: str) -> dict[str, Any] | None:
        aged = aged_of(position_id)
        if aged is None or aged["phase"] != phase or aged["status"] != "active":
            return None
        return aged

    # --- 6. a close on a pushed price ----------------------------------------------------------

    def stream_close(self) -> None:
        """Move a price across an aged target right after a sweep ran: the stream holder
        sees the pushed price and claims the close long before the next sweep would."""
        leg = self.profile.by_role["stream"]
        position_id = self._position_id(leg)
        self.progress.phase(
            f"aged: {leg.key}'s price crosses its target; {leg.account} pushes the price over "
            "its stream and the stream holder closes it without waiting for the sweep"
        )
        aged = wait_until(
            self.progress,
            f"{leg.key} aged, with a target",
            lambda: self._with_target(position_id),
            timeout_s=60,
            status=lambda: self._aged_status((leg, position_id)),
        )
        self._just_after_a_sweep()
        # A long closes at or above its target, a short at or below: the target's tick.
        target = Decimal(aged["target_price"])
        rounding = ROUND_CEILING if leg.side == "buy" else ROUND_FLOOR
        change = self._price_change(leg, target, rounding)
        moved_at_ms = time.time() * 1000
        self.sim.set_prices([change])
        self.facts["stream_price_moved_at_ms"] = moved_at_ms
        self.progress.note(
            f"{leg.key} price moved to its {aged['phase']} target {_num(target)}, just after an "
            "aged sweep ran"
        )
        closed = wait_until(
            self.progress,
            f"{leg.key} closed",
            lambda: self._closed_aged(position_id),
            timeout_s=45,
            status=lambda: self._aged_status((leg, position_id)),
        )
        self.facts["aged_stream"] = closed["id"]
        figures = stream_close_figures(closed["id"], moved_at_ms, self.sim.ledger())
        self.progress.note(
            f"{self._describe_close(leg, closed)}; trigger {figures['trigger']}: price move -> "
            f"close accepted by the exchange in {figures['latency_ms']} ms (sweeps run every "
            f"{float(os.environ['EXECQ_AGED_SWEEP_INTERVAL_S']):g}s)"
        )

    @staticmethod
    def _with_target(position_id: int) -> dict[str, Any] | None:
        aged = aged_of(position_id)
        if aged is None or aged["status"] != "active" or aged["target_price"] is None:
            return None
        return aged

    def _just_after_a_sweep(self) -> None:
        """Return as an aged sweep finishes, so the next one is a whole interval away: the
        close this step shows must come from the stream, not from a sweep in the same instant."""
        from workers import redis_keys
        from workers.redis_client import get_redis

        client = get_redis()
        before = client.get(redis_keys.sweep_last_run("aged"))
        wait_until(
            self.progress,
            "an aged sweep finished",
            lambda: (
                client.get(redis_keys.sweep_last_run("aged")) != before
                and not client.exists(redis_keys.sweep_lock("aged"))
            ),
            timeout_s=30,
            interval_s=0.01,
        )

    # --- 7. the recovery sweep repairs the killed order ------------------------------------------

    def recovery_repair(self) -> None:
        cid = self.facts["killed_cid"]
        self.progress.phase(
            "recovery: the sweep resolves the dead worker's order once its order lock expires"
        )
        wait_until(
            self.progress,
            "the killed order repaired by the recovery sweep",
            lambda: self._repaired(cid),
            timeout_s=120,
            status=lambda: self._repair_status(cid),
            interval_s=0.5,
        )
        order = order_row(cid) or {}
        self.progress.note(
            f"order {cid}: {order.get('status')}, filled {_num(order.get('filled'))}, "
            f"{order.get('verification')}; one order on the exchange"
        )

    @staticmethod
    def _repaired(cid: str) -> bool:
        order = order_row(cid)
        return bool(
            order is not None
            and order["status"] == "filled"
            and order["verification"] == "verified"
            and order["booked_filled"] == order["filled"]
        )

    @staticmethod
    def _lock_ttl(cid: str) -> str:
        from workers import redis_keys
        from workers.redis_client import get_redis

        ttl_ms = get_redis().pttl(redis_keys.order_lock(cid))
        return f"{ttl_ms / 1000:.0f}s" if ttl_ms > 0 else "no time (free)"

    def _repair_status(self, cid: str) -> str:
        order = order_row(cid) or {}
        lock = f"dead worker's order lock expires in {self._lock_ttl(cid)}"
        sweeps = scalar("SELECT count(*) FROM events WHERE type = 'recovery_sweep'")
        return f"order {order.get('status')}; {lock}; recovery sweeps so far {sweeps}"

    # --- 8. kill switch and liquidation --------------------------------------------------------

    def kill_switch_and_liquidation(self) -> None:
        from workers.app import app
        from workers.coordination import set_kill_switch

        self.progress.phase("kill switch on: a new open must be refused")
        self.sim.faults({})
        set_kill_switch(True, "demo", set_by="execq demo")
        cid = self.cid(REFUSED_LEG)
        self.facts["refused_cid"] = cid
        self.submit(REFUSED_LEG)
        order = wait_until(
            self.progress,
            "the open refused",
            lambda: (o := order_row(cid)) is not None and o["status"] == "rejected" and o,
            timeout_s=30,
        )
        self.progress.note(f"{REFUSED_LEG.key}: rejected ({order['last_error']})")

        self.progress.phase("emergency liquidation: close everything reduce-only, verify flat")
        result = app.send_task("emergency_liquidate_all", kwargs={"reason": "demo finale"})
        self.facts["liquidation_task"] = result.id
        wait_until(
            self.progress,
            "the liquidation finished",
            result.ready,
            timeout_s=90,
            status=lambda: f"exchange positions left: {len(self.sim.positions())}",
        )
        wait_until(
            self.progress,
            "every position flat on the exchange and in the book",
            lambda: (
                not self.sim.positions()
                and not scalar("SELECT count(*) FROM positions WHERE status = 'open'")
            ),
            timeout_s=30,
        )
        summary = (
            scalar(
                "SELECT payload FROM events WHERE type = 'liquidation_summary' "
                "ORDER BY id DESC LIMIT 1"
            )
            or {}
        )
        self.progress.note(
            f"liquidation closed {summary.get('closed')}/{summary.get('total')} positions in "
            f"{summary.get('seconds')}s; the kill switch stays on"
        )

    def run(self) -> None:
        self.opens()
        self.grace_and_chunks()
        self.kill_worker_in_flight()
        self.progressive_close()
        self.stream_close()
        self.recovery_repair()
        self.kill_switch_and_liquidation()


# --- the summary: every figure read back ----------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Summary:
    figures: dict[str, Any]
    rows: list[tuple[str, str, str]]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def collect_summary(sim_url: str, facts: dict[str, Any]) -> Summary:
    """Read everything back from Postgres and the simulator, then judge the checks."""
    from workers.harness.audit import audit
    from workers.settings import get_settings

    report = audit(get_settings(), sim_url)
    sim = SimulatorClient(sim_url)
    ledger = sim.ledger()
    f: dict[str, Any] = {
        "audit": report.as_dict(),
        "duplicates": report.duplicates,
        "lost": report.lost,
        "orphans": report.orphans,
        "stuck": report.stuck,
        "signals": int(
            scalar("SELECT count(DISTINCT signal_id) FROM orders WHERE purpose = 'open'") or 0
        ),
        "signals_rejected": int(
            scalar("SELECT count(DISTINCT signal_id) FROM events WHERE type = 'signal_rejected'")
            or 0
        ),
        "orders": int(scalar("SELECT count(*) FROM orders") or 0),
        "orders_by_status": counts(
            "SELECT status AS key, count(*) AS n FROM orders GROUP BY status"
        ),
        "orders_by_purpose": counts(
            "SELECT purpose AS key, count(*) AS n FROM orders GROUP BY purpose"
        ),
        "ledger_orders": len(ledger),
        "ledger_by_exchange": _tally(row["exchange"] for row in ledger),
        "attempts_by_class": counts(
            "SELECT coalesce(error_class, 'success') AS key, count(*) AS n FROM events "
            "WHERE type = 'order_attempt' GROUP BY 1"
        ),
        "verifications": counts(
            "SELECT replace(type, 'verification_', '') AS key, count(*) AS n FROM events "
            "WHERE type LIKE 'verification\\_%' AND type <> 'verification_source' GROUP BY 1"
        ),
        "orders_verified": int(
            scalar("SELECT count(*) FROM orders WHERE verification = 'verified'") or 0
        ),
        "aged_detected": int(scalar("SELECT count(*) FROM aged_positions") or 0),
        "aged_phase_changes": counts(
            "SELECT (payload->>'from') || '->' || (payload->>'to') AS key, count(*) AS n "
            "FROM events WHERE type = 'aged_phase_changed' GROUP BY 1"
        ),
        "aged_closes_by_reason": counts(
            "SELECT close_reason AS key, count(*) AS n FROM aged_positions "
            "WHERE status = 'closed' GROUP BY 1"
        ),
        "alerts_by_kind": counts("SELECT kind AS key, count(*) AS n FROM alerts GROUP BY kind"),
        "open_positions_book": int(
            scalar("SELECT count(*) FROM positions WHERE status = 'open'") or 0
        ),
        "open_positions_exchange": len(sim.positions()),
        "aged_left_active": int(
            scalar(
                "SELECT count(*) FROM aged_positions a JOIN positions p ON p.id = a.position_id "
                "WHERE a.status IN ('active', 'closing') AND p.status <> 'open'"
            )
            or 0
        ),
    }
    f["alerts"] = sum(f["alerts_by_kind"].values())
    f.update(_scenario_figures(facts, ledger))
    return Summary(figures=f, rows=_rows(f), checks=_checks(f, facts))


def _tally(values: Iterator[str] | Sequence[str]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return tally


def _ledger_count(ledger: Sequence[dict[str, Any]], cid: str | None) -> int:
    """Orders the exchanges accepted under execq's ``cid`` (in each exchange's form)."""
    return sum(
        1
        for row in ledger
        if cid and row["clientOrderId"] == exchange_client_id(row["exchange"], cid)
    )


def stream_close_figures(
    aged_id: int, moved_at_ms: float, ledger: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """What closed the episode: the trigger of its first claimed close (``stream`` or
    ``sweep``), its close reason, and the milliseconds from the price move to the
    exchange accepting its first close order (the ledger's timestamp)."""
    trigger = scalar(
        "SELECT payload->>'trigger' FROM events WHERE aged_id = :a "
        "AND type = 'aged_close_claimed' ORDER BY id LIMIT 1",
        a=aged_id,
    )
    close_ids = {
        row["client_order_id"]
        for row in query("SELECT client_order_id FROM orders WHERE aged_id = :a", a=aged_id)
    }
    accepted = [
        row["timestamp"]
        for row in ledger
        for cid in close_ids
        if row["clientOrderId"] == exchange_client_id(row["exchange"], cid)
    ]
    return {
        "aged_id": aged_id,
        "trigger": trigger,
        "close_reason": scalar("SELECT close_reason FROM aged_positions WHERE id = :a", a=aged_id),
        "latency_ms": round(min(accepted) - moved_at_ms, 1) if accepted else None,
    }


def _scenario_figures(facts: dict[str, Any], ledger: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-step outcomes, looked up by the ids the scenario recorded."""
    figures: dict[str, Any] = {}
    open_cids = facts.get("open_cids", [])
    figures["opens_filled"] = int(
        scalar(
            "SELECT count(*) FROM orders WHERE client_order_id = ANY(:c) AND status = 'filled'",
            c=open_cids,
        )
        or 0
    )
    figures["opens_verified"] = int(
        scalar(
            "SELECT count(*) FROM orders WHERE client_order_id = ANY(:c) "
            "AND verification = 'verified'",
            c=open_cids,
        )
        or 0
    )
    figures["opens_expected"] = len(open_cids)
    figures["duplicate_signal_orders_on_exchange"] = _ledger_count(
        ledger, facts.get("duplicate_cid")
    )
    for role in ("grace", "chunk", "progressive"):
        aged_id = facts.get(f"aged_{role}")
        row = query("SELECT * FROM aged_positions WHERE id = :a", a=aged_id) if aged_id else []
        figures[f"{role}_close_reason"] = row[0]["close_reason"] if row else None
        figures[f"{role}_close_phase"] = row[0]["phase"] if row else None
    stream_id = facts.get("aged_stream")
    figures["stream_close"] = (
        None
        if stream_id is None
        else stream_close_figures(stream_id, facts["stream_price_moved_at_ms"], ledger)
    )
    chunk_id = facts.get("aged_chunk")
    figures["chunk_orders"] = counts(
        "SELECT purpose || ' ' || status AS key, count(*) AS n FROM orders "
        "WHERE aged_id = :a GROUP BY 1",
        a=chunk_id or -1,
    )
    figures["chunk_alert"] = int(
        scalar(
            "SELECT count(*) FROM alerts WHERE kind = 'aged_close_failing' AND aged_id = :a",
            a=chunk_id or -1,
        )
        or 0
    )
    killed = facts.get("killed_cid")
    order = order_row(killed) if killed else None
    figures["killed_order"] = (
        None
        if order is None
        else {
            "client_order_id": killed,
            "status": order["status"],
            "verification": order["verification"],
            "repaired_by_recovery": int(
                scalar(
                    "SELECT count(*) FROM events WHERE client_order_id = :c "
                    "AND payload->>'source' = 'tracking'",
                    c=killed,
                )
                or 0
            )
            > 0,
            "on_exchange": _ledger_count(ledger, killed),
        }
    )
    refused = facts.get("refused_cid")
    order = order_row(refused) if refused else None
    figures["refused_order"] = (
        None
        if order is None
        else {
            "client_order_id": refused,
            "status": order["status"],
            "error_class": order["last_error_class"],
            "on_exchange": _ledger_count(ledger, refused),
        }
    )
    figures["liquidation"] = scalar(
        "SELECT payload FROM events WHERE type = 'liquidation_summary' ORDER BY id DESC LIMIT 1"
    )
    return figures


def _rows(f: dict[str, Any]) -> list[tuple[str, str, str]]:
    stream_close = f.get("stream_close") or {}
    killed = f.get("killed_order") or {}
    refused = f.get("refused_order") or {}
    liquidation = f.get("liquidation") or {}
    return [
        (
            "signals",
            f"{f['signals'] + f['signals_rejected']} ({f['signals_rejected']} refused at "
            "validation)",
            "db",
        ),
        ("orders", f"{f['orders']}: {fmt_counts(f['orders_by_status'])}", "db"),
        ("orders by purpose", fmt_counts(f["orders_by_purpose"]), "db"),
        (
            "orders the exchanges accepted",
            f"{f['ledger_orders']}: {fmt_counts(f['ledger_by_exchange'])}",
            "ledger",
        ),
        ("attempts by retry class", fmt_counts(f["attempts_by_class"]), "db events"),
        (
            "verified",
            f"{f['orders_verified']} orders verified; verdicts {fmt_counts(f['verifications'])}",
            "db",
        ),
        (
            "aged positions",
            f"{f['aged_detected']} detected; phase moves {fmt_counts(f['aged_phase_changes'])}",
            "db",
        ),
        ("aged closes by reason", fmt_counts(f["aged_closes_by_reason"]), "db"),
        ("chunk fallback", fmt_counts(f["chunk_orders"]), "db"),
        (
            "close on a pushed price",
            f"trigger {stream_close.get('trigger')}, accepted {stream_close.get('latency_ms')} ms "
            "after the price move",
            "db + ledger",
        ),
        (
            "killed worker's order",
            f"{killed.get('status')}, {killed.get('verification')}, repaired by the recovery "
            f"sweep: {'yes' if killed.get('repaired_by_recovery') else 'no'}",
            "db",
        ),
        (
            "open under kill switch",
            f"{refused.get('status')} ({refused.get('error_class')}), on exchange "
            f"{refused.get('on_exchange')}",
            "db + ledger",
        ),
        (
            "liquidation",
            f"{liquidation.get('closed')}/{liquidation.get('total')} closed, "
            f"{liquidation.get('failed')} failed",
            "db",
        ),
        ("alerts", f"{f['alerts']}: {fmt_counts(f['alerts_by_kind'])}", "db"),
        ("duplicates", str(f["duplicates"]), "ledger"),
        ("lost / orphans / stuck", f"{f['lost']} / {f['orphans']} / {f['stuck']}", "audit"),
        (
            "open positions at the end",
            f"exchange {f['open_positions_exchange']}, book {f['open_positions_book']}",
            "ledger + db",
        ),
    ]


def _checks(f: dict[str, Any], facts: dict[str, Any]) -> list[Check]:
    stream_close = f.get("stream_close") or {}
    killed = f.get("killed_order") or {}
    refused = f.get("refused_order") or {}
    liquidation = f.get("liquidation") or {}
    chunks = f["chunk_orders"]
    progressive = f.get("progressive_close_reason") or ""
    checks = [
        Check("no duplicate orders", f["duplicates"] == 0, f"duplicates {f['duplicates']}"),
        Check("no lost signals", f["lost"] == 0, f"lost {f['lost']}"),
        Check(
            "book matches the exchanges",
            f["orphans"] == 0,
            "; ".join(f["audit"]["details"].get("position_mismatches", [])) or "orphans 0",
        ),
        Check("nothing stuck in flight", f["stuck"] == 0, f"stuck {f['stuck']}"),
        Check(
            "every open filled and verified",
            f["opens_expected"] > 0
            and f["opens_filled"] == f["opens_verified"] == f["opens_expected"],
            f"{f['opens_filled']} filled, {f['opens_verified']} verified of {f['opens_expected']}",
        ),
        Check(
            "a signal sent over HTTP was executed",
            (facts.get("http_signal") or {}).get("orders", [("", "")])[0][0] == "filled",
            str(facts.get("http_signal")),
        ),
        Check(
            "re-sent signal reached the exchange once",
            f["duplicate_signal_orders_on_exchange"] == 1,
            f"{f['duplicate_signal_orders_on_exchange']} orders",
        ),
        Check(
            "grace-phase close was profitable",
            f.get("grace_close_reason") == "profitable" and f.get("grace_close_phase") == "grace",
            f"{f.get('grace_close_reason')} in phase {f.get('grace_close_phase')}",
        ),
        Check(
            "progressive close by its stepped tolerance",
            progressive.startswith("progressive_")
            and f.get("progressive_close_phase") == "progressive",
            progressive or "not closed",
        ),
        Check(
            "chunk fallback closed the position",
            chunks.get("aged_close rejected", 0) >= 3
            and chunks.get("aged_chunk filled", 0) >= 2
            and f.get("chunk_close_reason") is not None
            and f["chunk_alert"] >= 1,
            f"{fmt_counts(chunks)}; alerts {f['chunk_alert']}",
        ),
        Check(
            "a pushed price closed an aged position",
            stream_close.get("trigger") == "stream"
            and stream_close.get("close_reason") is not None
            and stream_close.get("latency_ms") is not None,
            json.dumps(stream_close, default=str) if stream_close else "not run",
        ),
        Check(
            "recovery repaired the killed worker's order",
            killed.get("status") == "filled"
            and killed.get("verification") == "verified"
            and bool(killed.get("repaired_by_recovery"))
            and killed.get("on_exchange") == 1,
            json.dumps(killed, default=str) if killed else "not run",
        ),
        Check(
            "kill switch refused the open",
            refused.get("status") == "rejected"
            and refused.get("error_class") == "kill_switch"
            and refused.get("on_exchange") == 0,
            json.dumps(refused, default=str) if refused else "not run",
        ),
        Check(
            "liquidation left everything flat",
            bool(liquidation)
            and liquidation.get("failed") == 0
            and f["open_positions_exchange"] == 0
            and f["open_positions_book"] == 0,
            f"failed {liquidation.get('failed')}; open: exchange "
            f"{f['open_positions_exchange']}, book {f['open_positions_book']}",
        ),
    ]
    if facts.get("scenario_error"):
        checks.insert(0, Check("scenario ran to the end", False, facts["scenario_error"]))
    return checks


def print_summary(summary: Summary, out: TextIO) -> None:
    from workers.cli.tables import render

    out.write("\nsummary (db: read back from Postgres; ledger: the simulator's ledger)\n")
    out.write(render(["figure", "value", "source"], summary.rows) + "\n\n")
    for check in summary.checks:
        mark = "ok  " if check.ok else "FAIL"
        line = f"[{mark}] {check.name}"
        if not check.ok:
            line += f": {check.detail}"
        out.write(line + "\n")
    if summary.figures.get("aged_left_active"):
        out.write(
            f"note: {summary.figures['aged_left_active']} aged rows still 'active' for positions "
            "that were closed by the liquidation\n"
        )


# --- running it -------------------------------------------------------------------------------


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so everything started is stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_processes(
    stack: Stack, progress: Progress, sim_port: int = 0, flower_port: int = 0
) -> tuple[str, str, str]:
    """Simulator first (the others need its URL); beat and Flower start beside the workers.

    Each start blocks until its process is observably ready; overlapping them
    hides the seconds every process spends importing Celery and ccxt. The
    workers start one after the other: their readiness is a Celery control
    ping, and one control connection is not shared between threads.
    """
    sim_url = stack.start_simulator(port=sim_port)
    progress.note(f"exchange simulator at {sim_url}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        beat = pool.submit(stack.start_beat)
        flower = pool.submit(stack.start_flower, flower_port)
        for name in WORKERS:
            stack.start_worker(name, concurrency=4)
        beat.result()
        flower_url = flower.result()
    api_url = stack.start_api()
    progress.note(f"workers {', '.join(WORKERS)} (4 threads each) answer pings")
    progress.note(f"beat holds the scheduler lock; Flower at {flower_url}; HTTP API at {api_url}")
    stack.start_streams()
    progress.note(
        "the stream holder (execq streams) holds binance's and bybit's order, position and "
        "price streams; okx has none in the simulator and is polled"
    )
    return sim_url, flower_url, api_url


@dataclass
class DemoRun:
    """One ``execq demo`` invocation: what it started, and what it reports."""

    profile: Profile
    targets: DemoTargets
    progress: Progress
    out: TextIO
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="execq-demo-")))
    services: Services | None = None
    stack: Stack | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def bootstrap(self) -> dict[str, str]:
        """A fresh demo database and a Redis of the demo's own; returns the env."""
        self.progress.phase("services: Redis and PostgreSQL")
        drop_demo_database(self.targets.database_url)
        self.services = ensure_services(
            self.targets.redis_url, self.targets.database_url, self.workdir / "svc"
        )
        for note in self.services.notes:
            self.progress.note(note)
        if "redis" not in self.services.started:
            require_empty(self.services.redis_url)
        env = demo_env(self.profile, self.services.redis_url, self.services.database_url)
        install_environment(env)
        migrate_and_truncate()
        self.result.update(
            database_url=redact_url(self.services.database_url),
            redis_url=redact_url(self.services.redis_url),
        )
        redis_owner = "private" if "redis" in self.services.started else "given, empty"
        self.progress.note(
            f"database {self.result['database_url']} (fresh, migrated); "
            f"Redis {self.result['redis_url']} ({redis_owner})"
        )
        return env

    def start(self, env: dict[str, str]) -> tuple[str, str]:
        assert self.services is not None
        self.progress.phase(
            "processes: simulator, 2 workers, beat, Flower, HTTP API, stream holder"
        )
        # Created before anything starts, so a failed start still stops what did start.
        self.stack = Stack(env=env, workdir=self.workdir)
        sim_url, flower_url, api_url = start_processes(
            self.stack, self.progress, self.targets.sim_port, self.targets.flower_port
        )
        self.result.update(flower_url=flower_url, sim_url=sim_url, api_url=api_url)
        write_state(state_file(self.targets), self.stack, self.services, self.workdir)
        return sim_url, flower_url

    def scenario(self, sim_url: str) -> Summary:
        assert self.stack is not None
        sim = SimulatorClient(sim_url)
        sim.reset(seed=7)
        demo = Demo(
            profile=self.profile,
            sim=sim,
            stack=self.stack,
            progress=self.progress,
            api_url=self.result.get("api_url"),
        )
        try:
            demo.run()
        except (ScenarioFailed, StackError, SimulatorError, requests.RequestException) as exc:
            # The summary still runs: it says which checks the partial run broke.
            demo.facts["scenario_error"] = str(exc).splitlines()[0]
            self.progress.note(f"scenario stopped: {demo.facts['scenario_error']}")
        self.progress.close()
        summary = collect_summary(sim_url, demo.facts)
        print_summary(summary, self.out)
        self.result.update(
            ok=summary.ok,
            checks=[vars(check) for check in summary.checks],
            figures=summary.figures,
            # The ids behind the figures (signals, client order ids, aged ids).
            scenario=demo.facts,
        )
        return summary

    def keep(self) -> None:
        assert self.stack is not None and self.services is not None
        state = write_state(state_file(self.targets), self.stack, self.services, self.workdir)
        execq = execq_command()
        stop = f"{execq} demo --stop --database {self.targets.database}"
        self.result.update(kept_running=True, stop_command=stop, processes=state)
        env = f"DATABASE_URL={self.result['database_url']} REDIS_URL={self.result['redis_url']}"
        self.out.write(
            f"\nthe stack keeps running: Flower {self.result['flower_url']}, simulator "
            f"{self.result['sim_url']}, HTTP API {self.result['api_url']}/docs, "
            f"logs in {self.workdir}\n"
            f"look around:  {env} {execq} status\n"
            f"the kill switch is on; new opens need: {env} {execq} kill-switch off\n"
            f"stop it with: {stop}\n"
        )

    def shutdown(self, keep_logs: bool) -> None:
        """Stop everything the demo started, drop its database and empty a given Redis."""
        if self.stack is not None:
            self.stack.stop(timeout_s=15)
        if self.services is not None:
            from workers.store.db import dispose_engine

            dispose_engine()
            if "postgres" not in self.services.started:
                drop_demo_database(self.services.database_url)
            if "redis" not in self.services.started and self.result.get("redis_url"):
                # A given Redis: the run's queues, results and locks are of no use now.
                try:
                    flush_redis_db(self.services.redis_url)
                except redis.RedisError:
                    pass  # the server is gone: nothing of the demo's is left on it
            self.services.stop()
        state_file(self.targets).unlink(missing_ok=True)
        if keep_logs:
            self.out.write(f"process logs kept in {self.workdir}\n")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_demo(
    keep_running: bool = False,
    as_json: bool = False,
    *,
    short: bool | None = None,
    database: str | None = None,
    redis_url: str | None = None,
    sim_port: int | None = None,
    flower_port: int | None = None,
) -> int:
    """Run the demo; returns the exit code (0 checks hold, 1 a check failed, 2 cannot run).

    ``short`` (default: ``EXECQ_DEMO_SHORT``) runs the test suite's smaller form.
    ``database``, ``redis_url``, ``sim_port``, ``flower_port``: see
    ``DemoTargets.from_environment``. With ``as_json`` the progress goes to stderr
    and stdout gets one JSON object.
    """
    if short is None:
        short = os.environ.get("EXECQ_DEMO_SHORT", "").lower() in ("1", "true", "yes")
    profile = PROFILES["short" if short else "full"]
    out = sys.stderr if as_json else sys.stdout
    started = time.monotonic()
    try:
        targets = DemoTargets.from_environment(database, redis_url, sim_port, flower_port)
        refuse_if_running(state_file(targets))
    except DemoError as exc:
        click.echo(f"execq demo: {exc}", err=True)
        return EXIT_CANNOT_RUN
    run = DemoRun(profile=profile, targets=targets, progress=Progress(out, started), out=out)
    run.result.update(ok=False, profile=profile.name)
    code, kept = EXIT_CANNOT_RUN, False
    with _sigterm_as_interrupt():
        try:
            sim_url, _ = run.start(run.bootstrap())
            summary = run.scenario(sim_url)
            code = EXIT_OK if summary.ok else EXIT_CHECK_FAILED
            if keep_running:
                run.keep()
                kept = True
        except ServicesUnavailable as exc:
            # One line that starts with the command to run (COMPOSE_HINT).
            _fail(run, str(exc))
        except (StackError, DemoError, RedisNotEmpty) as exc:
            _fail(run, str(exc).splitlines()[0], hint=str(exc))
        except KeyboardInterrupt:
            _fail(run, "interrupted; stopping what it started")
            code = 130
        except Exception as exc:  # noqa: BLE001 - one line for the operator, details in a file
            (run.workdir / "demo-error.txt").write_text(traceback.format_exc())
            _fail(run, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            run.out.write(f"traceback in {run.workdir / 'demo-error.txt'}\n")
        finally:
            if not kept:
                run.shutdown(keep_logs=code != EXIT_OK and run.stack is not None)
    run.result["elapsed_s"] = round(time.monotonic() - started, 1)
    out.write(f"\ndemo finished in {run.result['elapsed_s']}s, exit {code}\n")
    if as_json:
        sys.stdout.write(json.dumps(run.result, default=str) + "\n")
        sys.stdout.flush()
    return code


def _fail(run: DemoRun, message: str, hint: str | None = None) -> None:
    run.progress.close()
    click.echo(f"execq demo: {message}", err=True)
    if hint and hint != message:
        click.echo(hint, err=True)
    run.result["error"] = message


def stop_demo(database: str | None = None) -> int:
    """Stop what ``execq demo --keep-running`` left up and drop its database."""
    try:
        targets = DemoTargets.from_environment(database)
    except DemoError as exc:
        click.echo(f"execq demo: {exc}", err=True)
        return EXIT_CANNOT_RUN
    path = state_file(targets)
    if not path.exists():
        click.echo("no demo running")
        return EXIT_OK
    stopped = stop_kept_stack(path)
    click.echo(f"stopped {len(stopped)} demo processes; database {targets.database} dropped")
    return EXIT_OK


def _main(argv: Sequence[str]) -> int:
    """``python -m workers.harness.demo [--stop] [--short] [--json] [--keep-running]``."""
    if "--stop" in argv:
        return stop_demo()
    return run_demo(
        keep_running="--keep-running" in argv,
        as_json="--json" in argv,
        short=True if "--short" in argv else None,
    )


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
