"""emergency_liquidate_all: the big red button (kill switch + close everything)."""

from __future__ import annotations

from typing import Any

from workers.app import RETRY_ON_INFRASTRUCTURE, app
from workers.coordination import LockNotAcquired
from workers.flows.liquidation import liquidate_all, new_liquidation_id
from workers.settings import get_settings


@app.task(name="emergency_liquidate_all", bind=True, max_retries=30, **RETRY_ON_INFRASTRUCTURE)
def emergency_liquidate_all(
    self: Any, reason: str, liquidation_id: str | None = None
) -> dict[str, Any]:
    """Turn the kill switch on and close every open position; the switch stays on."""
    # The id is fixed at the first run so a redelivery continues the same closes.
    liquidation_id = liquidation_id or self.request.id or new_liquidation_id()
    try:
        return liquidate_all(liquidation_id, reason, get_settings())
    except LockNotAcquired:
        # Another liquidation is running: wait for it, then find nothing left to close.
        raise self.retry(
            countdown=2.0, kwargs={"reason": reason, "liquidation_id": liquidation_id}
        ) from None
