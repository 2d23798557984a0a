"""One module per exchange behind one ``Venue`` protocol (``base.py``).

``VENUES`` maps an account's ``ccxt_class`` to its venue; ``workers.exchange.gateway.venue``
returns the venue of a configured account. A new exchange is a new module here and
an entry below (and its ccxt class name in the settings' account types).
"""

from __future__ import annotations

from workers.exchange.venues.base import Venue
from workers.exchange.venues.binance import BinanceUsdm
from workers.exchange.venues.bybit import Bybit
from workers.exchange.venues.okx import Okx

VENUES: dict[str, type[Venue]] = {venue.ccxt_class: venue for venue in (BinanceUsdm, Bybit, Okx)}

__all__ = ["VENUES", "Venue"]
