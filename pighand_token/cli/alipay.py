"""Commands: ``pighand-token alipay grant|grants|revoke ...``.

An Alipay token appid is ``<app_id>:<auth_app_id>``: the ISV app (a
``platform add alipay`` credential) acting for one merchant that authorized
it. These commands manage those merchant grants; they never print a token or
a refresh token.
"""

from __future__ import annotations

import time
from typing import Any

import click
from flask.cli import AppGroup

from ..core.domain import valid_appid
from ..providers.alipay import AlipayProvider
from .common import container as _container
from .common import friendly as _friendly
from .common import secret_value

alipay_cli = AppGroup("alipay", help="Alipay merchant grants (the app_auth_token of each authorizing merchant).")



def _provider() -> AlipayProvider:
    provider = _container().service.providers.get("alipay")
    if not isinstance(provider, AlipayProvider):
        raise click.ClickException("the alipay platform is not enabled")
    return provider


def _check_appid(appid: str) -> None:
    if not valid_appid(appid) or ":" in appid:
        raise click.ClickException("APPID is the ISV app_id: 1-128 characters of A-Z a-z 0-9 _ . -")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


@alipay_cli.command("grant")
@click.argument("appid")
@click.option("--code", help="The merchant's app_auth_code (from the authorization redirect; single use, valid "
                             "one day). Shown in the process list: prefer the prompt or --code-file -.")
@click.option("--code-file", type=click.File("r", encoding="utf-8"), help="Read the code from a file; - for stdin.")
@_friendly
def alipay_grant(appid: str, code: str | None, code_file: Any) -> None:
    """Exchange a merchant's app_auth_code and store its grant (the code is
    prompted for, hidden, unless --code-file or --code gives it)."""
    _check_appid(appid)
    code = secret_value("code", code, code_file)
    container = _container()
    provider = _provider()
    credential = container.credentials.get("alipay", appid)
    if credential is None:
        raise click.ClickException(
            f"no alipay credential for appid {appid!r}; add it first: cat app_private_key.pem "
            f"alipay_public_key.pem | pighand-token platform add alipay {appid} --secret-file -")
    grant = provider.authorize(credential, code)
    # Whatever token the tiers hold for this merchant belongs to the grant
    # that was just replaced.
    container.service.forget("alipay", grant.token_appid)
    click.echo(f"auth_app_id {grant.auth_app_id}")
    click.echo(f"token appid {grant.token_appid}")
    click.echo(f"GET /token/alipay/{grant.token_appid}")


@alipay_cli.command("grants")
@click.argument("appid")
@_friendly
def alipay_grants(appid: str) -> None:
    """List the merchants that authorized APPID (never their tokens)."""
    _check_appid(appid)
    grants = _provider().grants.list(appid)
    rows = [("AUTH_APP_ID", "TOKEN_APPID", "USER_ID", "TOKEN_EXPIRES", "REFRESH_EXPIRES", "UPDATED")]
    for g in grants:
        rows.append((g.auth_app_id, g.token_appid, g.user_id or "-", _when(g.expires_at),
                     _when(g.refresh_expires_at), _when(g.updated_at)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    click.echo(f"{len(grants)} merchant(s)")


@alipay_cli.command("revoke")
@click.argument("appid")
@click.argument("auth_app_id")
@_friendly
def alipay_revoke(appid: str, auth_app_id: str) -> None:
    """Forget a merchant's grant and its stored token (after the merchant
    cancelled the authorization)."""
    _check_appid(appid)
    if not _provider().grants.remove(appid, auth_app_id):
        raise click.ClickException(f"no grant for merchant {auth_app_id!r} of alipay app {appid!r}")
    _container().service.forget("alipay", f"{appid}:{auth_app_id}")
    click.echo(f"revoked {appid}:{auth_app_id}")
