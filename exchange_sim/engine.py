"""The matching engine and account of one simulated exchange.

Exchange-neutral: orders, one-way positions, a USDT wallet and the trading
rules, with every quantity in base units. The Binance, Bybit and OKX modules
translate requests into calls here (OKX's contracts into base units) and
``Rejected`` reasons into each exchange's real error codes.

Everything runs on the server's event loop, so no locking is needed. Money is
``Decimal`` throughout; times are integer milliseconds since the epoch (UTC).
"""

from __future__ import annotations

import enum
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from exchange_sim.markets import MARKETS, MarketRules

ZERO = Decimal(0)
DEFAULT_BALANCE = Decimal("1000000")
DEFAULT_LEVERAGE = 10
MAINT_MARGIN_RATE = Decimal("0.004")
TAKER_FEE_RATE = {
    "binance": Decimal("0.0005"),
    "bybit": Decimal("0.00055"),
    "okx": Decimal("0.0005"),
}
MAKER_FEE_RATE = {
    "binance": Decimal("0.0002"),
    "bybit": Decimal("0.0002"),
    "okx": Decimal("0.0002"),
}
POSITION_HISTORY = 512


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Reason(enum.Enum):
    """Why the exchange refused a request; each API maps it to its own code."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    QTY_NOT_POSITIVE = "qty_not_positive"
    QTY_PRECISION = "qty_precision"
    QTY_STEP = "qty_step"
    QTY_BELOW_MIN = "qty_below_min"
    QTY_ABOVE_MAX = "qty_above_max"
    PRICE_MISSING = "price_missing"
    PRICE_NOT_POSITIVE = "price_not_positive"
    PRICE_PRECISION = "price_precision"
    PRICE_TICK = "price_tick"
    MIN_NOTIONAL = "min_notional"
    INSUFFICIENT_MARGIN = "insufficient_margin"
    REDUCE_ONLY = "reduce_only"
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    ORDER_NOT_FOUND = "order_not_found"
    POST_ONLY_WOULD_TAKE = "post_only_would_take"


class Rejected(Exception):
    def __init__(self, reason: Reason, **context: object) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.context = context


class Status(enum.Enum):
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"


OPEN_STATUSES = frozenset({Status.NEW, Status.PARTIALLY_FILLED})


@dataclass(slots=True)
class OrderRequest:
    market_id: str
    side: str  # "buy" | "sell"
    type: str  # "market" | "limit"
    quantity: Decimal
    price: Decimal | None = None
    time_in_force: str = "GTC"  # GTC | IOC | FOK | GTX (post-only)
    reduce_only: bool = False
    client_order_id: str | None = None
    # OKX's order tag, echoed back in order answers.
    tag: str = ""


@dataclass(slots=True)
class Order:
    exchange: str
    order_id: str
    client_order_id: str
    rules: MarketRules
    side: str
    type: str
    quantity: Decimal
    price: Decimal | None
    time_in_force: str
    reduce_only: bool
    created_ms: int
    updated_ms: int
    visible_from_ms: int
    last_price_on_created: Decimal
    status: Status = Status.NEW
    filled: Decimal = ZERO
    filled_quote: Decimal = ZERO
    fee: Decimal = ZERO
    # PnL this order's fills realized by closing a position (fees excluded).
    realized_pnl: Decimal = ZERO
    tag: str = ""
    # Initial margin held while the order rests on the book.
    held_margin: Decimal = ZERO
    # Position in the account's ledger (0 = first order since reset).
    seq: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled

    @property
    def average(self) -> Decimal | None:
        return self.filled_quote / self.filled if self.filled else None

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1

    def visible(self, at_ms: int) -> bool:
        return at_ms >= self.visible_from_ms


@dataclass(slots=True)
class PositionState:
    size: Decimal = ZERO  # signed: > 0 long, < 0 short
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(slots=True)
class Position:
    rules: MarketRules
    leverage: int = DEFAULT_LEVERAGE
    state: PositionState = field(default_factory=PositionState)
    # (time, state) after each change, for the positions-lag fault.
    history: deque[tuple[int, PositionState]] = field(
        default_factory=lambda: deque(maxlen=POSITION_HISTORY)
    )

    def as_of(self, at_ms: int) -> PositionState:
        for changed_ms, state in reversed(self.history):
            if changed_ms <= at_ms:
                return state
        return PositionState()

    def record(self, at_ms: int) -> None:
        state = self.state
        self.history.append(
            (
                at_ms,
                PositionState(
                    state.size,
                    state.entry_price,
                    state.realized_pnl,
                    state.created_ms,
                    state.updated_ms,
                ),
            )
        )


# --- events for listeners (the streams) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of an order: ``trade_id`` counts the exchange's fills from 1."""

    trade_id: int
    quantity: Decimal
    price: Decimal
    fee: Decimal
    maker: bool
    # The part of this fill that reduced the position, and the PnL it realized
    # (before fees).
    closed_quantity: Decimal
    realized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    """An order changed. ``execution`` is ``new`` (accepted), ``trade`` (``fill`` set),
    ``canceled`` or ``expired``; the order object carries its state after the change."""

    order: Order
    execution: str
    at_ms: int
    fill: Fill | None = None


