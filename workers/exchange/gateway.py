"""Real ccxt clients for the configured exchange accounts.

``get_client(account)`` returns the ccxt sync client of this process and
thread for that account (ccxt sync clients are not thread-safe, and a worker
runs many threads). Markets are loaded once per process and exchange mode,
then shared by reference with every other client of the same kind, because a
worker process with 32 threads would otherwise hold 32 copies.

Per-account facts ccxt would look up again in every client (Bybit's unified
account detection, Binance's leverage brackets) are fetched once per account.

Every client carries an ``ExchangeTransport`` on its HTTP session: it runs
the request hook (``set_request_hook``; the shared rate limiter) before every
request, and in ``sim`` mode routes the exchange's real URLs to the simulator.

Errors: ``GatewayError`` for an account that cannot be built (unknown name,
an unsupported mode); ccxt's own exceptions for everything the exchange says.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import ccxt

from workers.exchange.lean_ccxt import exchange_class
from workers.exchange.transport import ExchangeSession, ExchangeTransport, RequestHook
from workers.exchange.venues import VENUES, Venue
from workers.settings import ExchangeAccount, get_settings

__all__ = [
    "GatewayError",
    "build_client",
    "client_options",
    "get_client",
    "reset_clients",
    "set_request_hook",
    "venue",
]


class GatewayError(Exception):
    """The account cannot be turned into a client; the message says why."""


_hook: RequestHook | None = None
_local = threading.local()
# Guards the caches below; each cache entry has its own lock for the network I/O,
# so a slow exchange does not hold up clients of another one.
_lock = threading.Lock()
_key_locks: dict[tuple[str, ...], threading.Lock] = {}
# (ccxt_class, mode) -> the client whose markets later clients share by reference
_market_sources: dict[tuple[str, str], ccxt.Exchange] = {}
# account name -> per-account facts ccxt would otherwise look up in every client
_account_facts: dict[str, dict[str, Any]] = {}
_caches_owner: tuple[int, int] = (0, 0)
_generation = 0

_venues: dict[str, Venue] = {}


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
    config: dict[str, Any] = {
        "apiKey": key,
        "secret": secret,
        # The shared Redis limiter (the request hook) replaces ccxt's per-instance throttle.
        "enableRateLimit": False,
        "timeout": timeout_ms,
        "options": options,
    }
    passphrase = account.passphrase_value()
    if passphrase is not None:
        config["password"] = passphrase
    return VENUES[account.ccxt_class].client_config(config)


def build_client(account: ExchangeAccount) -> ccxt.Exchange:
    """A new, unshared client for ``account`` with markets not yet loaded (no network I/O).

    ``get_client`` is what callers want; this is the construction step on its own.
    """
    settings = get_settings()
    client = exchange_class(account.ccxt_class)(
        client_options(account, settings.exchange_timeout_ms)
    )
    # The venue reads the exchange's own error code from the answer that failed.
    client.enableLastJsonResponse = True
    try:
        VENUES[account.ccxt_class].apply_mode(client, account.mode)
    except ValueError as exc:
        raise GatewayError(f"account {account.name!r}: {exc}") from None
    session = ExchangeSession()
    session.trust_env = client.session.trust_env
    client.session = session
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


def _key_lock(*key: str) -> threading.Lock:
    global _caches_owner
    with _lock:
        owner = (os.getpid(), _generation)
        if _caches_owner != owner:
            _key_locks.clear()
            _market_sources.clear()
            _account_facts.clear()
            _caches_owner = owner
        return _key_locks.setdefault(key, threading.Lock())


def _share_markets(account: ExchangeAccount, client: ccxt.Exchange) -> None:
    kind = (account.ccxt_class, account.mode)
    with _key_lock("markets", *kind):
        source = _market_sources.get(kind)
        if source is None:
            # fetch_markets + set_markets rather than load_markets: load_markets
            # would also fetch currencies (a private call on Bybit) for nothing.
            client.set_markets(client.fetch_markets())
            _market_sources[kind] = client
        else:
            client.set_markets_from_exchange(source)
    venue_class = VENUES[account.ccxt_class]
    with _key_lock("account", account.name):
        facts = _account_facts.get(account.name)
        if facts is None:
            venue_class(account.name, get_client).load_account_facts(client)
            facts = {
                option: client.options[option]
                for option in venue_class.shared_options
                if client.options.get(option) is not None
            }
            _account_facts[account.name] = facts
        else:
            client.options.update(facts)


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
    # A client lives as long as its thread (tens of thousands of objects for 32
    # threads and two accounts). Frozen, the garbage collector's full collections
    # no longer walk them, the same as the import-time heap the worker freezes at
    # start (workers/app.py). Freezing is cheap and happens once per thread and
    # account. Cyclic garbage alive at this instant is kept; a frozen client that
    # is dropped later is still freed, since it holds no reference cycle.
    gc.freeze()
    return client


def venue(account_name: str) -> Venue:
    """The venue of a configured account; raises ``GatewayError`` for an unknown name."""
    found = _venues.get(account_name)
    if found is None:
        try:
            account = get_settings().account(account_name)
        except KeyError:
            raise GatewayError(f"no exchange account named {account_name!r}") from None
        found = _venues[account_name] = VENUES[account.ccxt_class](account.name, get_client)
    return found


def reset_clients() -> None:
    """Forget every client and the shared markets (tests; after settings change)."""
    global _generation
    with _lock:
        _generation += 1
        _market_sources.clear()
        _account_facts.clear()
        _venues.clear()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay locked forever in
    # the child; the caches are dropped anyway (keyed by pid).
    global _lock
    _lock = threading.Lock()
    _key_locks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
