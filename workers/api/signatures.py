"""Standard Webhooks signatures (https://www.standardwebhooks.com), for producers that
can set headers and would rather not send their key with every request.

The producer signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 under
the key's secret and sends::

    webhook-id: <a unique message id>
    webhook-timestamp: <Unix seconds>
    webhook-signature: v1,<base64 signature>   (several, space-separated, while rotating)

The secret is written ``whsec_<base64 of the secret bytes>``, as the scheme's libraries
take it. A timestamp further than the tolerance from now is refused, which bounds how
long a captured request can be replayed; a replay within it repeats the same signal,
which the idempotency key answers with the first signal's state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
MAX_ID_CHARS = 256


class BadSignature(Exception):
    """The signature headers are missing, malformed, stale or match no secret."""


def secret_bytes(secret: str) -> bytes:
    """The secret's bytes from its ``whsec_<base64>`` text; ValueError when malformed."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if len(decoded) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes")
    return decoded


def signature(secret: bytes, message_id: str, timestamp: int | str, body: bytes) -> str:
    """``v1,<base64>``: the signature of ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a producer sends with ``body`` (secret as ``whsec_...``)."""
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret_bytes(secret), message_id, timestamp, body),
    }


def verify(
    secrets: Sequence[tuple[str, bytes]],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: float,
    tolerance_s: float,
) -> str:
    """The name of the secret that signed the request; raises ``BadSignature``.

    Every candidate is compared in constant time, and all of them are compared,
    so the time taken tells nothing about which secret (if any) matched.
    """
    message_id = headers.get(ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    presented = headers.get(SIGNATURE_HEADER)
    if not message_id or not timestamp or not presented:
        raise BadSignature(
            f"{ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} must all be given"
        )
    if len(message_id) > MAX_ID_CHARS or not message_id.isprintable():
        raise BadSignature(f"{ID_HEADER} must be at most {MAX_ID_CHARS} printable characters")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise BadSignature(f"{TIMESTAMP_HEADER} must be Unix seconds")
    lag_s = now_s - int(timestamp)
    if abs(lag_s) > tolerance_s:
        where = "old" if lag_s > 0 else "in the future"
        raise BadSignature(
            f"{TIMESTAMP_HEADER} is {abs(lag_s):.0f} s {where}, more than the {tolerance_s:g} s allowed"
        )
    offered = [
        part.split(",", 1)[1].encode()
        for part in presented.split(" ")
        if part.startswith(SIGNATURE_VERSION + ",")
    ]
    if not offered:
        raise BadSignature(f"{SIGNATURE_HEADER} holds no {SIGNATURE_VERSION} signature")
    matched: str | None = None
    for name, secret in secrets:
        expected = signature(secret, message_id, timestamp, body).split(",", 1)[1].encode()
        for candidate in offered:
            if hmac.compare_digest(expected, candidate) and matched is None:
                matched = name
    if matched is None:
        raise BadSignature("the signature matches no configured webhook secret")
    return matched
