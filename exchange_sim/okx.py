"""OKX v5 REST (trading account in net mode, USDT-margined SWAP), as ``ccxt.okx`` calls it.

OKX answers most errors with HTTP 200 and a non-zero ``code``; order
placement and cancellation answer per order, with ``sCode``/``sMsg`` inside
``data`` (``code`` "1" when every order failed). Codes, messages and HTTP
statuses follow OKX's v5 error-code list, so the real ccxt client raises the
same exception classes as on the real exchange.

Sizes on the wire are contracts (``sz``, ``accFillSz``, ``pos``): one contract
is ``ctVal`` base units. The engine works in base units; this module converts
at the edge.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
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
    _crosses,
)
from exchange_sim.faults import FaultRule
from exchange_sim.markets import OKX_MAX_LIMIT_SIZE, MarketRules

JSON = "application/json"
# "A combination of case-sensitive alphanumerics, all numbers, or all letters of up to 32 characters."
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,32}$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9]{0,16}$")
TIMESTAMP_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
# Base64 of an HMAC-SHA256 digest: 32 bytes, 44 characters.
SIGNATURE_PATTERN = re.compile(r"^[A-Za-z0-9+/]{43}=$")
# OK-ACCESS-TIMESTAMP may differ from the server's clock by at most 30 s.
TIMESTAMP_WINDOW_MS = 30_000
# Orders-history keeps canceled orders without fills for 2 hours only.
CANCELED_UNFILLED_KEPT_MS = 2 * 3_600_000
MAX_BATCH = 20
MAX_PAGE = 100
MAX_INSTRUMENTS_PER_QUERY = 10
INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")
# The endpoints that honour the expTime request header.
EXP_TIME_PATHS = frozenset({"/api/v5/trade/order", "/api/v5/trade/batch-orders"})
STATE = {
    Status.NEW: "live",
    Status.PARTIALLY_FILLED: "partially_filled",
    Status.FILLED: "filled",
    Status.CANCELED: "canceled",
    # OKX has no "expired": an IOC or market remainder is canceled.
    Status.EXPIRED: "canceled",
}
# ordType -> (engine type, time in force)
ORDER_TYPES = {
    "market": ("market", "IOC"),
    "optimal_limit_ioc": ("market", "IOC"),
    "limit": ("limit", "GTC"),
    "post_only": ("limit", "GTX"),
    "fok": ("limit", "FOK"),
    "ioc": ("limit", "IOC"),
}
LISTED_MS = "1611916828000"
ACCOUNT_UID = "611800000000000000"


def _error(
    code: str,
    msg: str,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> ApiError:
    return ApiError(status, {"code": code, "data": [], "msg": msg}, headers)


def _missing(name: str) -> ApiError:
    return _error("50014", f"Parameter {name} can not be empty.", 400)


def _bad(name: str) -> ApiError:
    return _error("51000", f"Parameter {name} error", 400)


def _unknown_instrument() -> ApiError:
    return _error("51001", "Instrument ID, Instrument ID code or Spread ID doesn't exist.")


@dataclass(slots=True)
class Reply:
    """A place or cancel answer: per-order entries, the overall code, the gateway's times."""

    data: list[dict[str, Any]]
    code: str = "0"
    msg: str = ""


