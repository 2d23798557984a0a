"""Binance USDⓈ-M futures REST (``fapi``), as ``ccxt.binanceusdm`` calls it.

Response shapes follow real recorded responses (ccxt's static fixtures);
error codes and messages follow Binance's futures error-code list, so the
real ccxt client raises the same exception classes as on the real exchange.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from exchange_sim.api import (
    ApiError,
    Ctx,
    Endpoint,
    fmt,
    gateway_page,
    parse_decimal,
    parse_query,
    plain,
)
from exchange_sim.engine import (
    MAINT_MARGIN_RATE,
    ZERO,
    Exchange,
    Order,
    OrderRequest,
    Reason,
    Rejected,
    Status,
    decimals_of,
)
from exchange_sim.faults import FaultRule
from exchange_sim.markets import MarketRules

if TYPE_CHECKING:
    from exchange_sim.streams.listen_keys import ListenKeys

JSON = "application/json"
CLIENT_ID_PATTERN = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
NUMBER_PATTERN = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
STATUS = {
    Status.NEW: "NEW",
    Status.PARTIALLY_FILLED: "PARTIALLY_FILLED",
    Status.FILLED: "FILLED",
    Status.CANCELED: "CANCELED",
    Status.EXPIRED: "EXPIRED",
}
TIME_IN_FORCE = ("GTC", "IOC", "FOK", "GTX")
# recvWindow when a signed request sends none, and the largest Binance accepts.
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60_000


def _error(status: int, code: int, msg: str, headers: Mapping[str, str] | None = None) -> ApiError:
    return ApiError(status, {"code": code, "msg": msg}, headers)


def _mandatory(name: str) -> ApiError:
    return _error(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _illegal(name: str, pattern: str) -> ApiError:
    return _error(
        400,
        -1100,
        f"Illegal characters found in parameter '{name}'; legal range is '{pattern}'.",
    )


class BinanceFutures:
    name = "binance"

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Endpoint] = {
            ("GET", "/fapi/v1/ping"): Endpoint("time", False, lambda ctx: {}),
            ("GET", "/fapi/v1/time"): Endpoint("time", False, self.server_time),
            ("GET", "/fapi/v1/exchangeInfo"): Endpoint("markets", False, self.exchange_info),
            ("GET", "/fapi/v1/ticker/24hr"): Endpoint("tickers", False, self.ticker_24hr),
            ("GET", "/fapi/v1/ticker/price"): Endpoint("tickers", False, self.ticker_price),
            ("GET", "/fapi/v2/ticker/price"): Endpoint("tickers", False, self.ticker_price),
            ("GET", "/fapi/v1/ticker/bookTicker"): Endpoint("tickers", False, self.book_ticker),
            ("GET", "/fapi/v1/premiumIndex"): Endpoint("tickers", False, self.premium_index),
            ("POST", "/fapi/v1/order"): Endpoint("create_order", True, self.create_order),
            ("GET", "/fapi/v1/order"): Endpoint("fetch_order", True, self.fetch_order),
            ("DELETE", "/fapi/v1/order"): Endpoint("cancel_order", True, self.cancel_order),
            ("GET", "/fapi/v1/openOrder"): Endpoint("fetch_order", True, self.fetch_open_order),
            ("GET", "/fapi/v1/openOrders"): Endpoint("open_orders", True, self.open_orders),
            ("GET", "/fapi/v1/allOrders"): Endpoint("order_history", True, self.all_orders),
            ("GET", "/fapi/v3/positionRisk"): Endpoint("positions", True, self.position_risk_v3),
            ("GET", "/fapi/v2/positionRisk"): Endpoint("positions", True, self.position_risk_v2),
            ("GET", "/fapi/v3/account"): Endpoint("balance", True, self.account_v3),
            ("GET", "/fapi/v2/account"): Endpoint("balance", True, self.account_v2),
            ("GET", "/fapi/v2/balance"): Endpoint("balance", True, self.balance),
            ("GET", "/fapi/v3/balance"): Endpoint("balance", True, self.balance),
            ("GET", "/fapi/v1/leverageBracket"): Endpoint("other", True, self.leverage_brackets),
            ("POST", "/fapi/v1/leverage"): Endpoint("other", True, self.set_leverage),
            ("GET", "/fapi/v1/positionSide/dual"): Endpoint("other", True, self.position_mode),
            # The user data stream's key takes the API key only, no signature.
            ("POST", "/fapi/v1/listenKey"): Endpoint("listen_key", False, self.new_listen_key),
            ("PUT", "/fapi/v1/listenKey"): Endpoint("listen_key", False, self.keep_alive_key),
            ("DELETE", "/fapi/v1/listenKey"): Endpoint("listen_key", False, self.close_listen_key),
        }

    # --- FrontEnd protocol ------------------------------------------------------------

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        return self._routes.get((method, path))

    async def read_params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = parse_query(request.rel_url.raw_query_string)
        if request.method in ("POST", "PUT") and request.can_read_body:
            body = (await request.read()).decode("utf-8", errors="replace")
            params.update(parse_query(body))
        return params

    def authenticate(self, request: web.Request, params: Mapping[str, Any], now_ms: int) -> None:
        if not request.headers.get("X-MBX-APIKEY"):
            raise _error(401, -2014, "API-key format invalid.")
        timestamp = params.get("timestamp")
        if not timestamp:
            raise _mandatory("timestamp")
        signature = params.get("signature")
        if not signature:
            raise _mandatory("signature")
        # The HMAC itself is not checked (the simulator does not know the
        # secret), but a signature must look like one.
        if not re.fullmatch(r"[0-9a-fA-F]{64}|[A-Za-z0-9%+/=_-]{40,}", signature):
            raise _error(400, -1022, "Signature for this request is not valid.")
        if not timestamp.isdigit():
            raise _illegal("timestamp", "^[0-9]{1,20}$")
        recv_window = _int_param(params, "recvWindow", DEFAULT_RECV_WINDOW_MS, 1, None)
        if recv_window > MAX_RECV_WINDOW_MS:
            raise _error(400, -1131, "recvWindow must be less than 60000")
        # Binance's rule: accepted while timestamp < serverTime + 1000 and
        # serverTime - timestamp <= recvWindow, judged when the request arrives.
        sent_ms = int(timestamp)
        if sent_ms >= now_ms + 1000:
            raise _error(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if now_ms - sent_ms > recv_window:
            raise _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def unified_symbol(self, params: Mapping[str, Any]) -> str | None:
        market_id = params.get("symbol")
        if isinstance(market_id, str) and market_id.endswith("USDT"):
            return f"{market_id[:-4]}/USDT:USDT"
        return None

    def success(self, payload: Any, now_ms: int) -> web.Response:
        return web.Response(body=orjson.dumps(payload), content_type=JSON)

    def error(self, error: ApiError) -> web.Response:
        return web.Response(
            status=error.status,
            body=orjson.dumps(error.payload),
            content_type=JSON,
            headers=error.headers,
        )

    def rejection(self, rejected: Rejected, operation: str) -> ApiError:
        reason, context = rejected.reason, rejected.context
        if reason is Reason.UNKNOWN_SYMBOL:
            return _error(400, -1121, "Invalid symbol.")
        if reason is Reason.QTY_NOT_POSITIVE:
            return _error(400, -4003, "Quantity less than or equal to zero.")
        if reason in (Reason.QTY_PRECISION, Reason.PRICE_PRECISION):
            return _error(400, -1111, "Precision is over the maximum defined for this asset.")
        if reason is Reason.QTY_STEP:
            return _error(400, -4023, "Quantity not increased by step size.")
        if reason is Reason.QTY_BELOW_MIN:
            return _error(400, -4004, "Quantity less than or equal to min quantity.")
        if reason is Reason.QTY_ABOVE_MAX:
            return _error(400, -4005, "Quantity greater than max quantity.")
        if reason is Reason.PRICE_MISSING:
            return _mandatory("price")
        if reason is Reason.PRICE_NOT_POSITIVE:
            return _error(400, -4001, "Price less than 0.")
        if reason is Reason.PRICE_TICK:
            return _error(400, -4014, "Price not increased by tick size.")
        if reason is Reason.MIN_NOTIONAL:
            minimum = plain(context["min_notional"])  # type: ignore[arg-type]
            return _error(
                400,
                -4164,
                f"Order's notional must be no smaller than {minimum} (unless you choose reduce only).",
            )
        if reason is Reason.INSUFFICIENT_MARGIN:
            return _error(400, -2019, "Margin is insufficient.")
        if reason is Reason.REDUCE_ONLY:
            return _error(400, -2022, "ReduceOnly Order is rejected.")
        if reason is Reason.DUPLICATE_CLIENT_ID:
            return _error(400, -4116, "ClientOrderId is duplicated.")
        if reason is Reason.POST_ONLY_WOULD_TAKE:
            return _error(
                400,
                -5022,
                "Due to the order could not be executed as maker, the Post Only order will be rejected. The order will not be recorded in the order history",
            )
        if reason is Reason.ORDER_NOT_FOUND:
            if operation == "cancel_order":
                return _error(400, -2011, "Unknown order sent.")
            return _error(400, -2013, "Order does not exist.")
        return self.internal_error()

    def fault(self, rule: FaultRule, now_ms: int) -> ApiError:
        retry_after = {"Retry-After": str(rule.retry_after_s)}
        if rule.kind == "rate_limit":
            return _error(
                429,
                -1003,
                "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
                "Please use the websocket for live updates to avoid polling the API.",
                retry_after,
            )
        if rule.kind == "ip_ban":
            banned_until = now_ms + rule.retry_after_s * 1000
            return _error(
                418,
                -1003,
                f"Way too many requests; IP(127.0.0.1) banned until {banned_until}. "
                "Please use the websocket for live updates to avoid bans.",
                retry_after,
            )
        if rule.kind == "unknown_status":
            return _error(
                408,
                -1007,
                "Timeout waiting for response from backend server. "
                "Send status unknown; execution status unknown.",
            )
        if rule.kind == "insufficient_margin":
            return _error(400, -2019, "Margin is insufficient.")
        if rule.kind == "auth_refused":
            return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        # server_error: what a load balancer in front of the API sends, not JSON.
        return ApiError(rule.status, gateway_page(rule.status))

    def internal_error(self) -> ApiError:
        return _error(500, -1000, "An unknown error occurred while processing the request.")

    def not_found(self, method: str, path: str) -> ApiError:
        return ApiError(404, gateway_page(404))

    # --- public endpoints -------------------------------------------------------------

    def server_time(self, ctx: Ctx) -> dict[str, Any]:
        return {"serverTime": ctx.now_ms}

    def exchange_info(self, ctx: Ctx) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": ctx.now_ms,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 2400,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [_symbol_info(rules) for rules in ctx.exchange.rules_by_id.values()],
        }

    def _markets(self, ctx: Ctx) -> list[MarketRules]:
        market_id = ctx.params.get("symbol")
        if market_id is None:
            return list(ctx.exchange.rules_by_id.values())
        rules = ctx.exchange.rules_by_id.get(market_id)
        if rules is None:
            raise _error(400, -1121, "Invalid symbol.")
        return [rules]

    def _one_or_all(self, ctx: Ctx, rows: list[dict[str, Any]]) -> Any:
        return rows[0] if "symbol" in ctx.params else rows

    def ticker_24hr(self, ctx: Ctx) -> Any:
        rows = [ticker_24hr_row(ctx.exchange, rules, ctx.now_ms) for rules in self._markets(ctx)]
        return self._one_or_all(ctx, rows)

    def ticker_price(self, ctx: Ctx) -> Any:
        rows = [
            {
                "symbol": rules.market_id,
                "price": fmt(ctx.exchange.price(rules.market_id), rules.price_precision),
                "time": ctx.now_ms,
            }
            for rules in self._markets(ctx)
        ]
        return self._one_or_all(ctx, rows)

    def book_ticker(self, ctx: Ctx) -> Any:
        rows = [book_ticker_row(ctx.exchange, rules, ctx.now_ms) for rules in self._markets(ctx)]
        return self._one_or_all(ctx, rows)

    def premium_index(self, ctx: Ctx) -> Any:
        rows = [premium_index_row(ctx.exchange, rules, ctx.now_ms) for rules in self._markets(ctx)]
        return self._one_or_all(ctx, rows)

    # --- orders -----------------------------------------------------------------------

    def _rules(self, ctx: Ctx) -> MarketRules:
        market_id = ctx.params.get("symbol")
        if not market_id:
            raise _mandatory("symbol")
        rules = ctx.exchange.rules_by_id.get(market_id)
        if rules is None:
            raise _error(400, -1121, "Invalid symbol.")
        return rules

    def create_order(self, ctx: Ctx) -> dict[str, Any]:
        params = ctx.params
        rules = self._rules(ctx)
        side = params.get("side")
        if not side:
            raise _mandatory("side")
        if side not in ("BUY", "SELL"):
            raise _error(400, -1117, "Invalid side.")
        order_type = params.get("type")
        if not order_type:
            raise _mandatory("type")
        if order_type in ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET") or (
            order_type == "TRAILING_STOP_MARKET"
        ):
            raise _error(
                400,
                -4120,
                "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
            )
        if order_type not in ("MARKET", "LIMIT"):
            raise _error(400, -1116, "Invalid orderType.")
        position_side = params.get("positionSide", "BOTH")
        if position_side not in ("BOTH", "LONG", "SHORT"):
            raise _error(400, -4060, "Invalid position side.")
        if position_side != "BOTH":
            raise _error(400, -4061, "Order's position side does not match user's setting.")
        quantity = self._number(params, "quantity")
        if quantity is None:
            raise _mandatory("quantity")
        price = self._number(params, "price")
        time_in_force = params.get("timeInForce")
        if order_type == "LIMIT":
            if price is None:
                raise _mandatory("price")
            if not time_in_force:
                raise _mandatory("timeInForce")
            if time_in_force not in TIME_IN_FORCE:
                raise _error(400, -1115, "Invalid timeInForce.")
        elif time_in_force is not None and time_in_force not in TIME_IN_FORCE:
            raise _error(400, -1115, "Invalid timeInForce.")
        reduce_only_text = params.get("reduceOnly", "false")
        if reduce_only_text not in ("true", "false", "TRUE", "FALSE"):
            raise _error(400, -1130, "Data sent for parameter 'reduceOnly' is not valid.")
        client_id = params.get("newClientOrderId")
        if client_id is not None:
            if len(client_id) > 36:
                raise _error(400, -4015, "Client order id length should not be more than 36 chars")
            if not CLIENT_ID_PATTERN.match(client_id):
                raise _illegal("newClientOrderId", CLIENT_ID_PATTERN.pattern)
        else:
            client_id = ctx.exchange.new_client_id()
        response_type = params.get("newOrderRespType", "ACK")
        if response_type not in ("ACK", "RESULT"):
            raise _error(400, -1136, "Invalid newOrderRespType.")
        request = OrderRequest(
            market_id=rules.market_id,
            side=side.lower(),
            type=order_type.lower(),
            quantity=quantity,
            price=price if order_type == "LIMIT" else None,
            time_in_force=time_in_force or "GTC",
            reduce_only=reduce_only_text.lower() == "true",
            client_order_id=client_id,
        )
        order = ctx.exchange.place(
            request,
            ctx.now_ms,
            partial_fraction=ctx.faults.partial_fraction,
            visibility_lag_ms=ctx.faults.visibility_lag_ms,
            force_insufficient_margin=ctx.force_insufficient_margin,
        )
        return _order_result(order, acknowledged_only=response_type == "ACK")

    def _number(self, params: Mapping[str, Any], name: str) -> Decimal | None:
        text = params.get(name)
        if text is None or text == "":
            return None
        if not NUMBER_PATTERN.match(text):
            raise _illegal(name, NUMBER_PATTERN.pattern)
        return parse_decimal(text)

    def _order_ids(self, ctx: Ctx, client_field: str) -> tuple[str | None, str | None]:
        order_id = ctx.params.get("orderId") or None
        client_id = ctx.params.get(client_field) or None
        if order_id is None and client_id is None:
            raise _error(
                400,
                -1102,
                f"Param '{client_field}' or 'orderId' must be sent, but both were empty/null!",
            )
        if order_id is not None and not order_id.isdigit():
            raise _illegal("orderId", "^[0-9]{1,20}$")
        return order_id, client_id

    def fetch_order(self, ctx: Ctx) -> dict[str, Any]:
        rules = self._rules(ctx)
        order_id, client_id = self._order_ids(ctx, "origClientOrderId")
        order = ctx.exchange.find_order(rules.market_id, ctx.now_ms, order_id, client_id)
        return _order_query(order)

    def fetch_open_order(self, ctx: Ctx) -> dict[str, Any]:
        rules = self._rules(ctx)
        order_id, client_id = self._order_ids(ctx, "origClientOrderId")
        order = ctx.exchange.find_order(rules.market_id, ctx.now_ms, order_id, client_id)
        if not order.is_open:
            raise _error(400, -2013, "Order does not exist.")
        return _order_query(order)

    def cancel_order(self, ctx: Ctx) -> dict[str, Any]:
        rules = self._rules(ctx)
        order_id, client_id = self._order_ids(ctx, "origClientOrderId")
        order = ctx.exchange.cancel(rules.market_id, ctx.now_ms, order_id, client_id)
        return _order_result(order)

    def open_orders(self, ctx: Ctx) -> list[dict[str, Any]]:
        market_id = None
        if ctx.params.get("symbol"):
            market_id = self._rules(ctx).market_id
        return [_order_query(o) for o in ctx.exchange.open_orders(market_id, ctx.now_ms)]

    def all_orders(self, ctx: Ctx) -> list[dict[str, Any]]:
        rules = self._rules(ctx)
        limit = _int_param(ctx.params, "limit", 500, 1, 1000)
        from_id = ctx.params.get("orderId")
        start = _int_param(ctx.params, "startTime", 0, 0, None)
        end = _int_param(ctx.params, "endTime", 1 << 62, 0, None)
        found: list[Order] = []
        for order in ctx.exchange.history(rules.market_id, ctx.now_ms):
            if from_id is not None and int(order.order_id) < int(from_id):
                break  # ids grow with time: everything older is smaller
            if not start <= order.created_ms <= end:
                continue
            found.append(order)
            if from_id is None and len(found) == limit:
                break  # the most recent `limit` orders
        found.reverse()  # oldest first, as Binance sends them
        if from_id is not None:
            found = found[:limit]
        return [_order_query(o) for o in found]

    # --- account ----------------------------------------------------------------------

    def _position_rows(self, ctx: Ctx, include_flat: bool) -> list[tuple[MarketRules, Any]]:
        exchange = ctx.exchange
        market_id = ctx.params.get("symbol")
        if market_id is not None and market_id not in exchange.rules_by_id:
            raise _error(400, -1121, "Invalid symbol.")
        as_of = ctx.now_ms - ctx.faults.positions_lag_ms
        rows = []
        for mid, position in exchange.positions.items():
            if market_id is not None and mid != market_id:
                continue
            state = position.as_of(as_of) if ctx.faults.positions_lag_ms else position.state
            has_orders = bool(exchange.resting[mid])
            if state.size or has_orders or include_flat:
                rows.append((position.rules, state, position.leverage))
        return rows

    def position_risk_v3(self, ctx: Ctx) -> list[dict[str, Any]]:
        result = []
        for rules, state, leverage in self._position_rows(ctx, include_flat=False):
            mark = ctx.exchange.price(rules.market_id)
            notional = state.size * mark
            unrealized = (mark - state.entry_price) * state.size if state.size else ZERO
            initial = abs(notional) / leverage
            order_margin = sum(
                (o.held_margin for o in ctx.exchange.resting[rules.market_id].values()), ZERO
            )
            result.append(
                {
                    "symbol": rules.market_id,
                    "positionSide": "BOTH",
                    "positionAmt": fmt(state.size, rules.quantity_precision),
                    "entryPrice": plain(state.entry_price),
                    "breakEvenPrice": plain(break_even_price(state.size, state.entry_price)),
                    "markPrice": fmt(mark, 8),
                    "unRealizedProfit": fmt(unrealized, 8),
                    "liquidationPrice": fmt(ctx.exchange.liquidation_price(rules.market_id), 8),
                    "isolatedMargin": "0",
                    "notional": fmt(notional, 8),
                    "marginAsset": "USDT",
                    "isolatedWallet": "0",
                    "initialMargin": fmt(initial + order_margin, 8),
                    "maintMargin": fmt(abs(notional) * MAINT_MARGIN_RATE, 8),
                    "positionInitialMargin": fmt(initial, 8),
                    "openOrderInitialMargin": fmt(order_margin, 8),
                    "adl": 1 if state.size else 0,
                    "bidNotional": "0",
                    "askNotional": "0",
                    "updateTime": state.updated_ms,
                }
            )
        return result

    def position_risk_v2(self, ctx: Ctx) -> list[dict[str, Any]]:
        result = []
        for rules, state, leverage in self._position_rows(ctx, include_flat=True):
            mark = ctx.exchange.price(rules.market_id)
            unrealized = (mark - state.entry_price) * state.size if state.size else ZERO
            result.append(
                {
                    "symbol": rules.market_id,
                    "positionAmt": fmt(state.size, rules.quantity_precision),
                    "entryPrice": plain(state.entry_price),
                    "breakEvenPrice": plain(break_even_price(state.size, state.entry_price)),
                    "markPrice": fmt(mark, 8),
                    "unRealizedProfit": fmt(unrealized, 8),
                    "liquidationPrice": fmt(ctx.exchange.liquidation_price(rules.market_id), 8),
                    "leverage": str(leverage),
                    "maxNotionalValue": "50000000",
                    "marginType": "cross",
                    "isolatedMargin": "0.00000000",
                    "isAutoAddMargin": "false",
                    "positionSide": "BOTH",
                    "notional": fmt(state.size * mark, 8),
                    "isolatedWallet": "0",
                    "updateTime": state.updated_ms,
                }
            )
        return result

    def _asset(self, ctx: Ctx) -> dict[str, Any]:
        exchange = ctx.exchange
        unrealized = exchange.total_unrealized()
        position_margin = exchange.total_position_margin()
        order_margin = exchange.order_margin()
        maint = sum(
            (
                abs(p.state.size) * exchange.price(mid) * MAINT_MARGIN_RATE
                for mid, p in exchange.positions.items()
            ),
            ZERO,
        )
        available = exchange.available()
        return {
            "asset": "USDT",
            "walletBalance": fmt(exchange.wallet, 8),
            "unrealizedProfit": fmt(unrealized, 8),
            "marginBalance": fmt(exchange.wallet + unrealized, 8),
            "maintMargin": fmt(maint, 8),
            "initialMargin": fmt(position_margin + order_margin, 8),
            "positionInitialMargin": fmt(position_margin, 8),
            "openOrderInitialMargin": fmt(order_margin, 8),
            "crossWalletBalance": fmt(exchange.wallet, 8),
            "crossUnPnl": fmt(unrealized, 8),
            "availableBalance": fmt(available, 8),
            "maxWithdrawAmount": fmt(max(ZERO, min(available, exchange.wallet)), 8),
            "updateTime": ctx.now_ms,
        }

    def account_v3(self, ctx: Ctx) -> dict[str, Any]:
        asset = self._asset(ctx)
        exchange = ctx.exchange
        positions = []
        for mid, position in exchange.positions.items():
            state = position.state
            if not state.size:
                continue
            mark = exchange.price(mid)
            notional = state.size * mark
            initial = abs(notional) / position.leverage
            positions.append(
                {
                    "symbol": mid,
                    "positionSide": "BOTH",
                    "positionAmt": fmt(state.size, position.rules.quantity_precision),
                    "unrealizedProfit": fmt((mark - state.entry_price) * state.size, 8),
                    "isolatedMargin": "0",
                    "notional": fmt(notional, 8),
                    "isolatedWallet": "0",
                    "initialMargin": fmt(initial, 8),
                    "maintMargin": fmt(abs(notional) * MAINT_MARGIN_RATE, 8),
                    "updateTime": state.updated_ms,
                }
            )
        return {
            "totalInitialMargin": asset["initialMargin"],
            "totalMaintMargin": asset["maintMargin"],
            "totalWalletBalance": asset["walletBalance"],
            "totalUnrealizedProfit": asset["unrealizedProfit"],
            "totalMarginBalance": asset["marginBalance"],
            "totalPositionInitialMargin": asset["positionInitialMargin"],
            "totalOpenOrderInitialMargin": asset["openOrderInitialMargin"],
            "totalCrossWalletBalance": asset["crossWalletBalance"],
            "totalCrossUnPnl": asset["crossUnPnl"],
            "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"],
            "assets": [asset],
            "positions": positions,
        }

    def account_v2(self, ctx: Ctx) -> dict[str, Any]:
        """The older account answer: account flags, every symbol's position row."""
        v3 = self.account_v3(ctx)
        exchange = ctx.exchange
        positions = []
        for mid, position in exchange.positions.items():
            state = position.state
            mark = exchange.price(mid)
            initial = abs(state.size) * mark / position.leverage
            order_margin = sum((o.held_margin for o in exchange.resting[mid].values()), ZERO)
            positions.append(
                {
                    "symbol": mid,
                    "initialMargin": fmt(initial + order_margin, 8),
                    "maintMargin": fmt(abs(state.size) * mark * MAINT_MARGIN_RATE, 8),
                    "unrealizedProfit": fmt((mark - state.entry_price) * state.size, 8),
                    "positionInitialMargin": fmt(initial, 8),
                    "openOrderInitialMargin": fmt(order_margin, 8),
                    "leverage": str(position.leverage),
                    "isolated": False,
                    "entryPrice": plain(state.entry_price),
                    "breakEvenPrice": plain(break_even_price(state.size, state.entry_price)),
                    "maxNotional": "50000000",
                    "bidNotional": "0",
                    "askNotional": "0",
                    "positionSide": "BOTH",
                    "positionAmt": fmt(state.size, position.rules.quantity_precision),
                    "updateTime": state.updated_ms,
                }
            )
        return {
            "feeTier": 0,
            "canTrade": True,
            "canDeposit": True,
            "canWithdraw": True,
            "tradeGroupId": -1,
            "updateTime": 0,
            "multiAssetsMargin": False,
            **{key: value for key, value in v3.items() if key not in ("assets", "positions")},
            "assets": [{**asset, "marginAvailable": True} for asset in v3["assets"]],
            "positions": positions,
        }

    def balance(self, ctx: Ctx) -> list[dict[str, Any]]:
        asset = self._asset(ctx)
        return [
            {
                "accountAlias": "SgsR",
                "asset": "USDT",
                "balance": asset["walletBalance"],
                "crossWalletBalance": asset["crossWalletBalance"],
                "crossUnPnl": asset["crossUnPnl"],
                "availableBalance": asset["availableBalance"],
                "maxWithdrawAmount": asset["maxWithdrawAmount"],
                "marginAvailable": True,
                "updateTime": ctx.now_ms,
            }
        ]

    def leverage_brackets(self, ctx: Ctx) -> Any:
        rows = []
        for rules in self._markets(ctx):
            # Two tiers are enough for what ccxt derives from them (maintenance rate).
            rows.append(
                {
                    "symbol": rules.market_id,
                    "notionalCoef": 1.0,
                    "brackets": [
                        {
                            "bracket": 1,
                            "initialLeverage": rules.max_leverage,
                            "notionalCap": 50000,
                            "notionalFloor": 0,
                            "maintMarginRatio": float(MAINT_MARGIN_RATE),
                            "cum": 0.0,
                        },
                        {
                            "bracket": 2,
                            "initialLeverage": max(1, rules.max_leverage // 2),
                            "notionalCap": 50000000,
                            "notionalFloor": 50000,
                            "maintMarginRatio": 0.005,
                            "cum": 50.0,
                        },
                    ],
                }
            )
        return self._one_or_all(ctx, rows)

    def set_leverage(self, ctx: Ctx) -> dict[str, Any]:
        rules = self._rules(ctx)
        leverage = _int_param(ctx.params, "leverage", None, 1, rules.max_leverage)
        ctx.exchange.positions[rules.market_id].leverage = leverage
        return {"leverage": leverage, "maxNotionalValue": "50000000", "symbol": rules.market_id}

    def position_mode(self, ctx: Ctx) -> dict[str, Any]:
        return {"dualSidePosition": False}

    # --- user data stream -------------------------------------------------------------

    def _listen_keys(self, ctx: Ctx) -> ListenKeys:
        if not ctx.headers.get("X-MBX-APIKEY"):
            raise _error(401, -2014, "API-key format invalid.")
        return ctx.streams.listen_keys

    def new_listen_key(self, ctx: Ctx) -> dict[str, Any]:
        return {"listenKey": self._listen_keys(ctx).open()}

    def keep_alive_key(self, ctx: Ctx) -> dict[str, Any]:
        key = self._listen_keys(ctx).keep_alive(ctx.params.get("listenKey") or None)
        if key is None:
            raise _error(400, -1125, "This listenKey does not exist.")
        return {"listenKey": key}

    def close_listen_key(self, ctx: Ctx) -> dict[str, Any]:
        self._listen_keys(ctx).close(ctx.params.get("listenKey") or None)
        return {}


# --- rendering (shared with the streams, so both show the same numbers) ----------------


def ticker_24hr_row(exchange: Exchange, rules: MarketRules, now_ms: int) -> dict[str, Any]:
    last = exchange.price(rules.market_id)
    places = rules.price_precision
    open_price = exchange.open_prices.get(rules.market_id, last)
    change = last - open_price
    percent = (change / open_price * 100) if open_price else ZERO
    return {
        "symbol": rules.market_id,
        "priceChange": fmt(change, places),
        "priceChangePercent": fmt(percent, 3),
        "weightedAvgPrice": fmt((open_price + last) / 2, places),
        "lastPrice": fmt(last, places),
        "lastQty": fmt(rules.min_qty, rules.quantity_precision),
        "openPrice": fmt(open_price, places),
        "highPrice": fmt(max(open_price, last), places),
        "lowPrice": fmt(min(open_price, last), places),
        "volume": fmt(Decimal(1000), rules.quantity_precision),
        "quoteVolume": fmt(1000 * last, 2),
        "openTime": now_ms - 86_400_000,
        "closeTime": now_ms,
        "firstId": 1,
        "lastId": 1000,
        "count": 1000,
    }


def book_ticker_row(exchange: Exchange, rules: MarketRules, now_ms: int) -> dict[str, Any]:
    last = exchange.price(rules.market_id)
    return {
        "symbol": rules.market_id,
        "bidPrice": fmt(last - rules.tick_size, rules.price_precision),
        "bidQty": fmt(rules.max_market_qty, rules.quantity_precision),
        "askPrice": fmt(last + rules.tick_size, rules.price_precision),
        "askQty": fmt(rules.max_market_qty, rules.quantity_precision),
        "time": now_ms,
        "lastUpdateId": now_ms,
    }


def premium_index_row(exchange: Exchange, rules: MarketRules, now_ms: int) -> dict[str, Any]:
    last = exchange.price(rules.market_id)
    return {
        "symbol": rules.market_id,
        "markPrice": fmt(last, 8),
        "indexPrice": fmt(last, 8),
        "estimatedSettlePrice": fmt(last, 8),
        "lastFundingRate": "0.00010000",
        "interestRate": "0.00010000",
        "nextFundingTime": next_funding_ms(now_ms),
        "time": now_ms,
    }


def next_funding_ms(now_ms: int) -> int:
    """Funding every 8 hours from midnight UTC."""
    return (now_ms // 28_800_000 + 1) * 28_800_000


def _symbol_info(rules: MarketRules) -> dict[str, Any]:
    tick = fmt(rules.tick_size, decimals_of(rules.tick_size))
    step = plain(rules.step_size)
    return {
        "symbol": rules.market_id,
        "pair": rules.market_id,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": rules.base,
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": rules.price_precision,
        "quantityPrecision": rules.quantity_precision,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "4529764",
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "stepSize": step,
                "maxQty": plain(rules.max_qty),
                "minQty": plain(rules.min_qty),
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": step,
                "maxQty": plain(rules.max_market_qty),
                "minQty": plain(rules.min_qty),
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": plain(rules.min_notional)},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": [
            "LIMIT",
            "MARKET",
            "STOP",
            "STOP_MARKET",
            "TAKE_PROFIT",
            "TAKE_PROFIT_MARKET",
            "TRAILING_STOP_MARKET",
        ],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


def order_fields(order: Order, acknowledged_only: bool = False) -> dict[str, Any]:
    rules = order.rules
    price_places = rules.price_precision
    filled = ZERO if acknowledged_only else order.filled
    quote = ZERO if acknowledged_only else order.filled_quote
    average = quote / filled if filled else ZERO
    status = Status.NEW if acknowledged_only else order.status
    order_type = order.type.upper()
    return {
        "orderId": int(order.order_id),
        "symbol": rules.market_id,
        "status": STATUS[status],
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price or ZERO, price_places),
        "avgPrice": fmt(average, max(price_places, 5)) if filled else fmt(ZERO, price_places),
        "origQty": fmt(order.quantity, rules.quantity_precision),
        "executedQty": fmt(filled, rules.quantity_precision),
        "cumQty": fmt(filled, rules.quantity_precision),
        "cumQuote": fmt(quote, 5),
        "timeInForce": "GTC" if order.type == "market" else order.time_in_force,
        "type": order_type,
        "reduceOnly": order.reduce_only,
        "closePosition": False,
        "side": order.side.upper(),
        "positionSide": "BOTH",
        "stopPrice": fmt(ZERO, price_places),
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order_type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": order.created_ms,
        "updateTime": order.created_ms if acknowledged_only else order.updated_ms,
    }


def _order_result(order: Order, acknowledged_only: bool = False) -> dict[str, Any]:
    """POST/DELETE /fapi/v1/order: carries cumQty, not time."""
    fields = order_fields(order, acknowledged_only)
    del fields["time"]
    return fields


def _order_query(order: Order) -> dict[str, Any]:
    """GET /fapi/v1/order, openOrder(s), allOrders: carries time, not cumQty."""
    fields = order_fields(order)
    del fields["cumQty"]
    return fields


def break_even_price(size: Decimal, entry: Decimal) -> Decimal:
    if not size:
        return ZERO
    # Entry plus the taker fee of opening and closing, in the position's direction.
    return entry * (1 + Decimal("0.001") * (1 if size > 0 else -1))


def _int_param(
    params: Mapping[str, Any], name: str, default: int | None, low: int, high: int | None
) -> int:
    text = params.get(name)
    if text is None or text == "":
        if default is None:
            raise _mandatory(name)
        return default
    if not str(text).isdigit():
        raise _illegal(name, "^[0-9]{1,20}$")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise _error(400, -1130, f"Data sent for parameter '{name}' is not valid.")
    return value
