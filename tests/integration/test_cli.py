"""The CLI as operators run it: ``python -m flask --app wsgi ...`` in its own
process, on SQLite and on MariaDB, against the fake WeChat over HTTP."""

from __future__ import annotations

import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pighand_token.core.crypto import Cipher
from tests.conftest import MYSQL, ROOT, clean_env, mysql_rows, pg_rows, postgres_url, run_cli, run_flask
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
STABLE = "/cgi-bin/stable_token"


@dataclass
class Cli:
    """Runs pighand-token commands on one store and reads that store directly."""

    kind: str
    env: dict[str, str]
    sqlite_path: Path
    database: str

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def fails(self, *args: str, hidden: Sequence[str] = ()) -> str:
        """Run a command that must fail with one 'Error:' line, showing none of
        the `hidden` strings; return that line."""
        result = self(*args)
        assert result.returncode != 0, f"{args} succeeded:\n{result.stdout}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert "Traceback" not in result.stderr
        no_secret(result, *hidden)
        return errors[0]

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "mysql":
            return mysql_rows(self.database, query.replace("?", "%s"), tuple(params))
        if self.kind == "postgres":
            return pg_rows(self.database, query.replace("?", "%s"), tuple(params))
        conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
        try:
            return list(conn.execute(query, tuple(params)).fetchall())
        finally:
            conn.close()

    def credentials(self) -> list[tuple[str, str, str]]:
        """Rows of the platform table, secrets decrypted with the key the
        commands generated in the instance folder."""
        if "platform" not in self.tables():
            return []
        rows = self.sql("SELECT platform, appid, secret FROM platform ORDER BY platform, appid")
        return [(str(p), str(a), self.decrypt(str(s))) for p, a, s in rows]

    def decrypt(self, stored: str) -> str:
        key_file = self.sqlite_path.parent / "encryption.key"
        return Cipher([key_file.read_text().strip()]).decrypt(stored) if key_file.exists() else stored

    def tables(self) -> set[str]:
        if self.kind == "mysql":
            return {str(r[0]) for r in self.sql("SHOW TABLES")}
        if self.kind == "postgres":
            return {str(r[0]) for r in self.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        return {str(r[0]) for r in self.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> list[str]:
        if self.kind in ("mysql", "postgres"):
            schema = "?" if self.kind == "mysql" else "current_schema()"
            return [str(r[0]) for r in self.sql(
                f"SELECT column_name FROM information_schema.columns WHERE table_schema = {schema} "
                "AND table_name = ? ORDER BY ordinal_position",
                (self.database, table) if self.kind == "mysql" else (table,))]
        return [str(r[1]) for r in self.sql(f"PRAGMA table_info({table})")]


# Commands that read or write the store run on each kind; the others (how a
# command reads its input and words its output) on SQLite alone: the stores
# are the same code under every command.
ONE_STORE = pytest.mark.parametrize("cli", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "mysql", "postgres"])
def cli(request: pytest.FixtureRequest, tmp_path: Path, wechat: FakeWeChat) -> Cli:
    kind = str(request.param)
    sqlite_path = tmp_path / "pighand.sqlite3"
    settings: dict[str, Any] = {"sqlite_path": sqlite_path, "wechat_api_base": wechat.base_url,
                                "is_enable_schedule": False, "upstream_timeout": 2}
    database = ""
    if kind == "mysql":
        database = request.getfixturevalue("mysql_db")
        settings.update(mysql_host=MYSQL["host"], mysql_port=MYSQL["port"], mysql_username=MYSQL["user"],
                        mysql_password=MYSQL["password"], mysql_database=database)
    if kind == "postgres":
        database = request.getfixturevalue("pg_db")
        settings.update(database_url=postgres_url(database))
    return Cli(kind, clean_env(**settings), sqlite_path, database)


def no_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr


# -- db init -------------------------------------------------------------------------
def test_db_init_creates_platform_and_token_tables_and_is_idempotent(cli: Cli) -> None:
    first = cli.ok("db", "init")
    assert "database ready" in first
    assert {"platform", "token"} <= cli.tables()
    assert {"platform", "appid", "secret", "created_at", "updated_at"} <= set(cli.columns("platform"))
    assert {"platform", "appid", "value", "expires_at", "fetched_at"} <= set(cli.columns("token"))
    second = cli.ok("db", "init")
    assert "database ready" in second and "added" not in second
    assert {"platform", "token"} <= cli.tables()


ORIGINAL_PLATFORM_TABLE = {
    "sqlite": "CREATE TABLE platform (id INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT, appid TEXT, secret TEXT)",
    "mysql": "CREATE TABLE platform (id INT AUTO_INCREMENT PRIMARY KEY, platform VARCHAR(32), "
             "appid VARCHAR(64), secret VARCHAR(128))",
    "postgres": "CREATE TABLE platform (id SERIAL PRIMARY KEY, platform VARCHAR(32), appid VARCHAR(64), "
                "secret VARCHAR(128))",
}


def test_db_init_upgrades_an_original_platform_table_and_keeps_its_rows(cli: Cli, wechat: FakeWeChat) -> None:
    cli.sql(ORIGINAL_PLATFORM_TABLE[cli.kind])
    cli.sql("INSERT INTO platform (platform, appid, secret) VALUES (?, ?, ?)", ("wechat", APP, SECRET))
    out = cli.ok("db", "init")
    assert "platform.created_at" in out and "platform.updated_at" in out
    assert cli.columns("platform")[:4] == ["id", "platform", "appid", "secret"]
    assert {"created_at", "updated_at"} <= set(cli.columns("platform"))
    assert cli.credentials() == [("wechat", APP, SECRET)]
    assert "added" not in cli.ok("db", "init")
    listed = cli("platform", "list")
    assert listed.returncode == 0 and APP in listed.stdout
    no_secret(listed, SECRET)
    assert wechat.is_valid(cli.ok("token", "get", "wechat", APP).strip())


# -- platform add / list / remove ----------------------------------------------------
def test_platform_add_stores_the_secret_and_list_never_shows_it(cli: Cli) -> None:
    added = cli("platform", "add", "wechat", APP, "--secret", SECRET)
    assert added.returncode == 0 and f"added wechat {APP}" in added.stdout
    no_secret(added, SECRET)
    cli.ok("platform", "add", "wechat", "wx_app_2", "--secret", "other-secret-22")
    assert cli.credentials() == [("wechat", APP, SECRET), ("wechat", "wx_app_2", "other-secret-22")]
    listed = cli("platform", "list")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["wechat", APP] in [row[:2] for row in rows]
    assert ["wechat", "wx_app_2"] in [row[:2] for row in rows]
    assert "2 credential(s)" in listed.stdout
    no_secret(listed, SECRET, "other-secret-22")


@ONE_STORE
def test_secret_on_the_command_line_warns_and_secret_file_stdin_does_not(cli: Cli) -> None:
    given = cli("platform", "add", "wechat", APP, "--secret", SECRET)
    assert given.returncode == 0
    assert ("warning: --secret puts the secret in the process list and the shell history; "
            "use --secret-file - (stdin) or the prompt instead") in given.stderr.splitlines()
    no_secret(given, SECRET)
    piped = cli("platform", "add", "wechat", "wx_app_2", "--secret-file", "-", input="piped-secret-77\n")
    assert piped.returncode == 0 and "process list" not in piped.stderr, piped.stderr
    assert ("wechat", "wx_app_2", "piped-secret-77") in cli.credentials()


@ONE_STORE
def test_flask_app_wsgi_carries_the_same_commands(cli: Cli) -> None:
    added = run_flask("platform", "add", "wechat", APP, "--secret", SECRET, env=cli.env)
    assert added.returncode == 0 and f"added wechat {APP}" in added.stdout, added.stderr
    listed = cli.ok("platform", "list")
    assert "1 credential(s)" in listed
    flask_listed = run_flask("platform", "list", env=cli.env)
    assert flask_listed.returncode == 0 and flask_listed.stdout == listed
    no_secret(flask_listed, SECRET)


@ONE_STORE
def test_console_script_is_the_same_command(cli: Cli) -> None:
    script = shutil.which("pighand-token")
    assert script is not None, "pip install -e . installs the pighand-token command"
    result = subprocess.run([script, "platform", "list"], cwd=ROOT, env=cli.env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "0 credential(s)" in result.stdout, result.stderr
    helped = subprocess.run([script, "--help"], cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=60)
    for command in ("serve", "db", "platform", "token", "scheduler", "client", "secrets", "audit", "alipay"):
        assert f"  {command} " in helped.stdout


@ONE_STORE
def test_platform_add_without_secret_prompts_and_reads_it_from_stdin(cli: Cli) -> None:
    typed = "typed-on-stdin-9f8e"
    result = cli("platform", "add", "wechat", APP, input=typed + "\n")
    assert result.returncode == 0, result.stderr
    assert "secret" in (result.stdout + result.stderr).lower()
    no_secret(result, typed)
    assert cli.credentials() == [("wechat", APP, typed)]


def run_in_terminal(args: Sequence[str], env: dict[str, str], typed: str) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, type `typed` once it asks for
    a secret, and return its exit code and everything the terminal showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pighand_token", *args], cwd=ROOT, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    shown = b""
    typed_yet = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not typed_yet and b"secret:" in shown.lower():
                os.write(master, typed.encode() + b"\n")
                typed_yet = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@ONE_STORE
def test_platform_add_on_a_terminal_does_not_echo_the_typed_secret(cli: Cli) -> None:
    typed = "typed-on-a-tty-4c2b"
    code, shown = run_in_terminal(["platform", "add", "wechat", APP], cli.env, typed)
    assert code == 0, shown
    assert "secret" in shown.lower() and f"added wechat {APP}" in shown
    assert typed not in shown
    assert cli.credentials() == [("wechat", APP, typed)]


@ONE_STORE
def test_platform_add_refuses_an_unknown_platform_and_lists_the_supported_ones(cli: Cli) -> None:
    error = cli.fails("platform", "add", "myspace", APP, "--secret", SECRET, hidden=[SECRET])
    assert "'myspace'" in error and "supported platforms:" in error and "wechat" in error
    assert cli.credentials() == []


def test_platform_add_refuses_a_duplicate_unless_update_replaces_the_secret(cli: Cli) -> None:
    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET)
    error = cli.fails("platform", "add", "wechat", APP, "--secret", "second-secret")
    assert "already exists" in error and "--update" in error
    assert cli.credentials() == [("wechat", APP, SECRET)]
    cli.ok("platform", "add", "wechat", APP, "--secret", "second-secret", "--update")
    assert cli.credentials() == [("wechat", APP, "second-secret")]


def test_platform_remove_deletes_credential_and_token_and_a_missing_one_is_an_error(cli: Cli) -> None:
    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET)
    cli.ok("token", "get", "wechat", APP)
    assert len(cli.sql("SELECT value FROM token WHERE appid = ?", (APP,))) == 1
    assert f"removed wechat {APP}" in cli.ok("platform", "remove", "wechat", APP)
    assert cli.credentials() == []
    assert cli.sql("SELECT value FROM token WHERE appid = ?", (APP,)) == []
    error = cli.fails("platform", "remove", "wechat", APP)
    assert APP in error