@dataclass(frozen=True, slots=True)
class PositionChanged:
    """A position changed, by a fill (``reason`` "fill") or by hand ("admin")."""

    market_id: str
    at_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class PriceChanged:
    market_id: str
    price: Decimal
    at_ms: int


EngineEvent = OrderUpdated | PositionChanged | PriceChanged
# Called synchronously, inside the engine call that caused the event, so a listener
# reads the exchange exactly as the REST API would answer at that moment. It must not
# block or raise.
Listener = Callable[["Exchange", EngineEvent], None]


def floor_to_step(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def decimals_of(value: Decimal) -> int:
    return max(0, -int(value.as_tuple().exponent))


class Exchange:
    """State of one simulated exchange account: book, positions, wallet, ledger."""

    def __init__(
        self,
        name: str,
        seed: int,
        balance: Decimal = DEFAULT_BALANCE,
        prices: dict[str, Decimal] | None = None,
    ) -> None:
        self.name = name
        self.rules_by_id: dict[str, MarketRules] = {r.market_id: r for r in MARKETS[name]}
        self.rules_by_symbol: dict[str, MarketRules] = {r.symbol: r for r in MARKETS[name]}
        self.prices: dict[str, Decimal] = {
            r.market_id: (prices or {}).get(r.symbol, r.default_price) for r in MARKETS[name]
        }
        # The 24h "open" of the tickers: the price at start (or reset).
        self.open_prices: dict[str, Decimal] = dict(self.prices)
        self.wallet = balance
        self.initial_balance = balance
        self.orders: dict[str, Order] = {}
        self.orders_by_client_id: dict[str, list[Order]] = {}
        self.resting: dict[str, dict[str, Order]] = {mid: {} for mid in self.rules_by_id}
        self.positions: dict[str, Position] = {
            mid: Position(rules) for mid, rules in self.rules_by_id.items()
        }
        self.ledger: list[Order] = []
        self.rng = random.Random(f"{name}:{seed}")
        self._next_numeric_id = 8_389_765_000 + self.rng.randrange(1_000_000)
        self.taker_fee = TAKER_FEE_RATE[name]
        self.maker_fee = MAKER_FEE_RATE[name]
        # Bybit keeps every orderLinkId forever; Binance and OKX only check open orders.
        self.client_ids_unique_forever = name == "bybit"
        # OKX accepts a post-only order that would take and cancels it at once;
        # Binance and Bybit refuse it.
        self.post_only_taker_canceled = name == "okx"
        # Whoever wants to hear about orders, fills, positions and prices (the streams).
        self.listeners: list[Listener] = []
        self._last_trade_id = 0

    def _publish(self, event: EngineEvent) -> None:
        for listener in self.listeners:
            listener(self, event)

    # --- lookups ------------------------------------------------------------------

    def rules(self, market_id: str) -> MarketRules:
        try:
            return self.rules_by_id[market_id]
        except KeyError:
            raise Rejected(Reason.UNKNOWN_SYMBOL, market_id=market_id) from None

    def price(self, market_id: str) -> Decimal:
        return self.prices[market_id]

    def new_order_id(self) -> str:
        if self.name == "binance":
            self._next_numeric_id += 1 + self.rng.randrange(3)
            return str(self._next_numeric_id)
        if self.name == "okx":
            # OKX order ids are 19-digit numbers ("2896576259728695296").
            self._next_numeric_id += 1 + self.rng.randrange(3)
            return str(2_896_576_259_000_000_000 + self._next_numeric_id)
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def new_client_id(self) -> str:
        """What the exchange assigns when the client sends no id (22 characters)."""
        return f"{self.rng.getrandbits(88):022x}"

    def find_order(
        self,
        market_id: str | None,
        at_ms: int,
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """The visible order with this id (or the newest with this client id)."""
        order: Order | None = None
        if order_id is not None:
            order = self.orders.get(order_id)
        elif client_order_id is not None:
            for candidate in reversed(self.orders_by_client_id.get(client_order_id, ())):
                if candidate.visible(at_ms):
                    order = candidate
                    break
        if (
            order is None
            or not order.visible(at_ms)
            or (market_id is not None and order.rules.market_id != market_id)
        ):
            raise Rejected(Reason.ORDER_NOT_FOUND)
        return order

    def open_orders(self, market_id: str | None, at_ms: int) -> list[Order]:
        books = [self.resting[market_id]] if market_id else list(self.resting.values())
        found = [o for book in books for o in book.values() if o.visible(at_ms)]
        found.sort(key=lambda o: o.created_ms)
        return found

    def history(self, market_id: str | None, at_ms: int) -> Iterable[Order]:
        """All visible orders, newest first (lazily: callers stop when they have enough)."""
        for order in reversed(self.ledger):
            if (market_id is None or order.rules.market_id == market_id) and order.visible(at_ms):
                yield order

    def lookup(
        self,
        market_id: str | None,
        at_ms: int,
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> list[Order]:
        """Visible orders matching an id and/or a client id, newest first (index lookups)."""
        if order_id is not None:
            found = self.orders.get(order_id)
            candidates = [found] if found is not None else []
        else:
            candidates = list(reversed(self.orders_by_client_id.get(client_order_id or "", ())))
        return [
            o
            for o in candidates
            if o.visible(at_ms)
            and (market_id is None or o.rules.market_id == market_id)
            and (client_order_id is None or o.client_order_id == client_order_id)
        ]

    # --- account ------------------------------------------------------------------

    def unrealized_pnl(self, market_id: str) -> Decimal:
        state = self.positions[market_id].state
        if not state.size:
            return ZERO
        return (self.prices[market_id] - state.entry_price) * state.size

    def position_margin(self, market_id: str) -> Decimal:
        position = self.positions[market_id]
        return abs(position.state.size) * self.prices[market_id] / position.leverage

    def liquidation_price(self, market_id: str) -> Decimal:
        """Cross-margin liquidation price of one position (0 when it cannot be liquidated).

        The whole wallet backs the position, plus the other positions' PnL less
        their maintenance margin; fees and tiered brackets are ignored.
        """
        state = self.positions[market_id].state
        size = state.size
        if not size:
            return ZERO
        margin = self.wallet
        for other_id, other in self.positions.items():
            if other_id != market_id and other.state.size:
                margin += self.unrealized_pnl(other_id)
                margin -= abs(other.state.size) * self.prices[other_id] * MAINT_MARGIN_RATE
        quantity, entry = abs(size), state.entry_price
        if size > 0:
            price = (quantity * entry - margin) / (quantity * (1 - MAINT_MARGIN_RATE))
        else:
            price = (margin + quantity * entry) / (quantity * (1 + MAINT_MARGIN_RATE))
        return max(ZERO, price)

    def order_margin(self) -> Decimal:
        return sum((o.held_margin for book in self.resting.values() for o in book.values()), ZERO)

    def total_unrealized(self) -> Decimal:
        return sum((self.unrealized_pnl(mid) for mid in self.positions), ZERO)

    def total_position_margin(self) -> Decimal:
        return sum((self.position_margin(mid) for mid in self.positions), ZERO)

    def available(self) -> Decimal:
        return (
            self.wallet
            + self.total_unrealized()
            - self.total_position_margin()
            - self.order_margin()
        )

    # --- orders -------------------------------------------------------------------

    def validate(self, request: OrderRequest) -> MarketRules:
        rules = self.rules(request.market_id)
        qty = request.quantity
        if qty <= 0:
            raise Rejected(Reason.QTY_NOT_POSITIVE)
        if decimals_of(qty.normalize()) > decimals_of(rules.step_size):
            raise Rejected(Reason.QTY_PRECISION, precision=decimals_of(rules.step_size))
        if qty % rules.step_size:
            raise Rejected(Reason.QTY_STEP, step=rules.step_size)
        if qty < rules.min_qty:
            raise Rejected(Reason.QTY_BELOW_MIN, min_qty=rules.min_qty)
        max_qty = rules.max_market_qty if request.type == "market" else rules.max_qty
        if qty > max_qty:
            raise Rejected(Reason.QTY_ABOVE_MAX, max_qty=max_qty)
        if request.type == "limit":
            price = request.price
            if price is None:
                raise Rejected(Reason.PRICE_MISSING)
            if price <= 0:
                raise Rejected(Reason.PRICE_NOT_POSITIVE)
            if decimals_of(price.normalize()) > decimals_of(rules.tick_size):
                raise Rejected(Reason.PRICE_PRECISION, precision=decimals_of(rules.tick_size))
            if price % rules.tick_size:
                raise Rejected(Reason.PRICE_TICK, tick=rules.tick_size)
        return rules

    def _check_client_id(self, client_order_id: str) -> None:
        existing = self.orders_by_client_id.get(client_order_id)
        if not existing:
            return
        if self.client_ids_unique_forever or any(o.is_open for o in existing):
            raise Rejected(Reason.DUPLICATE_CLIENT_ID, client_order_id=client_order_id)

    def _check_reduce_only(self, request: OrderRequest) -> None:
        size = self.positions[request.market_id].state.size
        signed = request.quantity if request.side == "buy" else -request.quantity
        # Reduce-only must point against the position and must not flip it.
        if not size or (size > 0) == (signed > 0) or abs(signed) > abs(size):
            raise Rejected(Reason.REDUCE_ONLY, position=size)

    def _margin_needed(self, request: OrderRequest, price: Decimal) -> Decimal:
        position = self.positions[request.market_id]
        size = position.state.size
        qty = request.quantity
        if size and (size > 0) != (request.side == "buy"):
            qty = max(ZERO, qty - abs(size))  # the closing part needs no margin
        return qty * price / position.leverage

    def place(
        self,
        request: OrderRequest,
        at_ms: int,
        partial_fraction: Decimal | None = None,
        visibility_lag_ms: int = 0,
        force_insufficient_margin: bool = False,
    ) -> Order:
        """Validate, accept and match one order; raise Rejected if the exchange refuses it."""
        rules = self.validate(request)
        last = self.prices[rules.market_id]
        if request.client_order_id is not None:
            self._check_client_id(request.client_order_id)
        if request.reduce_only:
            self._check_reduce_only(request)
        crosses = request.type == "market" or _crosses(request.side, request.price, last)
        post_only_taker = request.type == "limit" and request.time_in_force == "GTX" and crosses
        if post_only_taker and not self.post_only_taker_canceled:
            raise Rejected(Reason.POST_ONLY_WOULD_TAKE)
        reference = last if request.type == "market" else (request.price or last)
        if not request.reduce_only and request.quantity * reference < rules.min_notional:
            raise Rejected(Reason.MIN_NOTIONAL, min_notional=rules.min_notional)
        margin_price = max(last, reference) if request.side == "buy" else reference
        if force_insufficient_margin or (
            not request.reduce_only
            and self._margin_needed(request, margin_price) > self.available()
        ):
            raise Rejected(Reason.INSUFFICIENT_MARGIN)

        order = Order(
            exchange=self.name,
            order_id=self.new_order_id(),
            client_order_id=request.client_order_id or "",
            rules=rules,
            side=request.side,
            type=request.type,
            quantity=request.quantity,
            price=request.price if request.type == "limit" else None,
            time_in_force="IOC" if request.type == "market" else request.time_in_force,
            reduce_only=request.reduce_only,
            created_ms=at_ms,
            updated_ms=at_ms,
            visible_from_ms=at_ms + visibility_lag_ms,
            last_price_on_created=last,
            tag=request.tag,
        )
        self.orders[order.order_id] = order
        if order.client_order_id:
            self.orders_by_client_id.setdefault(order.client_order_id, []).append(order)
        order.seq = len(self.ledger)
        self.ledger.append(order)
        if self.listeners:
            self._publish(OrderUpdated(order, "new", at_ms))

        if post_only_taker:
            order.status = Status.CANCELED
        elif crosses:
            fill_qty = order.quantity
            if partial_fraction is not None:
                fill_qty = floor_to_step(order.quantity * partial_fraction, rules.step_size)
            if fill_qty:
                self._fill(order, fill_qty, last, at_ms, maker=False)
            if order.remaining:
                # Market and IOC remainders expire; so does a partially filled GTC
                # order under the partial-fill fault (the book ran dry).
                order.status = Status.EXPIRED
                if self.listeners:
                    self._publish(OrderUpdated(order, "expired", at_ms))
        elif order.time_in_force in ("IOC", "FOK"):
            order.status = Status.EXPIRED
            if self.listeners:
                self._publish(OrderUpdated(order, "expired", at_ms))
        else:
            order.held_margin = self._margin_needed(request, order.price or last)
            self.resting[rules.market_id][order.order_id] = order
        return order

    def cancel(
        self,
        market_id: str,
        at_ms: int,
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        order = self.find_order(market_id, at_ms, order_id, client_order_id)
        if not order.is_open:
            raise Rejected(Reason.ORDER_NOT_FOUND, finished=True)
        order.status = Status.CANCELED
        order.updated_ms = at_ms
        order.held_margin = ZERO
        self.resting[market_id].pop(order.order_id, None)
        if self.listeners:
            self._publish(OrderUpdated(order, "canceled", at_ms))
        return order

    def _fill(self, order: Order, qty: Decimal, price: Decimal, at_ms: int, maker: bool) -> None:
        position = self.positions[order.rules.market_id]
        state = position.state
        signed = qty * order.sign
        size = state.size
        closing = pnl = ZERO
        if not size or (size > 0) == (signed > 0):
            new_size = size + signed
            state.entry_price = (abs(size) * state.entry_price + qty * price) / abs(new_size)
            if not size:
                state.created_ms = at_ms
            state.size = new_size
        else:
            closing = min(qty, abs(size))
            pnl = closing * (price - state.entry_price) * (1 if size > 0 else -1)
            state.realized_pnl += pnl
            order.realized_pnl += pnl
            self.wallet += pnl
            new_size = size + signed
            if not new_size:
                state.entry_price = ZERO
            elif (new_size > 0) != (size > 0):
                state.entry_price = price  # flipped: the rest opens at the fill price
                state.created_ms = at_ms
            state.size = new_size
        state.updated_ms = at_ms
        position.record(at_ms)
        fee = qty * price * (self.maker_fee if maker else self.taker_fee)
        self.wallet -= fee
        order.fee += fee
        order.filled += qty
        order.filled_quote += qty * price
        order.updated_ms = at_ms
        order.status = Status.FILLED if order.filled == order.quantity else Status.PARTIALLY_FILLED
        if self.listeners:
            self._last_trade_id += 1
            fill = Fill(self._last_trade_id, qty, price, fee, maker, closing, pnl)
            self._publish(OrderUpdated(order, "trade", at_ms, fill))
            self._publish(PositionChanged(order.rules.market_id, at_ms, "fill"))

    # --- prices -------------------------------------------------------------------

    def set_price(self, market_id: str, price: Decimal, at_ms: int) -> None:
        rules = self.rules(market_id)
        price = max(rules.tick_size, floor_to_step(price, rules.tick_size))
        self.prices[market_id] = price
        if self.listeners:
            self._publish(PriceChanged(market_id, price, at_ms))
        self._match_resting(market_id, price, at_ms)

    def walk(self, market_id: str, steps: int, volatility: float, rng: random.Random, at_ms: int):
        price = self.prices[market_id]
        for _ in range(steps):
            price = Decimal(str(float(price) * math.exp(rng.gauss(0.0, volatility))))
            self.set_price(market_id, price, at_ms)
            price = self.prices[market_id]
        return price

    def _match_resting(self, market_id: str, last: Decimal, at_ms: int) -> None:
        book = self.resting[market_id]
        for order in sorted(book.values(), key=lambda o: o.created_ms):
            if not _crosses(order.side, order.price, last):
                continue
            qty = order.remaining
            if order.reduce_only:
                # A resting reduce-only order never grows or flips the position.
                size = self.positions[market_id].state.size
                if not size or (size > 0) == (order.side == "buy"):
                    qty = ZERO
                qty = min(qty, abs(size))
            if qty:
                self._fill(order, qty, order.price or last, at_ms, maker=True)
            order.held_margin = ZERO
            del book[order.order_id]
            if order.remaining:
                order.status = Status.EXPIRED
                order.updated_ms = at_ms
                if self.listeners:
                    self._publish(OrderUpdated(order, "expired", at_ms))

    # --- manual positions (admin API) ---------------------------------------------

    def set_position(
        self, market_id: str, size: Decimal, entry_price: Decimal | None, at_ms: int
    ) -> PositionState:
        position = self.positions[market_id]
        state = position.state
        if not size:
            state.size = ZERO
            state.entry_price = ZERO
        else:
            if not state.size:
                state.created_ms = at_ms
            state.size = size
            state.entry_price = entry_price if entry_price is not None else self.prices[market_id]
        state.updated_ms = at_ms
        position.record(at_ms)
        if self.listeners:
            self._publish(PositionChanged(market_id, at_ms, "admin"))
        return state


def _crosses(side: str, limit: Decimal | None, last: Decimal) -> bool:
    if limit is None:
        return True
    return last <= limit if side == "buy" else last >= limit
