"""The market checks of a signal: what the static schema cannot know.

Runs after ``workers.execution.signal.parse_arguments`` and before the intent
is written. A refusal is ``SignalRejected`` with its one-line reason; the task
records ``signal_rejected`` and does not retry (the same input fails the same way).

* **One symbol.** Only the exact key of a linear perpetual in the account's
  ccxt markets is accepted. ccxt's ``market()`` also answers for aliases (the
  exchange id ``ETHUSDT``, the spot-style ``ETH/USDT``), and an order placed
  through one would be recorded and booked under the alias while the exchange
  holds the position under the real symbol; the refusal names the symbol to use.
* **Amounts.** Rounded *down* to the market's step (never trade more than
  asked), then within its minimum and maximum; a market order within the
  *market-order* maximum, which is smaller than a limit order's on Binance.
* **Prices.** A limit price is rounded to its tick on the side that never gives
  a worse price than asked (down for a buy, up for a sell), then within the
  market's price limits and the ``NUMERIC(36,18)`` range.
* **Minimum notional** (``check_notional``) on the rounded amount times the
  limit price, or for a market order a reference price (a recent ticker) when
  the caller has one. Reduce-only orders are exempt, as on the exchanges: a
  small remainder must always be closable.

Market data is ccxt's unified market dict, read into ``MarketRules``. For
Binance USDⓈ-M and Bybit ccxt uses the TICK_SIZE precision mode, so
``precision.amount`` and ``precision.price`` are steps (``0.001``), not digit counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from workers.execution.chunks import ceil_to_step, floor_to_step
from workers.execution.signal import (
    DECIMAL_COLUMN_LIMIT,
    BaseOrderArguments,
    SignalRejected,
    plain_decimal,
    shown,
    unified_symbol_hint,
)

OrderSide = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]


@dataclass(frozen=True)
class ValidatedOrder:
    """An order that passed every check; its amount and price are on the market's grid."""

    signal_id: str
    account: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    amount: Decimal
    price: Decimal | None
    time_in_force: str | None
    reduce_only: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The amount as asked, before rounding down to the step.
    requested_amount: Decimal | None = None


@dataclass(frozen=True)
class MarketRules:
    """What one market allows, from ccxt's unified market structure (None: no limit known)."""

    symbol: str
    active: bool = True
    amount_step: Decimal | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    #: The largest *market* order (Binance's MARKET_LOT_SIZE, Bybit's maxMktOrderQty).
    market_amount_max: Decimal | None = None
    price_tick: Decimal | None = None
    price_min: Decimal | None = None
    price_max: Decimal | None = None
    cost_min: Decimal | None = None


def _number(node: Any, *path: str) -> Decimal | None:
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    if node is None or isinstance(node, bool):
        return None
    try:
        number = Decimal(str(node))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number > 0 else None


def is_linear_perpetual(market: Mapping[str, Any]) -> bool:
    return bool(market.get("swap")) and bool(market.get("linear"))


def market_rules(
    market: Mapping[str, Any], market_amount_max: Decimal | None = None
) -> MarketRules:
    """The rules of a ccxt unified market; ``market_amount_max`` when ccxt does not
    parse the exchange's market-order maximum into ``limits.market.max``."""
    return MarketRules(
        symbol=str(market.get("symbol")),
        active=market.get("active") is not False,
        amount_step=_number(market, "precision", "amount"),
        amount_min=_number(market, "limits", "amount", "min"),
        amount_max=_number(market, "limits", "amount", "max"),
        market_amount_max=_number(market, "limits", "market", "max") or market_amount_max,
        price_tick=_number(market, "precision", "price"),
        price_min=_number(market, "limits", "price", "min"),
        price_max=_number(market, "limits", "price", "max"),
        cost_min=_number(market, "limits", "cost", "min"),
    )


def _perpetual_named(symbol: str | None, markets: Mapping[str, Mapping[str, Any]]) -> str | None:
    if symbol is None:
        return None
    market = markets.get(symbol)
    return symbol if market is not None and is_linear_perpetual(market) else None


def perpetual_for(
    symbol: str,
    markets: Mapping[str, Mapping[str, Any]],
    *,
    account: str,
    resolved: str | None = None,
) -> Mapping[str, Any]:
    """The market of ``symbol`` when it is exactly a linear perpetual's unified symbol.

    ``resolved`` is the symbol ccxt's ``market()`` makes of ``symbol``, if any. An
    alias (an exchange id, a spot-style or differently cased symbol) is refused
    naming the perpetual to use; so is a market that is not a linear perpetual.
    """
    market = markets.get(symbol)
    if market is not None and is_linear_perpetual(market):
        return market
    alias_of = _perpetual_named(resolved, markets) or _perpetual_named(
        unified_symbol_hint(symbol), markets
    )
    by_id = [
        name
        for name, candidate in markets.items()
        if candidate.get("id") == symbol and is_linear_perpetual(candidate)
    ]
    alias_of = alias_of or (by_id[0] if by_id else None)
    if alias_of is not None and alias_of != symbol:
        raise SignalRejected.of(
            "symbol", f"{shown(symbol)} is an alias on {account}; use {alias_of!r}"
        )
    if market is not None:
        raise SignalRejected.of(
            "symbol", f"{shown(symbol)} is not a linear perpetual (only those are traded)"
        )
    raise SignalRejected.of("symbol", f"unknown symbol {shown(symbol)} on {account}")


