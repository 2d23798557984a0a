"""Exchange simulator: Binance USDⓈ-M, Bybit v5 and OKX v5 REST, Binance and Bybit
WebSocket streams, with fault injection.

Real ccxt clients trade against it (the execq gateway routes them here in
``sim`` mode), and real ccxt.pro clients watch its streams (``streams/``). It
never imports ``workers``. Start it with
``python -m exchange_sim --host 127.0.0.1 --port 8765 --ws-port 8766`` or
``exchange_sim.server.main(host, port, seed, ws_port)``; the admin API, fault
plans, endpoints and streams are described in ``docs/simulator.md``.
"""
