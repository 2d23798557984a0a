"""The reference tasks of ``execq bench``: what an order costs measured against them."""

from __future__ import annotations

from decimal import Decimal

from workers.app import app
from workers.exchange import gateway
from workers.exchange.venues.base import OrderRequest
from workers.settings import ExchangeAccount, get_settings


class NotSimulated(Exception):
    """A bench task was sent for an account that trades on a real exchange."""


@app.task(name="noop")
def noop() -> None:
    """Do nothing. Its result is stored like every task's, so the baseline pays the same
    broker and result-backend round trips as an order task, and nothing else."""
    return None


@app.task(name="bench_create_only")
def create_only(account: str, symbol: str, amount: str, client_order_id: str) -> None:
    """The floor of an order task: Celery plus the one ccxt create no order can skip
    (through the shared rate limiter, as every exchange request goes), and nothing
    of execq's own: no validation, no intent, no lock, no events, no booking.

    Not an order path: it sends without an intent, a kill-switch check or a
    record, so it refuses every account that is not simulated.
    """
    refuse_unless_simulated(get_settings().account(account))
    gateway.venue(account).create_order(
        OrderRequest(
            symbol=symbol,
            order_type="market",
            side="buy",
            amount=Decimal(amount),
            price=None,
            client_order_id=client_order_id,
            reduce_only=False,
            time_in_force=None,
        )
    )


def refuse_unless_simulated(account: ExchangeAccount) -> None:
    if account.mode != "sim":
        raise NotSimulated(
            f"bench_create_only places untracked orders; account {account.name!r} "
            f"is in mode {account.mode!r}, and only 'sim' accounts may take them"
        )
