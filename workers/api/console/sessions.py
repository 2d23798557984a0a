"""The console's browser sessions: a login with an API key, a signed cookie, CSRF tokens.

A browser cannot send ``Authorization: Bearer``. The login form takes a key once,
checks it against the key ring (``KeyRing.by_key``, constant time) and starts a
session in Redis: the key's name, a fingerprint of the key (so replacing a key ends
its sessions), a CSRF token and an absolute expiry (``console_session_ttl_s``).
The cookie holds only the session's random id with its HMAC-SHA256 signature, never
the key: it is ``HttpOnly``, ``SameSite=Strict``, scoped to ``/console``, and
``Secure`` over HTTPS (or always, with ``console_secure_cookie``). Redis keeps the
session under the SHA-256 of its id, so a copy of Redis holds no usable cookie.
Logging out deletes the session: a copied cookie stops working at once.

Every form that changes something carries the session's CSRF token, compared in
constant time (a cross-site form cannot read it; ``SameSite=Strict`` keeps the
cookie off cross-site requests as well). The login form itself carries a token
that must match a signed pre-login cookie, so another site cannot log a browser
in under a key of its choosing.

The signing key is made once (random, in Redis) and shared by every API process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis

from workers import redis_keys
from workers.api.auth import ApiKey, KeyRing

SESSION_COOKIE = "execq_console"
LOGIN_COOKIE = "execq_console_login"
COOKIE_PATH = "/console"
# Seconds a login form stays usable: long enough to paste a key.
LOGIN_FORM_TTL_S = 600
_SIGNING_KEY_BYTES = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in browser: the key it signed in with and the session's CSRF token."""

    key: ApiKey
    csrf_token: str = ""
    # The SHA-256 of the session id: what Redis keys and confirmations are bound to.
    handle: str = ""
    expires_at_s: float = 0.0

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8"), self.csrf_token.encode("utf-8")
        )


class Sessions:
    """Console sessions in Redis, and the cookies that name them."""

    def __init__(self, client: redis.Redis, keys: KeyRing, ttl_s: int) -> None:
        self._client = client
        self._keys = keys
        self.ttl_s = ttl_s

    # --- signing --------------------------------------------------------------------------

    def _key(self) -> bytes:
        """The signing key, read each time: every API process uses the one in Redis, and
        a Redis that lost it (with every session) gets a new one from whoever asks first."""
        stored = self._client.get(redis_keys.CONSOLE_SIGNING_KEY)
        if stored is None:
            fresh = _b64(secrets.token_bytes(_SIGNING_KEY_BYTES))
            self._client.set(redis_keys.CONSOLE_SIGNING_KEY, fresh, nx=True)
            stored = self._client.get(redis_keys.CONSOLE_SIGNING_KEY) or fresh
        return stored.encode("ascii")

    def _signature(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._key(), f"{purpose}:{value}".encode(), "sha256").digest())

    def _signed(self, purpose: str, value: str) -> str:
        return f"{value}.{self._signature(purpose, value)}"

    def _unsigned(self, purpose: str, cookie: str | None) -> str | None:
        """The value a cookie signed for ``purpose`` carries; None when it is not one."""
        if not cookie or cookie.count(".") != 1:
            return None
        value, signature = cookie.split(".")
        if not value or not hmac.compare_digest(
            signature.encode("ascii", "replace"), self._signature(purpose, value).encode("ascii")
        ):
            return None
        return value

    def _fingerprint(self, key: ApiKey) -> str:
        """Tells whether a session's key is still the configured one (not the key's hash)."""
        return self._signature("key", key.digest.hex())

    # --- login ----------------------------------------------------------------------------

    def new_login_form(self) -> tuple[str, str]:
        """(the form's token, the pre-login cookie's value)."""
        token = secrets.token_urlsafe(24)
        return token, self._signed("login", f"{token}~{int(time.time()) + LOGIN_FORM_TTL_S}")

    def login_form_valid(self, token: str | None, cookie: str | None) -> bool:
        value = self._unsigned("login", cookie)
        if value is None or token is None or value.count("~") != 1:
            return False
        expected, expires = value.split("~")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))

    def start(self, key: ApiKey) -> str:
        """Start a session for ``key``; returns the session cookie's value."""
        session_id = secrets.token_urlsafe(32)
        handle = _sha256_hex(session_id)
        name = redis_keys.console_session(handle)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                name,
                mapping={
                    "key_name": key.name,
                    "key_fingerprint": self._fingerprint(key),
                    "csrf_token": secrets.token_urlsafe(32),
                    "expires_at_s": f"{time.time() + self.ttl_s:.3f}",
                },
            )
            pipe.expire(name, self.ttl_s)
            pipe.execute()
        return self._signed("session", session_id)

    def resume(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie names, while it lives and its key is still configured."""
        session_id = self._unsigned("session", cookie)
        if session_id is None:
            return None
        handle = _sha256_hex(session_id)
        stored = self._client.hgetall(redis_keys.console_session(handle))
        if not stored:
            return None
        key = self._keys.by_name(stored.get("key_name", ""))
        if key is None or not hmac.compare_digest(
            stored.get("key_fingerprint", "").encode("ascii", "replace"),
            self._fingerprint(key).encode("ascii"),
        ):
            return None
        return ConsoleSession(
            key=key,
            csrf_token=stored["csrf_token"],
            handle=handle,
            expires_at_s=float(stored.get("expires_at_s", 0)),
        )

    def end(self, session: ConsoleSession) -> None:
        self._client.delete(
            redis_keys.console_session(session.handle), redis_keys.console_notice(session.handle)
        )

    # --- one-time notices -------------------------------------------------------------------

    def leave_notice(self, session: ConsoleSession, text: str) -> None:
        """A line the session's next page shows once (the outcome of an action)."""
        self._client.set(redis_keys.console_notice(session.handle), text, ex=300)

    def take_notice(self, session: ConsoleSession) -> str | None:
        return self._client.getdel(redis_keys.console_notice(session.handle))
