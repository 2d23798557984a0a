"""TradingView alerts as signals: the message format, the ticker rule, the signal id.

TradingView posts the alert's message as the request body (``text/plain``, or
``application/json`` when the message is JSON) and cannot set headers, so the
producer's key travels in the body's ``secret``. The message template (README,
docs/api.md) fills these fields from TradingView's placeholders::

    action     {{strategy.order.action}}     buy | sell
    ticker     {{ticker}}                    ETHUSDT.P, or with {{exchange}}: BINANCE:ETHUSDT.P
    contracts  {{strategy.order.contracts}}  the amount, in the base asset
    order_id   {{strategy.order.id}}         the strategy's order name (Long, Exit, ...)
    timestamp  {{timenow}}                   when the alert fired, ISO 8601 UTC

plus ``exchange`` (the execq account) and optionally ``price`` (a limit order),
``time_in_force``, ``reduce_only``, ``purpose`` and ``leg`` as in the order schema.

**Ticker rule.** The key's ``symbols`` map is asked first (the ticker as sent,
then without its ``EXCHANGE:`` prefix). Otherwise the prefix is dropped, then
TradingView's perpetual suffix ``.P``, and what is left is read as the linear
perpetual it names: ``BINANCE:ETHUSDT.P``, ``ETHUSDT.P`` and ``ETHUSDT`` are all
``ETH/USDT:USDT`` (a base followed by the quote USDT or USDC). A ticker the rule
cannot read is refused, naming the map to add it to.

**Signal id.** ``tv-<key name>-<order id>-<time as 20260101T120000Z>``: the same
alert retried by TradingView carries the same order id and ``timenow``, so it is
the same signal and is executed once. When that is longer than the signal id
limit, or the order id is not printable text, the order id and time are replaced
by the first 20 hex digits of their SHA-256 (still the same for a retry).

**Staleness.** A ``timestamp`` further than ``max_lag_s`` from now (either way)
is refused (``StaleAlert``): a replayed or long-delayed alert must not trade.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from workers.execution.signal import (
    LIMIT_TASK,
    MARKET_TASK,
    SignalRejected,
    plain_decimal,
    rejection_from_errors,
    shown,
    unified_symbol_hint,
)

SIGNAL_ID_PREFIX = "tv"
PERPETUAL_SUFFIX = ".P"
MAX_TICKER_CHARS = 64
MAX_ORDER_ID_CHARS = 128
_READABLE_ORDER_ID = re.compile(r"[A-Za-z0-9_.:+#@ -]{1,64}")

Number = StrictStr | StrictInt | Decimal


class TradingViewAlert(BaseModel):
    """The body of ``POST /v1/webhooks/tradingview``: a TradingView alert message."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    secret: StrictStr | None = Field(
        default=None,
        description="The API key (a key with the `signal` scope); TradingView cannot send "
        "headers. Omit it when sending `Authorization: Bearer`.",
    )
    exchange: StrictStr = Field(description="The execq account, e.g. `binance`.")
    ticker: StrictStr = Field(
        max_length=MAX_TICKER_CHARS,
        description="`{{ticker}}` or `{{exchange}}:{{ticker}}`; mapped by the ticker rule.",
    )
    action: StrictStr = Field(description="`{{strategy.order.action}}`: `buy` or `sell`.")
    contracts: Number = Field(description="`{{strategy.order.contracts}}`: the amount.")
    order_id: StrictStr = Field(
        min_length=1,
        max_length=MAX_ORDER_ID_CHARS,
        description="`{{strategy.order.id}}`: with the time, the signal id.",
    )
    timestamp: StrictStr | StrictInt | Decimal = Field(
        description="`{{timenow}}` (ISO 8601 UTC), or Unix seconds or milliseconds."
    )
    price: Number | None = Field(default=None, description="A limit price (a limit order).")
    time_in_force: StrictStr | None = Field(default=None, description="`GTC` or `IOC`.")
    reduce_only: StrictBool = Field(default=False, description="Only reduce a position.")
    purpose: StrictStr | None = Field(default=None, description="As in the order schema.")
    leg: StrictStr | None = Field(default=None, description="As in the order schema.")


class StaleAlert(SignalRejected):
    """The alert's timestamp is further from now than the allowed lag."""


def parse_alert(payload: object) -> TradingViewAlert:
    """The alert from a decoded body; raises ``SignalRejected`` with the one-line reason."""
    try:
        return TradingViewAlert.model_validate(payload)
    except ValidationError as exc:
        raise rejection_from_errors(exc.errors(include_url=False, include_input=False)) from None


