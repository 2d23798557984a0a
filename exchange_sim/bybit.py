"""Bybit v5 REST (unified trading account, ``category=linear``), as ``ccxt.bybit`` calls it.

Bybit answers almost every error with HTTP 200 and a non-zero ``retCode``;
codes and messages follow Bybit's v5 error list so the real ccxt client
raises the same exception classes as on the real exchange.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

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
    now_ms,
)
from exchange_sim.faults import FaultRule
from exchange_sim.markets import MarketRules

JSON = "application/json"
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
TIME_IN_FORCE = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "PostOnly": "GTX"}
TIME_IN_FORCE_OUT = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "GTX": "PostOnly"}
RECENT_CLOSED = 500
# X-BAPI-RECV-WINDOW when a request sends none.
DEFAULT_RECV_WINDOW_MS = 5000


def _error(code: int, msg: str, status: int = 200, headers: Mapping[str, str] | None = None):
    return ApiError(status, {"retCode": code, "retMsg": msg}, headers)


def _order_status(order: Order) -> str:
    status = order.status
    if status is Status.NEW:
        return "New"
    if status is Status.PARTIALLY_FILLED:
        return "PartiallyFilled"
    if status is Status.FILLED:
        return "Filled"
    # Bybit has no "expired": an IOC/market remainder is cancelled, and an order
    # cancelled after a partial fill is PartiallyFilledCanceled.
    return "PartiallyFilledCanceled" if order.filled else "Cancelled"


def _realtime_operation(params: Mapping[str, Any]) -> str:
    return "fetch_order" if params.get("orderId") or params.get("orderLinkId") else "open_orders"


class BybitV5:
    name = "bybit"

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Endpoint] = {
            ("GET", "/v5/market/time"): Endpoint("time", False, self.server_time),
            ("GET", "/v5/market/instruments-info"): Endpoint("markets", False, self.instruments),
            ("GET", "/v5/market/tickers"): Endpoint("tickers", False, self.tickers),
            ("POST", "/v5/order/create"): Endpoint("create_order", True, self.create_order),
            ("POST", "/v5/order/cancel"): Endpoint("cancel_order", True, self.cancel_order),
            ("GET", "/v5/order/realtime"): Endpoint(_realtime_operation, True, self.realtime),
            ("GET", "/v5/order/history"): Endpoint("order_history", True, self.history),
            ("GET", "/v5/position/list"): Endpoint("positions", True, self.positions),
            ("GET", "/v5/account/wallet-balance"): Endpoint("balance", True, self.wallet),
            ("GET", "/v5/user/query-api"): Endpoint("account", True, self.query_api),
            ("GET", "/v5/account/info"): Endpoint("account", True, self.account_info),
            ("GET", "/v5/asset/coin/query-info"): Endpoint("markets", True, self.coin_info),
            ("POST", "/v5/position/set-leverage"): Endpoint("other", True, self.set_leverage),
        }

    # --- FrontEnd protocol ------------------------------------------------------------

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        return self._routes.get((method, path))

    async def read_params(self, request: web.Request) -> dict[str, Any]:
        if request.method == "POST":
            body = await request.read()
            if not body.strip():
                return {}
            try:
                params = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise _error(10001, "Request parameter error: invalid JSON body.") from None
            if not isinstance(params, dict):
                raise _error(10001, "Request parameter error: body must be a JSON object.")
            for key, value in params.items():
                if not isinstance(value, str | int | float | bool | None):
                    raise _error(10001, f"params error: {key} has the wrong type")
            return params
        return parse_query(request.rel_url.raw_query_string)

    def authenticate(self, request: web.Request, params: Mapping[str, Any], now_ms: int) -> None:
        headers = request.headers
        if not headers.get("X-BAPI-API-KEY"):
            raise _error(10003, "API key is invalid.", status=401)
        timestamp = headers.get("X-BAPI-TIMESTAMP", "")
        if not timestamp:
            raise _error(
                10002,
                "invalid request, please check your server timestamp or recv_window param",
            )
        if not headers.get("X-BAPI-SIGN"):
            raise _error(10004, "error sign! origin_string[] missing signature")
        recv_window = headers.get("X-BAPI-RECV-WINDOW") or str(DEFAULT_RECV_WINDOW_MS)
        if not timestamp.isdigit() or not recv_window.isdigit():
            raise _error(10001, "params error: timestamp or recv_window invalid")
        # Bybit's rule: server_time - recv_window <= timestamp < server_time + 1000,
        # judged when the request arrives.
        sent_ms, window_ms = int(timestamp), int(recv_window)
        if not now_ms - window_ms <= sent_ms < now_ms + 1000:
            raise _error(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{sent_ms}],server_timestamp[{now_ms}],recv_window[{window_ms}]",
            )

    def unified_symbol(self, params: Mapping[str, Any]) -> str | None:
        market_id = params.get("symbol")
        if isinstance(market_id, str) and market_id.endswith("USDT"):
            return f"{market_id[:-4]}/USDT:USDT"
        return None

    def success(self, payload: Any, now_ms: int) -> web.Response:
        body = {"retCode": 0, "retMsg": "OK", "result": payload, "retExtInfo": {}, "time": now_ms}
        return web.Response(body=orjson.dumps(body), content_type=JSON)

    def error(self, error: ApiError) -> web.Response:
        payload = error.payload
        if isinstance(payload, dict):
            payload = {**payload, "result": {}, "retExtInfo": {}, "time": now_ms()}
        return web.Response(
            status=error.status,
            body=orjson.dumps(payload),
            content_type=JSON,
            headers=error.headers,
        )

    def rejection(self, rejected: Rejected, operation: str) -> ApiError:
        reason, context = rejected.reason, rejected.context
        if reason is Reason.UNKNOWN_SYMBOL:
            return _error(10001, "params error: symbol invalid")
        if reason is Reason.QTY_NOT_POSITIVE:
            return _error(10001, "The number of contracts exceeds minimum limit allowed")
        if reason in (Reason.QTY_PRECISION, Reason.QTY_STEP):
            return _error(10001, "Qty invalid")
        if reason is Reason.QTY_BELOW_MIN:
            return _error(10001, "The number of contracts exceeds minimum limit allowed")
        if reason is Reason.QTY_ABOVE_MAX:
            return _error(10001, "The number of contracts exceeds maximum limit allowed")
        if reason is Reason.PRICE_MISSING:
            return _error(10001, "Missing some parameters that must be filled in, price")
        if reason in (Reason.PRICE_NOT_POSITIVE, Reason.PRICE_PRECISION, Reason.PRICE_TICK):
            return _error(10001, "Price invalid")
        if reason is Reason.MIN_NOTIONAL:
            minimum = plain(context["min_notional"])  # type: ignore[arg-type]
            return _error(110094, f"Order does not meet minimum order value {minimum}USDT")
        if reason is Reason.INSUFFICIENT_MARGIN:
            return _error(110007, "Insufficient available balance")
        if reason is Reason.REDUCE_ONLY:
            if not context.get("position"):
                return _error(110017, "current position is zero, cannot fix reduce-only order qty")
            return _error(110017, "Reduce-only rule not satisfied")
        if reason is Reason.DUPLICATE_CLIENT_ID:
            return _error(110072, "OrderLinkedID is duplicate")
        if reason is Reason.POST_ONLY_WOULD_TAKE:
            return _error(110079, "The post-only order would take liquidity; it is rejected")
        if reason is Reason.ORDER_NOT_FOUND:
            return _error(110001, "Order does not exist")
        return self.internal_error()

    def fault(self, rule: FaultRule, now_ms: int) -> ApiError:
        retry_after = {"Retry-After": str(rule.retry_after_s)}
        if rule.kind == "rate_limit":
            return _error(10006, "Too many visits. Exceeded the API Rate Limit.", 429, retry_after)
        if rule.kind == "ip_ban":
            return ApiError(418, "IP banned: too many requests", retry_after)
        if rule.kind == "unknown_status":
            return _error(10000, "Server Timeout")
        if rule.kind == "insufficient_margin":
            return _error(110007, "Insufficient available balance")
        if rule.kind == "auth_refused":
            return _error(10003, "API key is invalid.", status=401)
        return ApiError(rule.status, gateway_page(rule.status))

    def internal_error(self) -> ApiError:
        return _error(10016, "Internal server error.")

    def not_found(self, method: str, path: str) -> ApiError:
        return ApiError(404, gateway_page(404))

    # --- public -----------------------------------------------------------------------

    def _category(self, ctx: Ctx, required: bool = True) -> str | None:
        category = ctx.params.get("category")
        if not category:
            if required:
                raise _error(10001, "Missing some parameters that must be filled in, category")
            return None
        if category not in ("spot", "linear", "inverse", "option"):
            raise _error(10001, "params error: Category is invalid")
        return category

    def _rules(self, ctx: Ctx, required: bool = True) -> MarketRules | None:
        market_id = ctx.params.get("symbol")
        if not market_id:
            if required:
                raise _error(10001, "Missing some parameters that must be filled in, symbol")
            return None
        rules = ctx.exchange.rules_by_id.get(str(market_id).upper())
        if rules is None:
            raise _error(10001, "params error: symbol invalid")
        return rules

    def server_time(self, ctx: Ctx) -> dict[str, Any]:
        return {
            "timeSecond": str(ctx.now_ms // 1000),
            "timeNano": str(ctx.now_ms * 1_000_000),
        }

    def instruments(self, ctx: Ctx) -> dict[str, Any]:
        category = self._category(ctx)
        rows: list[dict[str, Any]] = []
        status = ctx.params.get("status")
        if category == "linear" and status in (None, "", "Trading"):
            rules_list: Iterable[MarketRules] = ctx.exchange.rules_by_id.values()
            if ctx.params.get("symbol"):
                rules = self._rules(ctx)
                assert rules is not None
                rules_list = [rules]
            rows = [_instrument(rules) for rules in rules_list]
        return {"category": category, "list": rows, "nextPageCursor": ""}

    def tickers(self, ctx: Ctx) -> dict[str, Any]:
        category = self._category(ctx)
        rows: list[dict[str, Any]] = []
        if category == "linear":
            market_id = ctx.params.get("symbol")
            rules_list: Iterable[MarketRules] = ctx.exchange.rules_by_id.values()
            if market_id:
                rules = ctx.exchange.rules_by_id.get(str(market_id))
                if rules is None:
                    raise _error(10001, "Not supported symbols")
                rules_list = [rules]
            rows = [ticker_row(ctx.exchange, rules, ctx.now_ms) for rules in rules_list]
        elif ctx.params.get("symbol"):
            raise _error(10001, "Not supported symbols")
        return {"category": category, "list": rows}

    # --- orders -----------------------------------------------------------------------

    def _linear_only(self, ctx: Ctx) -> None:
        category = self._category(ctx)
        if category != "linear":
            raise _error(10001, "params error: only category=linear is simulated")

    def create_order(self, ctx: Ctx) -> dict[str, Any]:
        params = ctx.params
        self._linear_only(ctx)
        rules = self._rules(ctx)
        assert rules is not None
        side = params.get("side")
        if side not in ("Buy", "Sell"):
            raise _error(10001, "params error: side invalid")
        order_type = params.get("orderType")
        if order_type not in ("Market", "Limit"):
            raise _error(10001, "params error: orderType invalid")
        if params.get("triggerPrice") not in (None, ""):
            raise _error(10001, "params error: conditional orders are not simulated")
        if str(params.get("positionIdx", 0)) != "0":
            raise _error(10001, "position idx not match position mode")
        quantity = _decimal_param(params, "qty")
        if quantity is None:
            raise _error(10001, "Missing some parameters that must be filled in, qty")
        price = _decimal_param(params, "price")
        time_in_force_in = params.get("timeInForce") or ("IOC" if order_type == "Market" else "GTC")
        time_in_force = TIME_IN_FORCE.get(time_in_force_in)
        if time_in_force is None:
            raise _error(10001, "params error: timeInForce invalid")
        reduce_only = params.get("reduceOnly", False)
        if isinstance(reduce_only, str):
            reduce_only = reduce_only.lower() == "true"
        if not isinstance(reduce_only, bool):
            raise _error(10001, "params error: reduceOnly invalid")
        client_id = params.get("orderLinkId") or None
        if client_id is not None:
            if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.match(client_id):
                raise _error(10001, "params error: orderLinkId is invalid")
        request = OrderRequest(
            market_id=rules.market_id,
            side=side.lower(),
            type=order_type.lower(),
            quantity=quantity,
            price=price if order_type == "Limit" else None,
            time_in_force=time_in_force,
            reduce_only=reduce_only,
            client_order_id=client_id,
        )
        order = ctx.exchange.place(
            request,
            ctx.now_ms,
            partial_fraction=ctx.faults.partial_fraction,
            visibility_lag_ms=ctx.faults.visibility_lag_ms,
            force_insufficient_margin=ctx.force_insufficient_margin,
        )
        # v5 acknowledges only: no status, no fill (the order is processed asynchronously).
        return {"orderId": order.order_id, "orderLinkId": order.client_order_id}

    def cancel_order(self, ctx: Ctx) -> dict[str, Any]:
        self._linear_only(ctx)
        rules = self._rules(ctx)
        assert rules is not None
        order_id = ctx.params.get("orderId") or None
        client_id = ctx.params.get("orderLinkId") or None
        if order_id is None and client_id is None:
            raise _error(10001, "params error: orderId or orderLinkId is required")
        order = ctx.exchange.cancel(rules.market_id, ctx.now_ms, order_id, client_id)
        return {"orderId": order.order_id, "orderLinkId": order.client_order_id}

    def _scope(self, ctx: Ctx) -> str | None:
        """The market id the list is limited to; Bybit needs a symbol or a coin for linear."""
        rules = self._rules(ctx, required=False)
        if rules is not None:
            return rules.market_id
        has_ids = ctx.params.get("orderId") or ctx.params.get("orderLinkId")
        settle = ctx.params.get("settleCoin")
        base = ctx.params.get("baseCoin")
        if not (has_ids or settle or base):
            raise _error(
                10001,
                "Missing some parameters that must be filled in, symbol or settleCoin or baseCoin",
            )
        if settle and settle != "USDT":
            return "-"  # nothing is settled in other coins here
        return None

    def _by_ids(self, ctx: Ctx, market_id: str | None) -> list[Order] | None:
        """Orders named by orderId/orderLinkId (None when the request names none)."""
        order_id = ctx.params.get("orderId") or None
        client_id = ctx.params.get("orderLinkId") or None
        if order_id is None and client_id is None:
            return None
        # Bybit's priority: orderId, then orderLinkId.
        return ctx.exchange.lookup(
            market_id, ctx.now_ms, order_id, None if order_id is not None else client_id
        )

    def realtime(self, ctx: Ctx) -> dict[str, Any]:
        self._linear_only(ctx)
        scope = self._scope(ctx)
        market_id = None if scope in (None, "-") else scope
        exchange = ctx.exchange
        named = self._by_ids(ctx, market_id)
        found: list[Order]
        if scope == "-":
            found = []
        elif named is not None:
            # By id Bybit finds open orders and the account's 500 most recent
            # finished ones; anything older only order history knows.
            oldest_kept = len(exchange.ledger) - RECENT_CLOSED
            found = [o for o in named if o.is_open or o.seq >= oldest_kept]
        elif str(ctx.params.get("openOnly", "0")) == "1":
            recent = (o for o in exchange.history(market_id, ctx.now_ms) if not o.is_open)
            found = list(itertools.islice(recent, RECENT_CLOSED))
        else:
            found = list(reversed(exchange.open_orders(market_id, ctx.now_ms)))
        return self._page(ctx, found, _realtime_row)

    def history(self, ctx: Ctx) -> dict[str, Any]:
        self._linear_only(ctx)
        rules = self._rules(ctx, required=False)
        settle = ctx.params.get("settleCoin")
        market_id = rules.market_id if rules is not None else None
        status_filter = ctx.params.get("orderStatus") or None
        start = _int_param(ctx.params, "startTime", 0)
        end = _int_param(ctx.params, "endTime", 1 << 62)
        named = self._by_ids(ctx, market_id)
        candidates = named if named is not None else ctx.exchange.history(market_id, ctx.now_ms)
        if settle and settle != "USDT":
            candidates = []
        found = (
            order
            for order in candidates
            # History lists finished orders; open ones are in realtime.
            if not order.is_open
            and (status_filter is None or _order_status(order) == status_filter)
            and start <= order.created_ms <= end
        )
        return self._page(ctx, found, _history_row)

    def _page(self, ctx: Ctx, orders: Iterable[Order], render) -> dict[str, Any]:
        """One page after the request's cursor; the answer's cursor names its first and last."""
        limit = _int_param(ctx.params, "limit", 20, high=50)
        page = list(itertools.islice(_after_cursor(orders, ctx.params.get("cursor")), limit))
        return {
            "nextPageCursor": _order_cursor(page),
            "category": "linear",
            "list": [render(order) for order in page],
        }

    # --- account ----------------------------------------------------------------------

    def positions(self, ctx: Ctx) -> dict[str, Any]:
        if self._category(ctx) == "inverse":
            # The account holds no inverse contracts (ccxt.pro's watch_positions asks).
            return {"nextPageCursor": "", "category": "inverse", "list": []}
        self._linear_only(ctx)
        exchange = ctx.exchange
        rules = self._rules(ctx, required=False)
        settle = ctx.params.get("settleCoin")
        if rules is None and not settle and not ctx.params.get("baseCoin"):
            raise _error(
                10001, "Missing some parameters that must be filled in, symbol or settleCoin"
            )
        lag = ctx.faults.positions_lag_ms
        rows = []
        for mid, position in exchange.positions.items():
            if rules is not None and mid != rules.market_id:
                continue
            if settle and settle != "USDT":
                continue
            if ctx.params.get("baseCoin") and position.rules.base != ctx.params["baseCoin"]:
                continue
            state = position.as_of(ctx.now_ms - lag) if lag else position.state
            # Asked by symbol Bybit returns the row even when flat; by coin only open ones.
            if not state.size and rules is None:
                continue
            rows.append(position_row(exchange, position, state, ctx.now_ms))
        # Bybit's position cursor: "symbol,updatedTime,0" of the page's last row.
        cursor = f"{rows[-1]['symbol']}%2C{rows[-1]['updatedTime']}%2C0" if rows else ""
        for row in rows:
            # As in Bybit's answers recorded by ccxt: the cursor rides in the rows too.
            row["nextPageCursor"] = cursor
        return {"nextPageCursor": cursor, "category": "linear", "list": rows}

    def wallet(self, ctx: Ctx) -> dict[str, Any]:
        account_type = ctx.params.get("accountType")
        if not account_type:
            raise _error(10001, "Missing some parameters that must be filled in, accountType")
        if account_type != "UNIFIED":
            raise _error(10001, "accountType only support UNIFIED.")
        exchange = ctx.exchange
        unrealized = exchange.total_unrealized()
        position_im = exchange.total_position_margin()
        order_im = exchange.order_margin()
        maint = sum(
            (
                abs(p.state.size) * exchange.price(mid) * MAINT_MARGIN_RATE
                for mid, p in exchange.positions.items()
            ),
            ZERO,
        )
        realized = sum((p.state.realized_pnl for p in exchange.positions.values()), ZERO)
        equity = exchange.wallet + unrealized
        available = exchange.available()
        im_rate = (position_im + order_im) / equity if equity else ZERO
        mm_rate = maint / equity if equity else ZERO
        coin = {
            "availableToBorrow": "",
            "bonus": "0",
            "accruedInterest": "0",
            "availableToWithdraw": "",
            "totalOrderIM": fmt(order_im, 8),
            "equity": fmt(equity, 8),
            "totalPositionMM": fmt(maint, 8),
            "usdValue": fmt(equity, 8),
            "unrealisedPnl": fmt(unrealized, 8),
            "collateralSwitch": True,
            "spotHedgingQty": "0",
            "borrowAmount": "0.000000000000000000",
            "totalPositionIM": fmt(position_im, 8),
            "walletBalance": fmt(exchange.wallet, 8),
            "cumRealisedPnl": fmt(realized, 8),
            "locked": "0",
            "marginCollateral": True,
            "coin": "USDT",
        }
        requested = ctx.params.get("coin")
        coins = [coin] if requested in (None, "", "USDT") or "USDT" in str(requested) else []
        account = {
            "totalEquity": fmt(equity, 8),
            "accountIMRate": fmt(im_rate, 4),
            "totalMarginBalance": fmt(equity, 8),
            "totalInitialMargin": fmt(position_im + order_im, 8),
            "accountType": "UNIFIED",
            "totalAvailableBalance": fmt(available, 8),
            "accountMMRate": fmt(mm_rate, 4),
            "totalPerpUPL": fmt(unrealized, 8),
            "totalWalletBalance": fmt(exchange.wallet, 8),
            "accountLTV": "0",
            "totalMaintenanceMargin": fmt(maint, 8),
            "coin": coins,
        }
        return {"list": [account]}

    def query_api(self, ctx: Ctx) -> dict[str, Any]:
        return {
            "id": "13770661",
            "note": "execq simulator",
            "apiKey": ctx.headers.get("X-BAPI-API-KEY", ""),
            "readOnly": 0,
            "secret": "",
            "permissions": {
                "ContractTrade": ["Order", "Position"],
                "Spot": [],
                "Wallet": ["AccountTransfer"],
                "Options": [],
                "Derivatives": [],
                "CopyTrading": [],
                "BlockTrade": [],
                "Exchange": [],
                "NFT": [],
                "Affiliate": [],
                "Earn": [],
            },
            "ips": ["*"],
            "type": 1,
            "deadlineDay": 83,
            "expiredAt": "2099-01-01T00:00:00Z",
            "createdAt": "2024-01-01T00:00:00Z",
            "unified": 0,
            "uta": 1,
            "userID": 24600000,
            "inviterID": 0,
            "vipLevel": "No VIP",
            "mktMakerLevel": "0",
            "affiliateID": 0,
            "rsaPublicKey": "",
            "isMaster": True,
            "parentUid": "0",
            "kycLevel": "LEVEL_DEFAULT",
            "kycRegion": "",
        }

    def account_info(self, ctx: Ctx) -> dict[str, Any]:
        return {
            "marginMode": "REGULAR_MARGIN",
            "updatedTime": "1697078946000",
            "unifiedMarginStatus": 6,
            "dcpStatus": "OFF",
            "timeWindow": 10,
            "smpGroup": 0,
            "isMasterTrader": False,
            "spotHedgingStatus": "OFF",
        }

    def coin_info(self, ctx: Ctx) -> dict[str, Any]:
        coins = sorted({r.base for r in ctx.exchange.rules_by_id.values()} | {"USDT"})
        return {
            "rows": [
                {"name": coin, "coin": coin, "remainAmount": "1000000", "chains": []}
                for coin in coins
            ]
        }

    def set_leverage(self, ctx: Ctx) -> dict[str, Any]:
        self._linear_only(ctx)
        rules = self._rules(ctx)
        assert rules is not None
        buy = _decimal_param(ctx.params, "buyLeverage")
        sell = _decimal_param(ctx.params, "sellLeverage")
        if buy is None or sell is None or buy != sell or buy != buy.to_integral_value():
            raise _error(10001, "params error: buyLeverage must equal sellLeverage")
        position = ctx.exchange.positions[rules.market_id]
        if int(buy) == position.leverage:
            raise _error(110043, "Set leverage not modified")
        if not 1 <= int(buy) <= rules.max_leverage:
            raise _error(10001, "leverage invalid")
        position.leverage = int(buy)
        return {}


# --- rendering -----------------------------------------------------------------------


def _instrument(rules: MarketRules) -> dict[str, Any]:
    tick = fmt(rules.tick_size, rules.price_precision)
    return {
        "symbol": rules.market_id,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": rules.base,
        "quoteCoin": "USDT",
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(rules.price_precision),
        "leverageFilter": {
            "minLeverage": "1",
            "maxLeverage": f"{rules.max_leverage}.00",
            "leverageStep": "0.01",
        },
        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
        "lotSizeFilter": {
            "maxOrderQty": fmt(rules.max_qty, rules.quantity_precision),
            "minOrderQty": fmt(rules.min_qty, rules.quantity_precision),
            "qtyStep": fmt(rules.step_size, rules.quantity_precision),
            "postOnlyMaxOrderQty": fmt(rules.max_qty, rules.quantity_precision),
            "maxMktOrderQty": fmt(rules.max_market_qty, rules.quantity_precision),
            "minNotionalValue": plain(rules.min_notional),
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": "USDT",
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
        "displayName": "",
    }


def ticker_row(exchange: Exchange, rules: MarketRules, now_ms: int) -> dict[str, Any]:
    last = exchange.price(rules.market_id)
    places = rules.price_precision
    qty_places = rules.quantity_precision
    previous = exchange.open_prices.get(rules.market_id, last)
    change = (last - previous) / previous if previous else ZERO
    volume = Decimal(1000)
    return {
        "symbol": rules.market_id,
        "lastPrice": fmt(last, places),
        "indexPrice": fmt(last, places),
        "markPrice": fmt(last, places),
        "prevPrice24h": fmt(previous, places),
        "price24hPcnt": fmt(change, 6),
        "highPrice24h": fmt(max(previous, last), places),
        "lowPrice24h": fmt(min(previous, last), places),
        "prevPrice1h": fmt(previous, places),
        "openInterest": fmt(volume, qty_places),
        "openInterestValue": fmt(volume * last, 2),
        "turnover24h": fmt(volume * last, 4),
        "volume24h": fmt(volume, 4),
        "fundingRate": "0.0001",
        "nextFundingTime": str((now_ms // 28_800_000 + 1) * 28_800_000),
        "predictedDeliveryPrice": "",
        "basisRate": "",
        "deliveryFeeRate": "",
        "deliveryTime": "0",
        "ask1Size": fmt(rules.max_market_qty, qty_places),
        "bid1Price": fmt(last - rules.tick_size, places),
        "ask1Price": fmt(last + rules.tick_size, places),
        "bid1Size": fmt(rules.max_market_qty, qty_places),
        "basis": "",
    }


def order_fields(order: Order) -> dict[str, Any]:
    rules = order.rules
    price_places = rules.price_precision
    qty_places = rules.quantity_precision
    average = order.average
    leaves = order.remaining if order.is_open else ZERO
    limit_price = order.price
    if limit_price is None:
        # Bybit reports a market order's protective limit (last price +/- slippage cap).
        cap = Decimal("1.03") if order.side == "buy" else Decimal("0.97")
        limit_price = (order.last_price_on_created * cap).quantize(rules.tick_size)
    fee = fmt(order.fee, 8)
    return {
        "symbol": rules.market_id,
        "orderType": order.type.capitalize(),
        "orderLinkId": order.client_order_id,
        "slLimitPrice": "0",
        "orderId": order.order_id,
        "cancelType": "CancelByUser"
        if order.status is Status.CANCELED
        else ("UNKNOWN" if order.status is not Status.EXPIRED else "CancelByIOC"),
        "avgPrice": fmt(average, price_places) if average is not None else "",
        "stopOrderType": "",
        "lastPriceOnCreated": fmt(order.last_price_on_created, price_places),
        "orderStatus": _order_status(order),
        "createType": "CreateByUser",
        "takeProfit": "",
        "cumExecValue": plain(order.filled_quote),
        "tpslMode": "",
        "smpType": "None",
        "triggerDirection": 0,
        "blockTradeId": "",
        "cumFeeDetail": {"USDT": fee} if order.fee else {},
        "rejectReason": "EC_NoError",
        "isLeverage": "",
        "price": fmt(limit_price, price_places),
        "orderIv": "",
        "createdTime": str(order.created_ms),
        "tpTriggerBy": "",
        "positionIdx": 0,
        "timeInForce": TIME_IN_FORCE_OUT.get(order.time_in_force, order.time_in_force),
        "leavesValue": plain(leaves * (order.price or order.last_price_on_created)),
        "updatedTime": str(order.updated_ms),
        "side": order.side.capitalize(),
        "smpGroup": 0,
        "triggerPrice": "",
        "tpLimitPrice": "0",
        "cumExecFee": fee if order.fee else "0",
        "leavesQty": fmt(leaves, qty_places),
        "slTriggerBy": "",
        "closeOnTrigger": False,
        "placeType": "",
        "cumExecQty": fmt(order.filled, qty_places),
        "reduceOnly": order.reduce_only,
        "qty": fmt(order.quantity, qty_places),
        "stopLoss": "",
        "smpOrderId": "",
        "triggerBy": "",
    }


def _realtime_row(order: Order) -> dict[str, Any]:
    if not order.is_open:
        # A finished order comes from the order store with history's fields.
        return _history_row(order)
    row = order_fields(order)
    row["marketUnit"] = ""
    return row


def _history_row(order: Order) -> dict[str, Any]:
    row = order_fields(order)
    row["slippageToleranceType"] = "UNKNOWN"
    row["slippageTolerance"] = "0"
    row["extraFees"] = ""
    return row


def position_row(exchange, position, state, now_ms: int) -> dict[str, Any]:
    rules: MarketRules = position.rules
    mark = exchange.price(rules.market_id)
    size = state.size
    value = abs(size) * state.entry_price
    initial = abs(size) * mark / position.leverage
    return {
        "symbol": rules.market_id,
        "leverage": str(position.leverage),
        "autoAddMargin": 0,
        "avgPrice": plain(state.entry_price) if size else "0",
        "liqPrice": "",
        "riskLimitValue": "2000000",
        "takeProfit": "",
        "positionValue": plain(value) if size else "",
        "isReduceOnly": False,
        "tpslMode": "Full",
        "riskId": 1,
        "trailingStop": "0",
        "unrealisedPnl": fmt((mark - state.entry_price) * size, 8) if size else "",
        "markPrice": fmt(mark, rules.price_precision),
        "adlRankIndicator": 2 if size else 0,
        "cumRealisedPnl": fmt(state.realized_pnl, 8),
        "positionMM": fmt(abs(size) * mark * MAINT_MARGIN_RATE, 8),
        "createdTime": str(state.created_ms or now_ms),
        "positionIdx": 0,
        "positionIM": fmt(initial, 8),
        "seq": state.updated_ms,
        "updatedTime": str(state.updated_ms or now_ms),
        "side": ("Buy" if size > 0 else "Sell") if size else "",
        "bustPrice": "",
        "positionBalance": fmt(initial, 8),
        "leverageSysUpdatedTime": "",
        "size": fmt(abs(size), rules.quantity_precision),
        "positionStatus": "Normal",
        "mmrSysUpdatedTime": str(state.created_ms or now_ms),
        "stopLoss": "",
        "tradeMode": 0,
    }


def _order_cursor(page: list[Order]) -> str:
    """Bybit's order cursor: "orderId:createdTime,orderId:createdTime" of first and last, encoded."""
    if not page:
        return ""
    first, last = page[0], page[-1]
    return f"{first.order_id}%3A{first.created_ms}%2C{last.order_id}%3A{last.created_ms}"


def _after_cursor(orders: Iterable[Order], cursor: object) -> Iterator[Order]:
    """The orders after the cursor's last order; all of them without a cursor."""
    if not cursor:
        yield from orders
        return
    text = str(cursor).replace("%2C", ",").replace("%3A", ":")
    last_id = text.rsplit(",", 1)[-1].split(":", 1)[0]
    passed = False
    for order in orders:
        if passed:
            yield order
        elif order.order_id == last_id:
            passed = True


def _decimal_param(params: Mapping[str, Any], name: str) -> Decimal | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    parsed = parse_decimal(value)
    if parsed is None:
        raise _error(10001, f"params error: {name} invalid")
    return parsed


def _int_param(params: Mapping[str, Any], name: str, default: int, high: int | None = None) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    text = str(value)
    if not text.isdigit():
        raise _error(10001, f"params error: {name} invalid")
    number = int(text)
    if high is not None and number > high:
        raise _error(10001, f"params error: {name} invalid")
    return number
