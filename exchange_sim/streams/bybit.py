"""Bybit v5 WebSocket streams, as ``ccxt.pro.bybit`` speaks them.

Paths on the stream port (ccxt's ``urls.api.ws.public.linear`` and
``urls.api.ws.private.contract``):

- ``/bybit/v5/public/linear``: ``{"op": "subscribe", "req_id": "1", "args":
  ["tickers.BTCUSDT"]}``, acked with ``{"success": true, "ret_msg": "subscribe",
  "op": "subscribe", "req_id": "1", "conn_id": ...}``, then a ``snapshot`` of the
  ticker and a ``delta`` (the changed fields only) whenever the price changes.
- ``/bybit/v5/private``: ``{"op": "auth", "args": [api_key, expires,
  signature]}`` first, where the signature is the hex HMAC-SHA256 of
  ``GET/realtime{expires}`` with the key's secret (``StreamSettings.credentials``)
  and ``expires`` (ms) lies in the future; then the topics ``order``,
  ``execution`` and ``position`` (or ``order.linear`` etc.), each message
  ``{"id", "topic", "creationTime", "data": [rows]}``.
- On both, ``{"op": "ping", "req_id": ...}`` is answered with a pong in the
  stream's own form (public: ``ret_msg: "pong"``; private: ``op: "pong"``).

Rows are rendered by the same functions as the REST answers
(``exchange_sim.bybit``), so an order, fill or position on the stream equals
what ``/v5/order/realtime`` and ``/v5/position/list`` say at that moment.
Other topics are refused with an error: the simulator does not serve them.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from exchange_sim.api import fmt, plain
from exchange_sim.bybit import order_fields, position_row, ticker_row
from exchange_sim.engine import (
    MAKER_FEE_RATE,
    TAKER_FEE_RATE,
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

if TYPE_CHECKING:
    from exchange_sim.streams.hub import StreamHub

PRIVATE_TOPICS = {
    "order": "order",
    "order.linear": "order",
    "execution": "execution",
    "execution.linear": "execution",
    "position": "position",
    "position.linear": "position",
}
EXECUTION_ID_NAMESPACE = uuid.UUID("5b6e0c4e-8a3b-4f0e-9d59-3f3c1f2a7e11")


class BybitStreams:
    name = "bybit"

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self._message_ids = itertools.count(1)
        self._sequence = itertools.count(1)

    def route(self, path: str) -> tuple[str, Callable[[Connection], None]] | None:
        if path == "/v5/public/linear":
            return PUBLIC, self._connected
        if path == "/v5/private":
            return PRIVATE, self._connected
        return None

    def on_reset(self) -> None:
        pass

    def refresh(self, tick: int) -> None:
        """Bybit pushes tickers when they change only; liveness is ping/pong."""

    def _connected(self, connection: Connection) -> None:
        connection.state["tickers"] = {}

    def _connections(self, stream: str) -> Iterable[Connection]:
        return [c for c in self.hub.connections["bybit"] if c.stream == stream]

    # --- requests -----------------------------------------------------------------------

    def on_text(self, connection: Connection, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self._fail(connection, {}, "error:request not json")
            return
        op = request.get("op")
        if op == "ping":
            self._pong(connection, request)
        elif op == "auth" and connection.stream == PRIVATE:
            self._auth(connection, request)
        elif op in ("subscribe", "unsubscribe"):
            self._subscribe(connection, request, op)
        else:
            self._fail(connection, request, "error:invalid op")

    def _answer(self, connection: Connection, request: dict[str, Any], **fields: Any) -> None:
        answer: dict[str, Any] = {**fields, "conn_id": connection.id}
        if request.get("req_id") is not None:
            answer["req_id"] = request["req_id"]
        if request.get("op") is not None and "op" not in answer:
            answer["op"] = request["op"]
        connection.reply(answer)

    def _fail(self, connection: Connection, request: dict[str, Any], message: str) -> None:
        self._answer(connection, request, success=False, ret_msg=message)

    def _pong(self, connection: Connection, request: dict[str, Any]) -> None:
        if connection.stream == PUBLIC:
            self._answer(connection, request, success=True, ret_msg="pong", op="ping")
        else:
            self._answer(connection, request, op="pong", args=[str(now_ms())])

    def _auth(self, connection: Connection, request: dict[str, Any]) -> None:
        args = request.get("args")
        if not isinstance(args, list) or len(args) != 3:
            self._fail(connection, request, "Params Error")
            return
        api_key, expires, signature = args
        secret = self.hub.settings.credentials.get(str(api_key))
        if secret is None:
            self._fail(connection, request, "API key is invalid.")
            return
        try:
            expires_ms = int(str(expires))
        except ValueError:
            self._fail(connection, request, "Params Error")
            return
        if expires_ms <= now_ms():
            # Bybit's answer to an `expires` in the past (a clock behind the server's).
            self._fail(connection, request, "Params Error")
            return
        expected = hmac.new(
            secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256
        ).hexdigest()
        if not isinstance(signature, str) or not hmac.compare_digest(expected, signature):
            self._fail(
                connection, request, "Error sign, please check your signature generation algorithm."
            )
            return
        connection.authenticated = True
        self._answer(connection, request, success=True, ret_msg="")

    def _subscribe(self, connection: Connection, request: dict[str, Any], op: str) -> None:
        topics = request.get("args")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            self._fail(connection, request, "error:args must be a list of topics")
            return
        exchange = self.hub.state.exchanges["bybit"]
        if connection.stream == PRIVATE:
            if not connection.authenticated:
                self._fail(connection, request, "Request not authorized")
                return
            unknown = [t for t in topics if t not in PRIVATE_TOPICS]
        else:
            unknown = [t for t in topics if _ticker_market(exchange, t) is None]
        if unknown:
            self._fail(connection, request, f"error:handler not found,topic:{unknown[0]}")
            return
        if op == "subscribe":
            repeated = [t for t in topics if t in connection.subscriptions]
            if repeated:
                self._fail(connection, request, f"error:already subscribed,topic:{repeated[0]}")
                return
            connection.subscriptions.update(topics)
        else:
            connection.subscriptions.difference_update(topics)
        ret_msg = "subscribe" if connection.stream == PUBLIC and op == "subscribe" else ""
        self._answer(connection, request, success=True, ret_msg=ret_msg)
        if op == "subscribe" and connection.stream == PUBLIC:
            for topic in topics:
                rules = _ticker_market(exchange, topic)
                assert rules is not None
                self._push_ticker(connection, exchange, rules, now_ms(), snapshot=True)

    # --- events -------------------------------------------------------------------------

    def on_event(self, exchange: Exchange, event: EngineEvent) -> None:
        if not self.hub.connections["bybit"]:
            return
        if isinstance(event, PriceChanged):
            rules = exchange.rules(event.market_id)
            topic = f"tickers.{rules.market_id}"
            for connection in self._connections(PUBLIC):
                if topic in connection.subscriptions:
                    self._push_ticker(connection, exchange, rules, event.at_ms, snapshot=False)
        elif isinstance(event, OrderUpdated):
            symbol = event.order.rules.symbol
            self._push_private("order", [stream_order_row(event)], symbol)
            if event.fill is not None:
                self._push_private("execution", [execution_row(exchange, event)], symbol)
        elif isinstance(event, PositionChanged):
            row = stream_position_row(exchange, event.market_id, event.at_ms)
            self._push_private("position", [row], exchange.rules(event.market_id).symbol)

    def _push_private(self, kind: str, rows: list[dict[str, Any]], symbol: str) -> None:
        created = now_ms()
        rendered: dict[str, str] = {}
        for connection in self._connections(PRIVATE):
            if not connection.authenticated:
                continue
            for topic in connection.subscriptions:
                if PRIVATE_TOPICS.get(topic) != kind:
                    continue
                if topic not in rendered:
                    message = {
                        "id": f"{next(self._message_ids):x}-{uuid.uuid4()}",
                        "topic": topic,
                        "creationTime": created,
                        "data": rows,
                    }
                    rendered[topic] = orjson.dumps(message).decode()
                self.hub.deliver(connection, rendered[topic], symbol)

    def _push_ticker(
        self,
        connection: Connection,
        exchange: Exchange,
        rules: MarketRules,
        at_ms: int,
        snapshot: bool,
    ) -> None:
        """A snapshot, or the fields changed since what this connection was last sent."""
        sent: dict[str, dict[str, Any]] = connection.state["tickers"]
        previous = sent.get(rules.market_id)
        row = ticker_row(exchange, rules, at_ms)
        row["tickDirection"] = _tick_direction(previous, row)
        if snapshot or previous is None:
            data, kind = row, "snapshot"
        else:
            data = {key: value for key, value in row.items() if previous.get(key) != value}
            if set(data) <= {"tickDirection"}:
                return  # nothing a client would see changed
            data = {"symbol": rules.market_id, **data}
            kind = "delta"
        # What the exchange believes the client has, delivered or not (a lost delta
        # leaves the client behind until the field changes again, as on Bybit).
        sent[rules.market_id] = row
        message = {
            "topic": f"tickers.{rules.market_id}",
            "type": kind,
            "data": data,
            "cs": next(self._sequence),
            "ts": at_ms,
        }
        self.hub.deliver(connection, orjson.dumps(message).decode(), rules.symbol)


# --- rows ---------------------------------------------------------------------------------


def _ticker_market(exchange: Exchange, topic: str) -> MarketRules | None:
    channel, _, market_id = topic.partition(".")
    if channel != "tickers":
        return None
    return exchange.rules_by_id.get(market_id)


def _tick_direction(previous: dict[str, Any] | None, row: dict[str, Any]) -> str:
    if previous is None:
        return "ZeroPlusTick"
    old, new = Decimal(previous["lastPrice"]), Decimal(row["lastPrice"])
    if new > old:
        return "PlusTick"
    if new < old:
        return "MinusTick"
    # An unchanged price keeps the direction of the last change, as "Zero" ticks.
    falling = previous["tickDirection"] in ("MinusTick", "ZeroMinusTick")
    return "ZeroMinusTick" if falling else "ZeroPlusTick"


def stream_order_row(event: OrderUpdated) -> dict[str, Any]:
    """An ``order`` topic row: the REST order row as it is now, plus the category."""
    row = order_fields(event.order)
    row["category"] = "linear"
    row["feeCurrency"] = ""
    return row


def execution_row(exchange: Exchange, event: OrderUpdated) -> dict[str, Any]:
    """An ``execution`` topic row for the fill of an order event."""
    order = event.order
    fill = event.fill
    assert fill is not None
    rules = order.rules
    rest = order_fields(order)
    fee_rate = (MAKER_FEE_RATE if fill.maker else TAKER_FEE_RATE)[exchange.name]
    return {
        "category": "linear",
        "symbol": rules.market_id,
        "isLeverage": "",
        "orderId": order.order_id,
        "orderLinkId": order.client_order_id,
        "side": rest["side"],
        "orderPrice": rest["price"],
        "orderQty": rest["qty"],
        "leavesQty": rest["leavesQty"],
        "createType": rest["createType"],
        "orderType": rest["orderType"],
        "stopOrderType": "",
        "execFee": fmt(fill.fee, 8),
        "execId": str(uuid.uuid5(EXECUTION_ID_NAMESPACE, f"{order.order_id}:{fill.trade_id}")),
        "execPrice": fmt(fill.price, rules.price_precision),
        "execQty": fmt(fill.quantity, rules.quantity_precision),
        "execPnl": fmt(fill.realized_pnl, 8),
        "execType": "Trade",
        "execValue": plain(fill.quantity * fill.price),
        "execTime": str(event.at_ms),
        "isMaker": fill.maker,
        "feeRate": plain(fee_rate),
        "tradeIv": "",
        "markIv": "",
        "markPrice": fmt(exchange.price(rules.market_id), rules.price_precision),
        "indexPrice": "",
        "underlyingPrice": "",
        "blockTradeId": "",
        "closedSize": fmt(fill.closed_quantity, rules.quantity_precision),
        "seq": fill.trade_id,
        "extraFees": "",
    }


def stream_position_row(exchange: Exchange, market_id: str, at_ms: int) -> dict[str, Any]:
    """A ``position`` topic row: the REST position row with the stream's field names."""
    position = exchange.positions[market_id]
    row = position_row(exchange, position, position.state, at_ms)
    size = position.state.size
    row["entryPrice"] = row.pop("avgPrice")
    row["category"] = "linear"
    row["sessionAvgPrice"] = ""
    row["curRealisedPnl"] = fmt(position.state.realized_pnl, 8)
    row["liqPrice"] = row["liqPrice"] or ""
    row["positionValue"] = row["positionValue"] or "0"
    row["unrealisedPnl"] = row["unrealisedPnl"] or fmt(ZERO, 8)
    if not size:
        row["side"] = ""
    return row
