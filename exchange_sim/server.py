"""The simulator's HTTP server: the exchanges' REST APIs plus the admin API.

Requests are routed by path: ``/fapi/...`` is Binance USDⓈ-M, ``/v5/...`` is
Bybit v5, ``/api/v5/...`` is OKX v5, ``/_sim/...`` is the admin API
(documented in docs/simulator.md). The WebSocket streams, when ``serve`` gets a
``ws_port``, run on that port (``exchange_sim.streams``) against the same state.
One process holds every exchange's state in memory; every handler runs on the
event loop, so state changes need no locks.

Per exchange request the server counts it, asks the fault plan what to do,
sleeps for injected latency, then either answers with the injected fault or
lets the exchange front end handle it. A "timeout" fault hangs and then drops
the TCP connection without an HTTP response; "after accept" runs the request
first, so the order exists although the client never hears about it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from exchange_sim.api import ApiError, Ctx, FrontEnd, fmt, parse_decimal, plain
from exchange_sim.binance import BinanceFutures
from exchange_sim.bybit import BybitV5
from exchange_sim.engine import DEFAULT_BALANCE, Exchange, Rejected, Status, now_ms
from exchange_sim.faults import FaultPlan, FaultPlanError, parse_plan
from exchange_sim.markets import EXCHANGES, MARKETS, default_prices
from exchange_sim.okx import OkxV5
from exchange_sim.streams import StreamHub, StreamSettings, create_stream_app

log = logging.getLogger("exchange_sim")

UNIFIED_STATUS = {
    Status.NEW: "open",
    Status.PARTIALLY_FILLED: "open",
    Status.FILLED: "closed",
    Status.CANCELED: "canceled",
    Status.EXPIRED: "expired",
}


class AdminError(Exception):
    """A malformed admin request; answered with HTTP 400 and the message."""


class SimState:
    """The exchanges, the fault plan, request statistics, background price walks and
    the stream hub (which outlives resets: its listen keys are credentials)."""

    def __init__(self, seed: int | None = None, streams: StreamSettings | None = None) -> None:
        self.base_seed = seed if seed is not None else 0
        self.walk_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.streams = StreamHub(self, streams)
        self.reset(seed=self.base_seed)

    def reset(
        self,
        seed: int | None = None,
        balances: dict[str, Decimal] | None = None,
        prices: dict[str, Decimal] | None = None,
    ) -> None:
        for task in self.walk_tasks.values():
            task.cancel()
        self.walk_tasks.clear()
        self.seed = self.base_seed if seed is None else seed
        start_prices = {**default_prices(), **(prices or {})}
        self.exchanges: dict[str, Exchange] = {
            name: Exchange(
                name,
                self.seed,
                balance=(balances or {}).get(name, DEFAULT_BALANCE),
                prices=start_prices,
            )
            for name in EXCHANGES
        }
        self.streams.on_reset(self.exchanges)
        self.faults = FaultPlan(seed=self.seed)
        self.price_rng = random.Random(f"prices:{self.seed}")
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def exchange(self, name: object) -> Exchange:
        if not isinstance(name, str) or name not in self.exchanges:
            raise AdminError(f"'exchange' must be one of {list(self.exchanges)}")
        return self.exchanges[name]  # type: ignore[index]


# --- exchange requests -------------------------------------------------------------------

BINANCE: FrontEnd = BinanceFutures()
BYBIT: FrontEnd = BybitV5()
OKX: FrontEnd = OkxV5()


def _front_end(path: str) -> FrontEnd | None:
    # The path tells the exchanges apart, so the gateway needs no extra header.
    if path.startswith("/fapi/"):
        return BINANCE
    if path.startswith("/v5/"):
        return BYBIT
    if path.startswith("/api/v5/"):
        return OKX
    return None


def _render(front: FrontEnd, error: ApiError) -> web.Response:
    if isinstance(error.payload, str):
        return web.Response(
            status=error.status,
            text=error.payload,
            content_type="text/html",
            headers=error.headers,
        )
    return front.error(error)


async def _hang_and_drop(request: web.Request, hang_ms: int) -> web.Response:
    """Say nothing for ``hang_ms``, then cut the connection (no HTTP response at all)."""
    await asyncio.sleep(hang_ms / 1000)
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp discards this: the transport is gone.
    return web.Response(status=204)


async def handle_exchange(request: web.BaseRequest, state: SimState) -> web.StreamResponse:
    front = _front_end(request.path)
    if front is None:
        return _json({"error": "not an exchange path; the admin API is under /_sim/"}, 404)
    endpoint = front.endpoint(request.method, request.path)
    if endpoint is None:
        state.stats[front.name]["unknown_endpoint"] += 1
        return _render(front, front.not_found(request.method, request.path))
    try:
        params = await front.read_params(request)
    except ApiError as error:
        return _render(front, error)
    except web.HTTPException:
        raise  # e.g. 413 for a body over 1 MiB: aiohttp answers it properly
    except Exception:
        log.exception("unreadable request %s %s", request.method, request.path_qs)
        return _render(front, front.internal_error())
    operation = endpoint.operation_for(params)
    state.stats[front.name][operation] += 1

    faults = state.faults.decide(front.name, operation, front.unified_symbol(params))
    if faults.delay_s:
        await asyncio.sleep(faults.delay_s)
    outcome = faults.outcome
    at_ms = now_ms()
    if outcome is not None:
        if outcome.kind in ("rate_limit", "ip_ban", "auth_refused"):
            return _render(front, front.fault(outcome, at_ms))
        if outcome.kind == "timeout_before_accept":
            return await _hang_and_drop(request, outcome.hang_ms)
        if outcome.kind in ("server_error", "unknown_status") and not outcome.accept:
            return _render(front, front.fault(outcome, at_ms))

    ctx = Ctx(state.exchanges[front.name], params, at_ms, faults, request.headers, state.streams)
    response = _run(front, endpoint, ctx, request, operation)

    if outcome is not None:
        if outcome.kind == "timeout_after_accept":
            return await _hang_and_drop(request, outcome.hang_ms)
        if outcome.kind in ("server_error", "unknown_status"):
            # The request took effect, but the client is told something went wrong.
            return _render(front, front.fault(outcome, at_ms))
    return response


def _run(front: FrontEnd, endpoint, ctx: Ctx, request: web.Request, operation: str):
    try:
        if endpoint.private:
            # On arrival at the engine, after any injected latency: a request
            # held past its validity window is refused as the exchange would.
            front.authenticate(request, ctx.params, ctx.now_ms)
        payload = endpoint.handler(ctx)
    except ApiError as error:
        return _render(front, error)
    except Rejected as rejected:
        return _render(front, front.rejection(rejected, operation))
    except Exception:
        # Whatever goes wrong inside, the client gets the exchange's own
        # "internal error" and the simulator keeps serving.
        log.exception("internal error on %s %s", request.method, request.path_qs)
        return _render(front, front.internal_error())
    return front.success(payload, ctx.now_ms)


# --- admin API ----------------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AdminError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AdminError("body must be a JSON object")
    return body


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    """``body[name]``, which must be a JSON object when given (``{}`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AdminError(f"'{name}' must be an object, got {type(value).__name__}")
    return value


def _decimal(value: object, name: str) -> Decimal:
    parsed = parse_decimal(value)
    if parsed is None:
        raise AdminError(f"'{name}' must be a decimal (a string such as \"65000.5\")")
    return parsed


def _symbol_rules(state: SimState, exchange: str, symbol: object):
    rules = (
        state.exchanges[exchange].rules_by_symbol.get(symbol) if isinstance(symbol, str) else None
    )
    if rules is None:
        known = [r.symbol for r in MARKETS[exchange]]
        raise AdminError(f"unknown symbol {symbol!r}; known: {known}")
    return rules


def admin(handler):
    async def wrapped(request: web.BaseRequest, state: SimState) -> web.Response:
        try:
            return await handler(request, state)
        except (AdminError, FaultPlanError) as exc:
            return _json({"error": str(exc)}, status=400)
        except web.HTTPRequestEntityTooLarge:
            limit = request.client_max_size
            return _json({"error": f"body larger than {limit} bytes"}, status=413)
        except Exception:
            log.exception("admin request failed: %s %s", request.method, request.path_qs)
            return _json({"error": "internal error; see the simulator log"}, status=500)

    return wrapped


@admin
async def reset(request: web.BaseRequest, state: SimState) -> web.Response:
    body = await _body(request)
    unknown = set(body) - {"seed", "balance", "balances", "prices"}
    if unknown:
        raise AdminError(f"unknown fields {sorted(unknown)}")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise AdminError("'seed' must be an integer")
    balances: dict[str, Decimal] = {}
    if "balance" in body:
        balances = {name: _decimal(body["balance"], "balance") for name in EXCHANGES}
    for name, value in _object(body, "balances").items():
        state.exchange(name)
        balances[name] = _decimal(value, f"balances.{name}")
    prices: dict[str, Decimal] = {}
    for symbol, value in _object(body, "prices").items():
        _symbol_rules(state, "binance", symbol)
        prices[symbol] = _decimal(value, f"prices.{symbol}")
    state.reset(seed=seed, balances=balances, prices=prices)
    return _json({"ok": True, "seed": state.seed, "prices": _prices(state)})


@admin
async def set_faults(request: web.BaseRequest, state: SimState) -> web.Response:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise AdminError(f"body is not JSON: {exc}") from None
    state.faults = parse_plan(body, default_seed=state.seed)
    return _json({"ok": True, "plan": state.faults.describe()})


@admin
async def get_faults(request: web.BaseRequest, state: SimState) -> web.Response:
    return _json(state.faults.describe())


def _walks(state: SimState) -> list[dict[str, str]]:
    """The background walks running now."""
    return [
        {"exchange": name, "symbol": state.exchanges[name].rules_by_id[market_id].symbol}
        for (name, market_id), task in state.walk_tasks.items()
        if not task.done()
    ]


def _prices(state: SimState) -> dict[str, dict[str, str]]:
    return {
        name: {
            rules.symbol: fmt(exchange.prices[rules.market_id], rules.price_precision)
            for rules in exchange.rules_by_id.values()
        }
        for name, exchange in state.exchanges.items()
    }


@admin
async def set_prices(request: web.BaseRequest, state: SimState) -> web.Response:
    body = await _body(request)
    changes = body.get("prices", [body]) if "prices" in body else [body]
    if not isinstance(changes, list):
        raise AdminError("'prices' must be a list of price changes")
    for change in changes:
        _apply_price_change(state, change)
    return _json({"ok": True, "prices": _prices(state), "walks": _walks(state)})


def _apply_price_change(state: SimState, change: object) -> None:
    if not isinstance(change, dict):
        raise AdminError("a price change is an object with 'symbol' and 'price' or 'walk'")
    unknown = set(change) - {"exchange", "symbol", "price", "walk"}
    if unknown:
        raise AdminError(f"unknown fields {sorted(unknown)}")
    names = [change["exchange"]] if change.get("exchange") not in (None, "any") else EXCHANGES
    for name in names:
        state.exchange(name)
    symbol = change.get("symbol")
    if ("price" in change) == ("walk" in change):
        raise AdminError("give exactly one of 'price' or 'walk'")
    at_ms = now_ms()
    if "price" in change:
        price = _decimal(change["price"], "price")
        if price <= 0:
            raise AdminError("'price' must be positive")
        for name in names:
            rules = _symbol_rules(state, name, symbol)
            _stop_walk(state, name, rules.market_id)
            state.exchanges[name].set_price(rules.market_id, price, at_ms)
        return
    walk = change["walk"]
    if not isinstance(walk, dict):
        raise AdminError("'walk' must be an object: {steps, volatility, interval_ms}")
    steps = walk.get("steps", 1)
    volatility = walk.get("volatility", 0.001)
    interval_ms = walk.get("interval_ms")
    if not isinstance(steps, int) or steps < 0 or steps > 100_000:
        raise AdminError("'walk.steps' must be an integer between 0 and 100000")
    if not isinstance(volatility, int | float) or not 0 <= volatility <= 0.5:
        raise AdminError("'walk.volatility' must be a number between 0 and 0.5")
    if interval_ms is not None and (not isinstance(interval_ms, int) or interval_ms < 10):
        raise AdminError("'walk.interval_ms' must be an integer >= 10")
    for name in names:
        rules = _symbol_rules(state, name, symbol)
        exchange = state.exchanges[name]
        _stop_walk(state, name, rules.market_id)
        exchange.walk(rules.market_id, steps, float(volatility), state.price_rng, at_ms)
        if interval_ms is not None:
            task = asyncio.get_running_loop().create_task(
                _walk_forever(state, exchange, rules.market_id, float(volatility), interval_ms)
            )
            state.walk_tasks[(name, rules.market_id)] = task


def _stop_walk(state: SimState, name: str, market_id: str) -> None:
    task = state.walk_tasks.pop((name, market_id), None)
    if task is not None:
        task.cancel()


async def _walk_forever(
    state: SimState, exchange: Exchange, market_id: str, volatility: float, interval_ms: int
) -> None:
    while True:
        await asyncio.sleep(interval_ms / 1000)
        exchange.walk(market_id, 1, volatility, state.price_rng, now_ms())


@admin
async def get_prices(request: web.BaseRequest, state: SimState) -> web.Response:
    return _json({"prices": _prices(state), "walks": _walks(state)})


@admin
async def ledger(request: web.BaseRequest, state: SimState) -> web.Response:
    only = request.query.get("exchange")
    orders = []
    for name, exchange in state.exchanges.items():
        if only and only != name:
            continue
        for order in exchange.ledger:
            rules = order.rules
            average = order.average
            orders.append(
                {
                    "exchange": name,
                    "symbol": rules.symbol,
                    "clientOrderId": order.client_order_id or None,
                    "orderId": order.order_id,
                    "side": order.side,
                    "type": order.type,
                    # Base units on every exchange; OKX's contracts alongside.
                    "amount": plain(order.quantity),
                    "filled": plain(order.filled),
                    "contractSize": plain(rules.contract_size),
                    "contracts": plain(order.quantity / rules.contract_size),
                    "filledContracts": plain(order.filled / rules.contract_size),
                    "price": plain(order.price) if order.price is not None else None,
                    "average": plain(average) if average is not None else None,
                    "status": UNIFIED_STATUS[order.status],
                    "reduceOnly": order.reduce_only,
                    "timestamp": order.created_ms,
                }
            )
    orders.sort(key=lambda o: o["timestamp"])
    return _json({"orders": orders})


def _position_json(name: str, exchange: Exchange, market_id: str) -> dict[str, Any]:
    position = exchange.positions[market_id]
    state = position.state
    return {
        "exchange": name,
        "symbol": position.rules.symbol,
        "side": "long" if state.size > 0 else ("short" if state.size < 0 else None),
        "size": plain(state.size),
        "contracts": plain(state.size / position.rules.contract_size),
        "entryPrice": plain(state.entry_price),
        "realizedPnl": plain(state.realized_pnl),
        "unrealizedPnl": plain(exchange.unrealized_pnl(market_id)),
        "leverage": position.leverage,
        "updatedTime": state.updated_ms,
    }


@admin
async def positions(request: web.BaseRequest, state: SimState) -> web.Response:
    result = [
        _position_json(name, exchange, market_id)
        for name, exchange in state.exchanges.items()
        for market_id, position in exchange.positions.items()
        if position.state.size
    ]
    return _json({"positions": result})


@admin
async def set_position(request: web.BaseRequest, state: SimState) -> web.Response:
    body = await _body(request)
    unknown = set(body) - {"exchange", "symbol", "size", "entryPrice"}
    if unknown:
        raise AdminError(f"unknown fields {sorted(unknown)}")
    name = body.get("exchange")
    exchange = state.exchange(name)
    rules = _symbol_rules(state, name, body.get("symbol"))  # type: ignore[arg-type]
    size = _decimal(body.get("size"), "size")
    if size % rules.step_size:
        raise AdminError(f"'size' must be a multiple of the step size {plain(rules.step_size)}")
    entry = None
    if body.get("entryPrice") is not None:
        entry = _decimal(body["entryPrice"], "entryPrice")
        if entry <= 0:
            raise AdminError("'entryPrice' must be positive")
    exchange.set_position(rules.market_id, size, entry, now_ms())
    return _json({"ok": True, "position": _position_json(name, exchange, rules.market_id)})  # type: ignore[arg-type]


@admin
async def stream_status(request: web.BaseRequest, state: SimState) -> web.Response:
    return _json(state.streams.describe())


@admin
async def stats(request: web.BaseRequest, state: SimState) -> web.Response:
    requests = {name: dict(ops) for name, ops in state.stats.items()}
    total = sum(sum(ops.values()) for ops in requests.values())
    return _json(
        {
            "requests": requests,
            "total": total,
            "faults": state.faults.describe()["rules"],
            # CPU seconds this process has used: lets a load test tell the
            # simulator's own cost per request from a busy machine's noise.
            "process": {"cpu_s": round(time.process_time(), 3)},
        }
    )


# --- application ----------------------------------------------------------------------------


ADMIN_ROUTES = {
    ("POST", "/_sim/reset"): reset,
    ("POST", "/_sim/faults"): set_faults,
    ("GET", "/_sim/faults"): get_faults,
    ("POST", "/_sim/prices"): set_prices,
    ("GET", "/_sim/prices"): get_prices,
    ("GET", "/_sim/ledger"): ledger,
    ("GET", "/_sim/positions"): positions,
    ("POST", "/_sim/positions"): set_position,
    ("GET", "/_sim/stats"): stats,
    ("GET", "/_sim/streams"): stream_status,
}


def make_handler(state: SimState):
    """One request handler for everything; a dict lookup is all the routing needed."""

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            handler = ADMIN_ROUTES.get((request.method, path))
            if handler is None:
                return _json({"error": f"no admin endpoint {request.method} {path}"}, 404)
            return await handler(request, state)
        return await handle_exchange(request, state)

    return dispatch


def create_app(seed: int | None = None) -> web.Application:
    """The simulator as an aiohttp Application (for embedding; ``main`` serves leaner)."""
    app = web.Application(client_max_size=1024 * 1024)
    app["state"] = SimState(seed)
    dispatch = make_handler(app["state"])
    app.router.add_route("*", "/{path:.*}", dispatch)
    return app


async def serve(
    host: str,
    port: int,
    seed: int | None = None,
    ws_port: int | None = None,
    streams: StreamSettings | None = None,
) -> None:
    """Serve until cancelled or until SIGINT/SIGTERM; the streams too when ``ws_port``."""
    state = SimState(seed, streams)
    # The low-level server skips aiohttp's application router and middleware
    # machinery: a good share of the per-request cost at thousands of req/s.
    server = web.Server(make_handler(state), access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    # A hanging "timeout" fault must not hold up shutdown.
    site = web.TCPSite(runner, host, port, backlog=1024, shutdown_timeout=1.0)
    await site.start()
    runners = [runner]
    log.info(
        "exchange simulator on http://%s:%s (seed %s): Binance USDⓈ-M under /fapi, "
        "Bybit v5 under /v5, OKX v5 under /api/v5, admin under /_sim",
        host,
        port,
        seed if seed is not None else 0,
    )
    if ws_port is not None:
        stream_runner = web.AppRunner(create_stream_app(state.streams), access_log=None)
        await stream_runner.setup()
        await web.TCPSite(stream_runner, host, ws_port, shutdown_timeout=1.0).start()
        runners.append(stream_runner)
        log.info(
            "streams on ws://%s:%s: Binance under /binance (urls.api.ws.linear = .../binance/ws), "
            "Bybit under /bybit (/bybit/v5/public/linear, /bybit/v5/private)",
            host,
            ws_port,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for each in reversed(runners):
            await each.cleanup()


def main(
    host: str,
    port: int,
    seed: int | None = None,
    ws_port: int | None = None,
    streams: StreamSettings | None = None,
) -> None:
    """Serve the simulated exchanges on ``host:port`` (streams on ``ws_port``) until
    SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio is only slower
        asyncio.run(serve(host, port, seed, ws_port, streams))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host, port, seed, ws_port, streams))


__all__ = ["SimState", "create_app", "main", "serve"]
