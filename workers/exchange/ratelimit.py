"""One request budget per exchange account, shared by every worker (GCRA in Lua).

ccxt's own throttle is per client instance, so N workers with 32 threads each
would send 32·N times the exchange's limit. Here every request draws weight
from one Redis key per account; a 429/418 sets a cooldown key that every
worker honours before its next request. The clock is Redis's own ``TIME`` so
workers on different hosts agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from workers import redis_keys
from workers.exchange.errors import Throttled
from workers.redis_client import get_redis
from workers.retrying import wait_for_grant

logger = logging.getLogger("execq.ratelimit")

# Returns 0 when the request may go now, else the milliseconds to wait.
_GCRA = """
local cooldown = redis.call('PTTL', KEYS[2])
if cooldown > 0 then
    return cooldown
end
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval_ms = tonumber(ARGV[1])
local burst_ms = tonumber(ARGV[2])
local increment = interval_ms * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
    tat = now
end
local new_tat = tat + increment
local allow_at = new_tat - burst_ms
if allow_at > now then
    return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now + burst_ms) + 1000)
return 0
"""


@dataclass(frozen=True)
class RateLimit:
    per_s: float
    burst: float

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.per_s

    @property
    def burst_ms(self) -> float:
        return self.interval_ms * self.burst


def take_from_bucket(
    client: redis.Redis, bucket_key: str, cooldown_key: str, limit: RateLimit, weight: int = 1
) -> float:
    """Take ``weight`` from the budget at ``bucket_key`` (GCRA on Redis's clock, held back
    while ``cooldown_key`` lives); 0.0 when granted, else seconds to wait."""
    wait_ms = client.eval(
        _GCRA, 2, bucket_key, cooldown_key, limit.interval_ms, limit.burst_ms, weight
    )
    return int(wait_ms) / 1000.0


def try_acquire(account: str, limit: RateLimit, weight: int = 1) -> float:
    """Take ``weight`` from the account's budget; 0.0 when granted, else seconds to wait."""
    return take_from_bucket(
        get_redis(),
        redis_keys.rate_limit_bucket(account),
        redis_keys.rate_limit_cooldown(account),
        limit,
        weight,
    )


def acquire(account: str, limit: RateLimit, weight: int = 1, max_wait_s: float = 30.0) -> float:
    """Block until the request may go; returns the seconds waited.

    Raises ``Throttled`` (never sent) instead of waiting past ``max_wait_s``, so a
    task can go back to the queue rather than sit on a worker thread.
    """
    granted, seconds = wait_for_grant(
        lambda: try_acquire(account, limit, weight), max_wait_s=max_wait_s
    )
    if not granted:
        raise Throttled(f"rate limit for {account}: next slot in {seconds:.2f}s", wait_s=seconds)
    return seconds


def set_cooldown(account: str, seconds: float) -> None:
    """Every worker waits ``seconds`` before its next request to this account (429/418)."""
    milliseconds = max(1, int(seconds * 1000))
    client = get_redis()
    key = redis_keys.rate_limit_cooldown(account)
    # Keep the longer of an existing and the new cooldown.
    current = client.pttl(key)
    if current < milliseconds:
        client.set(key, "1", px=milliseconds)
    logger.warning("rate limited on %s: all workers pause %.2fs", account, seconds)


def cooldown_remaining_s(account: str) -> float:
    pttl = get_redis().pttl(redis_keys.rate_limit_cooldown(account))
    return max(0, pttl) / 1000.0


# How long one request may wait for the shared budget before the task goes
# back to the queue instead of holding a worker thread.
MAX_REQUEST_WAIT_S = 5.0


def draw_request_budget(account: str, method: str, url: str) -> None:
    """Draw one request's weight from ``account``'s shared budget, waiting for it.

    Every exchange request execq makes goes through here: the workers' through the
    gateway's request hook, the stream holder's REST calls (markets, listen keys,
    position snapshots) through its clients. Raises ``Throttled`` past
    ``MAX_REQUEST_WAIT_S``.
    """
    from workers.exchange.venues import VENUES
    from workers.observability import metrics
    from workers.settings import get_settings

    settings = get_settings()
    configured = settings.account(account)
    limit = RateLimit(settings.rate_limit_for(configured), settings.rate_limit_burst)
    operation, weight = VENUES[configured.ccxt_class].operation_of(method, url)
    metrics.observe_exchange_request(account, operation)
    waited = acquire(account, limit, weight, MAX_REQUEST_WAIT_S)
    if waited:
        metrics.add_rate_limit_wait(account, waited)


def install_request_hook() -> None:
    """Make every exchange request in this process draw from the shared budget."""
    from workers.exchange import gateway

    def hook(account: str, request) -> None:  # noqa: ANN001 - requests.PreparedRequest
        draw_request_budget(account, request.method or "GET", request.url or "")

    gateway.set_request_hook(hook)
