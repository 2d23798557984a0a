"""Exchange simulator: Binance USDⓈ-M, Bybit v5 and OKX v5 REST, with fault injection.

Real ccxt clients trade against it (the execq gateway routes them here in
``sim`` mode). It never imports ``workers``. Start it with
``python -m exchange_sim --host 127.0.0.1 --port 8765`` or
``exchange_sim.server.main(host, port, seed)``; the admin API, fault plans
and endpoints are described in ``docs/simulator.md``.
"""
