"""A signal's market, read from the account's ccxt markets (the market checks' input).

The markets are loaded once per process (the account's venue); this reads
them, resolves the signal's symbol to exactly one linear perpetual
(``workers.execution.validation.perpetual_for``) and turns the market into
``MarketRules``. Raises ``SignalRejected`` for a symbol the account does not
trade, and the exchange errors of loading the markets (the task tries later).
"""

from __future__ import annotations

from workers.exchange import gateway
from workers.exchange.reads import read_with_retries
from workers.execution.validation import MarketRules, market_rules, perpetual_for


def signal_market(account: str, symbol: str) -> MarketRules:
    """The rules of the linear perpetual ``symbol`` names exactly on ``account``."""
    venue = gateway.venue(account)
    markets = read_with_retries(venue.markets)
    exact = markets.get(symbol)
    resolved = None if exact is not None else venue.resolve_alias(symbol)
    market = perpetual_for(symbol, markets, account=account, resolved=resolved)
    return market_rules(market, market_amount_max=venue.market_order_maximum(market))
