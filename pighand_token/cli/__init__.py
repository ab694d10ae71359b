"""The ``pighand-token`` command: ``serve`` and every operator command.

The command groups are the same ones ``pighand-token ...`` carries
(``register`` adds them to the app); here they hang off one click group whose
app is built only when a command needs it, so ``serve`` and ``--help`` open
no store.
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import ScriptInfo

from ..core.errors import SettingsError
from .alipay import alipay_cli
from .audit import audit_cli
from .client import client_cli
from .db import db_cli
from .platform import platform_cli
from .secrets import secrets_cli
from .third_party import dingtalk_cli, feishu_cli, wechat_cli, wecom_cli
from .token import scheduler_cli, token_cli

GROUPS = (db_cli, platform_cli, token_cli, scheduler_cli, client_cli, secrets_cli, audit_cli, alipay_cli,
          wechat_cli, wecom_cli, feishu_cli, dingtalk_cli)


def register(app: Flask) -> None:
    """The command groups, on ``flask --app wsgi``."""
    for group in GROUPS:
        app.cli.add_command(group)


def _bad_setting(exc: SettingsError) -> None:
    # One line naming the setting, then stop.
    click.echo(f"pighand-token: bad setting: {exc.message}", err=True)
    raise SystemExit(2) from None


def _create_app() -> Flask:
    from ..app import create_app

    try:
        return create_app()
    except SettingsError as exc:
        _bad_setting(exc)
        raise  # not reached


@click.command("serve")
def serve_command() -> None:
    """Serve the API (granian) on host:port with workers and threads from the settings."""
    from ..config import load_settings
    from ..server import serve

    try:
        serve(load_settings())
    except SettingsError as exc:
        _bad_setting(exc)


@click.group("pighand-token")
def cli() -> None:
    """The one place your systems get platform access tokens from.

    Settings come from settings/settings.toml, PIGHAND_ENV and PIGHAND_<NAME>
    variables, as for the server.
    """


cli.add_command(serve_command)
for _group in GROUPS:
    cli.add_command(_group)


def main() -> None:
    # The groups' commands run inside an app context (flask's AppGroup);
    # ScriptInfo builds the app the first time one asks for it.
    cli.main(args=sys.argv[1:], prog_name="pighand-token", obj=ScriptInfo(create_app=_create_app))
