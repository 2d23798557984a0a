"""``python -m exchange_sim --host H --port P [--seed N]``."""

from __future__ import annotations

import argparse

from exchange_sim.server import main


def run() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m exchange_sim",
        description="Simulated Binance USDⓈ-M and Bybit v5 REST APIs with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8765, help="TCP port")
    parser.add_argument("--seed", type=int, default=None, help="seed for ids, walks and faults")
    args = parser.parse_args()
    main(args.host, args.port, args.seed)


if __name__ == "__main__":
    run()
