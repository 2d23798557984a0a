"""Real ccxt clients for the configured exchange accounts.

``get_client(account)`` returns the ccxt sync client of this process and
thread for that account (ccxt sync clients are not thread-safe, and a worker
runs many threads). Markets are loaded once per process and exchange mode,
then shared by reference with every other client of the same kind, because a
worker process with 32 threads would otherwise hold 32 copies.

Every client carries an ``ExchangeTransport`` on its HTTP session: it runs
the request hook (``set_request_hook``; the shared rate limiter) before every
request, and in ``sim`` mode routes the exchange's real URLs to the simulator.

Errors: ``GatewayError`` for an account that cannot be built (unknown name,
an unsupported mode); ccxt's own exceptions for everything the exchange says.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ccxt

from workers.exchange.transport import ExchangeTransport, RequestHook
from workers.settings import ExchangeAccount, get_settings

__all__ = [
    "GatewayError",
    "build_client",
    "client_options",
    "get_client",
    "market",
    "reset_clients",
    "set_request_hook",
]


class GatewayError(Exception):
    """The account cannot be turned into a client; the message says why."""


_hook: RequestHook | None = None
_local = threading.local()
_lock = threading.Lock()
# (pid, generation) -> {(ccxt_class, mode): client whose markets the others share}
_market_sources: dict[tuple[str, str], ccxt.Exchange] = {}
_sources_owner: tuple[int, int] = (0, 0)
_generation = 0

# Per-account facts ccxt looks up lazily, once per client: Bybit's unified-account
# detection (two requests) and Binance's leverage brackets (needed by
# fetch_positions). The first client of a process fetches them; the rest copy.
_SHARED_OPTIONS = (
    "enableUnifiedMargin",
    "enableUnifiedAccount",
    "unifiedMarginStatus",
    "leverageBrackets",
)


def set_request_hook(hook: RequestHook | None) -> None:
    """Call ``hook(account_name, prepared_request)`` before every exchange request.

    Applies to clients already built as well. The hook may sleep or raise; an
    exception reaches the ccxt caller unchanged. ``None`` removes it.
    """
    global _hook
    _hook = hook


def _current_hook() -> RequestHook | None:
    return _hook


def client_options(account: ExchangeAccount, timeout_ms: int) -> dict[str, Any]:
    """The ccxt constructor config for an account (also used by tests and docs)."""
    key, secret = account.credentials()
    options: dict[str, Any] = {
        # execq retries by failure class with its own policies: ccxt must not retry.
        "maxRetriesOnFailure": 0,
        "maxRetriesOnFailureDelay": 0,
        # Each of these would cost requests on first use that execq never needs.
        "adjustForTimeDifference": False,
        "fetchCurrencies": False,
        "fetchMarkets": {"types": ["linear"]},
        "defaultType": "swap",
        "defaultSubType": "linear",
        "warnOnFetchOpenOrdersWithoutSymbol": False,
    }
    return {
        "apiKey": key,
        "secret": secret,
        # The shared Redis limiter (the request hook) replaces ccxt's per-instance throttle.
        "enableRateLimit": False,
        "timeout": timeout_ms,
        "options": options,
    }


def build_client(account: ExchangeAccount) -> ccxt.Exchange:
    """A new, unshared client for ``account`` with markets not yet loaded (no network I/O).

    ``get_client`` is what callers want; this is the construction step on its own.
    """
    settings = get_settings()
    exchange_class = getattr(ccxt, account.ccxt_class)
    client = exchange_class(client_options(account, settings.exchange_timeout_ms))
    if account.mode == "demo":
        # Binance's futures testnet is gone; demo trading is its replacement.
        client.enable_demo_trading(True)
    elif account.mode == "testnet":
        if account.ccxt_class == "binanceusdm":
            raise GatewayError(
                f"account {account.name!r}: Binance USDⓈ-M has no testnet any more; use mode 'demo'"
            )
        client.set_sandbox_mode(True)
    sim_url = settings.sim_url if account.mode == "sim" else None
    if sim_url is not None:
        # The simulator is local: no environment proxies or .netrc for it.
        client.session.trust_env = False
    client.session.mount(
        "https://", ExchangeTransport(account.name, _current_hook, sim_url=sim_url)
    )
    return client


def _thread_clients() -> dict[str, ccxt.Exchange]:
    # Keyed by pid too: a forked child must not reuse its parent's sockets.
    owner = (os.getpid(), _generation)
    if getattr(_local, "owner", None) != owner:
        _local.owner = owner
        _local.clients = {}
    return _local.clients


def _share_markets(account: ExchangeAccount, client: ccxt.Exchange) -> None:
    global _sources_owner
    key = (account.ccxt_class, account.mode)
    with _lock:
        owner = (os.getpid(), _generation)
        if _sources_owner != owner:
            _market_sources.clear()
            _sources_owner = owner
        source = _market_sources.get(key)
        if source is None:
            # fetch_markets + set_markets rather than load_markets: load_markets
            # would also fetch currencies (a private call on Bybit) for nothing.
            client.set_markets(client.fetch_markets())
            if account.ccxt_class == "bybit":
                client.is_unified_enabled()
            else:
                client.load_leverage_brackets()
            _market_sources[key] = client
            return
    client.set_markets_from_exchange(source)
    for option in _SHARED_OPTIONS:
        if source.options.get(option) is not None:
            client.options[option] = source.options[option]


def get_client(account_name: str) -> ccxt.Exchange:
    """The ccxt client of this process and thread for the named account.

    The first call in a process loads the markets (one or two requests). Raises
    ``GatewayError`` for an unknown account or an unsupported mode, and ccxt's
    exceptions when loading the markets fails (nothing is cached then).
    """
    clients = _thread_clients()
    client = clients.get(account_name)
    if client is not None:
        return client
    try:
        account = get_settings().account(account_name)
    except KeyError:
        raise GatewayError(f"no exchange account named {account_name!r}") from None
    client = build_client(account)
    _share_markets(account, client)
    clients[account_name] = client
    return client


def market(account_name: str, symbol: str) -> dict[str, Any]:
    """The ccxt market structure of ``symbol`` on the account's exchange (raises BadSymbol)."""
    return get_client(account_name).market(symbol)


def reset_clients() -> None:
    """Forget every client and the shared markets (tests; after settings change)."""
    global _generation
    with _lock:
        _generation += 1
        _market_sources.clear()