class Refusal(Exception):
    """One order refused inside a place or cancel answer (sCode/sMsg)."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg


def _okx_state(order: Order) -> str:
    return STATE[order.status]


def _contracts(rules: MarketRules, quantity: Decimal) -> Decimal:
    return quantity / rules.contract_size


def _size(rules: MarketRules, quantity: Decimal) -> str:
    return plain(_contracts(rules, quantity))


def _unified(market_id: object) -> str | None:
    if isinstance(market_id, str) and market_id.endswith("-USDT-SWAP"):
        return f"{market_id[: -len('-USDT-SWAP')]}/USDT:USDT"
    return None


class OkxV5:
    name = "okx"

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Endpoint] = {
            ("GET", "/api/v5/public/time"): Endpoint("time", False, self.server_time),
            ("GET", "/api/v5/system/status"): Endpoint("time", False, self.system_status),
            ("GET", "/api/v5/public/instruments"): Endpoint("markets", False, self.instruments),
            ("GET", "/api/v5/asset/currencies"): Endpoint("markets", True, self.currencies),
            ("GET", "/api/v5/market/tickers"): Endpoint("tickers", False, self.tickers),
            ("GET", "/api/v5/market/ticker"): Endpoint("tickers", False, self.ticker),
            ("POST", "/api/v5/trade/order"): Endpoint("create_order", True, self.place_order),
            ("POST", "/api/v5/trade/batch-orders"): Endpoint(
                "create_order", True, self.place_batch
            ),
            ("GET", "/api/v5/trade/order"): Endpoint("fetch_order", True, self.order_details),
            ("POST", "/api/v5/trade/cancel-order"): Endpoint(
                "cancel_order", True, self.cancel_order
            ),
            ("GET", "/api/v5/trade/orders-pending"): Endpoint(
                "open_orders", True, self.orders_pending
            ),
            ("GET", "/api/v5/trade/orders-history"): Endpoint(
                "order_history", True, self.orders_history
            ),
            ("GET", "/api/v5/trade/orders-history-archive"): Endpoint(
                "order_history", True, self.orders_history_archive
            ),
            ("GET", "/api/v5/account/positions"): Endpoint("positions", True, self.positions),
            ("GET", "/api/v5/account/balance"): Endpoint("balance", True, self.balance),
            ("GET", "/api/v5/asset/balances"): Endpoint("balance", True, self.funding_balance),
            ("GET", "/api/v5/account/config"): Endpoint("account", True, self.account_config),
            ("GET", "/api/v5/account/leverage-info"): Endpoint("other", True, self.leverage_info),
            ("POST", "/api/v5/account/set-leverage"): Endpoint("other", True, self.set_leverage),
        }

    # --- FrontEnd protocol ------------------------------------------------------------

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        return self._routes.get((method, path))

    async def read_params(self, request: web.Request) -> dict[str, Any]:
        if request.method != "POST":
            return parse_query(request.rel_url.raw_query_string)
        body = await request.read()
        if not body.strip():
            raise _error("50000", "Body for POST request cannot be empty.", 400)
        try:
            params = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _error("50002", "JSON syntax error", 400) from None
        if isinstance(params, list):
            # Place multiple orders: a JSON array of order objects.
            return {"_batch": params}
        if not isinstance(params, dict):
            raise _error("50002", "JSON syntax error", 400)
        return params

    def authenticate(self, request: web.Request, params: Mapping[str, Any], now_ms: int) -> None:
        headers = request.headers
        if not headers.get("OK-ACCESS-KEY"):
            raise _error("50103", 'Request header "OK-ACCESS-KEY" cannot be empty.', 401)
        if not headers.get("OK-ACCESS-PASSPHRASE"):
            raise _error("50104", 'Request header "OK-ACCESS-PASSPHRASE" cannot be empty.', 401)
        signature = headers.get("OK-ACCESS-SIGN")
        if not signature:
            raise _error("50106", 'Request header "OK-ACCESS-SIGN" cannot be empty.', 401)
        stamp = headers.get("OK-ACCESS-TIMESTAMP")
        if not stamp:
            raise _error("50107", 'Request header "OK-ACCESS-TIMESTAMP" cannot be empty.', 401)
        sent_ms = _timestamp_ms(stamp)
        if sent_ms is None:
            raise _error("50112", "Invalid OK-ACCESS-TIMESTAMP.", 401)
        if abs(now_ms - sent_ms) > TIMESTAMP_WINDOW_MS:
            raise _error("50102", "Timestamp request expired.", 401)
        # The HMAC itself is not checked (the simulator does not know the
        # secret), but a signature must look like one.
        if not SIGNATURE_PATTERN.match(signature):
            raise _error("50113", "Invalid signature.", 401)
        expires = headers.get("expTime")
        if expires is not None and request.path in EXP_TIME_PATHS:
            if not expires.isdigit():
                raise _bad("expTime")
            if now_ms > int(expires):
                raise _error(
                    "50036",
                    "The expTime can't be earlier than the current system time. "
                    "Please adjust the expTime and try again.",
                )

    def unified_symbol(self, params: Mapping[str, Any]) -> str | None:
        batch = params.get("_batch")
        if isinstance(batch, list):
            first = batch[0] if batch else None
            return _unified(first.get("instId")) if isinstance(first, dict) else None
        return _unified(params.get("instId"))

    def success(self, payload: Any, now_ms: int) -> web.Response:
        if isinstance(payload, Reply):
            body: dict[str, Any] = {
                "code": payload.code,
                "data": payload.data,
                # Microseconds at the gateway: request received, answer sent.
                "inTime": str(now_ms * 1000),
                "outTime": str(now_ms * 1000 + 412),
                "msg": payload.msg,
            }
        else:
            body = {"code": "0", "data": payload, "msg": ""}
        return web.Response(body=orjson.dumps(body), content_type=JSON)

    def error(self, error: ApiError) -> web.Response:
        return web.Response(
            status=error.status,
            body=orjson.dumps(error.payload),
            content_type=JSON,
            headers=error.headers,
        )

    def rejection(self, rejected: Rejected, operation: str) -> ApiError:
        if rejected.reason is Reason.UNKNOWN_SYMBOL:
            return _unknown_instrument()
        if rejected.reason is Reason.ORDER_NOT_FOUND:
            return _error("51603", "Order does not exist.")
        refusal = _refusal(rejected, None)
        return _error(refusal.code, refusal.msg)

    def fault(self, rule: FaultRule, now_ms: int) -> ApiError:
        retry_after = {"Retry-After": str(rule.retry_after_s)}
        if rule.kind == "rate_limit":
            return ApiError(429, {"msg": "Too Many Requests", "code": "50011"}, retry_after)
        if rule.kind == "ip_ban":
            return ApiError(418, "IP banned: too many requests", retry_after)
        if rule.kind == "unknown_status":
            return _error(
                "50004",
                "API endpoint request timeout. (does not mean that the request was "
                "successful or failed, please check the request result).",
                400,
            )
        if rule.kind == "insufficient_margin":
            return _error("51008", "Order failed. Insufficient USDT margin in account")
        if rule.kind == "auth_refused":
            return _error("50111", "Invalid OK-ACCESS-KEY", 401)
        return ApiError(rule.status, gateway_page(rule.status))

    def internal_error(self) -> ApiError:
        return _error("50026", "System error. Try again later", 500)

    def not_found(self, method: str, path: str) -> ApiError:
        return ApiError(404, gateway_page(404))

    # --- parameters -------------------------------------------------------------------

    def _rules(self, exchange: Exchange, market_id: object) -> MarketRules:
        if not isinstance(market_id, str) or not market_id:
            raise _missing("instId")
        rules = exchange.rules_by_id.get(market_id)
        if rules is None:
            raise _unknown_instrument()
        return rules

    def _inst_type(self, ctx: Ctx, required: bool) -> str | None:
        inst_type = ctx.params.get("instType")
        if inst_type in (None, ""):
            if required:
                raise _missing("instType")
            return None
        if inst_type not in INST_TYPES:
            raise _bad("instType")
        return inst_type

    def _instruments(self, ctx: Ctx) -> list[MarketRules] | None:
        """The instruments named by a comma-separated ``instId`` (None: all)."""
        text = ctx.params.get("instId")
        if not text:
            return None
        ids = str(text).split(",")
        if len(ids) > MAX_INSTRUMENTS_PER_QUERY:
            raise _error(
                "50025", f"Parameter instId count exceeds the limit {MAX_INSTRUMENTS_PER_QUERY}."
            )
        return [self._rules(ctx.exchange, market_id) for market_id in ids]

    def _limit(self, ctx: Ctx) -> int:
        text = ctx.params.get("limit")
        if text in (None, ""):
            return MAX_PAGE
        if not str(text).isdigit() or not 1 <= int(text) <= MAX_PAGE:
            raise _bad("limit")
        return int(text)

    def _millis(self, ctx: Ctx, name: str, default: int) -> int:
        text = ctx.params.get(name)
        if text in (None, ""):
            return default
        if not str(text).isdigit():
            raise _bad(name)
        return int(text)

    # --- public -----------------------------------------------------------------------

    def server_time(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [{"ts": str(ctx.now_ms)}]

    def system_status(self, ctx: Ctx) -> list[dict[str, Any]]:
        return []  # no maintenance scheduled

    def instruments(self, ctx: Ctx) -> list[dict[str, Any]]:
        inst_type = self._inst_type(ctx, required=True)
        if inst_type != "SWAP":
            return []  # only USDT-margined perpetual swaps are simulated
        named = self._instruments(ctx)
        markets = named if named is not None else ctx.exchange.rules_by_id.values()
        family = ctx.params.get("instFamily") or ctx.params.get("uly")
        return [_instrument(r) for r in markets if not family or family == f"{r.base}-USDT"]

    def currencies(self, ctx: Ctx) -> list[dict[str, Any]]:
        coins = sorted({r.base for r in ctx.exchange.rules_by_id.values()} | {"USDT"})
        wanted = ctx.params.get("ccy")
        if wanted:
            coins = [c for c in coins if c in str(wanted).split(",")]
        return [_currency(coin) for coin in coins]

    def tickers(self, ctx: Ctx) -> list[dict[str, Any]]:
        inst_type = self._inst_type(ctx, required=True)
        if inst_type != "SWAP":
            return []
        family = ctx.params.get("instFamily") or ctx.params.get("uly")
        return [
            _ticker(ctx, rules)
            for rules in ctx.exchange.rules_by_id.values()
            if not family or family == f"{rules.base}-USDT"
        ]

    def ticker(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [_ticker(ctx, self._rules(ctx.exchange, ctx.params.get("instId")))]

    # --- orders -----------------------------------------------------------------------

    def place_order(self, ctx: Ctx) -> Reply:
        if "_batch" in ctx.params:
            raise _error("50002", "JSON syntax error", 400)
        entry = self._place(ctx, self._order_request(ctx, ctx.params))
        failed = entry["sCode"] != "0"
        return Reply([entry], "1" if failed else "0", "Operation failed." if failed else "")

    def place_batch(self, ctx: Ctx) -> Reply:
        batch = ctx.params.get("_batch")
        if batch is None:
            raise _bad("data")  # the body must be an array of orders
        if not batch:
            raise _error("50014", "Parameter data can not be empty.", 400)
        if len(batch) > MAX_BATCH:
            raise _error("51111", f"Maximum {MAX_BATCH} orders can be placed in bulk.")
        if not all(isinstance(item, dict) for item in batch):
            raise _error("50002", "JSON syntax error", 400)
        # The whole request is checked before any order goes to the book.
        requests = [self._order_request(ctx, item) for item in batch]
        entries = [self._place(ctx, request) for request in requests]
        failures = sum(1 for entry in entries if entry["sCode"] != "0")
        if failures == 0:
            return Reply(entries)
        if failures == len(entries):
            return Reply(entries, "1", "All operations failed")
        return Reply(entries, "2", "Bulk operation partially succeeded.")

    def _order_request(self, ctx: Ctx, item: Mapping[str, Any]) -> _PlaceRequest:
        rules = self._rules(ctx.exchange, item.get("instId"))
        trade_mode = item.get("tdMode")
        if not trade_mode:
            raise _missing("tdMode")
        # Only cross margin is simulated (isolated margin and cash do not apply).
        if trade_mode != "cross":
            raise _bad("tdMode")
        side = item.get("side")
        if not side:
            raise _missing("side")
        if side not in ("buy", "sell"):
            raise _bad("side")
        position_side = item.get("posSide")
        if position_side not in (None, "", "net"):
            raise _bad("posSide")  # the account is in net (one-way) mode
        order_type = item.get("ordType")
        if not order_type:
            raise _missing("ordType")
        if order_type not in ORDER_TYPES:
            raise _bad("ordType")
        size = _decimal(item, "sz")
        if size is None:
            raise _missing("sz")
        price = _decimal(item, "px")
        reduce_only = item.get("reduceOnly", False)
        if isinstance(reduce_only, str) and reduce_only in ("true", "false"):
            reduce_only = reduce_only == "true"
        if not isinstance(reduce_only, bool):
            raise _bad("reduceOnly")
        client_id = item.get("clOrdId")
        if client_id in (None, ""):
            client_id = None
        elif not isinstance(client_id, str) or not CLIENT_ID_PATTERN.match(client_id):
            raise _bad("clOrdId")
        tag = item.get("tag", "")
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
            raise _bad("tag")
        if item.get("attachAlgoOrds"):
            raise _bad("attachAlgoOrds")  # attached TP/SL orders are not simulated
        engine_type, time_in_force = ORDER_TYPES[order_type]
        return _PlaceRequest(
            rules=rules,
            order_type=engine_type,
            client_id=client_id or "",
            tag=tag,
            request=OrderRequest(
                market_id=rules.market_id,
                side=side,
                type=engine_type,
                quantity=size * rules.contract_size,
                price=price if engine_type == "limit" else None,
                time_in_force=time_in_force,
                reduce_only=reduce_only,
                client_order_id=client_id,
                tag=tag,
            ),
            size=size,
        )

    def _place(self, ctx: Ctx, placing: _PlaceRequest) -> dict[str, Any]:
        entry = {
            "clOrdId": placing.client_id,
            "ordId": "",
            "sCode": "0",
            "sMsg": "Order placed",
            "tag": placing.tag,
            "ts": str(ctx.now_ms),
        }
        try:
            if placing.size <= 0:
                raise Refusal("51000", "Parameter sz error")
            order = ctx.exchange.place(
                placing.request,
                ctx.now_ms,
                partial_fraction=ctx.faults.partial_fraction,
                visibility_lag_ms=ctx.faults.visibility_lag_ms,
                force_insufficient_margin=ctx.force_insufficient_margin,
            )
        except Rejected as rejected:
            refusal = _refusal(rejected, placing.request)
            entry.update(sCode=refusal.code, sMsg=refusal.msg)
        except Refusal as refusal:
            entry.update(sCode=refusal.code, sMsg=refusal.msg)
        else:
            entry["ordId"] = order.order_id
        return entry

    def _ids(self, ctx: Ctx, missing: ApiError) -> tuple[str | None, str | None]:
        order_id = ctx.params.get("ordId") or None
        client_id = ctx.params.get("clOrdId") or None
        if order_id is None and client_id is None:
            raise missing
        if order_id is not None and not str(order_id).isdigit():
            raise _bad("ordId")
        # "Either ordId or clOrdId is required, if both are passed, ordId will be used"
        return (str(order_id), None) if order_id is not None else (None, str(client_id))

    def order_details(self, ctx: Ctx) -> list[dict[str, Any]]:
        rules = self._rules(ctx.exchange, ctx.params.get("instId"))
        order_id, client_id = self._ids(
            ctx, _error("51003", "Either client order ID or order ID is required.")
        )
        # By clOrdId the newest order with it is found: OKX checks clOrdId
        # uniqueness among pending orders only, so finished ones may share it.
        order = ctx.exchange.find_order(rules.market_id, ctx.now_ms, order_id, client_id)
        return [_order_row(ctx.exchange, order)]

    def cancel_order(self, ctx: Ctx) -> Reply:
        if "_batch" in ctx.params:
            raise _error("50002", "JSON syntax error", 400)
        rules = self._rules(ctx.exchange, ctx.params.get("instId"))
        order_id, client_id = self._ids(
            ctx, _error("51407", "Either order ID or client order ID is required.")
        )
        entry = {
            "clOrdId": client_id or "",
            "ordId": order_id or "",
            "sCode": "0",
            "sMsg": "",
            "ts": str(ctx.now_ms),
        }
        try:
            order = ctx.exchange.cancel(rules.market_id, ctx.now_ms, order_id, client_id)
        except Rejected:
            entry.update(
                sCode="51400",
                sMsg="Order cancellation failed as the order has been filled, "
                "canceled or does not exist.",
            )
            return Reply([entry], "1", "Operation failed.")
        entry.update(clOrdId=order.client_order_id, ordId=order.order_id)
        return Reply([entry])

    def _filters(self, ctx: Ctx) -> tuple[set[str] | None, set[str] | None, set[str] | None]:
        """Market ids, ordTypes and states asked for (None: no filter)."""
        self._inst_type(ctx, required=False)
        named = self._instruments(ctx)
        market_ids = {r.market_id for r in named} if named is not None else None
        if ctx.params.get("instType") not in (None, "", "SWAP"):
            market_ids = set()
        family = ctx.params.get("instFamily") or ctx.params.get("uly")
        if family:
            in_family = {
                r.market_id for r in ctx.exchange.rules_by_id.values() if f"{r.base}-USDT" == family
            }
            market_ids = in_family if market_ids is None else market_ids & in_family
        types = ctx.params.get("ordType")
        order_types = set(str(types).split(",")) if types else None
        state = ctx.params.get("state")
        states = {str(state)} if state else None
        return market_ids, order_types, states

    def _listed(
        self,
        ctx: Ctx,
        orders: Iterable[Order],
        keep: Callable[[Order], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """One page of orders (newest first) after the filters and ordId cursors."""
        market_ids, order_types, states = self._filters(ctx)
        limit = self._limit(ctx)
        after = ctx.params.get("after") or None
        before = ctx.params.get("before") or None
        for name, value in (("after", after), ("before", before)):
            if value is not None and not str(value).isdigit():
                raise _bad(name)
        begin = self._millis(ctx, "begin", 0)
        end = self._millis(ctx, "end", 1 << 62)
        page: list[Order] = []
        for order in orders:
            if market_ids is not None and order.rules.market_id not in market_ids:
                continue
            if order_types is not None and _order_type(order) not in order_types:
                continue
            if states is not None and _okx_state(order) not in states:
                continue
            if not begin <= order.created_ms <= end:
                continue
            if keep is not None and not keep(order):
                continue
            # Ids grow with time: "after" pages to older orders, "before" to newer.
            if after is not None and int(order.order_id) >= int(after):
                continue
            if before is not None and int(order.order_id) <= int(before):
                continue
            page.append(order)
            if len(page) == limit:
                break
        return [_order_row(ctx.exchange, order) for order in page]

    def orders_pending(self, ctx: Ctx) -> list[dict[str, Any]]:
        state = ctx.params.get("state")
        if state not in (None, "", "live", "partially_filled"):
            raise _bad("state")
        pending = reversed(ctx.exchange.open_orders(None, ctx.now_ms))
        return self._listed(ctx, pending)

    def _finished(self, ctx: Ctx) -> Iterator[Order]:
        self._inst_type(ctx, required=True)
        state = ctx.params.get("state")
        if state not in (None, "", "canceled", "filled", "mmp_canceled"):
            raise _bad("state")
        return (o for o in ctx.exchange.history(None, ctx.now_ms) if not o.is_open)

    def orders_history(self, ctx: Ctx) -> list[dict[str, Any]]:
        oldest_unfilled_ms = ctx.now_ms - CANCELED_UNFILLED_KEPT_MS
        return self._listed(
            ctx,
            self._finished(ctx),
            keep=lambda o: o.filled or o.updated_ms >= oldest_unfilled_ms,
        )

    def orders_history_archive(self, ctx: Ctx) -> list[dict[str, Any]]:
        # The archive never holds canceled orders without any fill.
        return self._listed(ctx, self._finished(ctx), keep=lambda o: bool(o.filled))

    # --- account ----------------------------------------------------------------------

    def positions(self, ctx: Ctx) -> list[dict[str, Any]]:
        inst_type = self._inst_type(ctx, required=False)
        if inst_type not in (None, "SWAP"):
            return []
        named = self._instruments(ctx)
        exchange = ctx.exchange
        lag = ctx.faults.positions_lag_ms
        rows = []
        wanted = {r.market_id for r in named} if named is not None else None
        for market_id, position in exchange.positions.items():
            if wanted is not None and market_id not in wanted:
                continue
            state = position.as_of(ctx.now_ms - lag) if lag else position.state
            # A flat position is listed only when asked for by instId and it
            # ever held a position (OKX keeps its posId).
            if not state.size and (wanted is None or not position.history):
                continue
            rows.append(_position_row(exchange, position, state, ctx.now_ms))
        # "Return in reverse chronological order using ctime."
        rows.sort(key=lambda row: int(row["cTime"]), reverse=True)
        return rows

    def balance(self, ctx: Ctx) -> list[dict[str, Any]]:
        exchange = ctx.exchange
        wanted = ctx.params.get("ccy")
        details = [] if wanted and "USDT" not in str(wanted).split(",") else [_usdt(ctx)]
        unrealized = exchange.total_unrealized()
        equity = exchange.wallet + unrealized
        maint = _maintenance_margin(exchange)
        notional = sum(
            (abs(p.state.size) * exchange.price(mid) for mid, p in exchange.positions.items()),
            ZERO,
        )
        return [
            {
                "adjEq": fmt(equity, 8),
                "availEq": fmt(exchange.available(), 8),
                "borrowFroz": "0",
                "details": details,
                "imr": fmt(exchange.total_position_margin() + exchange.order_margin(), 8),
                "isoEq": "0",
                # Equity over maintenance margin; none is needed without positions.
                "mgnRatio": fmt(equity / maint, 8) if maint else "",
                "mmr": fmt(maint, 8),
                "notionalUsd": fmt(notional, 8),
                "notionalUsdForBorrow": "0",
                "notionalUsdForFutures": "0",
                "notionalUsdForOption": "0",
                "notionalUsdForSwap": fmt(notional, 8),
                "ordFroz": fmt(exchange.order_margin(), 8),
                "totalEq": fmt(equity, 8),
                "uTime": str(ctx.now_ms),
                "upl": fmt(unrealized, 8),
            }
        ]

    def funding_balance(self, ctx: Ctx) -> list[dict[str, Any]]:
        return []  # everything is in the trading account; the funding account is empty

    def account_config(self, ctx: Ctx) -> list[dict[str, Any]]:
        return [
            {
                # 2: futures mode (single-currency margin), which trades swaps.
                "acctLv": "2",
                "autoLoan": False,
                "ctIsoMode": "automatic",
                "greeksType": "PA",
                "ip": "",
                "kycLv": "2",
                "label": "execq simulator",
                "level": "Lv1",
                "levelTmp": "",
                "liquidationGear": "-1",
                "mainUid": ACCOUNT_UID,
                "mgnIsoMode": "automatic",
                "opAuth": "0",
                "perm": "read_only,trade",
                "posMode": "net_mode",
                "roleType": "0",
                "spotOffsetType": "",
                "spotRoleType": "0",
                "spotTraderInsts": [],
                "traderInsts": [],
                "uid": ACCOUNT_UID,
            }
        ]

    def leverage_info(self, ctx: Ctx) -> list[dict[str, Any]]:
        named = self._instruments(ctx)
        if named is None:
            raise _missing("instId")
        margin_mode = ctx.params.get("mgnMode")
        if not margin_mode:
            raise _missing("mgnMode")
        if margin_mode != "cross":
            raise _bad("mgnMode")
        return [
            {
                "instId": rules.market_id,
                "lever": str(ctx.exchange.positions[rules.market_id].leverage),
                "mgnMode": "cross",
                "posSide": "net",
            }
            for rules in named
        ]

    def set_leverage(self, ctx: Ctx) -> list[dict[str, Any]]:
        rules = self._rules(ctx.exchange, ctx.params.get("instId"))
        margin_mode = ctx.params.get("mgnMode")
        if not margin_mode:
            raise _missing("mgnMode")
        if margin_mode != "cross":
            raise _bad("mgnMode")
        lever = parse_decimal(ctx.params.get("lever"))
        if lever is None:
            raise _missing("lever")
        if lever != lever.to_integral_value() or not 1 <= lever <= rules.max_leverage:
            raise _error(
                "59102", "Leverage exceeds the maximum leverage. Please adjust the leverage"
            )
        ctx.exchange.positions[rules.market_id].leverage = int(lever)
        return [
            {"instId": rules.market_id, "lever": str(int(lever)), "mgnMode": "cross", "posSide": ""}
        ]


@dataclass(slots=True)
class _PlaceRequest:
    rules: MarketRules
    order_type: str
    client_id: str
    tag: str
    request: OrderRequest
    size: Decimal


# --- rendering -----------------------------------------------------------------------


def _timestamp_ms(stamp: str) -> int | None:
    """``2020-12-08T09:08:57.715Z`` -> epoch milliseconds (None when malformed)."""
    if not TIMESTAMP_PATTERN.match(stamp):
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp() * 1000)


def _decimal(item: Mapping[str, Any], name: str) -> Decimal | None:
    value = item.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(name)
    parsed = parse_decimal(value)
    if parsed is None:
        raise _bad(name)
    return parsed


def _refusal(rejected: Rejected, request: OrderRequest | None) -> Refusal:
    """The sCode/sMsg OKX answers for an order the engine refused."""
    reason, context = rejected.reason, rejected.context
    if reason is Reason.UNKNOWN_SYMBOL:
        return Refusal("51001", "Instrument ID, Instrument ID code or Spread ID doesn't exist.")
    if reason is Reason.QTY_NOT_POSITIVE:
        return Refusal("51000", "Parameter sz error")
    if reason in (Reason.QTY_PRECISION, Reason.QTY_STEP):
        return Refusal("51121", "Order quantity must be a multiple of the lot size.")
    if reason is Reason.QTY_BELOW_MIN:
        return Refusal("51020", "Your order should meet or exceed the minimum order amount.")
    if reason is Reason.QTY_ABOVE_MAX:
        if request is not None and request.type == "market":
            return Refusal("51202", "Market order amount exceeds the maximum amount.")
        return Refusal("51203", f"Order amount exceeds the limit {plain(OKX_MAX_LIMIT_SIZE)}.")
    if reason is Reason.PRICE_MISSING:
        return Refusal("51204", "The price for the limit order cannot be empty.")
    if reason in (Reason.PRICE_NOT_POSITIVE, Reason.PRICE_PRECISION, Reason.PRICE_TICK):
        return Refusal("51000", "Parameter px error")
    if reason is Reason.INSUFFICIENT_MARGIN:
        return Refusal("51008", "Order failed. Insufficient USDT margin in account")
    if reason is Reason.REDUCE_ONLY:
        position = context.get("position") or ZERO
        if not position:
            return Refusal(
                "51169",
                "Order failed because you don't have any positions in this direction "
                "for this contract to reduce or close.",
            )
        if request is not None and (position > 0) == (request.side == "buy"):
            return Refusal(
                "51170",
                "Failed to place order. A reduce-only order can’t be the same trading "
                "direction as your existing positions.",
            )
        # Larger than the position: it would flip it.
        return Refusal("51205", "Reduce Only is not available.")
    if reason is Reason.DUPLICATE_CLIENT_ID:
        return Refusal("51016", "Client order ID already exists.")
    if reason is Reason.ORDER_NOT_FOUND:
        return Refusal("51603", "Order does not exist.")
    return Refusal("50026", "System error. Try again later")


def _instrument(rules: MarketRules) -> dict[str, Any]:
    lot = plain(rules.step_size / rules.contract_size)
    return {
        "alias": "",
        "baseCcy": "",
        "category": "1",
        "ctMult": "1",
        "ctType": "linear",
        "ctVal": plain(rules.contract_size),
        "ctValCcy": rules.base,
        "expTime": "",
        "instFamily": f"{rules.base}-USDT",
        "instId": rules.market_id,
        "instType": "SWAP",
        "lever": str(rules.max_leverage),
        "listTime": LISTED_MS,
        "lotSz": lot,
        "maxIcebergSz": f"{plain(OKX_MAX_LIMIT_SIZE)}.0000000000000000",
        "maxLmtAmt": "20000000",
        "maxLmtSz": plain(OKX_MAX_LIMIT_SIZE),
        "maxMktAmt": "",
        "maxMktSz": _size(rules, rules.max_market_qty),
        "maxStopSz": _size(rules, rules.max_market_qty),
        "maxTriggerSz": f"{plain(OKX_MAX_LIMIT_SIZE)}.0000000000000000",
        "maxTwapSz": f"{plain(OKX_MAX_LIMIT_SIZE)}.0000000000000000",
        "minSz": _size(rules, rules.min_qty),
        "optType": "",
        "quoteCcy": "",
        "ruleType": "normal",
        "settleCcy": "USDT",
        "state": "live",
        "stk": "",
        "tickSz": plain(rules.tick_size),
        "uly": f"{rules.base}-USDT",
    }


def _currency(coin: str) -> dict[str, Any]:
    return {
        "canDep": True,
        "canInternal": True,
        "canWd": True,
        "ccy": coin,
        "chain": f"{coin}-{coin}",
        "logoLink": "",
        "mainNet": True,
        "maxFee": "0",
        "maxWd": "1000000",
        "minDep": "0",
        "minFee": "0",
        "minWd": "0",
        "name": coin,
        "usedWdQuota": "0",
        "wdQuota": "1000000",
        "wdTickSz": "8",
    }


def _ticker(ctx: Ctx, rules: MarketRules) -> dict[str, Any]:
    exchange = ctx.exchange
    last = exchange.price(rules.market_id)
    previous = exchange.open_prices.get(rules.market_id, last)
    volume_contracts = Decimal(100_000)
    depth = _size(rules, rules.max_market_qty)
    return {
        "instType": "SWAP",
        "instId": rules.market_id,
        "last": plain(last),
        "lastSz": _size(rules, rules.min_qty),
        "askPx": plain(last + rules.tick_size),
        "askSz": depth,
        "bidPx": plain(last - rules.tick_size),
        "bidSz": depth,
        "open24h": plain(previous),
        "high24h": plain(max(previous, last)),
        "low24h": plain(min(previous, last)),
        "volCcy24h": plain(volume_contracts * rules.contract_size),
        "vol24h": plain(volume_contracts),
        "ts": str(ctx.now_ms),
        "sodUtc0": plain(previous),
        "sodUtc8": plain(previous),
    }


def _order_type(order: Order) -> str:
    if order.type == "market":
        return "market"
    return {"GTX": "post_only", "FOK": "fok", "IOC": "ioc"}.get(order.time_in_force, "limit")


def _cancel_source(order: Order) -> tuple[str, str]:
    """OKX's cancelSource code and reason for a canceled order ("" otherwise)."""
    if order.status is Status.CANCELED:
        if (
            order.time_in_force == "GTX"
            and _crosses(order.side, order.price, order.last_price_on_created)
            and order.updated_ms == order.created_ms
        ):
            return "31", "The post-only order will take liquidity in maker orders"
        return "1", "Order canceled by user"
    if order.status is Status.EXPIRED:
        if order.time_in_force == "FOK":
            return "13", "Order canceled: FOK order was canceled due to incompletely filled"
        return "14", "Order canceled: IOC order was partially canceled due to incompletely filled"
    return "", ""


