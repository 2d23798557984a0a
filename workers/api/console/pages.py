"""Rendering the console's pages: Jinja2 templates from the package, autoescaped.

Every value a template prints is escaped (``autoescape=True``; nothing is marked
safe), so a symbol, a reason or an event's payload that holds HTML shows as text.
Every page is sent with a Content-Security-Policy that runs only the console's own
script file and no inline script, is never framed, and is not cached.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from workers.execution.signal import plain_decimal

PACKAGE = "workers.api.console"
STATIC_PATH = "/console/static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def amount(value: Decimal | None) -> str:
    return "—" if value is None else plain_decimal(value)


def signed(value: Decimal | None) -> str:
    if value is None:
        return "—"
    text = plain_decimal(abs(value))
    return f"+{text}" if value > 0 else (f"−{text}" if value < 0 else text)


def fixed(value: Decimal | None, places: int = 2) -> str:
    """Signed, to ``places`` decimals: a PnL to the cent (``+12.30``, ``0.00``, ``−4.10``)."""
    if value is None:
        return "—"
    rounded = value.quantize(Decimal(1).scaleb(-places))
    text = f"{abs(rounded):f}"
    return f"+{text}" if rounded > 0 else (f"−{text}" if rounded < 0 else text)


def duration(seconds: float | None) -> str:
    """``45s``, ``3m 12s``, ``2h 05m``, ``3d 4h``."""
    if seconds is None:
        return "—"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def utc(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%H:%M:%S")


def as_json(value: Any) -> str:
    """A payload as one line of JSON text (escaped by the template like any text)."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _static_versions() -> dict[str, str]:
    """Each static file's content hash, so a browser fetches a changed file at once."""
    versions = {}
    for entry in resources.files(PACKAGE).joinpath("static").iterdir():
        if entry.is_file():
            versions[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()[:12]
    return versions


class Pages:
    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._versions = _static_versions()
        self.environment = Environment(
            loader=PackageLoader(PACKAGE, "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.filters.update(
            amount=amount,
            signed=signed,
            fixed=fixed,
            duration=duration,
            utc=utc,
            clock=clock,
            as_json=as_json,
        )
        self.environment.globals.update(static=self.static_url, refresh_s=refresh_s)

    def static_url(self, name: str) -> str:
        return f"{STATIC_PATH}/{name}?v={self._versions.get(name, '0')}"

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        context.setdefault("session", None)
        # Pages that show state refresh themselves; forms and refusals do not.
        context.setdefault("live", False)
        context.setdefault("notice", None)
        context.setdefault("rendered_at", datetime.now(UTC))
        context.setdefault("path", request.url.path)
        html = self.environment.get_template(template).render(**context)
        return secured(HTMLResponse(html, status_code=status_code))

    def error(
        self,
        request: Request,
        status_code: int,
        title: str,
        detail: str,
        **context: Any,
    ) -> HTMLResponse:
        return self.render(
            request,
            "error.html",
            status_code,
            status=status_code,
            title=title,
            detail=detail,
            **context,
        )


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
