"""Binance USDⓈ-M listen keys: the REST-managed credential of the user data stream.

As on Binance, an account has at most one active key. ``POST /fapi/v1/listenKey``
returns it (extending its validity) or creates one; ``PUT`` extends the active
key or fails when there is none (-1125 "This listenKey does not exist.");
``DELETE`` closes it. A key expires ``validity_s`` after its creation or last
keep-alive; then ``on_expired`` is called, the stream says ``listenKeyExpired``
and pushes nothing more on that key. Keys outlive ``POST /_sim/reset``, as
credentials do, so clients holding one keep working after a reset.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exchange_sim.engine import now_ms

KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 64


@dataclass(slots=True)
class ListenKey:
    key: str
    expires_ms: int
    timer: asyncio.TimerHandle | None = None


class ListenKeys:
    def __init__(self, validity_s: float, on_expired: Callable[[str], None]) -> None:
        self.validity_s = validity_s
        self._on_expired = on_expired
        self._active: ListenKey | None = None

    def open(self) -> str:
        """POST: the active key, its validity extended, or a new key."""
        if self._active is None:
            key = "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))
            self._active = ListenKey(key, 0)
        self._extend(self._active)
        return self._active.key

    def keep_alive(self, key: str | None = None) -> str | None:
        """PUT: extend the active key (or the one named); None when there is no such key."""
        active = self._active
        if active is None or (key is not None and key != active.key):
            return None
        self._extend(active)
        return active.key

    def close(self, key: str | None = None) -> bool:
        """DELETE: end the active key (or the one named) without an expiry event."""
        active = self._active
        if active is None or (key is not None and key != active.key):
            return False
        self._end(active)
        return True

    def expire(self, key: str) -> None:
        """End ``key`` now, as if its validity ran out (the ``listen_key_expired`` fault)."""
        active = self._active
        if active is not None and active.key == key:
            self._end(active)
            self._on_expired(key)

    def is_active(self, key: str | None) -> bool:
        return key is not None and self._active is not None and self._active.key == key

    def describe(self) -> dict[str, Any] | None:
        active = self._active
        if active is None:
            return None
        return {"listenKey": active.key, "expiresTime": active.expires_ms}

    def _extend(self, listen_key: ListenKey) -> None:
        listen_key.expires_ms = now_ms() + int(self.validity_s * 1000)
        if listen_key.timer is not None:
            listen_key.timer.cancel()
        loop = asyncio.get_running_loop()
        listen_key.timer = loop.call_later(self.validity_s, self.expire, listen_key.key)

    def _end(self, listen_key: ListenKey) -> None:
        if listen_key.timer is not None:
            listen_key.timer.cancel()
        self._active = None
