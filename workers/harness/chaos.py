"""``execq chaos``: exactly-once under faults, kills and restarts, audited from the sources of truth.

A run, on a private ``redis-server`` (or a given, empty Redis database) and a
scratch PostgreSQL database (``workers.harness.bench.scratch``), or on a private
PostgreSQL server it starts itself (``private_postgres``, so that it may restart
it):

1. starts the simulator, ``workers`` worker processes and beat, with aged
   time compressed to seconds and the sweeps frequent (``chaos_stack``);
2. installs the fault plan on the simulator's creates (timeouts before and
   after accept, 429, 5xx, visibility lag, some of it past the lookup window,
   positions lag, partial fills) and on its streams (``stream_fault_rules``:
   messages lost and delayed, a connection of each exchange cut every
   ``STREAM_DISCONNECT_EVERY_S``), with the stream holder (``execq streams``)
   running, and random-walks every price so aged positions reach their targets;
3. sends ``signals`` signals at ``rate`` per second across the three accounts
   and all symbols: opens, producer closes (reduce-only closes of earlier
   opens), a few signals that validation must refuse, and some signals sent
   twice (a producer retrying); meanwhile, at seeded random moments, it
   SIGKILLs a worker and restarts it (``kills`` times), SIGKILLs the stream
   holder and starts another, which takes its leases over once they expire
   (``stream_kills`` times), pauses a worker
   (SIGSTOP) past its lease on the orders it holds and lets it go on
   (``pauses`` times: its late requests must be refused, never doubled), and
   restarts Redis and PostgreSQL once each when this run started them
   (``ensure_services``; a server someone else runs is never restarted);
4. lifts the faults, stops the price walks and waits until quiet: every
   signal the producer recorded in the outbox arrived, nothing in flight in
   Postgres, no aged close claimed, the broker queue and its unacked
   set empty, and a recovery sweep finished after the faults were lifted;
5. audits with ``workers.harness.audit.audit``, and counts how the fills
   reached execq: by stream, by the create's answer or by a poll.

Steps 2-5 are ``ChaosRun.phase``; ``run_chaos`` is one phase on a fresh
stack, and ``chaos_stack`` runs several phases on one (the tests run each
fault kind alone that way, ``single_fault_plans``).

Everything random is drawn from ``random.Random(seed)`` (and the simulator's
fault plan uses the same seed); the process timing around it is not
deterministic, which is the point of a chaos run.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import signal as signals
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy.exc import SQLAlchemyError

from workers.harness.bench import ACCOUNTS, BENCH_AMOUNTS, Scratch, client_app, scratch
from workers.harness.compressed import FAST_RETRY_ENV
from workers.harness.services import free_port
from workers.harness.sim_client import SimulatorClient, SimulatorError
from workers.harness.stack import Stack, StackError
from workers.producer import BROKER_ERRORS, NotEnqueued, Producer, order_kwargs
from workers.store.outbox import OutboxMessage, undelivered_count

logger = logging.getLogger("execq.chaos")

# Seconds.
QUIET_TIMEOUT_S = 600.0
QUIET_HOLD_S = 2.0
# No new signal reached the pipeline for this long: the missing ones are lost.
STALL_S = 60.0
RESTORE_EVERY_S = 5.0
SEND_RETRY_S = 120.0
_POLL_S = 0.5

IN_FLIGHT_STATUSES = ("intent", "submitting", "unknown", "open", "partially_filled")


# --- the workload -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalSpec:
    """One signal to send (``kind``: open, close, invalid; ``duplicate``: sent twice)."""

    signal_id: str
    account: str
    symbol: str
    side: str
    amount: str
    kind: str
    reduce_only: bool = False
    duplicate: bool = False

    def kwargs(self) -> dict[str, Any]:
        return order_kwargs(
            self.signal_id,
            self.account,
            self.symbol,
            self.side,
            self.amount,
            reduce_only=self.reduce_only,
            purpose="close" if self.kind == "close" else "open",
        )


@dataclass(frozen=True)
class Mix:
    """Shares of the signal stream; opens take the rest."""

    close: float = 0.30
    invalid: float = 0.02
    duplicate: float = 0.05


def plan_signals(count: int, rng: random.Random, prefix: str, mix: Mix = Mix()) -> list[SignalSpec]:
    """The signal stream: opens of 1-3 minimum lots, closes of earlier opens, a few invalid."""
    pairs = [(account, symbol) for account in ACCOUNTS for symbol in BENCH_AMOUNTS]
    opens: list[SignalSpec] = []
    stream: list[SignalSpec] = []
    for index in range(count):
        signal_id = f"{prefix}-{index}"
        duplicate = rng.random() < mix.duplicate
        draw = rng.random()
        if draw < mix.invalid:
            account, symbol = rng.choice(pairs)
            # Rounds to zero at every market's precision: validation must refuse it.
            spec = SignalSpec(signal_id, account, symbol, "buy", "0.0000001", "invalid")
        elif draw < mix.invalid + mix.close and opens:
            # A producer close: the reduce-only opposite of a recent open.
            target = opens.pop(rng.randrange(max(0, len(opens) - 40), len(opens)))
            spec = SignalSpec(
                signal_id,
                target.account,
                target.symbol,
                "sell" if target.side == "buy" else "buy",
                target.amount,
                "close",
                reduce_only=True,
            )
        else:
            account, symbol = rng.choice(pairs)
            lots = rng.randint(1, 3)
            amount = _times(BENCH_AMOUNTS[symbol], lots)
            spec = SignalSpec(
                signal_id, account, symbol, rng.choice(("buy", "sell")), amount, "open"
            )
            opens.append(spec)
        stream.append(replace(spec, duplicate=True) if duplicate else spec)
    return stream


def _times(amount: str, lots: int) -> str:
    from decimal import Decimal

    return format(Decimal(amount) * lots, "f")


VISIBILITY_PAST_WINDOW_MS = 20_000


def fault_plan(seed: int) -> dict[str, Any]:
    """The default fault plan. Outcome rules are tried in order and only the first that
    fires counts, so each later probability is conditional on the earlier ones not firing:
    that keeps the shares of all creates at 20 %, 5 %, 5 % and 3 %."""
    shares = [
        ("timeout_after_accept", 0.20),
        ("timeout_before_accept", 0.05),
        ("rate_limit", 0.05),
        ("server_error", 0.03),
    ]
    rules: list[dict[str, Any]] = []
    remaining = 1.0
    for kind, share in shares:
        rules.append(
            {"kind": kind, "operation": "create_order", "probability": round(share / remaining, 6)}
        )
        remaining -= share
    rules += [
        {"kind": "visibility_lag", "lag_ms": 2000},
        # Past the lookup window (one request timeout plus the lookups, about 15 s here):
        # an order in doubt stays unknown until the tracker sees it, never sent again.
        {"kind": "visibility_lag", "lag_ms": VISIBILITY_PAST_WINDOW_MS, "probability": 0.03},
        {"kind": "positions_lag", "lag_ms": 3000},
    ]
    # On every symbol: a partial fill of BTC (minimum 0.005 = 5 steps) can leave
    # a position below the minimum order size, which an aged close then marks
    # unclosable and alerts (workers/aged.py) instead of retrying forever.
    rules.append({"kind": "partial_fill", "probability": 0.10, "fraction": "0.5"})
    return {"seed": seed, "rules": rules}


def single_fault_plans(seed: int, probability: float = 0.4) -> dict[str, dict[str, Any]]:
    """The default plan's kinds one at a time: kind -> a plan with that kind's rules alone.

    A rule with a probability gets ``probability`` instead (alone, an outcome rule is
    no longer conditional on the earlier ones, and a short stream should see it fire
    many times); the lags stay as in the default plan.
    """
    plans: dict[str, dict[str, Any]] = {}
    for rule in fault_plan(seed)["rules"]:
        alone = {**rule, "probability": probability} if "probability" in rule else rule
        plans.setdefault(rule["kind"], {"seed": seed, "rules": []})["rules"].append(alone)
    return plans


# The exchanges the simulator serves streams for (OKX accounts are polled).
STREAM_EXCHANGES = ("binance", "bybit")
# Seconds between two cut connections of each streaming exchange.
STREAM_DISCONNECT_EVERY_S = 30.0


def stream_fault_rules() -> list[dict[str, Any]]:
    """The default plan's stream faults: 10 % of the pushed messages lost, 5 % of them
    (and every one behind them) 200 ms late, and one in 2,000 stalls its connection (it
    stays open and sends nothing: the holder must see it go stale and reconnect). The
    cut connections are not a rule with a rate: ``ChaosRun`` arms
    ``stream_disconnect_rules`` every ``STREAM_DISCONNECT_EVERY_S``."""
    return [
        {"kind": "stream_drop", "probability": 0.10},
        {"kind": "stream_stall", "probability": 0.0005},
        {"kind": "stream_delay", "delay_ms": 200, "probability": 0.05},
    ]


def stream_disconnect_rules(tick: int) -> list[dict[str, Any]]:
    """One cut connection per streaming exchange, at its next pushed message; the private
    stream (orders, fills, positions) and the public one (prices) take turns."""
    stream = ("private_stream", "public_stream")[tick % 2]
    return [
        {"exchange": exchange, "kind": "stream_disconnect", "operation": stream, "count": 1}
        for exchange in STREAM_EXCHANGES
    ]


STREAM_FAULT_KINDS = frozenset(
    {"stream_drop", "stream_delay", "stream_stall", "stream_disconnect", "listen_key_expired"}
)


def default_plan(seed: int, *, streams: bool = True) -> dict[str, Any]:
    """What ``execq chaos`` installs: ``fault_plan``'s create faults, and with ``streams``
    the stream faults (``stream_fault_rules``)."""
    plan = fault_plan(seed)
    if streams:
        plan["rules"] += stream_fault_rules()
    return plan


# Seconds a paused worker stays stopped: past its lease on an order (the run budget, 60 %
# of the soft limit below, plus one exchange timeout, 10 s, plus 5 s: 24 s).
PAUSE_PAST_LEASE_S = 30.0

# Aged time compressed to seconds, sweeps frequent, retries short, so that a
# run exercises the aged closes and the recovery sweep within minutes.
CHAOS_WORKER_ENV = {
    "EXECQ_AGED__MAX_AGE_S": "8",
    "EXECQ_AGED__GRACE_PERIOD_S": "4",
    "EXECQ_AGED__LOSS_STEP_PERCENT": "0.5",
    "EXECQ_AGED__LOSS_STEP_INTERVAL_S": "2",
    "EXECQ_AGED__MAX_LOSS_PERCENT": "5",
    # Failed closes back off in seconds, like the rest of the compressed time here.
    "EXECQ_AGED__CLOSE_BACKOFF_BASE_S": "0.5",
    "EXECQ_AGED__CLOSE_BACKOFF_CAP_S": "4",
    "EXECQ_AGED_SWEEP_INTERVAL_S": "1",
    "EXECQ_RECOVERY_SWEEP_INTERVAL_S": "10",
    "EXECQ_RECOVERY_STUCK_AFTER_S": "5",
    # An order whose create stays in doubt is looked for this long, then given up as not
    # found (never resent where that could double it): the run must settle within it.
    "EXECQ_UNKNOWN_GIVE_UP_S": "20",
    "EXECQ_TRACKING_SWEEP_INTERVAL_S": "2",
    # A killed worker's reserved messages come back after the visibility
    # timeout, so it bounds how long a run waits to be quiet after a kill.
    "EXECQ_TASK_SOFT_TIME_LIMIT_S": "15",
    "EXECQ_TASK_HARD_TIME_LIMIT_S": "20",
    "EXECQ_VISIBILITY_TIMEOUT_S": "25",
    "EXECQ_POSITION_LOCK_TTL_S": "30",
    # The lookup window after an ambiguous create (0.25 s x 1.5^n, 6 tries: 5.2 s)
    # outlasts the plan's 2 s visibility lag and fits one run's budget (0.6 x soft
    # limit = 9 s); a window longer than the budget requeues the order forever.
    "EXECQ_RETRY__LOOKUP_BASE_S": "0.25",
    **FAST_RETRY_ENV,
}


# Positions never age within a run: phases about create faults need no aged closes.
NO_AGED_ENV = {
    "EXECQ_AGED__MAX_AGE_S": str(7 * 24 * 3600),
    # Nothing to sweep: every second a sweep task in the broker would only break the quiet.
    "EXECQ_AGED_SWEEP_INTERVAL_S": "3600",
}


# --- options and result -------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosOptions:
    signals: int = 2000
    workers: int = 2
    concurrency: int = 16
    kills: int = 3
    # A worker stopped (SIGSTOP) past its lease on the orders it holds, then continued.
    pauses: int = 1
    restart_redis: bool = True
    restart_postgres: bool = True
    # Start a private PostgreSQL (which the run may restart) instead of using the configured one.
    private_postgres: bool = False
    rate: float = 40.0
    faults: bool = True
    seed: int = 1
    # None: a private redis-server (which the run may restart); else an empty database.
    redis_url: str | None = None
    database_url: str | None = None
    workdir: Path | None = None
    quiet_timeout_s: float = QUIET_TIMEOUT_S
    loglevel: str = "INFO"
    price_volatility: float = 0.0005
    # False: positions never age (``NO_AGED_ENV``), so no aged close runs.
    aged: bool = True
    # Run the stream holder (``execq streams``); with ``faults``, its streams get the
    # stream faults (``stream_fault_rules``, a cut connection every 30 s).
    streams: bool = True
    # The stream holder SIGKILLed, and another started that takes its leases over.
    stream_kills: int = 1


@dataclass
class Disruptions:
    """What was done to the processes and servers, for the report."""

    kills: int = 0
    pauses: int = 0
    stream_kills: int = 0
    worker_restarts: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    beat_restarts: int = 0
    streams_restarts: int = 0
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        return self.worker_restarts + self.redis_restarts + self.postgres_restarts

    def as_dict(self) -> dict[str, int]:
        return {
            "workers": self.worker_restarts,
            "redis": self.redis_restarts,
            "postgres": self.postgres_restarts,
            "beat": self.beat_restarts,
            "streams": self.streams_restarts,
        }


# --- the run ------------------------------------------------------------------------------


class ChaosRun:
    def __init__(self, run: Scratch, stack: Stack, options: ChaosOptions) -> None:
        self.run = run
        self.stack = stack
        self.options = options
        self.rng = random.Random(options.seed)
        self.app = client_app(run.redis_url, int(CHAOS_WORKER_ENV["EXECQ_VISIBILITY_TIMEOUT_S"]))
        self._restored_at = 0.0
        self.redis = redis.Redis.from_url(run.redis_url, socket_timeout=5)
        self.disruptions = Disruptions()
        # (seconds into the quiet wait, what was still busy) at every change.
        self.quiet_trace: list[tuple[float, list[str]]] = []
        self.nodes: list[str] = []
        # The plan of the phase, and what its rules fired before it was last re-posted.
        self._plan: dict[str, Any] = {}
        self._fired_before: dict[str, int] = {}
        self._streams_lock = threading.Lock()
        self.sim_url = ""
        self._sim: SimulatorClient | None = None
        # Every signal id of this stack starts with it; a phase adds its name.
        self.prefix = f"chaos-{options.seed}-{secrets.token_hex(2)}"
        from sqlalchemy import create_engine

        self.engine = create_engine(run.database_url, pool_size=2, pool_pre_ping=True)
        self.producer = Producer(self.app, self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.app.close()
        if self._sim is not None:
            self._sim.close()

    @property
    def simulator(self) -> SimulatorClient:
        if self._sim is None:
            raise RuntimeError("the chaos stack's simulator is not started")
        return self._sim

    # --- processes ---

    def start(self) -> None:
        self.sim_url = self.stack.start_simulator()
        # A long ledger (thousands of orders) takes a while to serialise.
        self._sim = SimulatorClient(self.sim_url, timeout_s=60)
        self._sim.reset(seed=self.options.seed)
        for index in range(self.options.workers):
            name = f"chaos{index + 1}-{self.options.seed}@localhost"
            self.stack.start_worker(
                name, concurrency=self.options.concurrency, loglevel=self.options.loglevel
            )
            self.nodes.append(name)
        self.stack.start_beat(loglevel=self.options.loglevel)
        if self.options.streams:
            self.stack.start_streams()

    def walk_prices(self) -> None:
        changes = [
            {
                "symbol": symbol,
                "walk": {
                    "steps": 0,
                    "volatility": self.options.price_volatility,
                    "interval_ms": 200,
                },
            }
            for symbol in BENCH_AMOUNTS
        ]
        self.simulator.set_prices(changes)

    def hold_prices(self) -> None:
        """Stop the walks at the current prices (setting a price stops its walk)."""
        prices = self.simulator.current_prices()
        changes = [
            {"exchange": exchange, "symbol": symbol, "price": price}
            for exchange, by_symbol in prices.items()
            for symbol, price in by_symbol.items()
        ]
        self.simulator.set_prices(changes)

    # --- sending ---

    def send(self, spec: SignalSpec) -> None:
        """Enqueue one signal; a broker that is restarting is waited for (a producer retries)."""
        deadline = time.monotonic() + SEND_RETRY_S
        recorded: list[OutboxMessage] = []
        while True:
            try:
                if recorded:
                    self.producer.publish(recorded)
                else:
                    self.producer.send("execute_market_order", spec.kwargs())
                return
            except NotEnqueued as exc:
                recorded, error = exc.messages, exc
            except (*BROKER_ERRORS, SQLAlchemyError) as exc:
                error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not enqueue {spec.signal_id}: {error}") from error
            time.sleep(0.2)  # backoff while the broker restarts, not synchronisation

    def send_stream(self, stream: list[SignalSpec]) -> float:
        """Send at ``rate`` per second (duplicates again a few slots later); returns seconds."""
        started = time.monotonic()
        later: dict[int, list[SignalSpec]] = {}
        for index, spec in enumerate(stream):
            delay = started + index / self.options.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the producer
            self.send(spec)
            if spec.duplicate:
                later.setdefault(index + self.rng.randint(1, 50), []).append(spec)
            for again in later.pop(index, []):
                self.send(again)
        for pending in later.values():
            for again in pending:
                self.send(again)
        return time.monotonic() - started

    # --- disruptions ---

    def schedule(self) -> list[tuple[float, str]]:
        """(share of signals processed, action) for every disruption, at seeded random moments.

        Moments are measured in progress, not seconds: the backlog is worked off
        long after the last signal is sent, and that is where the work is.
        """
        actions = ["kill"] * self.options.kills + ["pause"] * self.options.pauses
        if self.options.streams:
            actions += ["streams"] * self.options.stream_kills
        if self.options.restart_redis:
            actions.append("redis")
        if self.options.restart_postgres:
            actions.append("postgres")
        moments = sorted(self.rng.uniform(0.1, 0.9) for _ in actions)
        self.rng.shuffle(actions)
        return list(zip(moments, actions, strict=True))

    def processed(self, prefix: str) -> int:
        """Signals that have an order row or were refused by validation."""
        (count,) = self._query(
            "SELECT count(*) FROM (SELECT signal_id FROM orders WHERE signal_id LIKE :p "
            "UNION SELECT signal_id FROM events WHERE type = 'signal_rejected' "
            "AND signal_id LIKE :p) AS seen",
            p=prefix + "%",
        )
        return int(count)

    def wait_processed(self, prefix: str, target: int, stop: threading.Event) -> bool:
        """Block until ``target`` signals are processed; False when ``stop`` is set first."""
        while not stop.is_set():
            try:
                if self.processed(prefix) >= target:
                    return True
            except Exception as exc:  # noqa: BLE001 - PostgreSQL restarting: ask again
                logger.debug("progress query failed: %s", exc)
            stop.wait(_POLL_S)
        return False

    def disrupt(
        self, plan: list[tuple[float, str]], prefix: str, total: int, stop: threading.Event
    ) -> None:
        for share, action in plan:
            if not self.wait_processed(prefix, max(1, int(share * total)), stop):
                self.disruptions.notes.append(f"{action} not done: the run ended first")
                continue
            try:
                self._do(action)
            except (StackError, RuntimeError) as exc:
                self.disruptions.errors.append(f"{action}: {exc}"[:500])

    def _do(self, action: str) -> None:
        services = self.run.services
        if action == "kill":
            node = self.rng.choice(self.nodes)
            self.stack.kill_worker(node, signals.SIGKILL)
            self.disruptions.kills += 1
            self.stack.restart_worker(node)
            self.disruptions.worker_restarts += 1
        elif action == "streams":
            with self._streams_lock:
                self.stack.processes["streams"].kill(signals.SIGKILL)
                self.disruptions.stream_kills += 1
                # Ready once it holds every account's streams: after the dead holder's
                # leases expired (EXECQ_STREAMS__LEASE_TTL_S) and it reconciled them.
                self.stack.start_streams()
                self.disruptions.streams_restarts += 1
        elif action == "pause":
            node = self.rng.choice(self.nodes)
            worker = self.stack.worker(node)
            worker.signal_group(signals.SIGSTOP)
            try:
                # Past the worker's lease on every order it holds, so that another worker's
                # tracker may take them over while it sleeps.
                threading.Event().wait(PAUSE_PAST_LEASE_S)
            finally:
                worker.signal_group(signals.SIGCONT)
            self.disruptions.pauses += 1
        elif action == "redis":
            if "redis" not in services.started:
                self.disruptions.notes.append(
                    "Redis restart skipped: this run uses a given Redis it did not start"
                )
                return
            services.restart_redis(keep_data=True)
            self.disruptions.redis_restarts += 1
        elif action == "postgres":
            if "postgres" not in services.started:
                self.disruptions.notes.append(
                    "PostgreSQL restart skipped: this run uses a configured PostgreSQL it did "
                    "not start"
                )
                return
            services.restart_postgres(mode="fast")
            self.disruptions.postgres_restarts += 1

    # --- quiet ---

    def _query(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).one()

    def state(self, since_epoch: float) -> dict[str, Any]:
        """What still moves: signals the outbox has not seen arrive, orders in flight, unbooked
        fills, aged closes, queued messages."""
        in_flight, unbooked = self._query(
            "SELECT count(*) FILTER (WHERE status = ANY(:statuses)), "
            "count(*) FILTER (WHERE filled > booked_filled) FROM orders",
            statuses=list(IN_FLIGHT_STATUSES),
        )
        (closing,) = self._query("SELECT count(*) FROM aged_positions WHERE status = 'closing'")
        (sweeps,) = self._query(
            "SELECT count(*) FROM events WHERE type = 'recovery_sweep' "
            "AND occurred_at > to_timestamp(:since)",
            since=since_epoch,
        )
        queued = self.redis.llen("celery")
        unacked = self.redis.hlen("unacked")
        with self.engine.connect() as connection:
            undelivered = undelivered_count(connection)
        return {
            "undelivered": undelivered,
            "in_flight": int(in_flight),
            "unbooked": int(unbooked),
            "aged_closing": int(closing),
            "queued": int(queued),
            "unacked": int(unacked),
            "recovery_sweeps": int(sweeps),
        }

    def wait_processed_until(self, prefix: str, total: int, stop: threading.Event) -> bool:
        """Wait until every signal reached the pipeline; False when progress stalls.

        A signal whose task failed before writing anything never arrives: once
        nothing has moved for STALL_S (longer than the visibility timeout, so
        a killed worker's messages had their redelivery), stop waiting and let
        the audit count it lost.
        """
        deadline = time.monotonic() + self.options.quiet_timeout_s
        last_count, last_change = -1, time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            self.keep_beat()
            self.restore_unacked()
            try:
                count = self.processed(prefix)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL restarting: ask again
                logger.debug("progress query failed: %s", exc)
                count = last_count
            if count >= total:
                return True
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > STALL_S:
                break
            time.sleep(_POLL_S)  # polling an observable state with a deadline
        stop.set()
        return False

    def restore_unacked(self) -> None:
        """Put a killed worker's reserved messages back once their visibility timeout passed.

        Workers do this themselves, but kombu's Redis transport scans only every
        ``unacked_restore_interval x unacked_restore_throttle`` = 100 s by default,
        so a run would wait up to that long to be quiet. The scan is the same one
        a worker runs (under kombu's mutex); it only brings it forward.
        """
        if time.monotonic() - self._restored_at < RESTORE_EVERY_S:
            return
        self._restored_at = time.monotonic()
        try:
            with self.app.connection_for_write() as connection:
                connection.default_channel.qos.restore_visible(num=1000, interval=1)
        except Exception as exc:  # noqa: BLE001 - the broker may be restarting
            logger.debug("restore of unacked messages failed: %s", exc)

    def keep_beat(self) -> None:
        beat = self.stack.processes.get("beat")
        if beat is not None and not beat.alive:
            self.stack.start_beat(loglevel=self.options.loglevel)
            self.disruptions.beat_restarts += 1
            self.disruptions.notes.append("beat exited during the run and was started again")
        streams = self.stack.processes.get("streams")
        # Not while a disruption replaces the holder on purpose.
        if streams is not None and not streams.alive and self._streams_lock.acquire(False):
            try:
                self.stack.start_streams()
                self.disruptions.streams_restarts += 1
                self.disruptions.notes.append(
                    f"the stream holder exited ({streams.returncode}) and was started again"
                )
            finally:
                self._streams_lock.release()

    def wait_quiet(self, sweep_after: float) -> tuple[bool, dict[str, Any]]:
        """Poll until quiet holds for QUIET_HOLD_S and a recovery sweep ran after ``sweep_after``
        (epoch seconds); False on timeout."""
        started = time.monotonic()
        deadline = started + self.options.quiet_timeout_s
        quiet_since: float | None = None
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.keep_beat()
            self.restore_unacked()
            try:
                last = self.state(sweep_after)
            except Exception as exc:  # noqa: BLE001 - a server coming back: ask again
                last = {"error": str(exc)[:200]}
                quiet_since = None
                time.sleep(_POLL_S)
                continue
            quiet = (
                last["recovery_sweeps"] > 0
                and last["undelivered"] == 0
                and last["in_flight"] == 0
                and last["unbooked"] == 0
                and last["aged_closing"] == 0
                and last["queued"] == 0
                and last["unacked"] == 0
            )
            busy = sorted(
                key
                for key in (
                    "undelivered",
                    "in_flight",
                    "unbooked",
                    "aged_closing",
                    "queued",
                    "unacked",
                )
                if last[key]
            ) + ([] if last["recovery_sweeps"] else ["no_recovery_sweep_yet"])
            if not self.quiet_trace or self.quiet_trace[-1][1] != busy:
                self.quiet_trace.append((round(time.monotonic() - started, 1), busy))
            if not quiet:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_HOLD_S:
                return True, last
            time.sleep(_POLL_S)  # polling an observable state with a deadline
        return False, last

    def aged_summary(self) -> dict[str, int]:
        """Aged episodes by status, and how many closes went through the exchange."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            by_status = dict(
                connection.execute(
                    text("SELECT status, count(*) FROM aged_positions GROUP BY status")
                ).all()
            )
            (orders,) = connection.execute(
                text("SELECT count(*) FROM orders WHERE aged_id IS NOT NULL")
            ).one()
        return {**{str(k): int(v) for k, v in by_status.items()}, "close_orders": int(orders)}

    def diagnose_mismatches(self, mismatches: list[str]) -> dict[str, Any]:
        """Per mismatched book: what Postgres and the exchange ledger say about its orders."""
        from sqlalchemy import text

        ledger = self.simulator.ledger()
        found: dict[str, Any] = {}
        with self.engine.connect() as connection:
            for line in mismatches[:3]:
                account, symbol = line.split(":")[0].split(" ")[:2]
                symbol = line.split(" ")[1].rstrip(":")
                rows = connection.execute(
                    text(
                        "SELECT client_order_id, purpose, side, amount, filled, booked_filled, "
                        "status, verification FROM orders WHERE account = :a AND symbol = :s "
                        "ORDER BY id DESC LIMIT 12"
                    ),
                    {"a": account, "s": symbol},
                ).all()
                positions = connection.execute(
                    text(
                        "SELECT id, side, size, status, close_reason FROM positions "
                        "WHERE account = :a AND symbol = :s ORDER BY id DESC LIMIT 4"
                    ),
                    {"a": account, "s": symbol},
                ).all()
                on_exchange = [
                    f"{o['clientOrderId']} {o['side']} {o['filled']}/{o['amount']} {o['status']}"
                    for o in ledger
                    if o["exchange"] == account and o["symbol"] == symbol
                ][-12:]
                events = connection.execute(
                    text(
                        "SELECT type, client_order_id, payload::text FROM events "
                        "WHERE account = :a AND symbol = :s AND (type LIKE 'position%' "
                        "OR type IN ('orphan_adopted', 'closed_externally', 'aged_closed', "
                        "'aged_detected')) ORDER BY id DESC LIMIT 16"
                    ),
                    {"a": account, "s": symbol},
                ).all()
                found[line] = {
                    "events": [" ".join(map(str, row))[:220] for row in events],
                    "orders": [" ".join(map(str, row)) for row in rows],
                    "positions": [" ".join(map(str, row)) for row in positions],
                    "ledger": on_exchange,
                }
        return found

    def diagnose(self, lost: list[str], stuck_aged: list[int]) -> dict[str, Any]:
        """The rows and events behind each problem the audit found (first few of each)."""
        from sqlalchemy import text

        found: dict[str, Any] = {}
        with self.engine.connect() as connection:
            for signal_id in lost[:10]:
                orders = connection.execute(
                    text(
                        "SELECT client_order_id, leg, status, filled, attempts, last_error "
                        "FROM orders WHERE signal_id = :s"
                    ),
                    {"s": signal_id},
                ).all()
                events = connection.execute(
                    text("SELECT type FROM events WHERE signal_id = :s ORDER BY id"),
                    {"s": signal_id},
                ).scalars()
                found[signal_id] = {
                    "orders": [list(map(str, row)) for row in orders],
                    "events": list(events),
                }
            for aged_id in stuck_aged[:10]:
                row = connection.execute(
                    text(
                        "SELECT status, phase, attempts, consecutive_failures, last_error, "
                        "target_price, target_reached_at FROM aged_positions WHERE id = :a"
                    ),
                    {"a": aged_id},
                ).one_or_none()
                events = connection.execute(
                    text(
                        "SELECT type, payload::text FROM events WHERE aged_id = :a "
                        "ORDER BY id DESC LIMIT 8"
                    ),
                    {"a": aged_id},
                ).all()
                found[f"aged-{aged_id}"] = {
                    "row": None if row is None else list(map(str, row)),
                    "events": [f"{kind} {payload[:200]}" for kind, payload in events],
                }
        return found

    def final_recovery(self) -> dict[str, Any]:
        """Run a recovery sweep that sees no symbol as busy, and return its counts.

        The sweep leaves alone any symbol with order or position activity in
        the last ``EXECQ_RECOVERY_STUCK_AFTER_S``, so it waits until the newest
        change is older than that, then asks for a sweep and waits for its result.
        """
        from sqlalchemy import text

        stuck_after_s = float(CHAOS_WORKER_ENV["EXECQ_RECOVERY_STUCK_AFTER_S"]) + 1
        deadline = time.monotonic() + self.options.quiet_timeout_s
        while time.monotonic() < deadline:
            with self.engine.connect() as connection:
                (still_for,) = connection.execute(
                    text(
                        "SELECT extract(epoch FROM now() - greatest("
                        "(SELECT max(updated_at) FROM orders), "
                        "(SELECT max(updated_at) FROM positions)))"
                    )
                ).one()
            if still_for is None or float(still_for) >= stuck_after_s:
                break
            time.sleep(_POLL_S)  # polling an observable state with a deadline
        while time.monotonic() < deadline:
            counts = self.app.send_task("recovery_sweep").get(timeout=120)
            if not (isinstance(counts, dict) and "skipped" in counts):
                return counts if isinstance(counts, dict) else {"result": counts}
            time.sleep(_POLL_S)  # another sweep holds the lock: ask again shortly
        return {"error": "no recovery sweep ran before the deadline"}

    def trigger_recovery(self) -> None:
        self.app.send_task("recovery_sweep")

    def install_faults(self, plan: dict[str, Any] | None) -> None:
        self._plan = plan or {}
        self._fired_before = {}
        self.simulator.faults(self._plan)

    def cut_streams(self, sim: SimulatorClient, tick: int) -> None:
        """Re-post the phase's plan with one more cut connection per streaming exchange.

        The simulator's plans have no schedule; posting replaces the plan and its
        counts, so what the rules fired so far is kept here (``lift_faults`` adds it).
        """
        fired = _fired(sim.fault_rules())
        for kind, count in fired.items():
            self._fired_before[kind] = self._fired_before.get(kind, 0) + count
        sim.faults(
            {
                # A new seed: the same one would draw the same faults again.
                "seed": int(self._plan.get("seed", self.options.seed)) * 1000 + tick,
                "rules": [*self._plan.get("rules", []), *stream_disconnect_rules(tick)],
            }
        )

    def cut_streams_every(self, every_s: float, stop: threading.Event) -> None:
        # A client of this thread's own: a requests session is not shared between threads.
        sim = SimulatorClient(self.sim_url, timeout_s=60)
        tick = 0
        try:
            while not stop.wait(every_s):
                try:
                    self.cut_streams(sim, tick)
                except (SimulatorError, requests.RequestException) as exc:
                    self.disruptions.errors.append(f"stream disconnect: {exc}"[:500])
                tick += 1
        finally:
            sim.close()

    def lift_faults(self) -> dict[str, Any]:
        """Clear the fault plan; returns it as it was, with each rule's ``fired`` count
        (``fired_before``: what earlier postings of the phase's plan fired)."""
        rules = self.simulator.fault_rules()
        self.simulator.faults({})
        self._plan = {}
        return {"rules": rules, "fired_before": dict(self._fired_before)}

    def stream_messages(self) -> dict[str, int]:
        """Pushed stream messages since the simulator's reset, by what the faults did to them
        (``sent``, ``stream_drop``, ``stream_delay``, ``stream_disconnect``, ...), summed
        over exchanges and streams."""
        counts: dict[str, int] = {}
        streams = self.simulator.streams()
        for by_stream in streams.get("messages", {}).values():
            for by_fate in by_stream.values():
                for fate, count in by_fate.items():
                    counts[fate] = counts.get(fate, 0) + int(count)
        return counts

    # --- one phase: a stream under a fault plan, quiet, audit ---

    def phase(
        self,
        name: str,
        plan: dict[str, Any] | None,
        signals: int,
        *,
        disrupt: bool = False,
        faults_until_quiet: bool = False,
    ) -> dict[str, Any]:
        """Send ``signals`` signals under ``plan`` (None: no faults), wait until quiet and
        audit those signals; returns the report ``run_chaos`` returns.

        ``disrupt``: the kills and restarts of the options, at seeded moments of the
        phase (``schedule``). The faults are lifted once every signal has reached
        the pipeline, or with ``faults_until_quiet`` once the phase is quiet, so
        that the follow-ups, flat checks and recovery sweeps run under them too (a
        positions lag only shows there).

        Between phases the simulator keeps its orders and positions (only the
        fault plan is replaced): duplicates, orphans, stuck orders and missing
        events are audited over everything the stack did, ``lost`` over this
        phase's signals; ``kills``/``restarts`` count since the stack started.
        """
        from workers.harness.audit import audit, fills_by_channel
        from workers.settings import get_settings

        started = time.monotonic()
        self.quiet_trace = []
        self.install_faults(plan)
        streaming = self.options.streams and any(
            rule["kind"] in STREAM_FAULT_KINDS for rule in (plan or {}).get("rules", [])
        )
        if self.options.price_volatility:
            self.walk_prices()
        prefix = f"{self.prefix}-{name}"
        stream = plan_signals(signals, self.rng, prefix)
        schedule = self.schedule() if disrupt else []
        stop = threading.Event()
        disruptor = threading.Thread(
            target=self.disrupt, args=(schedule, prefix + "-", len(stream), stop), daemon=True
        )
        disruptor.start()
        cutter = threading.Thread(
            target=self.cut_streams_every, args=(STREAM_DISCONNECT_EVERY_S, stop), daemon=True
        )
        if streaming:
            cutter.start()
        send_seconds = self.send_stream(stream)
        # Faults stay on until every signal has reached the pipeline (its intent
        # row or its refusal), so the whole stream runs under them.
        processed = self.wait_processed_until(prefix + "-", len(stream), stop)
        disruptor.join(timeout=self.options.quiet_timeout_s)
        stop.set()
        if streaming:
            cutter.join(timeout=60)
        fault_stats = {} if faults_until_quiet else self.lift_faults()
        if self.options.price_volatility:
            self.hold_prices()
        settling_since = time.time()
        self.trigger_recovery()
        quiet_started = time.monotonic()
        quiet, state = self.wait_quiet(settling_since)
        final_recovery: dict[str, Any] = {}
        if quiet and self.options.aged:
            # An aged close can leave the book off while fills are unbooked: one
            # more sweep once the book has been still long enough for the sweep to
            # reconcile every symbol.
            final_recovery = self.final_recovery()
            quiet, state = self.wait_quiet(settling_since)
        quiet_seconds = time.monotonic() - quiet_started
        if faults_until_quiet:
            fault_stats = self.lift_faults()
        report = audit(get_settings(), self.sim_url, [spec.signal_id for spec in stream])
        details = report.details
        by_source = details.get("fills_by_source") or {}
        return {
            "signals": report.signals,
            "terminal": report.terminal,
            "duplicates": report.duplicates,
            "lost": report.lost,
            "orphans": report.orphans,
            "stuck": report.stuck,
            "missing_events": report.missing_events,
            "kills": self.disruptions.kills,
            "pauses": self.disruptions.pauses,
            "stream_kills": self.disruptions.stream_kills,
            "restarts": self.disruptions.restarts,
            "seconds": round(time.monotonic() - started, 1),
            "clean": report.clean and quiet,
            "quiet": quiet,
            "seed": self.options.seed,
            "workers": self.options.workers,
            "restart_details": self.disruptions.as_dict(),
            "send_seconds": round(send_seconds, 1),
            "all_processed_under_faults": processed,
            "quiet_seconds": round(quiet_seconds, 1),
            "aged": self.aged_summary(),
            "orders": report.orders,
            "ledger_orders": report.ledger_orders,
            "rejected_signals": details.get("rejected_signals"),
            "redelivered_signals": details.get("redelivered_signals"),
            "alerts": details.get("alerts"),
            "mix": _mix(stream),
            "faults": _fired(fault_stats.get("rules", []), fault_stats.get("fired_before")),
            # Filled orders by how their fill reached execq (over everything the stack did).
            "fills": fills_by_channel(by_source),
            "fills_by_source": by_source,
            "stream_messages": self.stream_messages() if self.options.streams else {},
            "final_state": state,
            "quiet_trace": self.quiet_trace[-20:],
            "final_recovery": final_recovery,
            "problems": {
                key: details.get(key)
                for key in (
                    "duplicate_client_ids",
                    "lost_signals",
                    "in_flight_orders",
                    "stuck_aged",
                    "position_mismatches",
                    "missing_events",
                )
                if details.get(key)
            },
            "diagnosis": {
                **self.diagnose(details.get("lost_signals") or [], details.get("stuck_aged") or []),
                **self.diagnose_mismatches(details.get("position_mismatches") or []),
            },
            "notes": self.run.notes + self.disruptions.notes + self.disruptions.errors,
        }


def _database_url(options: ChaosOptions) -> str | None:
    """The PostgreSQL URL for ``scratch``: with ``private_postgres`` one where nothing listens
    (``ensure_services`` then starts a private server, which a run may restart)."""
    if options.private_postgres:
        return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/execq_chaos"
    return options.database_url


def worker_env(options: ChaosOptions) -> dict[str, str]:
    """``CHAOS_WORKER_ENV``, without aged closes when ``options.aged`` is off."""
    return {**CHAOS_WORKER_ENV, **({} if options.aged else NO_AGED_ENV)}


@contextlib.contextmanager
def chaos_stack(**overrides: Any) -> Iterator[ChaosRun]:
    """Scratch servers, simulator, workers and beat started once; ``phase`` runs on them.

    Everything is stopped and the scratch databases dropped when the block ends.
    """
    options = ChaosOptions(**overrides)
    with contextlib.ExitStack() as cleanup:
        workdir = Path(
            options.workdir
            or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="execq-chaos-"))
        )
        run = cleanup.enter_context(
            scratch(
                "chaos",
                workdir=workdir,
                redis_url=options.redis_url,
                database_url=_database_url(options),
            )
        )
        stack = cleanup.enter_context(
            Stack(env=run.env(worker_env(options)), workdir=workdir / "stack")
        )
        chaos = ChaosRun(run, stack, options)
        cleanup.callback(chaos.close)
        chaos.start()
        yield chaos


