"""``pighand-token platform``: platform credentials."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from flask.cli import AppGroup

from ..core.callbacks import CallbackProvider
from ..core.domain import Credential, valid_appid
from ..core.errors import PighandError
from .common import container as _container
from .common import friendly as _friendly
from .common import operator, secret_value

platform_cli = AppGroup("platform", help="Platform credentials (platform, appid, secret).")


def _check(platform: str, appid: str) -> None:
    platforms = _container().service.platforms()
    if platform not in platforms:
        raise click.ClickException(f"unknown platform {platform!r}; supported platforms: {', '.join(platforms)}")
    if not valid_appid(appid):
        raise click.ClickException("appid must be 1-128 characters of A-Z a-z 0-9 _ . : -")


def _credential_problem(platform: str, appid: str, secret: str) -> str | None:
    """What the platform's provider says is wrong with this credential."""
    try:
        _container().service.providers[platform].check_credential(appid, secret)
    except PighandError as exc:
        return exc.message
    return None


@platform_cli.command("add")
@click.argument("platform")
@click.argument("appid")
@click.option("--secret", help="The app secret (shown in the process list: prefer the prompt or --secret-file -); "
                                "prompted for (hidden) when neither is given.")
@click.option("--secret-file", type=click.File("r", encoding="utf-8"),
              help="Read the secret from a file (e.g. a PEM private key); - for stdin.")
@click.option("--callback-token", help="Third-party apps (wechat_component, wecom_suite, dingtalk_suite): the "
                                        "callback Token from the platform's console; prompted for (hidden) "
                                        "when omitted.")
@click.option("--encoding-aes-key", help="wechat_component, wecom_suite: the callback EncodingAESKey (43 characters); "
                                          "prompted for (hidden) when omitted.")
@click.option("--aes-key", help="dingtalk_suite: the callback aes_key (43 characters); prompted for (hidden) when "
                                 "omitted.")
@click.option("--encrypt-key", help="feishu_store, lark_store: the event Encrypt Key (may be empty: the app then "
                                     "receives plain events); prompted for (hidden) when omitted.")
@click.option("--verification-token", help="feishu_store, lark_store: the event Verification Token; prompted for "
                                            "(hidden) when omitted.")
@click.option("--update", is_flag=True, help="Replace the secret if the credential exists.")
@_friendly
def platform_add(platform: str, appid: str, secret: str | None, secret_file: Any, update: bool,
                 **callback: str | None) -> None:
    """Add a credential."""
    _check(platform, appid)
    secret = secret_value("secret", secret, secret_file)
    given = {name.replace("_", "-"): value for name, value in callback.items() if value is not None}
    provider = _container().service.providers[platform]
    if isinstance(provider, CallbackProvider):
        extra = sorted(set(given) - set(provider.callback_secrets))
        if extra:
            raise click.ClickException(f"{platform} takes no {', '.join('--' + name for name in extra)}; its "
                                       f"callback options are {', '.join('--' + n for n in provider.callback_secrets)}")
        # The platform signs (and encrypts) what it pushes with these.
        secret = provider.seal_secrets(secret, {
            name: secret_value(name, given.get(name), None,
                               allow_empty=name in provider.optional_callback_secrets)
            for name in provider.callback_secrets})
    elif given:
        raise click.ClickException(f"{platform} takes no callback: {', '.join('--' + name for name in sorted(given))} "
                                   "are for third-party apps")
    problem = _credential_problem(platform, appid, secret)
    if problem:
        raise click.ClickException(problem)
    container = _container()
    container.credentials.add(Credential(platform, appid, secret), update=update)
    if update:
        # A replaced secret starts clean: no token or failure cooldown of the old one.
        container.service.forget(platform, appid)
    _container().audit.record("credential.add", "ok: secret replaced" if update else "ok", client=operator(),
                              platform=platform, appid=appid)
    click.echo(f"{'saved' if update else 'added'} {platform} {appid}")


@platform_cli.command("list")
@_friendly
def platform_list() -> None:
    """List credentials (never their secrets)."""
    repo = _container().credentials
    stamps = repo.timestamps()
    rows = [("PLATFORM", "APPID", "CREATED", "UPDATED")]
    # Secrets are not even decrypted for this.
    for platform, appid in repo.keys():
        created, updated = stamps.get((platform, appid), (None, None))
        rows.append((platform, appid, str(created or "-"), str(updated or "-")))
    _table(rows)
    click.echo(f"{len(rows) - 1} credential(s)")