# -- platform import -----------------------------------------------------------------
ROWS = [("wechat", "imp_1", "sec-one"), ("wechat", "imp_2", "sec-two"), ("wechat", "imp_3", "sec-three")]


def write_rows(path: Path, fmt: str, rows: Sequence[tuple[str, str, str]]) -> Path:
    """CSV (header on line 1), JSON array ('[' on line 1) or JSON lines: in
    every format the n-th row (1-based) is on line n + 1, except JSON lines,
    where it is on line n."""
    objects = [{"platform": p, "appid": a, "secret": s} for p, a, s in rows]
    if fmt == "csv":
        text = "platform,appid,secret\n" + "".join(f"{p},{a},{s}\n" for p, a, s in rows)
    elif fmt == "json":
        text = "[\n" + ",\n".join(json.dumps(o) for o in objects) + "\n]\n"
    else:
        text = "".join(json.dumps(o) + "\n" for o in objects)
    path.write_text(text)
    return path


def line_of(fmt: str, row: int) -> int:
    return row if fmt == "jsonl" else row + 1


FORMATS = ["csv", "json", "jsonl"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_platform_import_adds_every_row(cli: Cli, tmp_path: Path, fmt: str) -> None:
    path = write_rows(tmp_path / f"rows.{fmt}", fmt, ROWS)
    result = cli("platform", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "imported 3" in result.stdout
    no_secret(result, *(s for _, _, s in ROWS))
    assert cli.credentials() == sorted(ROWS)


@ONE_STORE
@pytest.mark.parametrize("fmt", FORMATS)
def test_platform_import_is_all_or_nothing_and_names_the_bad_line(cli: Cli, tmp_path: Path, fmt: str) -> None:
    bad = [*ROWS[:2], ("myspace", "imp_3", "sec-three"), ("wechat", "imp_4", "sec-four")]
    path = write_rows(tmp_path / f"bad.{fmt}", fmt, bad)
    error = cli.fails("platform", "import", str(path))
    assert f"line {line_of(fmt, 3)}:" in error and "'myspace'" in error
    assert cli.credentials() == []


@ONE_STORE
def test_platform_import_names_the_line_of_a_missing_field(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("platform,appid,secret\nwechat,imp_1,sec-one\nwechat,imp_2,sec-two\nwechat,imp_3\n")
    error = cli.fails("platform", "import", str(path))
    assert "line 4:" in error and "secret" in error
    assert cli.credentials() == []


@ONE_STORE
def test_platform_import_names_both_lines_of_a_duplicate_in_the_file(cli: Cli, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "dup.csv", "csv", [*ROWS, ("wechat", "imp_1", "again")])
    error = cli.fails("platform", "import", str(path))
    assert "line 5:" in error and "imp_1" in error and "line 2" in error
    assert cli.credentials() == []


def test_platform_import_refuses_existing_rows_by_line_unless_update(cli: Cli, tmp_path: Path) -> None:
    cli.ok("platform", "add", "wechat", "imp_2", "--secret", "old-secret")
    path = write_rows(tmp_path / "rows.json", "json", ROWS)
    error = cli.fails("platform", "import", str(path))
    assert "line 3:" in error and "imp_2" in error and "already exists" in error
    assert cli.credentials() == [("wechat", "imp_2", "old-secret")]
    result = cli("platform", "import", str(path), "--update")
    assert result.returncode == 0, result.stderr
    assert cli.credentials() == sorted(ROWS)


@ONE_STORE
def test_platform_import_reads_nothing_after_a_closed_json_array(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "two-arrays.json"
    path.write_text(json.dumps([dict(zip(("platform", "appid", "secret"), ROWS[0], strict=True))]) + "\n"
                    + json.dumps([dict(zip(("platform", "appid", "secret"), ROWS[1], strict=True))]) + "\n")
    error = cli.fails("platform", "import", str(path))
    assert "line 2:" in error
    assert cli.credentials() == []


@ONE_STORE
def test_platform_import_names_the_line_of_text_that_is_not_utf8(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"platform,appid,secret\nwechat,imp_1,sec-one\nwechat,imp_2,s\xe9c\n")
    error = cli.fails("platform", "import", str(path))
    assert "line 3:" in error and "UTF-8" in error
    assert cli.credentials() == []


# -- token ---------------------------------------------------------------------------
def test_token_get_prints_the_platform_token_and_refresh_prints_a_new_one(cli: Cli, wechat: FakeWeChat) -> None:
    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET)
    got = cli("token", "get", "wechat", APP)
    assert got.returncode == 0
    token = got.stdout.strip()
    assert wechat.is_valid(token) and token == wechat.current_token(APP)
    no_secret(got, SECRET)
    assert cli.ok("token", "get", "wechat", APP).strip() == token
    assert wechat.count(STABLE) == 1  # the second process read the stored token

    refreshed = cli.ok("token", "refresh", "wechat", APP).strip()
    assert refreshed != token
    assert wechat.is_valid(refreshed)
    assert cli.ok("token", "get", "wechat", APP).strip() == refreshed


@ONE_STORE
def test_token_get_for_an_appid_without_credential_is_one_error_line(cli: Cli, wechat: FakeWeChat) -> None:
    error = cli.fails("token", "get", "wechat", "wx_nobody")
    assert "wx_nobody" in error and "platform add" in error
    assert wechat.count() == 0


@ONE_STORE
def test_token_errors_from_the_platform_are_one_line_without_the_secret(cli: Cli, wechat: FakeWeChat) -> None:
    cli.ok("platform", "add", "wechat", "wx_not_on_wechat", "--secret", "secret-of-nobody")
    assert "40013" in cli.fails("token", "get", "wechat", "wx_not_on_wechat", hidden=["secret-of-nobody"])

    cli.ok("platform", "add", "wechat", APP, "--secret", "wrong-secret-123")
    assert "40125" in cli.fails("token", "refresh", "wechat", APP, hidden=["wrong-secret-123", SECRET])
    assert cli.sql("SELECT value FROM token WHERE appid = ?", (APP,)) == []

    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET, "--update")
    assert wechat.is_valid(cli.ok("token", "get", "wechat", APP).strip())


# -- scheduler -----------------------------------------------------------------------
def test_scheduler_tick_refreshes_missing_and_due_tokens_only(cli: Cli, wechat: FakeWeChat) -> None:
    wechat.add_app("wx_app_2", "s3cr3t-wx-2")
    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET)
    cli.ok("platform", "add", "wechat", "wx_app_2", "--secret", "s3cr3t-wx-2")

    first = cli.ok("scheduler", "tick")
    assert "2 refreshed, 0 fresh, 0 failed" in first
    stored = {appid: cli.decrypt(value) for appid, value in cli.sql("SELECT appid, value FROM token")}
    assert set(stored) == {APP, "wx_app_2"} and all(wechat.is_valid(v) for v in stored.values())
    assert wechat.count(STABLE) == 2

    assert "0 refreshed, 2 fresh, 0 failed" in cli.ok("scheduler", "tick")
    assert wechat.count(STABLE) == 2

    soon = time.time() + 60  # inside the 300 s margin: due
    cli.sql("UPDATE token SET expires_at = ? WHERE appid = ?", (soon, "wx_app_2"))
    third = cli.ok("scheduler", "tick")
    assert "1 refreshed, 1 fresh, 0 failed" in third and "wx_app_2" in third
    assert wechat.count(STABLE, appid="wx_app_2") == 2 and wechat.count(STABLE, appid=APP) == 1
    (expires_at,) = cli.sql("SELECT expires_at FROM token WHERE appid = ?", ("wx_app_2",))[0]
    assert float(expires_at) > soon + 3600


@ONE_STORE
def test_scheduler_tick_reports_a_failed_credential_and_exits_non_zero(cli: Cli, wechat: FakeWeChat) -> None:
    cli.ok("platform", "add", "wechat", APP, "--secret", SECRET)
    cli.ok("platform", "add", "wechat", "wx_not_on_wechat", "--secret", "secret-of-nobody")
    result = cli("scheduler", "tick")
    assert result.returncode != 0
    assert "1 refreshed, 0 fresh, 1 failed" in result.stdout
    assert "wx_not_on_wechat" in result.stdout and "40013" in result.stdout
    no_secret(result, "secret-of-nobody", SECRET)
    assert wechat.is_valid(cli.decrypt(cli.sql("SELECT value FROM token WHERE appid = ?", (APP,))[0][0]))


@ONE_STORE
def test_control_characters_from_a_platform_are_escaped_in_cli_output(cli: Cli, wechat: FakeWeChat) -> None:
    # A platform (or a proxy in front of it) answers an errmsg that would
    # retitle, clear and reorder the operator's terminal.
    hostile = "bad \x1b]0;owned\x07 \x1b[2J \u202eevil"
    cli.ok("platform", "add", "wechat", APP, "--secret-file", "-", input=SECRET + "\n")
    wechat.fail_with_errcode_next(50, 40013, hostile)
    outputs = [cli("token", "refresh", "wechat", APP), cli("scheduler", "tick"), cli("token", "status"),
               cli("audit", "tail")]
    for result in outputs:
        text = result.stdout + result.stderr
        assert not any(ch in text for ch in "\x1b\x07\u202e"), repr(text)
    assert "\\x1b]0;owned\\x07" in outputs[0].stderr  # one 'Error:' line, escaped
    assert "\\x1b[2J" in outputs[1].stdout and "\\u202eevil" in outputs[2].stdout
    assert "\\x1b]0;owned" in outputs[3].stdout
