"""What the exchange front ends share: endpoints, request context, errors.

A front end (``binance.py``, ``bybit.py``, ``okx.py``) owns an exchange's wire format:
how parameters arrive, how authentication and the request's validity
window (``recvWindow``, timestamps) are checked on arrival, how a result or a
refusal is rendered. The server owns everything around it: statistics, the
fault plan, latency, hanging and dropping connections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import unquote_plus

from aiohttp import web

from exchange_sim.engine import Exchange, Rejected
from exchange_sim.faults import FaultDecision, FaultRule


class ApiError(Exception):
    """An error response exactly as the exchange would send it."""

    def __init__(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {payload}")
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Ctx:
    """One request as a handler sees it."""

    exchange: Exchange
    params: dict[str, Any]
    now_ms: int
    faults: FaultDecision
    headers: Mapping[str, str]
    # The stream hub (exchange_sim.streams.StreamHub): Binance's listen keys live there.
    streams: Any = None

    @property
    def force_insufficient_margin(self) -> bool:
        outcome = self.faults.outcome
        return outcome is not None and outcome.kind == "insufficient_margin"


Handler = Callable[[Ctx], Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    operation: str | Callable[[Mapping[str, Any]], str]
    private: bool
    handler: Handler

    def operation_for(self, params: Mapping[str, Any]) -> str:
        if callable(self.operation):
            return self.operation(params)
        return self.operation


class FrontEnd(Protocol):
    name: str

    def endpoint(self, method: str, path: str) -> Endpoint | None: ...

    async def read_params(self, request: web.Request) -> dict[str, Any]: ...

    def authenticate(
        self, request: web.Request, params: Mapping[str, Any], now_ms: int
    ) -> None: ...

    def unified_symbol(self, params: Mapping[str, Any]) -> str | None: ...

    def success(self, payload: Any, now_ms: int) -> web.Response: ...

    def error(self, error: ApiError) -> web.Response: ...

    def rejection(self, rejected: Rejected, operation: str) -> ApiError: ...

    def fault(self, rule: FaultRule, now_ms: int) -> ApiError: ...

    def internal_error(self) -> ApiError: ...

    def not_found(self, method: str, path: str) -> ApiError: ...


def parse_decimal(text: object) -> Decimal | None:
    """A finite decimal from a wire value, or None when it is not one."""
    if isinstance(text, bool) or text is None:
        return None
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def parse_query(query: str) -> dict[str, str]:
    """``a=1&b=x%2Fy`` -> dict; last value wins. Faster than parse_qsl for short queries."""
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        params[key] = value
    return params


def fmt(value: Decimal | int, places: int) -> str:
    """Fixed-point string with exactly ``places`` decimals (exchanges send strings)."""
    return f"{value:.{places}f}"


def plain(value: Decimal) -> str:
    """Shortest plain (non-scientific) string of a decimal: '67445.9', '0.001', '0'."""
    if not value:
        return "0"
    text = f"{value.normalize():f}"
    return text


def gateway_page(status: int) -> str:
    """The HTML a load balancer in front of an exchange API sends for a 5xx (or 404)."""
    reason = {
        404: "Not Found",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Time-out",
    }.get(status, "Error")
    return (
        f"<html><head><title>{status} {reason}</title></head>"
        f"<body><center><h1>{status} {reason}</h1></center></body></html>"
    )
