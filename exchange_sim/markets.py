"""The simulated linear perpetual markets and their trading rules.

Every exchange lists the same ten USDT-margined perpetuals. The filters are
close to the real ones (Binance ``exchangeInfo`` / Bybit ``instruments-info``
in 2024-2025) with one deliberate change: BTC's minimum quantity is 0.005
(five steps of 0.001) on Binance and Bybit, so chunked closes have a minimum
to run into. OKX trades contracts: an order's size is a number of contracts
of ``contract_size`` base units each; its rules are kept here in base units
too (step = lot size x contract value), so the matching engine never sees a
contract. Prices are the simulator's defaults, not live quotes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

EXCHANGES = ("binance", "bybit", "okx")


@dataclass(frozen=True, slots=True)
class MarketRules:
    """One market on one exchange. Quantities are in the base asset, notionals in USDT."""

    symbol: str  # ccxt unified symbol, e.g. "BTC/USDT:USDT"
    market_id: str  # exchange symbol, e.g. "BTCUSDT"
    base: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    max_market_qty: Decimal
    min_notional: Decimal
    max_leverage: int
    default_price: Decimal
    # Base units per contract: 1 where the exchange trades the base asset itself.
    contract_size: Decimal = Decimal(1)
    # Decimals of prices and quantities on the wire (derived from tick and step).
    price_precision: int = field(init=False)
    quantity_precision: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_precision", _decimals(self.tick_size))
        object.__setattr__(self, "quantity_precision", _decimals(self.step_size))


def _decimals(value: Decimal) -> int:
    # The literal's own exponent: a tick of "0.10" means prices carry 2 decimals.
    return max(0, -int(value.as_tuple().exponent))


def _rules(
    base: str,
    tick: str,
    step: str,
    min_qty: str,
    max_qty: str,
    max_market_qty: str,
    min_notional: str,
    max_leverage: int,
    price: str,
) -> MarketRules:
    return MarketRules(
        symbol=f"{base}/USDT:USDT",
        market_id=f"{base}USDT",
        base=base,
        tick_size=Decimal(tick),
        step_size=Decimal(step),
        min_qty=Decimal(min_qty),
        max_qty=Decimal(max_qty),
        max_market_qty=Decimal(max_market_qty),
        min_notional=Decimal(min_notional),
        max_leverage=max_leverage,
        default_price=Decimal(price),
    )


# Binance USDⓈ-M: min notional 100 for BTC, 20 for ETH, 5 for the rest (real values).
BINANCE_MARKETS = (
    _rules("BTC", "0.10", "0.001", "0.005", "1000", "120", "100", 125, "65000"),
    _rules("ETH", "0.01", "0.001", "0.001", "10000", "2000", "20", 100, "3500"),
    _rules("SOL", "0.0100", "1", "1", "1000000", "5000", "5", 75, "150"),
    _rules("XRP", "0.0001", "0.1", "0.1", "10000000", "2000000", "5", 75, "0.6"),
    _rules("DOGE", "0.000010", "1", "1", "50000000", "30000000", "5", 75, "0.15"),
    _rules("ADA", "0.00010", "1", "1", "10000000", "1000000", "5", 75, "0.45"),
    _rules("LINK", "0.001", "0.01", "0.01", "200000", "30000", "5", 75, "15"),
    _rules("AVAX", "0.0010", "1", "1", "500000", "50000", "5", 75, "30"),
    _rules("LTC", "0.01", "0.001", "0.001", "100000", "5000", "20", 75, "80"),
    _rules("BNB", "0.010", "0.01", "0.01", "10000", "2000", "5", 75, "580"),
)

# Bybit v5 linear: min order value 5 USDT everywhere (real value).
BYBIT_MARKETS = (
    _rules("BTC", "0.10", "0.001", "0.005", "1190", "500", "5", 100, "65000"),
    _rules("ETH", "0.01", "0.01", "0.01", "7240", "3620", "5", 100, "3500"),
    _rules("SOL", "0.010", "0.1", "0.1", "79770", "31900", "5", 100, "150"),
    _rules("XRP", "0.0001", "1", "1", "2900000", "1160000", "5", 75, "0.6"),
    _rules("DOGE", "0.00001", "1", "1", "31000000", "12400000", "5", 75, "0.15"),
    _rules("ADA", "0.0001", "1", "1", "4700000", "1880000", "5", 75, "0.45"),
    _rules("LINK", "0.001", "0.1", "0.1", "160000", "64000", "5", 75, "15"),
    _rules("AVAX", "0.001", "0.1", "0.1", "60000", "24000", "5", 75, "30"),
    _rules("LTC", "0.01", "0.1", "0.1", "35000", "14000", "5", 75, "80"),
    _rules("BNB", "0.01", "0.01", "0.01", "2000", "800", "5", 75, "580"),
)


# maxLmtSz of every OKX swap, in contracts.
OKX_MAX_LIMIT_SIZE = Decimal(100_000_000)


def _okx_swap(
    base: str,
    contract_value: str,
    tick: str,
    lot: str,
    min_size: str,
    max_market_size: str,
    max_leverage: int,
    price: str,
) -> MarketRules:
    """An OKX USDT swap from its instrument fields (sizes in contracts)."""
    contract_size = Decimal(contract_value)
    return MarketRules(
        symbol=f"{base}/USDT:USDT",
        market_id=f"{base}-USDT-SWAP",
        base=base,
        tick_size=Decimal(tick),
        step_size=(Decimal(lot) * contract_size).normalize(),
        min_qty=(Decimal(min_size) * contract_size).normalize(),
        max_qty=(OKX_MAX_LIMIT_SIZE * contract_size).normalize(),
        max_market_qty=(Decimal(max_market_size) * contract_size).normalize(),
        # OKX swaps have no minimum order value, only a minimum size.
        min_notional=Decimal(0),
        max_leverage=max_leverage,
        default_price=Decimal(price),
        contract_size=contract_size,
    )


# OKX v5 SWAP instruments (ctVal, tickSz, lotSz, minSz, maxMktSz, lever). Contract
# values and ticks as in ccxt's recorded OKX instruments where it has them (BTC,
# ETH, LTC, ADA, XRP, DOGE); lot and minimum sizes as OKX lists them (that
# recording is older and shows 0.1 contracts for all six).
OKX_MARKETS = (
    _okx_swap("BTC", "0.01", "0.1", "0.01", "0.01", "12000", 100, "65000"),
    _okx_swap("ETH", "0.1", "0.01", "0.01", "0.01", "20000", 100, "3500"),
    _okx_swap("SOL", "1", "0.01", "0.01", "0.01", "10000", 50, "150"),
    _okx_swap("XRP", "100", "0.0001", "0.01", "0.01", "15000", 50, "0.6"),
    _okx_swap("DOGE", "1000", "0.00001", "0.01", "0.01", "12000", 50, "0.15"),
    _okx_swap("ADA", "100", "0.0001", "0.1", "0.1", "10000", 50, "0.45"),
    _okx_swap("LINK", "1", "0.001", "0.01", "0.01", "10000", 50, "15"),
    _okx_swap("AVAX", "1", "0.001", "0.01", "0.01", "10000", 50, "30"),
    _okx_swap("LTC", "1", "0.01", "0.1", "0.1", "10000", 50, "80"),
    _okx_swap("BNB", "0.01", "0.1", "1", "1", "10000", 50, "580"),
)

MARKETS: dict[str, tuple[MarketRules, ...]] = {
    "binance": BINANCE_MARKETS,
    "bybit": BYBIT_MARKETS,
    "okx": OKX_MARKETS,
}


def default_prices() -> dict[str, Decimal]:
    """Unified symbol -> default last price (the same on every exchange)."""
    return {rules.symbol: rules.default_price for rules in BINANCE_MARKETS}
