"""Each API key's request budget, in Redis, shared by every API process.

The same GCRA script as the exchange limiter (``workers.exchange.ratelimit``):
``api_rate_limit_per_s`` requests a second with bursts of ``api_rate_limit_burst``,
on Redis's clock. A request over the budget is refused with 429 and
``Retry-After`` (whole seconds, rounded up), not queued: the producer decides
whether the signal is still worth sending.
"""

from __future__ import annotations

import math

import redis

from workers import redis_keys
from workers.api import problems
from workers.api.problems import Problem
from workers.exchange.ratelimit import RateLimit, take_from_bucket


class KeyRateLimiter:
    def __init__(self, client: redis.Redis, per_s: float, burst: float) -> None:
        self.limit = RateLimit(per_s, burst)
        self._client = client

    def wait_s(self, key_name: str) -> float:
        """0.0 when the request may go now (its share is taken), else seconds until it may."""
        return take_from_bucket(
            self._client,
            redis_keys.api_rate_limit(key_name),
            redis_keys.api_rate_limit_cooldown(key_name),
            self.limit,
        )

    def take(self, key_name: str) -> None:
        """Take one request from the key's budget; raises ``Problem`` (429) when it is spent."""
        wait_s = self.wait_s(key_name)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            raise Problem(
                problems.RATE_LIMITED,
                f"the key {key_name!r} may make {self.limit.per_s:g} requests a second "
                f"(bursts of {self.limit.burst:g}); retry in {wait_s:.2f} s",
                headers={"Retry-After": str(retry_after)},
            )
