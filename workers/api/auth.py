"""API keys: who is calling, and what they may do.

Keys come from ``EXECQ_API_KEYS`` (``workers.settings.ApiKeySettings``). The ring
keeps only each key's SHA-256: a presented key is hashed and compared with every
configured hash in constant time (``hmac.compare_digest``, all of them, no early
exit), so neither the answer's time nor a memory dump gives a key away, and a
configuration may hold only the hash (``key_sha256``).

A caller authenticates with ``Authorization: Bearer <key>``, or with a Standard
Webhooks signature (``workers.api.signatures``) under a key's ``webhook_secret``,
or, for TradingView, with the key in the body's ``secret`` field. Scopes:
``signal`` sends signals, ``read`` reads them, ``operate`` is for an operator's
actions. A key is never logged: the access log names the key's ``name``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from workers.api import problems, signatures
from workers.api.bodies import read_body
from workers.api.problems import Problem
from workers.settings import Settings, SettingsError

SIGNAL = "signal"
READ = "read"
OPERATE = "operate"


@dataclass(frozen=True)
class ApiKey:
    """A configured key as the API knows it: its name, scopes and hash, never the key."""

    name: str
    scopes: frozenset[str]
    digest: bytes = field(repr=False)
    webhook_secret: bytes | None = field(default=None, repr=False)
    # TradingView ticker -> execq symbol, where the documented rule does not do.
    symbols: Mapping[str, str] = field(default_factory=dict)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def key_digest(key: str) -> bytes:
    """The SHA-256 of a key's text (what ``key_sha256`` holds, hex-encoded)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The configured keys; looks a presented key or signature up in constant time."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self.keys = tuple(keys)
        self._signing = [(key.name, key.webhook_secret) for key in keys if key.webhook_secret]
        self._by_name = {key.name: key for key in keys}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """Raises ``SettingsError`` naming the key whose file or secret is unusable."""
        keys = []
        for configured in settings.api_keys:
            try:
                text = configured.key_text()
                digest = (
                    key_digest(text)
                    if text is not None
                    else bytes.fromhex(configured.key_sha256 or "")
                )
                secret = configured.webhook_secret_text()
                webhook_secret = None if secret is None else signatures.secret_bytes(secret)
            except ValueError as exc:
                raise SettingsError(
                    f"invalid setting EXECQ_API_KEYS: key {configured.name!r}: {exc}"
                ) from None
            keys.append(
                ApiKey(
                    name=configured.name,
                    scopes=frozenset(configured.scopes),
                    digest=digest,
                    webhook_secret=webhook_secret,
                    symbols=dict(configured.symbols),
                )
            )
        return cls(keys)

    def by_key(self, presented: str) -> ApiKey | None:
        """The key whose text ``presented`` is, or None."""
        digest = key_digest(presented)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest) and found is None:
                found = key
        return found

    def by_name(self, name: str) -> ApiKey | None:
        """The configured key called ``name`` (a console session names its key so)."""
        return self._by_name.get(name)

    def by_signature(
        self, headers: Mapping[str, str], body: bytes, *, now_s: float, tolerance_s: float
    ) -> ApiKey:
        """The key whose webhook secret signed the request; raises ``Problem`` (401)."""
        try:
            name = signatures.verify(
                self._signing, headers, body, now_s=now_s, tolerance_s=tolerance_s
            )
        except signatures.BadSignature as exc:
            raise Problem(problems.BAD_SIGNATURE, str(exc)) from None
        return self._by_name[name]


def authorised(key: ApiKey | None, scope: str) -> ApiKey:
    """``key`` when it holds ``scope``; raises ``Problem`` 401 (no key) or 403."""
    if key is None:
        raise Problem(
            problems.UNAUTHORIZED,
            "send a configured key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="execq"'},
        )
    if not key.allows(scope):
        raise Problem(problems.FORBIDDEN, f"the key {key.name!r} lacks the scope {scope!r}")
    return key


_bearer = HTTPBearer(auto_error=False, description="An API key from EXECQ_API_KEYS.")


def require(scope: str) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    """A FastAPI dependency: the calling key, which must hold ``scope``.

    A request with a ``webhook-signature`` header is authenticated by its
    signature (its body is read here, under the size cap); any other by its
    bearer key. The key's name goes on ``request.state.api_key`` for the access log.
    """

    async def caller(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> ApiKey:
        context = request.app.state.context
        if signatures.SIGNATURE_HEADER in request.headers:
            body = await read_body(request, context.settings.api_max_body_bytes)
            key: ApiKey | None = context.keys.by_signature(
                request.headers,
                body,
                now_s=time.time(),
                tolerance_s=context.settings.api_signature_tolerance_s,
            )
        elif credentials is not None:
            key = context.keys.by_key(credentials.credentials)
        else:
            key = None
        key = authorised(key, scope)
        request.state.api_key = key.name
        return key

    return caller