def _check_amount(requested: Decimal, order_type: str, rules: MarketRules) -> Decimal:
    step = rules.amount_step
    amount = floor_to_step(requested, step) if step is not None else requested
    asked = plain_decimal(requested)
    if amount == 0:
        raise SignalRejected.of(
            "amount", f"{asked} rounds to 0 at the market's step {plain_decimal(step or 0)}"
        )
    placed = plain_decimal(amount)
    if rules.amount_min is not None and amount < rules.amount_min:
        raise SignalRejected.of(
            "amount", f"{placed} is below the market's minimum {plain_decimal(rules.amount_min)}"
        )
    if order_type == "market" and rules.market_amount_max is not None:
        if amount > rules.market_amount_max:
            limit_max = (
                f" (a limit order takes up to {plain_decimal(rules.amount_max)})"
                if rules.amount_max is not None and amount <= rules.amount_max
                else ""
            )
            raise SignalRejected.of(
                "amount",
                f"{placed} is above the market-order maximum "
                f"{plain_decimal(rules.market_amount_max)}{limit_max}",
            )
    if rules.amount_max is not None and amount > rules.amount_max:
        raise SignalRejected.of(
            "amount", f"{placed} is above the market's maximum {plain_decimal(rules.amount_max)}"
        )
    return amount


def _check_price(asked: Decimal, side: str, rules: MarketRules) -> Decimal:
    tick = rules.price_tick
    if tick is None:
        price = asked
    else:
        price = floor_to_step(asked, tick) if side == "buy" else ceil_to_step(asked, tick)
    shown_asked = plain_decimal(asked)
    if price == 0:
        raise SignalRejected.of(
            "price", f"{shown_asked} rounds to 0 at the market's tick {plain_decimal(tick or 0)}"
        )
    if rules.price_min is not None and price < rules.price_min:
        raise SignalRejected.of(
            "price",
            f"{plain_decimal(price)} is below the market's minimum price "
            f"{plain_decimal(rules.price_min)}",
        )
    if rules.price_max is not None and price > rules.price_max:
        raise SignalRejected.of(
            "price",
            f"{plain_decimal(price)} is above the market's maximum price "
            f"{plain_decimal(rules.price_max)}",
        )
    if price >= DECIMAL_COLUMN_LIMIT:
        raise SignalRejected.of(
            "price", f"{shown_asked} is out of range (at most 18 integer digits)"
        )
    return price


def check_against_market(arguments: BaseOrderArguments, rules: MarketRules) -> ValidatedOrder:
    """The order ``arguments`` ask for, on ``rules``' grid; raises ``SignalRejected``."""
    if not rules.active:
        raise SignalRejected.of("symbol", f"market {shown(rules.symbol)} is not active")
    amount = _check_amount(arguments.amount, arguments.order_type, rules)
    asked_price = getattr(arguments, "price", None)
    price = None if asked_price is None else _check_price(asked_price, arguments.side, rules)
    return ValidatedOrder(
        signal_id=arguments.signal_id,
        account=arguments.exchange,
        symbol=arguments.symbol,
        side=arguments.side,
        order_type=arguments.order_type,
        amount=amount,
        price=price,
        time_in_force=getattr(arguments, "time_in_force", None),
        reduce_only=arguments.reduce_only,
        metadata=dict(arguments.metadata or {}),
        requested_amount=arguments.amount,
    )


def check_notional(
    order: ValidatedOrder, rules: MarketRules, reference_price: Decimal | None = None
) -> None:
    """Refuse an order under the market's minimum notional at its limit price, or at
    ``reference_price`` for a market order; skipped without a price or when reduce-only."""
    price = order.price or reference_price
    if rules.cost_min is None or price is None or order.reduce_only:
        return
    notional = order.amount * price
    if notional < rules.cost_min:
        raise SignalRejected.of(
            "amount",
            f"{plain_decimal(order.amount)} at {plain_decimal(price)} is "
            f"{plain_decimal(notional)} in notional, below the market's minimum "
            f"{plain_decimal(rules.cost_min)}",
        )
