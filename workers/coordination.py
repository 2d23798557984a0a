"""Redis coordination: the kill switch (durable in Postgres) and expiring locks.

Locks are ``SET NX PX`` with a random token and released by a compare-and-
delete script, so a holder whose lock expired cannot release someone else's.
A long holder keeps a short lock alive with ``kept_alive`` (compare-and-
expire): a killed holder stops renewing it, and it expires soon after.
A lock is advisory: every write is also guarded in Postgres (row locks and the
order transition table), so a stale holder cannot overwrite a newer state.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from workers import redis_keys
from workers.redis_client import get_redis
from workers.store.db import session_scope
from workers.store.events import record_event
from workers.store.kill_switch import load_kill_switch, save_kill_switch
from workers.store.models import KillSwitch

logger = logging.getLogger("execq.coordination")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Release, and say whether KEYS[2] exists: what the holder must look at right after
# letting go, in the same round trip.
_RELEASE_AND_PEEK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return redis.call('EXISTS', KEYS[2])
"""

_EXTEND = """
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

    def release_peeking(self, key: str) -> bool:
        """Release the lock; whether ``key`` exists, read in the same round trip."""
        return bool(self.client.eval(_RELEASE_AND_PEEK, 2, self.key, key, self.token))

    def remaining_ms(self) -> int:
        return self.expires_at_ms - now_ms()

    def extend(self, ttl_s: float | None = None) -> bool:
        """Give the lock ``ttl_s`` (default: its own lifetime) more from now; False when it
        is no longer ours (expired, or taken by someone else)."""
        ttl_ms = self.ttl_ms if ttl_s is None else int(ttl_s * 1000)
        started = now_ms()
        if self.client.eval(_EXTEND, 1, self.key, self.token, ttl_ms):
            self.expires_at_ms = started + ttl_ms
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
#
# Postgres holds the switch's state (``kill_switch``, written in the transaction of its
# ``kill_switch_on``/``kill_switch_off`` event); Redis holds the copy every order reads,
# as JSON with an explicit ``"on"``. A missing key is never "off": Redis lost it (a
# restart without persistence, a flush) or the switch was never set, and the state is
# read from Postgres and written back. A writer deletes the key before its transaction
# and sets it after, so while it writes, and if Redis fails after it committed, readers
# ask Postgres; a reader writes back only over the value it saw (``_REPLACE_IF``), so it
# never overwrites a newer state with an older one.

logger = logging.getLogger("execq.kill_switch")

_REPLACE_IF = """
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '1' and not current) or (ARGV[1] == '0' and current == ARGV[2]) then
    redis.call('SET', KEYS[1], ARGV[3])
    return 1
end
return 0
"""


@dataclass(frozen=True)
class KillSwitchState:
    on: bool
    reason: str | None = None
    since: datetime | None = None
    # Who set it: the operator's user@host, or the liquidation that turned it on.
    set_by: str | None = None

    def encoded(self) -> str:
        """The Redis value."""
        return json.dumps(
            {
                "on": self.on,
                "reason": self.reason,
                "since": self.since.isoformat() if self.since else None,
                "set_by": self.set_by,
            }
        )

    @classmethod
    def decoded(cls, raw: str | bytes) -> KillSwitchState | None:
        """The state a Redis value stands for; None when it is not one."""
        try:
            data = json.loads(raw)
            since = datetime.fromisoformat(data["since"]) if data.get("since") else None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(data, dict):
            return None
        # Without "on" the value was written when only an engaged switch had a key.
        return cls(
            on=bool(data.get("on", True)),
            reason=data.get("reason"),
            since=since,
            set_by=data.get("set_by"),
        )


def kill_switch_state() -> KillSwitchState:
    """The cluster-wide kill switch (one Redis GET; Postgres when Redis lost it)."""
    return kill_switch_from(get_redis().get(redis_keys.KILL_SWITCH))


@dataclass(frozen=True)
class SendGuard:
    """What may stop a create from leaving: the kill switch, and an account whose key the
    exchange refused (``account_refused`` says why, None when it is usable). Read with
    them: whether a stream holder holds the account (it may hand the run order updates)."""

    kill_switch: KillSwitchState
    account_refused: str | None
    streams_held: bool = True


def _guard_keys(account: str) -> tuple[str, str, str]:
    return (
        redis_keys.KILL_SWITCH,
        redis_keys.account_refused(account),
        redis_keys.stream_lease(account),
    )


def send_guard(account: str) -> SendGuard:
    """The kill switch, the account's refusal and its stream holder, in one round trip."""
    return send_guard_from(*get_redis().mget(*_guard_keys(account)))


def queue_send_guard_read(pipe: redis.client.Pipeline, account: str) -> None:
    """Queue on ``pipe`` the read ``send_guard_from`` takes the reply of (a caller that
    reads other keys in the same round trip)."""
    pipe.mget(*_guard_keys(account))