def _trade_id(order: Order) -> str:
    return str(int(order.order_id) % 1_000_000_000) if order.filled else ""


def _order_row(exchange: Exchange, order: Order) -> dict[str, Any]:
    rules = order.rules
    average = order.average
    filled_contracts = _size(rules, order.filled)
    cancel_source, cancel_reason = _cancel_source(order)
    fee = -order.fee
    return {
        "accFillSz": filled_contracts,
        "algoClOrdId": "",
        "algoId": "",
        "attachAlgoClOrdId": "",
        "attachAlgoOrds": [],
        "avgPx": plain(average) if average is not None else "",
        "cTime": str(order.created_ms),
        "cancelSource": cancel_source,
        "cancelSourceReason": cancel_reason,
        "category": "normal",
        "ccy": "",
        "clOrdId": order.client_order_id,
        "fee": plain(fee),
        "feeCcy": "USDT",
        "fillPx": plain(average) if average is not None else "",
        "fillSz": filled_contracts,
        "fillTime": str(order.updated_ms) if order.filled else "",
        "instId": rules.market_id,
        "instType": "SWAP",
        "isTpLimit": "false",
        "lever": str(exchange.positions[rules.market_id].leverage),
        "linkedAlgoOrd": {"algoId": ""},
        "ordId": order.order_id,
        "ordType": _order_type(order),
        "pnl": plain(order.realized_pnl),
        "posSide": "net",
        "px": plain(order.price) if order.price is not None else "",
        "pxType": "",
        "pxUsd": "",
        "pxVol": "",
        "quickMgnType": "",
        "rebate": "0",
        "rebateCcy": "USDT",
        "reduceOnly": "true" if order.reduce_only else "false",
        "side": order.side,
        "slOrdPx": "",
        "slTriggerPx": "",
        "slTriggerPxType": "",
        "source": "",
        "state": _okx_state(order),
        "stpId": "",
        # As in both recorded swap orders (a recorded spot order shows "cancel_maker").
        "stpMode": "",
        "sz": _size(rules, order.quantity),
        "tag": order.tag,
        "tdMode": "cross",
        "tgtCcy": "",
        "tpOrdPx": "",
        "tpTriggerPx": "",
        "tpTriggerPxType": "",
        "tradeId": _trade_id(order),
        "uTime": str(order.updated_ms),
    }


