"""``python -m exchange_sim --host H --port P [--seed N] [--ws-port W]``."""

from __future__ import annotations

import argparse
from dataclasses import replace

from exchange_sim.server import main
from exchange_sim.streams import StreamSettings
from exchange_sim.streams.connection import LISTEN_KEY_VALIDITY_S


def _credential(text: str) -> tuple[str, str]:
    key, sep, secret = text.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError("expected KEY:SECRET")
    return key, secret


def run() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m exchange_sim",
        description="Simulated Binance USDⓈ-M and Bybit v5 REST APIs and WebSocket streams "
        "with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8765, help="TCP port")
    parser.add_argument("--seed", type=int, default=None, help="seed for ids, walks and faults")
    parser.add_argument(
        "--ws-port",
        type=int,
        default=None,
        help="TCP port of the WebSocket streams (/binance/..., /bybit/...); none by default",
    )
    parser.add_argument(
        "--listen-key-validity-s",
        type=float,
        default=LISTEN_KEY_VALIDITY_S,
        help="lifetime of a Binance listen key without a keep-alive (Binance: 3600)",
    )
    parser.add_argument(
        "--credential",
        type=_credential,
        action="append",
        metavar="KEY:SECRET",
        help="an API key and its secret for Bybit's stream auth (repeatable; "
        "default sim-key:sim-secret, the gateway's keys in sim mode)",
    )
    args = parser.parse_args()
    settings = StreamSettings(listen_key_validity_s=args.listen_key_validity_s)
    if args.credential:
        settings = replace(settings, credentials=dict(args.credential))
    main(args.host, args.port, args.seed, args.ws_port, settings)


if __name__ == "__main__":
    run()
