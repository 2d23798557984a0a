"""Binance USDⓈ-M WebSocket streams, as ``ccxt.pro.binanceusdm`` speaks them.

Paths on the stream port (ccxt derives them from ``urls.api.ws.linear =
ws://HOST:PORT/binance/ws``):

- ``/binance/private/ws?listenKey=KEY``: the user data stream. Every account
  event while ``KEY`` is the account's active listen key: ``ORDER_TRADE_UPDATE``
  (execution ``NEW``, ``TRADE``, ``CANCELED``, ``EXPIRED``) and
  ``ACCOUNT_UPDATE`` (the wallet and the changed position). When the key
  expires the stream says ``listenKeyExpired`` and then stays silent; a
  connection with an unknown or ended key gets nothing, as on Binance.
- ``/binance/market/ws[/N]`` and ``/binance/public/ws[/N]``: market streams,
  chosen with ``{"method": "SUBSCRIBE", "params": [...], "id": n}`` (acked with
  ``{"result": null, "id": n}``; ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` too):
  ``<symbol>@markPrice[@1s]``, ``!markPrice@arr[@1s]``, ``<symbol>@ticker``,
  ``!ticker@arr``, ``<symbol>@miniTicker``, ``!miniTicker@arr``,
  ``<symbol>@bookTicker``, ``!bookTicker``. Each pushes at once when the price
  changes, and again every refresh interval (mark price without ``@1s``: three
  intervals), so a quiet market still shows a live stream. Any other stream
  name is refused with an error (the simulator does not serve it).

Payloads follow Binance's documented events field by field; the numbers are
rendered by the same functions as the REST answers (``exchange_sim.binance``).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from exchange_sim.api import fmt, plain
from exchange_sim.binance import (
    STATUS,
    book_ticker_row,
    break_even_price,
    order_fields,
    premium_index_row,
    ticker_24hr_row,
)
from exchange_sim.engine import (
    ZERO,
    EngineEvent,
    Exchange,
    OrderUpdated,
    PositionChanged,
    PriceChanged,
    now_ms,
)
from exchange_sim.markets import MarketRules
from exchange_sim.streams.connection import PRIVATE, PUBLIC, Connection
from exchange_sim.streams.listen_keys import ListenKeys

if TYPE_CHECKING:
    from exchange_sim.streams.hub import StreamHub

CHANNELS = ("markPrice", "ticker", "miniTicker", "bookTicker")
# Mark price streams without @1s push every 3 s on Binance.
SLOW_MARK_PRICE_TICKS = 3
EVENT_OF_CHANNEL = {
    "markPrice": "markPriceUpdate",
    "ticker": "24hrTicker",
    "miniTicker": "24hrMiniTicker",
    "bookTicker": "bookTicker",
}


class StreamName:
    """A parsed market stream name: one symbol's or all symbols' (``!``) channel."""

    __slots__ = ("all_markets", "channel", "fast", "market_id", "name")

    def __init__(self, name: str, market_id: str | None, channel: str, fast: bool) -> None:
        self.name = name
        self.market_id = market_id
        self.all_markets = market_id is None
        self.channel = channel
        self.fast = fast

    @classmethod
    def parse(cls, name: object) -> StreamName | None:
        if not isinstance(name, str):
            return None
        if name.startswith("!"):
            parts = name[1:].split("@")
            channel = parts[0]
            suffix = parts[1:]
            if channel == "bookTicker" and not suffix:
                return cls(name, None, channel, False)
            if channel in ("ticker", "miniTicker") and suffix == ["arr"]:
                return cls(name, None, channel, False)
            if channel == "markPrice" and suffix in (["arr"], ["arr", "1s"]):
                return cls(name, None, channel, suffix == ["arr", "1s"])
            return None
        symbol, _, rest = name.partition("@")
        channel, _, speed = rest.partition("@")
        if (
            not symbol
            or channel not in CHANNELS
            or (speed and (channel, speed) != ("markPrice", "1s"))
        ):
            return None
        return cls(name, symbol.upper(), channel, speed == "1s")

    def wants(self, market_id: str) -> bool:
        return self.all_markets or self.market_id == market_id

    def due(self, tick: int) -> bool:
        """Whether the periodic push of this refresh tick includes this stream."""
        if self.channel == "markPrice" and not self.fast:
            return tick % SLOW_MARK_PRICE_TICKS == 0
        return True


class BinanceStreams:
    name = "binance"

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.listen_keys = ListenKeys(hub.settings.listen_key_validity_s, self._key_expired)

    def route(self, path: str) -> tuple[str, Callable[[Connection], None]] | None:
        parts = path.strip("/").split("/")
        if parts == ["private", "ws"]:
            return PRIVATE, self._private_connected
        # ccxt appends a stream number to market URLs: /market/ws/0, /market/ws/1, ...
        numbered = len(parts) == 3 and parts[2].isdigit()
        if parts[:2] in (["market", "ws"], ["public", "ws"]) and (len(parts) == 2 or numbered):
            return PUBLIC, self._market_connected
        return None

    def on_reset(self) -> None:
        """Listen keys are account credentials: they outlive a reset."""

    def _connections(self, stream: str) -> list[Connection]:
        return [c for c in self.hub.connections["binance"] if c.stream == stream]

    # --- connections --------------------------------------------------------------------

    def _private_connected(self, connection: Connection) -> None:
        connection.listen_key = connection.request.query.get("listenKey") or ""

    def _market_connected(self, connection: Connection) -> None:
        connection.state["streams"] = {}

    def on_text(self, connection: Connection, text: str) -> None:
        if connection.stream == PRIVATE:
            return  # the user data stream takes no requests
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            connection.reply({"error": {"code": 3, "msg": "Invalid JSON: expected value"}})
            return
        if not isinstance(request, dict):
            connection.reply({"error": {"code": 3, "msg": "Invalid JSON: expected an object"}})
            return
        request_id = request.get("id")
        method = request.get("method")
        params = request.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            connection.reply({"result": sorted(connection.subscriptions), "id": request_id})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            connection.reply(
                {"error": {"code": 2, "msg": "Invalid request: unknown method"}, "id": request_id}
            )
            return
        parsed = [StreamName.parse(name) for name in params]
        unknown = [name for name, stream in zip(params, parsed, strict=True) if stream is None]
        if unknown:
            connection.reply(
                {
                    "error": {
                        "code": 2,
                        "msg": f"Invalid request: stream not served by the simulator: {unknown[0]}",
                    },
                    "id": request_id,
                }
            )
            return
        streams: dict[str, StreamName] = connection.state["streams"]
        for stream in parsed:
            assert stream is not None
            if method == "SUBSCRIBE":
                streams[stream.name] = stream
                connection.subscriptions.add(stream.name)
            else:
                streams.pop(stream.name, None)
                connection.subscriptions.discard(stream.name)
        connection.reply({"result": None, "id": request_id})

    # --- events -------------------------------------------------------------------------

    def on_event(self, exchange: Exchange, event: EngineEvent) -> None:
        if not self.hub.connections["binance"]:
            return
        if isinstance(event, PriceChanged):
            self._push_prices(exchange, [exchange.rules(event.market_id)], event.at_ms, None)
        elif isinstance(event, OrderUpdated):
            message = order_trade_update(exchange, event)
            self._push_private(message, event.order.rules.symbol)
        elif isinstance(event, PositionChanged):
            message = account_update(exchange, event)
            self._push_private(message, exchange.rules(event.market_id).symbol)

    def _push_private(self, message: dict[str, Any], symbol: str) -> None:
        text = orjson.dumps(message).decode()
        for connection in self._connections(PRIVATE):
            if self.listen_keys.is_active(connection.listen_key):
                self.hub.deliver(connection, text, symbol)

    def refresh(self, tick: int) -> None:
        if not self._connections(PUBLIC):
            return
        exchange = self.hub.state.exchanges["binance"]
        self._push_prices(exchange, list(exchange.rules_by_id.values()), now_ms(), tick)

    def _push_prices(
        self, exchange: Exchange, markets: list[MarketRules], at_ms: int, tick: int | None
    ) -> None:
        """Push each subscribed stream's update for ``markets`` (a refresh when ``tick``)."""
        rendered: dict[tuple[str, str], dict[str, Any]] = {}

        def event(channel: str, rules: MarketRules) -> dict[str, Any]:
            key = (channel, rules.market_id)
            if key not in rendered:
                rendered[key] = market_event(exchange, rules, channel, at_ms)
            return rendered[key]

        for connection in self._connections(PUBLIC):
            streams: dict[str, StreamName] = connection.state.get("streams", {})
            for stream in list(streams.values()):
                if tick is not None and not stream.due(tick):
                    continue
                wanted = [rules for rules in markets if stream.wants(rules.market_id)]
                if not wanted:
                    continue
                symbol = wanted[0].symbol if len(wanted) == 1 else None
                if stream.all_markets and stream.channel != "bookTicker":
                    payload: Any = [event(stream.channel, rules) for rules in wanted]
                    self.hub.deliver(connection, orjson.dumps(payload).decode(), symbol)
                else:
                    for rules in wanted:
                        text = orjson.dumps(event(stream.channel, rules)).decode()
                        self.hub.deliver(connection, text, rules.symbol)

    def _key_expired(self, key: str) -> None:
        message = {"e": "listenKeyExpired", "E": now_ms(), "listenKey": key}
        text = orjson.dumps(message).decode()
        for connection in self._connections(PRIVATE):
            if connection.listen_key == key:
                connection.enqueue(text)


