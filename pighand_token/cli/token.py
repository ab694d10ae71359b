"""``pighand-token token`` and ``scheduler``: tokens, and one scheduler tick by hand."""

from __future__ import annotations

import time
from typing import Any

import click
from flask.cli import AppGroup

from ..core.errors import PighandError
from .common import container as _container
from .common import friendly as _friendly
from .common import operator, printable

token_cli = AppGroup("token", help="Tokens.")
scheduler_cli = AppGroup("scheduler", help="The refresh scheduler.")


def _show(token: Any) -> None:
    left = token.expires_at - time.time()
    click.echo(printable(token.value))
    click.echo(f"expires in {left:.0f} s", err=True)


@token_cli.command("get")
@click.argument("platform")
@click.argument("appid")
@_friendly
def token_get(platform: str, appid: str) -> None:
    """Print the token (from storage, or fetched if none is valid)."""
    _show(_container().service.get(platform, appid))


@token_cli.command("refresh")
@click.argument("platform")
@click.argument("appid")
@_friendly
def token_refresh(platform: str, appid: str) -> None:
    """Fetch a new token from the platform and store it."""
    container = _container()
    try:
        token = container.service.refresh(platform, appid)
    except PighandError as exc:
        container.audit.record("token.refresh", f"failed {exc.status}: {exc.message}", client=operator(),
                               platform=platform, appid=appid)
        raise
    container.audit.record("token.refresh", "ok", client=operator(), platform=platform, appid=appid)
    _show(token)


@token_cli.command("status")
@_friendly
def token_status() -> None:
    """Every token's state, expiry, last refresh and last platform error (never the tokens)."""
    from ..web.status_page import echo_status

    echo_status(_container().service.status())


@scheduler_cli.command("tick")
@_friendly
def scheduler_tick() -> None:
    """Refresh every due token once, now (what one scheduler tick does)."""
    report = _container().service.refresh_due()
    for key in report.refreshed:
        click.echo(f"refreshed {key}")
    for key, exc in report.failed.items():
        click.echo(f"failed {key}: {printable(exc.message)}")
    click.echo(f"{len(report.refreshed)} refreshed, {len(report.fresh)} fresh, {len(report.failed)} failed")
    if report.failed:
        raise SystemExit(1)


