"""``pighand-token client``: API clients and their keys."""

from __future__ import annotations

import time

import click
from flask.cli import AppGroup

from ..core.auth import NAME_PATTERN, hash_key, new_key
from ..core.domain import METRICS_SCOPE, Client, valid_appid
from ..core.errors import PighandError
from .common import container as _container
from .common import fail, operator, when

client_cli = AppGroup("client", help="API clients and their keys.")


@client_cli.command("add")
@click.argument("name")
@click.option("--app", "apps", multiple=True, metavar="PLATFORM:APPID",
              help="An app the key may use (repeat; PLATFORM:* for every app of a platform; 'metrics' for "
                   "/metrics alone, the key Prometheus sends).")
@click.option("--all-apps", is_flag=True, help="The key may use every app.")
def client_add(name: str, apps: tuple[str, ...], all_apps: bool) -> None:
    """Create a client and print its new key (shown only this once)."""
    container = _container()
    if not NAME_PATTERN.fullmatch(name):
        raise click.ClickException("name must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if not apps and not all_apps:
        raise click.ClickException("give the apps the key may use: --app PLATFORM:APPID (repeatable) or --all-apps")
    platforms = container.service.platforms()
    scopes = ["*"] if all_apps else []
    for scope in apps:
        if scope == METRICS_SCOPE:
            scopes.append(scope)
            continue
        platform, sep, appid = scope.partition(":")
        if not sep or platform not in platforms:
            raise click.ClickException(
                f"--app {scope!r}: expected PLATFORM:APPID with PLATFORM one of {', '.join(platforms)}")
        if appid != "*" and not valid_appid(appid):
            raise click.ClickException(f"--app {scope!r}: appid must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        scopes.append(f"{platform}:{appid}")
    key = new_key()
    try:
        container.clients.repo.add(Client(name, hash_key(key), tuple(dict.fromkeys(scopes)), time.time()))
    except PighandError as exc:
        raise fail(exc) from None
    container.clients.invalidate()
    container.audit.record("client.add", f"ok: scopes {' '.join(scopes)}", client=operator())
    click.echo(f"client {name} created; its key (shown only now):", err=True)
    click.echo(key)


@client_cli.command("list")
def client_list() -> None:
    """Clients, their scopes, creation and last use (never keys)."""
    try:
        clients = _container().clients.repo.list()
    except PighandError as exc:
        raise fail(exc) from None
    rows = [("NAME", "SCOPES", "CREATED", "LAST USED")]
    rows += [(c.name, " ".join(c.scopes), when(c.created_at), when(c.last_used_at)) for c in clients]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@client_cli.command("revoke")
@click.argument("name")
def client_revoke(name: str) -> None:
    """Revoke a client's key (every worker stops accepting it within seconds)."""
    container = _container()
    try:
        removed = container.clients.repo.remove(name)
    except PighandError as exc:
        raise fail(exc) from None
    if not removed:
        raise click.ClickException(f"no client named {name!r}")
    container.clients.invalidate()
    container.audit.record("client.revoke", f"ok: {name}", client=operator())
    click.echo(f"revoked {name}")