# --- messages ---------------------------------------------------------------------------


def market_event(
    exchange: Exchange, rules: MarketRules, channel: str, at_ms: int
) -> dict[str, Any]:
    """One market stream event, with the numbers the REST endpoints answer now."""
    if channel == "markPrice":
        row = premium_index_row(exchange, rules, at_ms)
        return {
            "e": "markPriceUpdate",
            "E": at_ms,
            "s": rules.market_id,
            "p": row["markPrice"],
            "i": row["indexPrice"],
            "P": row["estimatedSettlePrice"],
            "r": row["lastFundingRate"],
            "T": row["nextFundingTime"],
        }
    if channel == "bookTicker":
        row = book_ticker_row(exchange, rules, at_ms)
        return {
            "e": "bookTicker",
            "u": at_ms,
            "E": at_ms,
            "T": at_ms,
            "s": rules.market_id,
            "b": row["bidPrice"],
            "B": row["bidQty"],
            "a": row["askPrice"],
            "A": row["askQty"],
        }
    row = ticker_24hr_row(exchange, rules, at_ms)
    mini = {
        "e": EVENT_OF_CHANNEL[channel],
        "E": at_ms,
        "s": rules.market_id,
        "c": row["lastPrice"],
        "o": row["openPrice"],
        "h": row["highPrice"],
        "l": row["lowPrice"],
        "v": row["volume"],
        "q": row["quoteVolume"],
    }
    if channel == "miniTicker":
        return mini
    return {
        **mini,
        "p": row["priceChange"],
        "P": row["priceChangePercent"],
        "w": row["weightedAvgPrice"],
        "Q": row["lastQty"],
        "O": row["openTime"],
        "C": row["closeTime"],
        "F": row["firstId"],
        "L": row["lastId"],
        "n": row["count"],
    }


