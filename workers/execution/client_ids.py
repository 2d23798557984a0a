"""Deterministic client order ids: the same (signal, leg) always names the same order.

The id is what makes a redelivered task, a retry after a timeout and the
recovery sweep all talk about one order. Shape::

    xq<leg>-<digest of the signal id>        e.g. xqopen-hybc267byov6ryase6itcpqavjo6a

* ``xq`` marks ids execq made (recovery tells its own orders from manual ones).
* ``<leg>`` is the leg verbatim (``open``, ``close2``, ``chunk3``, ``liq``,
  ``aged1``; ``^[a-z0-9]{1,12}$``), readable on the exchange's order list.
* ``<digest>`` is SHA-256 of the signal id in lowercase base32, cut to fill
  36 characters: at least 21 characters, 105 bits, so two signals collide
  with negligible probability. ``hashlib`` rather than ``hash()``: the value
  must not change across processes, restarts or Python versions.

The leg holds no ``-``, so the first ``-`` splits the id unambiguously:
distinct legs give distinct ids even for the same signal. The alphabet
``[a-z0-9-]`` lies inside both Binance's ``[.A-Z:/a-z0-9_-]{1,36}`` and
Bybit's ``[A-Za-z0-9_-]{1,36}``, and is all lowercase, so no venue that folds
case can merge two ids.
"""

from __future__ import annotations

import base64
import hashlib
import re

MAX_LENGTH = 36
PREFIX = "xq"
BINANCE_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
BYBIT_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
LEG = re.compile(r"^[a-z0-9]{1,12}$")
_EXECQ_ID = re.compile(r"^xq([a-z0-9]{1,12})-([a-z2-7]{21,32})$")
# Changing this namespace changes every id: it is part of the contract, like the format.
_NAMESPACE = b"execq/client-order-id/v1\x00"


def _digest(signal_id: str) -> str:
    raw = hashlib.sha256(_NAMESPACE + signal_id.encode("utf-8", "surrogatepass")).digest()
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def leg_for(purpose: str, leg: str | None = None) -> str:
    """The leg an order task uses: the one given, else its purpose without underscores
    (``aged_close`` -> ``agedclose``), cut to 12 characters. An empty leg is not "no
    leg": it is an invalid one (``client_order_id`` refuses it)."""
    return purpose.replace("_", "")[:12] if leg is None else leg


def client_order_id(signal_id: str, leg: str) -> str:
    """The client order id for ``leg`` of ``signal_id``; at most 36 characters.

    Raises ``ValueError`` when ``leg`` is not ``^[a-z0-9]{1,12}$`` or the
    signal id is empty.
    """
    if not isinstance(leg, str) or not LEG.fullmatch(leg):
        raise ValueError(f"leg must match {LEG.pattern}, got {leg!r}")
    if not isinstance(signal_id, str) or not signal_id:
        raise ValueError("signal_id must be a non-empty string")
    head = f"{PREFIX}{leg}-"
    return head + _digest(signal_id)[: MAX_LENGTH - len(head)]


def leg_of(client_id: str) -> str | None:
    """The leg an execq client order id was made for, or None for ids execq did not make."""
    match = _EXECQ_ID.fullmatch(client_id or "")
    if match is None or len(client_id) != MAX_LENGTH:
        return None
    return match.group(1)
