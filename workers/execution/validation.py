"""Order request validation: refuse a bad signal before anything touches the exchange.

Runs first in ``execute_market_order`` / ``execute_limit_order``. A refusal is
:class:`InvalidSignal` naming the field and saying why in one line; the task
records ``signal_rejected`` and does not retry (the same input fails the same way).

Market data is ccxt's unified market dict. For Binance USDⓈ-M and Bybit ccxt
uses the TICK_SIZE precision mode, so ``precision.amount`` and
``precision.price`` are steps (``0.001``), not digit counts. The amount is
rounded *down* to its step (never trade more than asked); a limit price is
rounded to its tick on the side that never gives a worse price than asked
(down for a buy, up for a sell).

Minimum notional (``limits.cost.min``) is checked on the rounded amount times
the limit price, or for a market order the ``reference_price`` (a recent
ticker) when the caller has one. Reduce-only orders are exempt, as on the
exchanges: a small remainder must always be closable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, cast

from workers.execution.chunks import ceil_to_step, floor_to_step

OrderSide = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
TIME_IN_FORCE = ("GTC", "IOC")
#: GTC unless told otherwise: a resting limit order is what most producers mean.
DEFAULT_TIME_IN_FORCE = "GTC"

_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_NOT_FINITE = re.compile(r"[+-]?(nan|snan|inf|infinity)", re.IGNORECASE)
# Longer strings and larger exponents are not amounts any market trades; bounding
# them keeps step arithmetic exact and cheap.
_MAX_NUMBER_CHARS = 64
_MAX_EXPONENT = 30


class InvalidSignal(ValueError):
    """A signal that cannot become an order. ``str()`` is ``"<field>: <message>"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ValidatedOrder:
    """An order request that passed validation; amounts and prices are on the market's grid."""

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
    #: The amount as asked, before rounding to the step (for the event record).
    requested_amount: Decimal | None = None