def _maintenance_margin(exchange: Exchange) -> Decimal:
    return sum(
        (
            abs(p.state.size) * exchange.price(mid) * MAINT_MARGIN_RATE
            for mid, p in exchange.positions.items()
        ),
        ZERO,
    )


def _position_id(market_id: str) -> str:
    # Stable per instrument, like OKX's posId (kept 30 days after a full close).
    digest = hashlib.sha256(f"okx:{market_id}".encode()).hexdigest()
    return str(600_000_000_000_000_000 + int(digest[:15], 16))


def _position_row(exchange: Exchange, position, state, now_ms: int) -> dict[str, Any]:
    rules: MarketRules = position.rules
    mark = exchange.price(rules.market_id)
    size = state.size
    notional = abs(size) * mark
    initial = notional / position.leverage
    maint = notional * MAINT_MARGIN_RATE
    unrealized = (mark - state.entry_price) * size if size else ZERO
    liquidation = exchange.liquidation_price(rules.market_id)
    equity = exchange.wallet + exchange.total_unrealized()
    break_even = state.entry_price * (1 + Decimal("0.001") * (1 if size > 0 else -1))
    return {
        "adl": "1" if size else "0",
        "availPos": _size(rules, abs(size)),
        "avgPx": plain(state.entry_price) if size else "",
        "baseBal": "",
        "baseBorrowed": "",
        "baseInterest": "",
        "bePx": plain(break_even) if size else "",
        "bizRefId": "",
        "bizRefType": "",
        "cTime": str(state.created_ms or now_ms),
        "ccy": "USDT",
        "clSpotInUseAmt": "",
        "closeOrderAlgo": [],
        "deltaBS": "",
        "deltaPA": "",
        "fee": "0",
        "fundingFee": "0",
        "gammaBS": "",
        "gammaPA": "",
        "hedgedPos": "",
        "idxPx": plain(mark),
        "imr": plain(initial),
        "instId": rules.market_id,
        "instType": "SWAP",
        "interest": "",
        "last": plain(mark),
        "lever": str(position.leverage),
        "liab": "",
        "liabCcy": "",
        "liqPenalty": "0",
        "liqPx": plain(liquidation) if liquidation else "",
        "margin": "",
        "markPx": plain(mark),
        "maxSpotInUseAmt": "",
        "mgnMode": "cross",
        "mgnRatio": plain(equity / maint) if maint else "",
        "mmr": plain(maint),
        "nonSettleAvgPx": "",
        "notionalUsd": plain(notional),
        "optVal": "",
        "pendingCloseOrdLiabVal": "",
        "pnl": plain(state.realized_pnl),
        "pos": _size(rules, size),
        "posCcy": "",
        "posId": _position_id(rules.market_id),
        "posSide": "net",
        "quoteBal": "",
        "quoteBorrowed": "",
        "quoteInterest": "",
        "realizedPnl": plain(state.realized_pnl),
        "settledPnl": "",
        "spotInUseAmt": "",
        "spotInUseCcy": "",
        "thetaBS": "",
        "thetaPA": "",
        "tradeId": str(state.updated_ms % 1_000_000_000),
        "uTime": str(state.updated_ms or now_ms),
        "upl": plain(unrealized),
        "uplLastPx": plain(unrealized),
        "uplRatio": plain(unrealized / initial) if initial else "0",
        "uplRatioLastPx": plain(unrealized / initial) if initial else "0",
        "usdPx": "",
        "vegaBS": "",
        "vegaPA": "",
    }