def run_chaos(**overrides: Any) -> dict[str, Any]:
    """Run the chaos scenario; returns the report (the JSON ``execq chaos --json`` prints)."""
    started = time.monotonic()
    with chaos_stack(**overrides) as chaos:
        options = chaos.options
        plan = default_plan(options.seed, streams=options.streams) if options.faults else None
        result = chaos.phase("run", plan, options.signals, disrupt=True)
        result["seconds"] = round(time.monotonic() - started, 1)
        result["workdir"] = str(options.workdir) if options.workdir else None
        return result
    raise AssertionError("unreachable")


def _fired(rules: list[dict[str, Any]], before: dict[str, int] | None = None) -> dict[str, int]:
    """How often each fault kind fired (per-symbol rules of one kind added up), plus
    ``before``."""
    fired: dict[str, int] = dict(before or {})
    for rule in rules:
        fired[rule["kind"]] = fired.get(rule["kind"], 0) + int(rule.get("fired", 0))
    return fired


def _mix(stream: list[SignalSpec]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for spec in stream:
        counts[spec.kind] = counts.get(spec.kind, 0) + 1
    counts["duplicated"] = sum(1 for spec in stream if spec.duplicate)
    return counts


__all__ = [
    "ChaosOptions",
    "chaos_stack",
    "default_plan",
    "fault_plan",
    "plan_signals",
    "run_chaos",
    "single_fault_plans",
]