@platform_cli.command("remove")
@click.argument("platform")
@click.argument("appid")
@_friendly
def platform_remove(platform: str, appid: str) -> None:
    """Remove a credential and its stored tokens."""
    container = _container()
    try:
        credential = container.credentials.get(platform, appid)
    except PighandError:
        credential = None  # e.g. not decryptable with the current keys: remove it all the same
    provider = container.service.providers.get(platform)
    # Every token this credential serves (Alipay: one per merchant).
    served = provider.token_appids(appid) if credential is not None and provider is not None else [appid]
    if not container.credentials.remove(platform, appid):
        raise click.ClickException(f"no credential for {platform} appid {appid!r}")
    for token_appid in {appid, *served}:
        container.service.forget(platform, token_appid)
    # Tokens this credential serves under another platform (a component's
    # authorizers, with their tickets): cached, they would be served on.
    for other in container.service.providers.values():
        if credential is not None and getattr(other, "credential_platform", None) == platform:
            for token_appid in other.token_appids(appid):
                container.service.forget(other.platform, token_appid)
                for ticket_type in getattr(other, "ticket_types", ()):
                    container.service.forget(f"{other.platform}_{ticket_type}_ticket", token_appid)
    container.audit.record("credential.remove", "ok", client=operator(), platform=platform, appid=appid)
    click.echo(f"removed {platform} {appid}")


@platform_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--update", is_flag=True, help="Replace secrets of credentials that exist.")
@_friendly
def platform_import(file: Path, update: bool) -> None:
    """Import credentials from CSV (header platform,appid,secret) or JSON
    (a list of objects, or one object per line). All rows or none."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise click.ClickException(f"{file}: line {line}: not UTF-8 text") from None
    rows = list(_json_rows(text, file) if text.lstrip()[:1] in ("[", "{") else _csv_rows(text, file))
    if not rows:
        raise click.ClickException(f"{file}: no rows")
    platforms = _container().service.platforms()
    seen: dict[tuple[str, str], int] = {}
    credentials = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise click.ClickException(f"{file}: line {line}: expected an object with platform, appid, secret")
        platform, appid, secret = (row.get(k) for k in ("platform", "appid", "secret"))
        for name, value in (("platform", platform), ("appid", appid), ("secret", secret)):
            if value is not None and not isinstance(value, str):
                raise click.ClickException(f"{file}: line {line}: {name} must be a string, not {type(value).__name__}")
            if not isinstance(value, str) or not value.strip():
                raise click.ClickException(f"{file}: line {line}: {name} is missing or empty")
        assert isinstance(platform, str) and isinstance(appid, str) and isinstance(secret, str)
        platform, appid, secret = platform.strip(), appid.strip(), secret.strip()
        if platform not in platforms:
            raise click.ClickException(
                f"{file}: line {line}: unknown platform {platform!r}; supported platforms: {', '.join(platforms)}")
        if not valid_appid(appid):
            raise click.ClickException(f"{file}: line {line}: appid must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        problem = _credential_problem(platform, appid, secret)
        if problem:
            raise click.ClickException(f"{file}: line {line}: {problem}")
        if (platform, appid) in seen:
            raise click.ClickException(
                f"{file}: line {line}: {platform} {appid} repeats line {seen[(platform, appid)]}")
        seen[(platform, appid)] = line
        credentials.append(Credential(platform, appid, secret))
    repo = _container().credentials
    if not update:
        for c in credentials:
            if repo.get(c.platform, c.appid) is not None:
                raise click.ClickException(
                    f"{file}: line {seen[(c.platform, c.appid)]}: {c.platform} {c.appid} already exists "
                    "(use --update to replace it); nothing was imported")
    count = repo.add_many(credentials, update=update)
    if update:
        for c in credentials:
            _container().service.forget(c.platform, c.appid)
    _container().audit.record("credential.import", f"ok: {count} from {file.name}", client=operator())
    click.echo(f"imported {count} credential(s)")


def _csv_rows(text: str, file: Path) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"platform", "appid", "secret"} - set(reader.fieldnames or [])
    if missing:
        raise click.ClickException(
            f"{file}: line 1: CSV header must name platform, appid, secret (missing {', '.join(sorted(missing))})")
    for row in reader:
        if any((v or "").strip() for v in row.values() if isinstance(v, str)):
            yield reader.line_num, row


def _json_rows(text: str, file: Path) -> Iterator[tuple[int, Any]]:
    """Objects with the line each starts on, from a JSON array or JSON Lines."""
    decoder = json.JSONDecoder()
    pos = 0
    stripped = text.lstrip()
    in_array = stripped.startswith("[")
    if in_array:
        pos = text.index("[") + 1

    def skip(pos: int, separators: str) -> int:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        return pos

    while True:
        pos = skip(pos, "," if in_array else "")
        if pos >= len(text):
            if in_array:
                raise click.ClickException(f"{file}: line {text.count(chr(10)) + 1}: JSON array is not closed")
            return
        if in_array and text[pos] == "]":
            rest = skip(pos + 1, "")
            if rest < len(text):
                raise click.ClickException(
                    f"{file}: line {text.count(chr(10), 0, rest) + 1}: unexpected text after the JSON array")
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{file}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        yield line, value


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