def alert_time(value: str | int | Decimal) -> datetime:
    """The alert's time: ISO 8601 (``{{timenow}}``), or Unix seconds or milliseconds."""
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise SignalRejected.of(
                "timestamp", f"must be ISO 8601 such as '2026-01-01T12:00:00Z', got {shown(value)}"
            ) from None
        if parsed.tzinfo is None:
            raise SignalRejected.of("timestamp", f"has no time zone: {shown(value)}")
        return parsed.astimezone(UTC)
    try:
        number = Decimal(value)
        # Milliseconds from about 2001 on; seconds before then would be 1970s dates.
        seconds = number / 1000 if abs(number) >= 10**12 else number
        return datetime.fromtimestamp(float(seconds), UTC)
    except (ArithmeticError, ValueError, OverflowError, OSError):
        raise SignalRejected.of("timestamp", f"is not a time: {shown(value)}") from None


def check_fresh(fired_at: datetime, now: datetime, max_lag_s: float) -> None:
    """Raises ``StaleAlert`` when ``fired_at`` is more than ``max_lag_s`` from ``now``."""
    lag_s = (now - fired_at).total_seconds()
    if lag_s > max_lag_s:
        raise StaleAlert(
            f"timestamp: is {lag_s:.0f} s old, more than the {max_lag_s:g} s allowed "
            "(EXECQ_API_TRADINGVIEW_MAX_LAG_S)",
            "timestamp",
        )
    if -lag_s > max_lag_s:
        raise StaleAlert(
            f"timestamp: is {-lag_s:.0f} s in the future, more than the {max_lag_s:g} s allowed "
            "(EXECQ_API_TRADINGVIEW_MAX_LAG_S)",
            "timestamp",
        )


def ticker_symbol(ticker: str, symbols: Mapping[str, str]) -> str:
    """execq's symbol for a TradingView ticker (the key's map, then the rule)."""
    bare = ticker.rpartition(":")[2].strip()
    for candidate in (ticker, bare):
        if candidate in symbols:
            return symbols[candidate]
    name = bare.upper().removesuffix(PERPETUAL_SUFFIX)
    hint = unified_symbol_hint(name) if name.isalnum() else None
    if hint is None:
        raise SignalRejected.of(
            "ticker",
            f"{shown(ticker)} names no USDT or USDC perpetual; map it in the key's "
            "'symbols' (EXECQ_API_KEYS)",
        )
    return hint


def alert_signal_id(key_name: str, order_id: str, fired_at: datetime, max_length: int) -> str:
    """The signal id of an alert: the same for TradingView's retries of it."""
    stamp = fired_at.strftime("%Y%m%dT%H%M%SZ")
    readable = f"{SIGNAL_ID_PREFIX}-{key_name}-{order_id}-{stamp}"
    if len(readable) <= max_length and _READABLE_ORDER_ID.fullmatch(order_id):
        return readable
    digest = hashlib.sha256(f"{order_id}\n{stamp}".encode()).hexdigest()[:20]
    return f"{SIGNAL_ID_PREFIX}-{key_name}-{digest}"


def _amount_text(value: str | int | Decimal) -> str | int:
    return plain_decimal(value) if isinstance(value, Decimal) and value.is_finite() else value


def alert_order(
    alert: TradingViewAlert,
    *,
    key_name: str,
    symbols: Mapping[str, str],
    now: datetime,
    max_lag_s: float,
    max_signal_id_length: int,
) -> tuple[str, dict[str, Any]]:
    """The order task and its arguments for ``alert``; raises ``SignalRejected`` (a field
    the rule cannot read) or ``StaleAlert``. The arguments still pass the order schema's
    checks (``Producer.check``) like any other signal's."""
    fired_at = alert_time(alert.timestamp)
    check_fresh(fired_at, now, max_lag_s)
    kwargs: dict[str, Any] = {
        "signal_id": alert_signal_id(key_name, alert.order_id, fired_at, max_signal_id_length),
        "exchange": alert.exchange,
        "symbol": ticker_symbol(alert.ticker, symbols),
        "side": alert.action.strip().lower(),
        "amount": _amount_text(alert.contracts),
        "reduce_only": alert.reduce_only,
        "metadata": {"tradingview": {"order_id": alert.order_id[:64], "ticker": alert.ticker}},
    }
    for name in ("purpose", "leg"):
        value = getattr(alert, name)
        if value is not None:
            kwargs[name] = value
    if alert.price is None:
        if alert.time_in_force is not None:
            kwargs["time_in_force"] = alert.time_in_force
        return MARKET_TASK, kwargs
    kwargs["price"] = _amount_text(alert.price)
    kwargs["time_in_force"] = alert.time_in_force or "GTC"
    return LIMIT_TASK, kwargs
