"""Redis coordination: the kill switch and expiring locks.

Locks are ``SET NX PX`` with a random token and released by a compare-and-
delete script, so a holder whose lock expired cannot release someone else's.
A lock is advisory: every write is also guarded in Postgres (row locks and the
order transition table), so a stale holder cannot overwrite a newer state.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from workers import redis_keys
from workers.observability import metrics
from workers.redis_client import get_redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def now_ms() -> int:
    """Wall-clock milliseconds: leases are compared with the exchange's clock."""
    return int(time.time() * 1000)


class LockNotAcquired(Exception):
    """Someone else holds the lock; the caller should come back later."""

    def __init__(self, key: str) -> None:
        super().__init__(f"lock busy: {key}")
        self.key = key


@dataclass
class Lock:
    """A held lock. ``expires_at_ms`` is a lower bound of its expiry in wall-clock time (taken
    before the request that set it), so a holder never believes it holds it longer than it does."""

    key: str
    token: str
    client: redis.Redis
    ttl_ms: int = 0
    expires_at_ms: int = 0

    def release(self) -> bool:
        return bool(self.client.eval(_RELEASE, 1, self.key, self.token))

    def remaining_ms(self) -> int:
        return self.expires_at_ms - now_ms()

    def renew(self) -> bool:
        """Extend the lock to a full lifetime from now; False when it was lost (expired,
        or taken by someone else), and then it is not ours any more."""
        started = now_ms()
        if self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            self.expires_at_ms = started + self.ttl_ms
            return True
        self.expires_at_ms = 0
        return False


def try_lock(key: str, ttl_s: float, client: redis.Redis | None = None) -> Lock | None:
    client = client or get_redis()
    token = secrets.token_hex(16)
    ttl_ms = int(ttl_s * 1000)
    started = now_ms()
    if client.set(key, token, nx=True, px=ttl_ms):
        return Lock(key, token, client, ttl_ms, started + ttl_ms)
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


@dataclass(frozen=True)
class SendGuard:
    """What may stop a create from leaving: the kill switch, and an account whose key the
    exchange refused (``account_refused`` says why, None when it is usable)."""

    kill_switch: KillSwitchState
    account_refused: str | None


def send_guard(account: str) -> SendGuard:
    """The kill switch and the account's refusal, in one round trip."""
    kill_raw, refused = get_redis().mget(
        redis_keys.KILL_SWITCH, redis_keys.account_refused(account)
    )
    return SendGuard(kill_switch_from(kill_raw), refused)


def refuse_account(account: str, reason: str) -> None:
    """Refuse every further order on ``account`` until a request with its key succeeds."""
    get_redis().set(redis_keys.account_refused(account), reason[:500])


def account_works(account: str) -> bool:
    """Clear the account's refusal after a request with its key succeeded; True when one was
    cleared."""
    return bool(get_redis().delete(redis_keys.account_refused(account)))


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
