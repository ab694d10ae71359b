"""``pighand-token db``: the SQL store and its migrations."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .. import migrations
from .common import container as _container
from .common import friendly as _friendly

db_cli = AppGroup("db", help="The SQL store and its schema migrations.")


@db_cli.command("upgrade")
@_friendly
def db_upgrade() -> None:
    """Upgrade the schema to the newest revision (idempotent; also adopts an
    original `platform` table, keeping its rows)."""
    db = _container().db
    changed = db.init_schema()
    extra = f" (added {', '.join(changed)})" if changed else ""
    click.echo(f"database ready: {db.description} at revision {migrations.current(db)}{extra}")


@db_cli.command("init")
@_friendly
def db_init() -> None:
    """The same as `db upgrade` (its name before migrations)."""
    db_upgrade.callback()  # type: ignore[misc]


@db_cli.command("current")
@_friendly
def db_current() -> None:
    """The database's schema revision, without upgrading it."""
    db = _container().db
    revision = migrations.current(db)
    head = migrations.head()
    if revision is None:
        click.echo(f"{db.description}: no revision (run `pighand-token db upgrade`; head is {head})")
    else:
        click.echo(f"{db.description}: {revision}" + (" (head)" if revision == head else f" (head is {head})"))


@db_cli.command("history")
@_friendly
def db_history() -> None:
    """Every schema revision, oldest first."""
    for revision in migrations.history():
        click.echo(f"{revision.id}  {revision.title}" + ("  (head)" if revision.is_head else ""))