def parse_decimal(field_name: str, value: object) -> Decimal:
    """A finite decimal from a decimal string, int or Decimal; floats are refused
    because they may already have lost digits on the producer's side."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidSignal(field_name, f"must be a decimal string, got {type(value).__name__}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_NUMBER_CHARS:
            raise InvalidSignal(field_name, f"is too long for a number ({len(text)} characters)")
        if _NOT_FINITE.fullmatch(text):
            raise InvalidSignal(field_name, f"must be a finite decimal, got {value!r}")
        if not _DECIMAL.fullmatch(text):
            raise InvalidSignal(field_name, f"is not a decimal number: {value!r}")
        number = Decimal(text)
    else:
        raise InvalidSignal(field_name, f"must be a decimal string, got {type(value).__name__}")
    if not number.is_finite():
        raise InvalidSignal(field_name, f"must be a finite decimal, got {value!r}")
    if number and abs(number.adjusted()) > _MAX_EXPONENT:
        raise InvalidSignal(field_name, f"is out of range: {value!r}")
    return number


def _positive(field_name: str, value: object) -> Decimal:
    number = parse_decimal(field_name, value)
    if number <= 0:
        raise InvalidSignal(field_name, f"must be positive, got {number}")
    return number


def _market_number(market: Mapping[str, Any], *path: str) -> Decimal | None:
    node: Any = market
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


def _check_signal_id(signal_id: object, max_length: int) -> str:
    if not isinstance(signal_id, str) or not signal_id.strip():
        raise InvalidSignal("signal_id", "must be a non-empty string")
    if len(signal_id) > max_length:
        raise InvalidSignal(
            "signal_id", f"is {len(signal_id)} characters, more than the maximum {max_length}"
        )
    if not signal_id.isprintable():
        raise InvalidSignal("signal_id", "contains non-printable characters")
    return signal_id


def _check_market(symbol: object, market: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not isinstance(symbol, str) or not symbol:
        raise InvalidSignal("symbol", "must be a ccxt unified symbol such as 'BTC/USDT:USDT'")
    if market is None:
        raise InvalidSignal("symbol", f"unknown symbol {symbol!r} on this exchange")
    if market.get("active") is False:
        raise InvalidSignal("symbol", f"market {symbol!r} is not active")
    return market


def _check_amount(value: object, market: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    requested = _positive("amount", value)
    step = _market_number(market, "precision", "amount")
    amount = floor_to_step(requested, step) if step is not None else requested
    if amount == 0:
        raise InvalidSignal("amount", f"{requested} rounds to 0 at the market's amount step {step}")
    minimum = _market_number(market, "limits", "amount", "min")
    if minimum is not None and amount < minimum:
        raise InvalidSignal("amount", f"{amount} is below the market's minimum amount {minimum}")
    maximum = _market_number(market, "limits", "amount", "max")
    if maximum is not None and amount > maximum:
        raise InvalidSignal("amount", f"{amount} is above the market's maximum amount {maximum}")
    return requested, amount


def _check_price(
    order_type: str, side: str, value: object, market: Mapping[str, Any]
) -> Decimal | None:
    if order_type == "market":
        if value is not None:
            raise InvalidSignal("price", "is only for limit orders; a market order takes none")
        return None
    if value is None:
        raise InvalidSignal("price", "is required for a limit order")
    asked = _positive("price", value)
    tick = _market_number(market, "precision", "price")
    if tick is None:
        return asked
    price = floor_to_step(asked, tick) if side == "buy" else ceil_to_step(asked, tick)
    if price == 0:
        raise InvalidSignal("price", f"{asked} rounds to 0 at the market's price tick {tick}")
    return price


def _check_time_in_force(order_type: str, value: object) -> str | None:
    if order_type == "market":
        if value is not None:
            raise InvalidSignal("time_in_force", "is only for limit orders")
        return None
    if value is None:
        return DEFAULT_TIME_IN_FORCE
    if not isinstance(value, str) or value.upper() not in TIME_IN_FORCE:
        raise InvalidSignal("time_in_force", f"must be GTC or IOC, got {value!r}")
    return value.upper()


def _check_notional(
    amount: Decimal,
    price: Decimal | None,
    market: Mapping[str, Any],
    reduce_only: bool,
) -> None:
    minimum = _market_number(market, "limits", "cost", "min")
    if minimum is None or price is None or reduce_only:
        return
    notional = amount * price
    if notional < minimum:
        raise InvalidSignal(
            "amount",
            f"{amount} at {price} is {notional} in notional, below the market's minimum {minimum}",
        )


def _check_metadata(metadata: object, max_bytes: int) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidSignal("metadata", f"must be a JSON object, got {type(metadata).__name__}")
    if not all(isinstance(key, str) for key in metadata):
        raise InvalidSignal("metadata", "keys must be strings")
    try:
        encoded = json.dumps(
            dict(metadata), allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise InvalidSignal("metadata", f"is not JSON-serialisable ({exc})") from None
    size = len(encoded.encode("utf-8"))
    if size > max_bytes:
        raise InvalidSignal(
            "metadata", f"is {size} bytes as JSON, more than the maximum {max_bytes}"
        )
    # The stored copy is exactly what JSON gives back, detached from the caller's objects.
    return json.loads(encoded)


def validate_order_request(
    *,
    signal_id: object,
    account: object,
    known_accounts: Collection[str],
    symbol: object,
    market: Mapping[str, Any] | None,
    side: object,
    amount: object,
    price: object = None,
    order_type: object = "market",
    time_in_force: object = None,
    reduce_only: object = False,
    metadata: object = None,
    max_signal_id_length: int = 64,
    max_metadata_bytes: int = 4096,
    reference_price: Decimal | None = None,
) -> ValidatedOrder:
    """Check every field of an order request against the account list and the market.

    Returns the order with its amount rounded down to the step and its price
    on the tick grid. Raises :class:`InvalidSignal` at the first problem.
    Defaults of the two limits match ``workers.settings`` (64 characters, 4 KiB).
    """
    signal_id = _check_signal_id(signal_id, max_signal_id_length)
    if not isinstance(account, str) or account not in known_accounts:
        known = ", ".join(sorted(known_accounts)) or "none configured"
        raise InvalidSignal("exchange", f"unknown account {account!r} (known: {known})")
    market = _check_market(symbol, market)
    if side not in ("buy", "sell"):
        raise InvalidSignal("side", f"must be 'buy' or 'sell', got {side!r}")
    if order_type not in ("market", "limit"):
        raise InvalidSignal("order_type", f"must be 'market' or 'limit', got {order_type!r}")
    if not isinstance(reduce_only, bool):
        raise InvalidSignal("reduce_only", f"must be true or false, got {reduce_only!r}")
    requested, rounded = _check_amount(amount, market)
    limit_price = _check_price(order_type, side, price, market)
    tif = _check_time_in_force(order_type, time_in_force)
    _check_notional(rounded, limit_price or reference_price, market, reduce_only)
    return ValidatedOrder(
        signal_id=signal_id,
        account=account,
        symbol=cast(str, symbol),
        side=cast(OrderSide, side),
        order_type=cast(OrderType, order_type),
        amount=rounded,
        price=limit_price,
        time_in_force=tif,
        reduce_only=reduce_only,
        metadata=_check_metadata(metadata, max_metadata_bytes),
        requested_amount=requested,
    )
