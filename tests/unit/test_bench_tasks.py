"""The bench's floor task places orders outside execq's order path: simulator only."""

from __future__ import annotations

import pytest

from workers.harness.tasks import NotSimulated, refuse_unless_simulated
from workers.settings import ExchangeAccount


@pytest.mark.parametrize("mode", ["live", "demo", "testnet"])
def test_the_floor_task_refuses_an_account_on_a_real_exchange(mode):
    account = ExchangeAccount(
        name="main", ccxt_class="bybit", mode=mode, api_key="key", secret="secret"
    )
    with pytest.raises(NotSimulated, match=f"mode '{mode}'"):
        refuse_unless_simulated(account)


def test_the_floor_task_accepts_a_simulated_account():
    refuse_unless_simulated(ExchangeAccount(name="binance", ccxt_class="binanceusdm"))
