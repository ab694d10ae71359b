"""The status page at ``/`` and the table behind ``pighand-token token status``.

Both show what ``TokenService.status()`` reports for each token: state, time
left, last refresh, the last platform error and the IP a platform refused.
Never a token or a secret: the rows carry neither.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
from flask import Blueprint, Response, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from ..core.domain import Client
from ..core.errors import PighandError
from ..core.service import TokenService, TokenStatus
from ..logs import printable
from .api import api_key

log = logging.getLogger(__name__)

bp = Blueprint("status_page", __name__, template_folder="templates")

TEMPLATE = "status.html"

STATES = ("valid", "inside margin", "failing", "expired", "missing")
# Rows: problems first.
_RANK = {"failing": 0, "expired": 1, "missing": 2, "inside margin": 3, "valid": 4}

STATE_HINTS = {
    "valid": "served from storage",
    "inside margin": "still served; refreshed on the next request or tick",
    "failing": "the last platform call failed and no valid token is stored",
    "expired": "the stored token has expired; the next request fetches a new one",
    "missing": "never fetched yet",
}

WHITELIST_HINT = "add this IP to the platform's whitelist"

HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
}


# -- formatting ----------------------------------------------------------------
def human_duration(seconds: float) -> str:
    """``1 h 52 min``, ``3 min``, ``42 s``, ``2 d 4 h`` (absolute value)."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def expires_in_text(expires_in_s: float | None) -> str:
    if expires_in_s is None:
        return "-"
    if expires_in_s <= 0:
        return f"expired {human_duration(expires_in_s)} ago"
    return human_duration(expires_in_s)


def utc_text(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def error_text(row: TokenStatus) -> str:
    """``40125 invalid appsecret``: the errcode (if any) and the message."""
    if not row.last_error:
        return ""
    if row.errcode is None or str(row.last_error).startswith(str(row.errcode)):
        return row.last_error
    return f"{row.errcode} {row.last_error}"


def ordered(rows: Iterable[TokenStatus]) -> list[TokenStatus]:
    return sorted(rows, key=lambda r: (_RANK.get(r.state, len(_RANK)), r.platform, r.appid))


def summary(rows: Sequence[TokenStatus]) -> dict[str, int]:
    """Count per state, every known state included, in display order."""
    counts = Counter(r.state for r in rows)
    result = {state: counts.get(state, 0) for state in STATES}
    for state, count in counts.items():
        result.setdefault(state, count)
    return result


def summary_text(rows: Sequence[TokenStatus]) -> str:
    parts = [f"{count} {state}" for state, count in summary(rows).items() if count]
    return f"{len(rows)} token(s)" + (": " + ", ".join(parts) if parts else "")


# -- terminal ------------------------------------------------------------------
_STATE_COLOURS = {"valid": "green", "inside margin": "yellow", "failing": "red", "expired": "red",
                  "missing": "bright_black"}


def table_lines(rows: Sequence[TokenStatus], *, colour: bool = False) -> list[str]:
    """The status table as aligned text lines, a summary line last."""
    header = ("PLATFORM", "APPID", "STATE", "EXPIRES IN", "LAST REFRESH", "LAST ERROR")
    cells = [header] + [
        (r.platform, r.appid, r.state, expires_in_text(r.expires_in_s), utc_text(r.last_refresh_at),
         _one_line(error_text(r)) or "-")
        for r in ordered(rows)
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    last = len(header) - 1
    lines = []
    for n, row in enumerate(cells):
        padded = [cell if i == last else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        if colour and n > 0:
            padded[2] = click.style(padded[2], fg=_STATE_COLOURS.get(row[2]), bold=row[2] == "failing")
        if colour and n == 0:
            padded = [click.style(cell, bold=True) for cell in padded]
        lines.append("  ".join(padded))
    lines.append("")
    for r in ordered(rows):
        if r.egress_ip:
            lines.append(f"{r.platform} {r.appid}: the platform refused calls from {printable(r.egress_ip)}: "
                         f"{WHITELIST_HINT}")
    lines.append(summary_text(rows))
    return lines


def _one_line(text: str) -> str:
    return printable(" ".join(text.split()))


def echo_status(rows: Sequence[TokenStatus]) -> None:
    """Print the table; colours only on a terminal (click strips them otherwise)."""
    if not rows:
        click.echo("no credentials configured: add one with 'pighand-token platform add <platform> <appid>'")
        return
    for line in table_lines(rows, colour=True):
        click.echo(line)


# -- the page ------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    platform: str
    appid: str
    state: str
    state_class: str
    state_hint: str
    expires_in: str
    last_refresh: str
    errcode: str
    error: str
    egress_ip: str | None
    retry_in: str | None


def _view_row(row: TokenStatus) -> _Row:
    return _Row(
        platform=row.platform, appid=row.appid, state=row.state,
        state_class="state-" + row.state.replace(" ", "-"),
        state_hint=STATE_HINTS.get(row.state, ""),
        expires_in=expires_in_text(row.expires_in_s),
        last_refresh=utc_text(row.last_refresh_at),
        errcode="" if row.errcode is None else str(row.errcode),
        error=row.last_error or "",
        egress_ip=row.egress_ip,
        retry_in=None if row.retry_in_s is None else human_duration(max(1.0, row.retry_in_s)),
    )


def _container() -> Any:
    return current_app.extensions["pighand"]


def _page(status: int, **context: Any) -> Response:
    body = render_template(TEMPLATE, **context)
    response = Response(body, status=status, mimetype="text/html")
    response.headers.update(HEADERS)
    return response


def _problem(status: int, title: str, message: str, *, headers: dict[str, str] | None = None,
             show_key_help: bool = False) -> Response:
    message = message[:1].upper() + message[1:]
    response = _page(status, problem={"status": status, "title": title, "message": message,
                                      "key_help": show_key_help},
                     page_url=request.base_url, now=utc_text(time.time()))
    if headers:
        response.headers.update(headers)
    return response


@bp.get("/")
def status_page() -> Response:
    container = _container()
    client: Client | None = None
    if container.settings.auth_required:
        # PighandError (401) from here is answered by _on_error as an HTML page.
        client = container.clients.authenticate(api_key())
    service: TokenService = container.service
    rows = service.status()
    if client is not None:
        rows = [r for r in rows if client.allows(r.platform, r.appid)]
    rows = ordered(rows)
    refused: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.egress_ip:
            refused.setdefault((r.platform, r.egress_ip), []).append(r.appid)
    whitelist = [{"platform": platform, "ip": ip, "appids": sorted(appids)}
                 for (platform, ip), appids in sorted(refused.items())]
    return _page(
        200,
        rows=[_view_row(r) for r in rows],
        counts=summary(rows),
        total=len(rows),
        whitelist=whitelist,
        whitelist_hint=WHITELIST_HINT,
        client_name=client.name if client is not None else None,
        client_scopes=None if client is None or client.all_apps else " ".join(client.scopes),
        now=utc_text(service.clock()),
    )


@bp.errorhandler(PighandError)
def _on_error(exc: PighandError) -> Response:
    if exc.status == 401:
        return _problem(401, "API key required", exc.message, headers=exc.headers or None, show_key_help=True)
    if exc.status >= 500:
        log.warning("status page: %s: %s", type(exc).__name__, exc.message)
    return _problem(exc.status, "Status unavailable" if exc.status >= 500 else "Request refused", exc.message,
                    headers=exc.headers or None)


@bp.errorhandler(Exception)
def _on_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        return _problem(code, exc.name or "Error", (exc.description or "").strip())
    log.exception("status page: unexpected error")
    return _problem(500, "Internal error", "internal error; it has been logged")
