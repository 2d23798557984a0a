"""Fault plans: which requests misbehave, how, and how often.

A plan is posted as JSON to ``POST /_sim/faults`` and replaces the previous
one (``{}`` clears it)::

    {"seed": 7, "rules": [
        {"exchange": "binance", "operation": "create_order",
         "kind": "timeout_after_accept", "count": 1, "hang_ms": 1500},
        {"kind": "latency", "latency_ms": 20, "jitter_ms": 10}
    ]}

Every rule names a ``kind`` and may narrow where it applies with
``exchange`` (``binance``/``bybit``/``okx``/``any``), ``operation`` (see
``OPERATIONS``, or ``any``) and ``symbol`` (a unified symbol). How often it
fires: ``count`` (the next N matching requests), ``probability`` (each
matching request, drawn from the plan's seeded generator), both (at most N
times, each with that probability) or neither (always).

Rules are looked at in order. *Effects* (``latency``, ``partial_fill``,
``visibility_lag``, ``positions_lag``) all apply when they fire; of the
*outcomes* (everything else) only the first that fires is used, and later
outcome rules are not consumed for that request.

The stream kinds (``STREAM_KINDS``) apply to the messages the WebSocket streams
push, never to REST requests, and REST kinds never to stream messages. Their
``operation`` is the stream: ``private_stream`` (orders, fills, positions) or
``public_stream`` (prices). ``stream_delay`` is an effect; the others are outcomes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from exchange_sim.markets import EXCHANGES

OPERATIONS = (
    "create_order",
    "fetch_order",
    "cancel_order",
    "open_orders",
    "order_history",
    "positions",
    "tickers",
    "balance",
    "markets",
    "time",
    "account",
    "listen_key",
    "other",
)

# kind -> operation used when the rule does not name one.
EFFECT_KINDS = {
    "latency": "any",
    "partial_fill": "create_order",
    "visibility_lag": "create_order",
    "positions_lag": "positions",
}
OUTCOME_KINDS = {
    "rate_limit": "any",
    "ip_ban": "any",
    "server_error": "any",
    "unknown_status": "any",
    "timeout_before_accept": "any",
    "timeout_after_accept": "any",
    "insufficient_margin": "create_order",
    "auth_refused": "create_order",
}
STREAM_OPERATIONS = ("private_stream", "public_stream")
# kind -> operation used when the rule does not name one.
STREAM_KINDS = {
    "stream_delay": "any",
    "stream_drop": "any",
    "stream_disconnect": "any",
    "stream_stall": "any",
    "listen_key_expired": "private_stream",
}
KINDS = {**EFFECT_KINDS, **OUTCOME_KINDS, **STREAM_KINDS}

DEFAULT_HANG_MS = 1500
DEFAULT_RETRY_AFTER_S = 1


class FaultPlanError(ValueError):
    """The posted plan is malformed; the message names the rule and field."""


@dataclass(slots=True)
class FaultRule:
    index: int
    kind: str
    exchange: str = "any"
    operation: str = "any"
    symbol: str | None = None
    count: int | None = None
    probability: float | None = None
    latency_ms: int = 0
    jitter_ms: int = 0
    hang_ms: int = DEFAULT_HANG_MS
    lag_ms: int = 0
    delay_ms: int = 0
    fraction: Decimal = Decimal("0.5")
    status: int = 503
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    accept: bool = False
    fired: int = 0

    @property
    def is_effect(self) -> bool:
        return self.kind in EFFECT_KINDS

    def matches(self, exchange: str, operation: str, symbol: str | None) -> bool:
        if self.exchange != "any" and self.exchange != exchange:
            return False
        if self.operation != "any" and self.operation != operation:
            return False
        return self.symbol is None or self.symbol == symbol

    def try_fire(self, rng: random.Random) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.probability is not None and rng.random() >= self.probability:
            return False
        if self.count is not None:
            self.count -= 1
        self.fired += 1
        return True

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "kind": self.kind,
            "exchange": self.exchange,
            "operation": self.operation,
            "fired": self.fired,
        }
        if self.symbol is not None:
            described["symbol"] = self.symbol
        if self.count is not None:
            described["remaining"] = self.count
        if self.probability is not None:
            described["probability"] = self.probability
        return described


@dataclass(slots=True)
class FaultDecision:
    """What the plan says about one request."""

    delay_s: float = 0.0
    outcome: FaultRule | None = None
    partial_fraction: Decimal | None = None
    visibility_lag_ms: int = 0
    positions_lag_ms: int = 0


NO_FAULTS = FaultDecision()


@dataclass(slots=True)
class StreamFaultDecision:
    """What the plan says about one stream message."""

    delay_s: float = 0.0
    outcome: FaultRule | None = None


NO_STREAM_FAULTS = StreamFaultDecision()


@dataclass(slots=True)
class FaultPlan:
    seed: int
    rules: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def decide(self, exchange: str, operation: str, symbol: str | None) -> FaultDecision:
        if not self.rules:
            return NO_FAULTS
        decision = FaultDecision()
        for rule in self.rules:
            if rule.kind in STREAM_KINDS:
                continue
            if not rule.is_effect and decision.outcome is not None:
                continue
            if not rule.matches(exchange, operation, symbol) or not rule.try_fire(self.rng):
                continue
            if rule.kind == "latency":
                jitter = self.rng.uniform(0, rule.jitter_ms) if rule.jitter_ms else 0.0
                decision.delay_s += (rule.latency_ms + jitter) / 1000
            elif rule.kind == "partial_fill":
                decision.partial_fraction = rule.fraction
            elif rule.kind == "visibility_lag":
                decision.visibility_lag_ms = max(decision.visibility_lag_ms, rule.lag_ms)
            elif rule.kind == "positions_lag":
                decision.positions_lag_ms = max(decision.positions_lag_ms, rule.lag_ms)
            else:
                decision.outcome = rule
        return decision

    def decide_stream(
        self, exchange: str, stream: str, symbol: str | None, has_listen_key: bool
    ) -> StreamFaultDecision:
        """The faults for one message about to be pushed on ``stream`` (see STREAM_KINDS)."""
        if not self.rules:
            return NO_STREAM_FAULTS
        decision: StreamFaultDecision | None = None
        for rule in self.rules:
            if rule.kind not in STREAM_KINDS:
                continue
            is_delay = rule.kind == "stream_delay"
            if not is_delay and decision is not None and decision.outcome is not None:
                continue
            if rule.kind == "listen_key_expired" and not has_listen_key:
                continue
            if not rule.matches(exchange, stream, symbol) or not rule.try_fire(self.rng):
                continue
            decision = decision or StreamFaultDecision()
            if is_delay:
                decision.delay_s += rule.delay_ms / 1000
            else:
                decision.outcome = rule
        return decision or NO_STREAM_FAULTS

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "rules": [rule.describe() for rule in self.rules]}


def parse_plan(payload: object, default_seed: int) -> FaultPlan:
    """Build a plan from the posted JSON; raise FaultPlanError on anything malformed."""
    if payload is None or payload == {}:
        return FaultPlan(seed=default_seed)
    if not isinstance(payload, dict):
        raise FaultPlanError("a fault plan is a JSON object with 'rules' (a list) and 'seed'")
    unknown = set(payload) - {"seed", "rules"}
    if unknown:
        raise FaultPlanError(f"unknown plan fields: {sorted(unknown)}")
    seed = payload.get("seed", default_seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FaultPlanError("'seed' must be an integer")
    raw_rules = payload.get("rules", [])
    if not isinstance(raw_rules, list):
        raise FaultPlanError("'rules' must be a list")
    return FaultPlan(seed=seed, rules=[_parse_rule(i, raw) for i, raw in enumerate(raw_rules)])


_RULE_FIELDS = {
    "kind",
    "exchange",
    "operation",
    "symbol",
    "count",
    "probability",
    "latency_ms",
    "jitter_ms",
    "hang_ms",
    "lag_ms",
    "delay_ms",
    "fraction",
    "status",
    "retry_after_s",
    "accept",
}


def _parse_rule(index: int, raw: object) -> FaultRule:
    where = f"rule {index}"
    if not isinstance(raw, dict):
        raise FaultPlanError(f"{where}: must be an object")
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise FaultPlanError(f"{where}: unknown fields {sorted(unknown)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise FaultPlanError(f"{where}: 'kind' must be one of {sorted(KINDS)}")
    exchange = raw.get("exchange", "any")
    if exchange != "any" and exchange not in EXCHANGES:
        raise FaultPlanError(f"{where}: 'exchange' must be any or one of {list(EXCHANGES)}")
    operation = raw.get("operation", KINDS[kind])
    operations = STREAM_OPERATIONS if kind in STREAM_KINDS else OPERATIONS
    if operation != "any" and operation not in operations:
        raise FaultPlanError(f"{where}: 'operation' must be any or one of {list(operations)}")
    symbol = raw.get("symbol")
    if symbol is not None and not isinstance(symbol, str):
        raise FaultPlanError(f"{where}: 'symbol' must be a unified symbol string")
    rule = FaultRule(index=index, kind=kind, exchange=exchange, operation=operation, symbol=symbol)
    if "count" in raw:
        rule.count = _int(raw["count"], where, "count", minimum=0)
    if "probability" in raw:
        probability = raw["probability"]
        if not isinstance(probability, int | float) or isinstance(probability, bool):
            raise FaultPlanError(f"{where}: 'probability' must be a number")
        if not 0 <= probability <= 1:
            raise FaultPlanError(f"{where}: 'probability' must be between 0 and 1")
        rule.probability = float(probability)
    rule.latency_ms = _int(raw.get("latency_ms", 0), where, "latency_ms", minimum=0)
    rule.jitter_ms = _int(raw.get("jitter_ms", 0), where, "jitter_ms", minimum=0)
    rule.hang_ms = _int(raw.get("hang_ms", DEFAULT_HANG_MS), where, "hang_ms", minimum=0)
    rule.lag_ms = _int(raw.get("lag_ms", 0), where, "lag_ms", minimum=0)
    rule.delay_ms = _int(raw.get("delay_ms", 0), where, "delay_ms", minimum=0)
    rule.retry_after_s = _int(
        raw.get("retry_after_s", DEFAULT_RETRY_AFTER_S), where, "retry_after_s", minimum=0
    )
    rule.status = _int(raw.get("status", 503), where, "status", minimum=500)
    if rule.status > 599:
        raise FaultPlanError(f"{where}: 'status' must be a 5xx code")
    accept = raw.get("accept", False)
    if not isinstance(accept, bool):
        raise FaultPlanError(f"{where}: 'accept' must be true or false")
    rule.accept = accept
    if "fraction" in raw:
        try:
            fraction = Decimal(str(raw["fraction"]))
        except InvalidOperation:
            raise FaultPlanError(f"{where}: 'fraction' must be a decimal") from None
        if not Decimal(0) <= fraction <= Decimal(1):
            raise FaultPlanError(f"{where}: 'fraction' must be between 0 and 1")
        rule.fraction = fraction
    return rule


def _int(value: object, where: str, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FaultPlanError(f"{where}: '{name}' must be an integer >= {minimum}")
    return value
