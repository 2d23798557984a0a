"""One Redis client per process (redis-py clients are thread-safe; sockets are not fork-safe)."""

from __future__ import annotations

import os
import threading

import redis

from workers.settings import get_settings

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_pid: int | None = None


def get_redis() -> redis.Redis:
    global _client, _client_pid
    pid = os.getpid()
    if _client is not None and _client_pid == pid:
        return _client
    with _lock:
        if _client is None or _client_pid != pid:
            settings = get_settings()
            _client = redis.Redis.from_url(
                settings.redis_url,
                **(settings.redis_tls or {}),
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=5,
                health_check_interval=30,
                retry_on_timeout=True,
            )
            _client_pid = pid
    return _client
