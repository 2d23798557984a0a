"""Beat sweeps: aged_phase_sweep (every few seconds) and recovery_sweep (every minute).

A sweep that is still running when the next one fires makes the newcomer
return at once (a Redis lock per sweep), and beat sends each sweep with an
expiry of one interval, so sweeps never pile up behind each other. The aged
sweep's lock is short and renewed while the sweep runs: a worker killed
mid-sweep holds the aged sweeps up for at most 1.5 intervals.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from workers import redis_keys
from workers.app import app
from workers.coordination import kept_alive, reconcile_kill_switch, try_lock
from workers.flows.aged_sweep import sweep_aged
from workers.flows.recovery import run_recovery
from workers.flows.tracking import track_orders
from workers.observability import metrics
from workers.redis_client import get_redis
from workers.settings import get_settings


def mark_sweep_run(name: str) -> None:
    get_redis().set(redis_keys.sweep_last_run(name), datetime.now(UTC).isoformat())


@app.task(name="aged_phase_sweep")
def aged_phase_sweep() -> dict[str, Any]:
    settings = get_settings()
    ttl_s = settings.aged_sweep_lock_ttl_s
    lock = try_lock(redis_keys.sweep_lock("aged"), ttl_s)
    if lock is None:
        return {"skipped": "previous aged sweep still running"}
    try:
        with kept_alive(lock, ttl_s, every_s=ttl_s / 3), metrics.time_sweep("aged"):
            report = sweep_aged(settings)
        metrics.set_aged_phase_counts(report.by_phase)
        for aged_id in report.closes_enqueued:
            app.send_task("close_aged_position", kwargs={"aged_id": aged_id})
        mark_sweep_run("aged")
        return {
            "positions": report.positions,
            "detected": report.detected,
            "phase_changes": report.phase_changes,
            "closes_enqueued": report.closes_enqueued,
            "by_phase": report.by_phase,
            "actions": report.actions,
        }
    finally:
        lock.release()


@app.task(name="order_tracking_sweep")
def order_tracking_sweep() -> dict[str, Any]:
    """Follow resting orders and orders in doubt that no run is working on
    (see workers.flows.tracking)."""
    settings = get_settings()
    lock = try_lock(
        redis_keys.sweep_lock("tracking"), max(30.0, settings.tracking_sweep_interval_s * 5)
    )
    if lock is None:
        return {"skipped": "previous tracking sweep still running"}
    try:
        with metrics.time_sweep("tracking"):
            counts = track_orders(settings)
        mark_sweep_run("tracking")
        return dict(counts)
    finally:
        lock.release()


@app.task(name="recovery_sweep")
def recovery_sweep() -> dict[str, Any]:
    """Reconcile orders and positions with the exchange (see workers.flows.recovery)."""
    settings = get_settings()
    lock = try_lock(
        redis_keys.sweep_lock("recovery"), max(120.0, settings.recovery_sweep_interval_s * 2)
    )
    if lock is None:
        return {"skipped": "previous recovery sweep still running"}
    try:
        # Redis's copy of the kill switch, checked against Postgres's once a sweep.
        reconcile_kill_switch()
        with metrics.time_sweep("recovery"):
            counts = run_recovery(settings)
        mark_sweep_run("recovery")
        return counts
    finally:
        lock.release()
