"""The exchange simulator's admin API, as the tests, the demo, bench and chaos use it.

The endpoints are the contract in ARCHITECTURE.md (``/_sim/reset``, ``/_sim/faults``,
``/_sim/prices``, ``/_sim/ledger``, ``/_sim/positions``) plus ``/_sim/stats``. Each
method is one request; a refusal raises ``SimulatorError`` with the simulator's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

from workers.exchange.venues import VENUES

_VENUE_OF_EXCHANGE = {venue.exchange: venue for venue in VENUES.values()}


def exchange_client_id(exchange: str, client_order_id: str) -> str:
    """The client id the simulated ``exchange`` knows execq's order by (the ledger's
    ``clientOrderId``): the venue's ``client_id_for``, e.g. OKX's 32-character form."""
    venue = _VENUE_OF_EXCHANGE.get(exchange)
    return client_order_id if venue is None else venue.client_id_for(client_order_id)


class SimulatorError(RuntimeError):
    """The simulator answered an admin request with an error; the message has its body."""


class SimulatorClient:
    """The admin API of the simulator at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _answer(self, response: requests.Response, path: str) -> Any:
        if response.status_code >= 400:
            raise SimulatorError(
                f"simulator {response.request.method} {path}: "
                f"{response.status_code} {response.text[:300]}"
            )
        return response.json()

    def _post(self, path: str, payload: object | None = None) -> Any:
        response = self.http.post(
            f"{self.base_url}{path}", json=payload or {}, timeout=self.timeout_s
        )
        return self._answer(response, path)

    def _get(self, path: str) -> Any:
        response = self.http.get(f"{self.base_url}{path}", timeout=self.timeout_s)
        return self._answer(response, path)

    # --- state ------------------------------------------------------------------------------

    def reset(self, **options: object) -> dict[str, Any]:
        """Back to the initial books: no orders, no positions, no faults, default prices."""
        return self._post("/_sim/reset", options)

    def faults(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Replace the fault plan (``{}`` lifts every fault)."""
        return self._post("/_sim/faults", plan)

    def fault_rules(self) -> list[dict[str, Any]]:
        """The fault plan's rules as installed, each with how often it ``fired``."""
        return self._get("/_sim/faults").get("rules", [])

    def fired(self) -> dict[str, int]:
        """How often each fault kind fired (rules of one kind added up)."""
        counts: dict[str, int] = {}
        for rule in self.fault_rules():
            counts[rule["kind"]] = counts.get(rule["kind"], 0) + int(rule.get("fired", 0))
        return counts

    def prices(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Set or walk prices: one change, or ``{"prices": [change, ...]}``."""
        return self._post("/_sim/prices", payload)

    def set_prices(self, changes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.prices({"prices": list(changes)})

    def current_prices(self) -> dict[str, dict[str, str]]:
        """exchange -> symbol -> last price."""
        return self._get("/_sim/prices")["prices"]

    def price(self, exchange: str, symbol: str) -> str:
        return self.current_prices()[exchange][symbol]

    def set_position(
        self, exchange: str, symbol: str, size: str, entry_price: str | None = None
    ) -> dict[str, Any]:
        """Open, change or close a position by hand, outside execq."""
        body = {"exchange": exchange, "symbol": symbol, "size": size}
        if entry_price is not None:
            body["entryPrice"] = entry_price
        return self._post("/_sim/positions", body)

    # --- what the exchange saw ----------------------------------------------------------------

    def ledger(self) -> list[dict[str, Any]]:
        """Every order the exchanges accepted (exchange, clientOrderId, side, amount, ...)."""
        body = self._get("/_sim/ledger")
        return body["orders"] if isinstance(body, dict) else body

    def orders_for(self, client_order_id: str) -> list[dict[str, Any]]:
        """The ledger's orders of execq's ``client_order_id``, on whichever exchange."""
        return [
            row
            for row in self.ledger()
            if row["clientOrderId"] == exchange_client_id(row["exchange"], client_order_id)
        ]

    def positions(self) -> list[dict[str, Any]]:
        """The exchanges' open positions."""
        body = self._get("/_sim/positions")
        return body["positions"] if isinstance(body, dict) else body

    def streams(self) -> dict[str, Any]:
        """The stream port's view: its connections and the messages by exchange, stream and fate."""
        return self._get("/_sim/streams")

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests served: {"binance": {"create_order": n, ...}, ...}."""
        return self._get("/_sim/stats")["requests"]

    def calls(self, exchange: str, operation: str) -> int:
        return self.stats().get(exchange, {}).get(operation, 0)
