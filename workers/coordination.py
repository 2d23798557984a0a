"""Redis coordination: the kill switch and expiring locks.

Locks are ``SET NX PX`` with a random token and released by a compare-and-
delete script, so a holder whose lock expired cannot release someone else's.
A long holder keeps a short lock alive with ``kept_alive`` (compare-and-
expire): a killed holder stops renewing it, and it expires soon after.
A lock is advisory: every write is also guarded in Postgres (row locks and the
order transition table), so a stale holder cannot overwrite a newer state.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from workers import redis_keys
from workers.observability import metrics
from workers.redis_client import get_redis

logger = logging.getLogger("execq.coordination")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LockNotAcquired(Exception):
    """Someone else holds the lock; the caller should come back later."""

    def __init__(self, key: str) -> None:
        super().__init__(f"lock busy: {key}")
        self.key = key


@dataclass
class Lock:
    key: str
    token: str
    client: redis.Redis

    def release(self) -> bool:
        return bool(self.client.eval(_RELEASE, 1, self.key, self.token))

    def extend(self, ttl_s: float) -> bool:
        """Give the lock ``ttl_s`` more from now; False when it is no longer ours."""
        return bool(self.client.eval(_EXTEND, 1, self.key, self.token, int(ttl_s * 1000)))


def try_lock(key: str, ttl_s: float, client: redis.Redis | None = None) -> Lock | None:
    client = client or get_redis()
    token = secrets.token_hex(16)
    if client.set(key, token, nx=True, px=int(ttl_s * 1000)):
        return Lock(key, token, client)
    return None


@contextmanager
def held_lock(key: str, ttl_s: float) -> Iterator[Lock]:
    """Hold ``key`` for the block; raise LockNotAcquired when it is taken."""
    lock = try_lock(key, ttl_s)
    if lock is None:
        raise LockNotAcquired(key)
    try:
        yield lock
    finally:
        lock.release()


class KeepAlive:
    """A daemon thread renewing a lock to ``ttl_s`` every ``every_s`` until stopped.

    Stops by itself when the lock is no longer ours (it expired while the
    process stalled, and someone else may hold it now): the holder's work
    must be safe without it anyway, since every write is guarded in Postgres.
    """

    def __init__(self, lock: Lock, ttl_s: float, every_s: float) -> None:
        if not 0 < every_s < ttl_s:
            raise ValueError("renew more often than the lock's lifetime: 0 < every_s < ttl_s")
        self.lock = lock
        self.ttl_s = ttl_s
        self.every_s = every_s
        self.renewals = 0
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"keep-alive {lock.key}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                extended = self.lock.extend(self.ttl_s)
            except redis.RedisError as exc:
                # The next renewal may get through before the lock expires.
                logger.warning("renewing %s failed: %s", self.lock.key, exc)
                continue
            if not extended:
                self.lost = True
                logger.warning("lock %s expired before it was renewed", self.lock.key)
                return
            self.renewals += 1

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 1)


@contextmanager
def kept_alive(lock: Lock, ttl_s: float, every_s: float) -> Iterator[KeepAlive]:
    """Renew ``lock`` while the block runs; the caller still releases it."""
    keeper = KeepAlive(lock, ttl_s, every_s).start()
    try:
        yield keeper
    finally:
        keeper.stop()


def lock_holder_exists(key: str) -> bool:
    return bool(get_redis().exists(key))


# --- kill switch ----------------------------------------------------------------------


@dataclass(frozen=True)
class KillSwitchState:
    on: bool
    reason: str | None = None
    since: datetime | None = None


def kill_switch_state() -> KillSwitchState:
    return kill_switch_from(get_redis().get(redis_keys.KILL_SWITCH))


def kill_switch_from(raw: bytes | str | None) -> KillSwitchState:
    """The state the kill-switch key's value ``raw`` (as read, None when absent) stands for."""
    metrics.set_kill_switch(raw is not None)
    if raw is None:
        return KillSwitchState(on=False)
    data = json.loads(raw)
    return KillSwitchState(
        on=True, reason=data.get("reason"), since=datetime.fromisoformat(data["since"])
    )


def set_kill_switch(on: bool, reason: str | None = None) -> KillSwitchState:
    """Turn the cluster-wide kill switch on or off; returns the new state.

    The key has no expiry: a kill switch must stay on until a person turns it off.
    """
    client = get_redis()
    metrics.set_kill_switch(on)
    if not on:
        client.delete(redis_keys.KILL_SWITCH)
        return KillSwitchState(on=False)
    since = datetime.now(UTC)
    client.set(
        redis_keys.KILL_SWITCH,
        json.dumps({"reason": reason or "manual", "since": since.isoformat()}),
    )
    return KillSwitchState(on=True, reason=reason or "manual", since=since)