def order_trade_update(exchange: Exchange, event: OrderUpdated) -> dict[str, Any]:
    """``ORDER_TRADE_UPDATE`` for one order event (Binance's "Event: Order Update")."""
    order = event.order
    rules = order.rules
    rest = order_fields(order)  # what GET /fapi/v1/order answers now
    fill = event.fill
    update: dict[str, Any] = {
        "s": rules.market_id,
        "c": order.client_order_id,
        "S": rest["side"],
        "o": rest["type"],
        "f": rest["timeInForce"],
        "q": rest["origQty"],
        "p": rest["price"],
        "ap": rest["avgPrice"],
        "sp": rest["stopPrice"],
        "x": event.execution.upper(),
        "X": STATUS[order.status],
        "i": rest["orderId"],
        "l": fmt(fill.quantity if fill else ZERO, rules.quantity_precision),
        "z": rest["executedQty"],
        "L": fmt(fill.price if fill else ZERO, rules.price_precision),
        "T": event.at_ms,
        "t": fill.trade_id if fill else 0,
        "b": fmt(_open_notional(exchange, rules, "buy"), 5),
        "a": fmt(_open_notional(exchange, rules, "sell"), 5),
        "m": fill.maker if fill else False,
        "R": order.reduce_only,
        "wt": rest["workingType"],
        "ot": rest["origType"],
        "ps": rest["positionSide"],
        "cp": rest["closePosition"],
        "rp": fmt(fill.realized_pnl if fill else ZERO, 8),
        "pP": rest["priceProtect"],
        "si": 0,
        "ss": 0,
        "V": rest["selfTradePreventionMode"],
        "pm": rest["priceMatch"],
        "gtd": rest["goodTillDate"],
    }
    if fill is not None:
        # "Commission Asset, will not push if no commission".
        update["N"] = "USDT"
        update["n"] = fmt(fill.fee, 8)
    return {"e": "ORDER_TRADE_UPDATE", "E": now_ms(), "T": event.at_ms, "o": update}


def account_update(exchange: Exchange, event: PositionChanged) -> dict[str, Any]:
    """``ACCOUNT_UPDATE`` for a position change: the wallet and that position."""
    position = exchange.positions[event.market_id]
    state = position.state
    rules = position.rules
    wallet = fmt(exchange.wallet, 8)
    return {
        "e": "ACCOUNT_UPDATE",
        "E": now_ms(),
        "T": event.at_ms,
        "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": "0"}],
            "P": [
                {
                    "s": rules.market_id,
                    "pa": fmt(state.size, rules.quantity_precision),
                    "ep": plain(state.entry_price),
                    "bep": plain(break_even_price(state.size, state.entry_price)),
                    "cr": fmt(state.realized_pnl, 8),
                    "up": fmt(exchange.unrealized_pnl(event.market_id), 8),
                    "mt": "cross",
                    "iw": "0",
                    "ps": "BOTH",
                    "ma": "USDT",
                }
            ],
        },
    }


def _open_notional(exchange: Exchange, rules: MarketRules, side: str) -> Decimal:
    book = exchange.resting[rules.market_id].values()
    return sum(
        ((o.price or ZERO) * o.remaining for o in book if o.side == side and o.is_open), ZERO
    )