def _usdt(ctx: Ctx) -> dict[str, Any]:
    exchange = ctx.exchange
    unrealized = exchange.total_unrealized()
    equity = exchange.wallet + unrealized
    available = exchange.available()
    frozen = exchange.total_position_margin() + exchange.order_margin()
    return {
        "accAvgPx": "",
        "availBal": fmt(available, 8),
        "availEq": fmt(available, 8),
        "borrowFroz": "0",
        "cashBal": fmt(exchange.wallet, 8),
        "ccy": "USDT",
        "clSpotInUseAmt": "",
        "colBorrAutoConversion": "0",
        "collateralEnabled": True,
        "collateralRestrict": False,
        "crossLiab": "0",
        "disEq": fmt(equity, 8),
        "eq": fmt(equity, 8),
        "eqUsd": fmt(equity, 8),
        "fixedBal": "0",
        "frozenBal": fmt(frozen, 8),
        "imr": "",
        "interest": "0",
        "isoEq": "0",
        "isoLiab": "0",
        "isoUpl": "0",
        "liab": "0",
        "maxLoan": "0",
        "maxSpotInUse": "",
        "mgnRatio": "",
        "mmr": "",
        "notionalLever": "",
        "openAvgPx": "",
        "ordFrozen": fmt(exchange.order_margin(), 8),
        "rewardBal": "",
        "smtSyncEq": "0",
        "spotBal": "",
        "spotCopyTradingEq": "0",
        "spotInUseAmt": "",
        "spotIsoBal": "0",
        "spotUpl": "",
        "spotUplRatio": "",
        "stgyEq": "0",
        "totalPnl": "",
        "totalPnlRatio": "",
        "twap": "0",
        "uTime": str(ctx.now_ms),
        "upl": fmt(unrealized, 8),
        "uplLiab": "0",
    }
