"""The exchanges' WebSocket streams, served on the simulator's stream port.

Binance USDⓈ-M under ``/binance`` (``binance.py``) and Bybit v5 under ``/bybit``
(``bybit.py``), as the real ``ccxt.pro.binanceusdm`` and ``ccxt.pro.bybit``
classes speak them. The hub (``hub.py``) listens to the matching engine
(``Exchange.listeners``), fans messages out to the connections and applies the
stream faults of the fault plan. URLs, settings and faults: docs/simulator.md.
"""

from exchange_sim.streams.connection import StreamSettings
from exchange_sim.streams.hub import StreamHub, create_stream_app

__all__ = ["StreamHub", "StreamSettings", "create_stream_app"]
