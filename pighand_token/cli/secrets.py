"""``pighand-token secrets``: encryption of stored secrets."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..adapters.sql import reencrypt
from ..core.errors import PighandError
from .common import container as _container
from .common import fail, operator

secrets_cli = AppGroup("secrets", help="Encryption of stored secrets.")


def _reencrypt(action: str, only_plaintext: bool) -> None:
    container = _container()
    try:
        changed = reencrypt(container.db, container.cipher, only_plaintext=only_plaintext)
    except PighandError as exc:
        container.audit.record(action, f"failed: {exc.message}", client=operator())
        raise fail(exc) from None
    summary = ", ".join(f"{table}: {count}" for table, count in sorted(changed.items())) or "nothing to do"
    container.audit.record(action, f"ok: {summary}", client=operator())
    click.echo(f"{sum(changed.values())} value(s) re-encrypted with the first key ({summary})")


@secrets_cli.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first encryption_key."""
    _reencrypt("secrets.rotate", only_plaintext=False)


@secrets_cli.command("encrypt")
def secrets_encrypt() -> None:
    """Encrypt plaintext secrets (rows written by the original service)."""
    _reencrypt("secrets.encrypt", only_plaintext=True)


