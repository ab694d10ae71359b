"""``pighand-token db``: the SQL store."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .common import container as _container
from .common import friendly as _friendly

db_cli = AppGroup("db", help="The SQL store.")


@db_cli.command("init")
@_friendly
def db_init() -> None:
    """Create the tables (idempotent; also upgrades an original `platform` table)."""
    db = _container().db
    changed = db.init_schema()
    extra = f" (added {', '.join(changed)})" if changed else ""
    click.echo(f"database ready: {db.description}{extra}")


