"""Commands for third-party apps' accounts: ``pighand-token wechat
authorizers|authorize-url``, ``pighand-token wecom corps|authorize-url`` and
``pighand-token feishu tenants`` and ``pighand-token dingtalk corps``.

They show who authorized an app, since when, the state of the account's
token and its last error; never a token, refresh token or permanent code.
"""

from __future__ import annotations

import time

import click
from flask.cli import AppGroup

from .common import container as _container
from .common import friendly as _friendly

wechat_cli = AppGroup("wechat", help="WeChat Open Platform components: the accounts that authorized them.")
wecom_cli = AppGroup("wecom", help="WeCom third-party suites: the corps that installed them.")
feishu_cli = AppGroup("feishu", help="Feishu / Lark store apps: the tenants that installed them.")
dingtalk_cli = AppGroup("dingtalk", help="DingTalk third-party enterprise apps: the corps that authorized them.")


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _accounts(app_platform: str, account_platform: str, appid: str, noun: str) -> None:
    container = _container()
    if container.credentials.get(app_platform, appid) is None:
        raise click.ClickException(f"no {app_platform} credential for {appid!r}; add it with "
                                   f"'pighand-token platform add {app_platform} {appid}'")
    assert container.callbacks is not None
    grants = container.callbacks.grants.list(account_platform, appid)
    states = {row.appid: row for row in container.service.status() if row.platform == account_platform}
    rows = [(noun.upper(), "AUTHORIZED", "UPDATED", "TOKEN", "EXPIRES_IN", "LAST_ERROR")]
    for grant in grants:
        state = states.get(grant.token_appid)
        expires = "-" if state is None or state.expires_in_s is None else f"{max(0, int(state.expires_in_s))} s"
        rows.append((grant.account, _when(grant.authorized_at), _when(grant.updated_at),
                     state.state if state else "missing", expires, (state.last_error if state else None) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    click.echo(f"{len(grants)} {noun}(s)")


def _authorize_url(app_platform: str, appid: str, redirect_uri: str, options: dict[str, str]) -> None:
    container = _container()
    assert container.callbacks is not None
    click.echo(container.callbacks.authorization_url(app_platform, appid, redirect_uri, options))


@wechat_cli.command("authorizers")
@click.argument("component_appid")
@_friendly
def wechat_authorizers(component_appid: str) -> None:
    """List the accounts that authorized COMPONENT_APPID (never their tokens)."""
    _accounts("wechat_component", "wechat_authorizer", component_appid, "authorizer")


@wechat_cli.command("authorize-url")
@click.argument("component_appid")
@click.option("--redirect-uri", required=True, help="Where WeChat sends the account back to, with auth_code.")
@click.option("--auth-type", type=click.Choice(["1", "2", "3"]),
              help="1: official accounts only, 2: mini programs only, 3: both.")
@_friendly
def wechat_authorize_url(component_appid: str, redirect_uri: str, auth_type: str | None) -> None:
    """Print an authorization page URL with a fresh pre_auth_code."""
    _authorize_url("wechat_component", component_appid, redirect_uri, {"auth_type": auth_type or ""})


@wecom_cli.command("corps")
@click.argument("suite_id")
@_friendly
def wecom_corps(suite_id: str) -> None:
    """List the corps that installed SUITE_ID (never their tokens or codes)."""
    _accounts("wecom_suite", "wecom_corp", suite_id, "corp")


@wecom_cli.command("authorize-url")
@click.argument("suite_id")
@click.option("--redirect-uri", required=True, help="Where WeCom sends the admin back to, with auth_code.")
@click.option("--state", default="", help="Passed back with the redirect.")
@_friendly
def wecom_authorize_url(suite_id: str, redirect_uri: str, state: str) -> None:
    """Print an install page URL with a fresh pre_auth_code."""
    _authorize_url("wecom_suite", suite_id, redirect_uri, {"state": state})


@feishu_cli.command("tenants")
@click.argument("app_id")
@click.option("--lark", is_flag=True, help="The lark_store app APP_ID (found by itself when only Lark has it).")
@_friendly
def feishu_tenants(app_id: str, lark: bool) -> None:
    """List the tenants that installed APP_ID (never their tokens)."""
    store = "lark_store"
    if not lark:
        credentials = _container().credentials
        if credentials.get("feishu_store", app_id) is not None or credentials.get("lark_store", app_id) is None:
            store = "feishu_store"
    _accounts(store, "lark_tenant" if store == "lark_store" else "feishu_tenant", app_id, "tenant")


@dingtalk_cli.command("corps")
@click.argument("suite_key")
@_friendly
def dingtalk_corps(suite_key: str) -> None:
    """List the corps that authorized SUITE_KEY (never their tokens)."""
    _accounts("dingtalk_suite", "dingtalk_corp", suite_key, "corp")
