"""Beat's scheduler: RedBeat's, made to outlive Redis errors.

RedBeat keeps the schedule in Redis and holds a lock there, so that a second
beat only stands by. Its own scheduler lets any Redis error out of beat's loop
(the lock's renewal raises first), and beat exits: under a bare
``celery -A workers beat`` nothing sent a sweep again after Redis restarted.
This one, named by ``beat_scheduler`` in ``workers.app``:

- takes and renews the lock on every tick without blocking: a beat without the
  lock stands by and tries again next tick; one that lost it (Redis restarted
  without its data, or a standby took over while this one stalled) takes it
  again or stands by;
- answers a Redis error with a longer wait before the next tick (0.5 s,
  doubling to 5 s) instead of an exception, with one warning per outage;
- installs the schedule again after an outage and whenever it takes the lock,
  because a Redis that restarted without persistence lost it with everything
  else (installing keeps the last run times that survived).

The lock has RedBeat's key (``<redbeat_key_prefix>:lock``) and expiry
(``redbeat_lock_timeout``), so a standby takes over as before.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from redbeat.schedulers import RedBeatScheduler, get_redis

logger = logging.getLogger("celery.beat")

# Redis unreachable, restarting, loading its data or too slow: all pass.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Scheduler(RedBeatScheduler):
    #: Seconds before the tick after a Redis error, doubled for each error in a row.
    retry_base_s = 0.5
    #: The longest wait between ticks while Redis fails: sweeps resume this soon after.
    retry_cap_s = 5.0

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._schedule_installed = False
        self._failed_ticks = 0
        self._standing_by = False
        super().__init__(app, *args, **kwargs)
        # RedBeat's ``beat_init`` handler takes the lock with a blocking acquire, and a
        # Redis error there left beat without one for good. With ``lock_key`` unset the
        # handler and RedBeat's own tick leave the lock to ``_hold_lock``.
        self.beat_lock_key = self.lock_key
        self.lock_key = None

    def setup_schedule(self) -> None:
        try:
            super().setup_schedule()
        except REDIS_ERRORS as exc:
            # Beat starts anyway; the first tick with Redis back installs the schedule.
            logger.warning("beat: Redis unavailable, schedule not installed yet: %s", exc)
            self._schedule_installed = False
        else:
            self._schedule_installed = True

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due; returns the seconds until the next tick."""
        try:
            if not self._hold_lock():
                return self.max_interval
            if not self._schedule_installed:
                super().setup_schedule()
                self._schedule_installed = True
            interval = super().tick(*args, **kwargs)
        except REDIS_ERRORS as exc:
            return self._wait_after(exc)
        if self._failed_ticks:
            logger.info("beat: Redis is back after %d failed ticks", self._failed_ticks)
            self._failed_ticks = 0
        return interval

    def _hold_lock(self) -> bool:
        """Renew the lock, or take it; False while another beat holds it."""
        if self.lock is not None:
            try:
                self.lock.extend(self.lock_timeout, replace_ttl=True)
                return True
            except redis.exceptions.LockNotOwnedError:
                logger.warning(
                    "beat: lost the lock %s (Redis lost it, or another beat took over)",
                    self.beat_lock_key,
                )
                self.lock = None
        lock = get_redis(self.app).lock(
            self.beat_lock_key, timeout=self.lock_timeout, blocking=False
        )
        if not lock.acquire(blocking=False):
            if not self._standing_by:
                logger.info("beat: another beat holds %s; standing by", self.beat_lock_key)
                self._standing_by = True
            return False
        logger.info("beat: Acquired lock")
        self.lock = lock
        self._standing_by = False
        self._schedule_installed = False
        return True

    def _wait_after(self, exc: Exception) -> float:
        self._failed_ticks += 1
        # Whatever Redis held may be gone when it comes back: install the schedule again.
        self._schedule_installed = False
        wait_s = min(self.retry_cap_s, self.retry_base_s * 2 ** (self._failed_ticks - 1))
        log = logger.warning if self._failed_ticks == 1 else logger.debug
        log("beat: Redis unavailable (%s: %s); next try in %.1fs", type(exc).__name__, exc, wait_s)
        return wait_s

    def close(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            try:
                if lock.owned():
                    lock.release()
                    logger.info("beat: Released lock")
            except (*REDIS_ERRORS, redis.exceptions.LockError) as exc:
                # It expires by itself after redbeat_lock_timeout.
                logger.warning("beat: lock not released: %s", exc)
        super().close()

    @property
    def info(self) -> str:
        lock = f"       . lock -> `{self.beat_lock_key}` ({self.lock_timeout}s)"
        return f"{super().info}\n{lock}"
