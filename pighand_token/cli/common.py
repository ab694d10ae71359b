"""What every command group shares."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from flask import current_app

from ..core.errors import PighandError
from ..logs import printable

__all__ = ["container", "fail", "friendly", "operator", "printable", "secret_value", "when"]

F = TypeVar("F", bound=Callable[..., Any])


def container() -> Any:
    return current_app.extensions["pighand"]


def friendly(fn: F) -> F:
    """Show a PighandError as one 'Error: ...' line and exit 1."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PighandError as exc:
            raise click.ClickException(printable(exc.message)) from None
    return wrapper  # type: ignore[return-value]


def operator() -> str:
    """Who ran a command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def fail(exc: PighandError) -> click.ClickException:
    return click.ClickException(printable(exc.message))


def when(at: float | None) -> str:
    """An epoch time for a listing, in UTC."""
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def secret_value(name: str, given: str | None, file: Any, *, allow_empty: bool = False) -> str:
    """A secret from ``--NAME`` (with a warning: the process list and shell
    history show it), ``--NAME-file`` (- for stdin) or a hidden prompt."""
    if given is not None and file is not None:
        raise click.ClickException(f"give --{name} or --{name}-file, not both")
    if given is not None:
        click.echo(f"warning: --{name} puts the {name} in the process list and the shell history; "
                   f"use --{name}-file - (stdin) or the prompt instead", err=True)
        value = given
    elif file is not None:
        value = file.read()
    else:
        value = click.prompt(name, hide_input=True, default="" if allow_empty else None,
                             show_default=False)
    value = value.strip()
    if not value and not allow_empty:
        raise click.ClickException(f"the {name} must not be empty")
    return value
