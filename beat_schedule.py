"""The periodic sweeps and their intervals (from settings).

Beat runs with the Redis-locked RedBeat scheduler, so a second beat process
only stands by: each sweep is sent once per interval, cluster-wide.
"""

from __future__ import annotations

from typing import Any

from workers.settings import Settings


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "aged-phase-sweep": {
            "task": "aged_phase_sweep",
            "schedule": settings.aged_sweep_interval_s,
            # A sweep older than its interval is stale: the next one supersedes it.
            "options": {"expires": settings.aged_sweep_interval_s},
        },
        "order-tracking-sweep": {
            "task": "order_tracking_sweep",
            "schedule": settings.tracking_sweep_interval_s,
            "options": {"expires": settings.tracking_sweep_interval_s},
        },
        "recovery-sweep": {
            "task": "recovery_sweep",
            "schedule": settings.recovery_sweep_interval_s,
            "options": {"expires": settings.recovery_sweep_interval_s},
        },
    }