def send_guard_from(
    kill_raw: bytes | str | None,
    refused: bytes | str | None,
    stream_holder: bytes | str | None = None,
) -> SendGuard:
    """The guard the keys' values (as read) stand for."""
    if isinstance(refused, bytes):
        refused = refused.decode()
    return SendGuard(kill_switch_from(kill_raw), refused, streams_held=stream_holder is not None)


def refuse_account(account: str, reason: str) -> None:
    """Refuse every further order on ``account`` until a request with its key succeeds."""
    get_redis().set(redis_keys.account_refused(account), reason[:500])


def account_works(account: str) -> bool:
    """Clear the account's refusal after a request with its key succeeded; True when one was
    cleared."""
    return bool(get_redis().delete(redis_keys.account_refused(account)))


def kill_switch_from(raw: bytes | str | None) -> KillSwitchState:
    """The state the kill-switch key's value ``raw`` (as read, None when absent) stands for.

    An absent or unreadable value is read from Postgres and written back to Redis
    (``restore_kill_switch``): this may do I/O. Raises Postgres and Redis errors.
    """
    if raw is not None:
        state = KillSwitchState.decoded(raw)
        if state is not None:
            return state
        logger.warning("unreadable kill-switch value in Redis %r; reading Postgres", raw)
    return restore_kill_switch(seen=raw)


def restore_kill_switch(seen: bytes | str | None = None) -> KillSwitchState:
    """The durable state, written back to Redis unless the key changed from ``seen``."""
    state = _durable(load_kill_switch())
    if _replace_if(seen, state) and state.on:
        logger.warning("kill switch restored into Redis from Postgres: on (%s)", state.reason)
        _record_restored(state)
    return state


def _record_restored(state: KillSwitchState) -> None:
    with session_scope() as session:
        record_event(
            session,
            "kill_switch_restored",
            payload={"on": state.on, "reason": state.reason, "set_by": state.set_by},
        )


def set_kill_switch(
    on: bool,
    reason: str | None = None,
    *,
    set_by: str | None = None,
    payload: dict[str, Any] | None = None,
) -> KillSwitchState:
    """Turn the cluster-wide kill switch on or off; returns the new state.

    Writes the state and its ``kill_switch_on`` / ``kill_switch_off`` event (with
    ``payload`` added) in one Postgres transaction, then the Redis copy, which
    never expires: a kill switch stays on until a person turns it off. ``set_by``
    defaults to this process's user@host. Raises Redis and Postgres errors; when
    either is unreachable the switch keeps its state, or (Redis failing after the
    commit) the new state is read from Postgres.
    """
    state = KillSwitchState(
        on=on,
        reason=reason or ("manual" if on else None),
        since=datetime.now(UTC),
        set_by=set_by or _this_user(),
    )
    client = get_redis()
    client.delete(redis_keys.KILL_SWITCH)
    with session_scope() as session:
        save_kill_switch(
            session,
            engaged=state.on,
            reason=state.reason,
            since=state.since,
            set_by=state.set_by,
        )
        record_event(
            session,
            "kill_switch_on" if on else "kill_switch_off",
            payload={"reason": state.reason, "set_by": state.set_by, **(payload or {})},
        )
    client.set(redis_keys.KILL_SWITCH, state.encoded())
    return state


def reconcile_kill_switch() -> KillSwitchState:
    """Make Redis's copy say what Postgres says; returns the state.

    A copy that differs was written around the durable state (by hand, or by a
    writer Redis failed under); Postgres wins. A switch engaged in Redis that
    Postgres has no row for (set before the state was durable) is adopted.
    """
    raw = get_redis().get(redis_keys.KILL_SWITCH)
    copy = KillSwitchState.decoded(raw) if raw is not None else None
    if copy is None:
        return restore_kill_switch(seen=raw)
    row = load_kill_switch()
    if row is None:
        if copy.on:
            return set_kill_switch(True, copy.reason, set_by=copy.set_by, payload={"adopted": True})
        return copy
    durable = _durable(row)
    if copy != durable:
        _replace_if(raw, durable)
        logger.warning(
            "kill switch in Redis (%s) differed from Postgres (%s); Postgres kept",
            "on" if copy.on else "off",
            "on" if durable.on else "off",
        )
    return durable


def _durable(row: KillSwitch | None) -> KillSwitchState:
    if row is None:
        return KillSwitchState(on=False)
    return KillSwitchState(row.engaged, row.reason, row.since, row.set_by)


def _replace_if(seen: bytes | str | None, state: KillSwitchState) -> bool:
    """Write ``state`` to Redis if the key still holds ``seen`` (None: is still absent)."""
    return bool(
        get_redis().eval(
            _REPLACE_IF,
            1,
            redis_keys.KILL_SWITCH,
            "1" if seen is None else "0",
            "" if seen is None else seen,
            state.encoded(),
        )
    )


def _this_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
