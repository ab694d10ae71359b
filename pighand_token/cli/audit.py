"""``pighand-token audit``: the audit trail."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..core.errors import PighandError
from .common import container as _container
from .common import fail, printable, when

audit_cli = AppGroup("audit", help="The audit trail.")


@audit_cli.command("tail")
@click.option("-n", "count", type=click.IntRange(1, 10_000), default=20, show_default=True)
def audit_tail(count: int) -> None:
    """The latest audit entries, oldest first."""
    try:
        entries = _container().audit.tail(count)
    except PighandError as exc:
        raise fail(exc) from None
    for e in entries:
        app = f"{e.platform}/{e.appid}" if e.platform else "-"
        click.echo(printable(f"{when(e.at)}  {e.action:<16} {app:<32} client={e.client or '-'} "
                             f"request={e.request_id or '-'} from={e.remote_addr or '-'}  {e.outcome}"))
