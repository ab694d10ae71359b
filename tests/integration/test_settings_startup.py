"""A bad setting stops the server (pighand-token serve, gunicorn) and every command at start-up with one
line naming it; good settings reach both entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, free_port, run_cli

BAD_SETTINGS = [
    ("save_model", "bogus", "auto, all"),
    ("port", "abc", "whole number"),
    ("corn_interval", "-1", ">= 1"),
    ("no_proxy", "internal.example.com,host:port", "'host:port' has a port that is not a number"),
    ("redis_compat", "wechatpy", "no Redis is configured"),
]


def assert_one_line_naming(stderr: str, name: str, value: str, allowed: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"{name}=" in lines[0] and value in lines[0] and allowed in lines[0]
    assert "Traceback" not in stderr


SERVERS = {"serve": [sys.executable, "-m", "pighand_token", "serve"],
           "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]}


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize(("name", "value", "allowed"), BAD_SETTINGS, ids=[n for n, _, _ in BAD_SETTINGS])
def test_the_server_refuses_to_start_on_a_bad_setting(tmp_path: Path, name: str, value: str, allowed: str,
                                                      server: str) -> None:
    env = clean_env(sqlite_path=tmp_path / "pighand.sqlite3", port=free_port(), workers=1)
    env[f"PIGHAND_{name.upper()}"] = value
    started = time.monotonic()
    result = subprocess.run(SERVERS[server], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert time.monotonic() - started < 10
    assert result.returncode != 0
    assert_one_line_naming(result.stderr, name, value, allowed)
    assert result.stdout == ""


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_bad_proxy_url_stops_the_server_naming_it_without_its_password(tmp_path: Path, server: str) -> None:
    env = clean_env(sqlite_path=tmp_path / "pighand.sqlite3", port=free_port(), workers=1,
                    platform_http_proxy="socks5://egress:Pr0xy-S3cret@proxy.internal:1080")
    result = subprocess.run(SERVERS[server], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert_one_line_naming(result.stderr, "platform_http_proxy", "'socks5://***@proxy.internal:1080'",
                           "http://[user:password@]host:port")
    assert "Pr0xy-S3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_SETTINGS, ids=[n for n, _, _ in BAD_SETTINGS])
def test_flask_commands_refuse_to_start_on_a_bad_setting(tmp_path: Path, name: str, value: str, allowed: str) -> None:
    database = tmp_path / "pighand.sqlite3"
    env = clean_env(sqlite_path=database)
    env[f"PIGHAND_{name.upper()}"] = value
    result = run_cli("platform", "list", env=env)
    assert result.returncode != 0
    assert_one_line_naming(result.stderr, name, value, allowed)
    assert result.stdout == ""
    assert not database.exists()


def test_an_unknown_pighand_env_stops_flask_with_one_line(tmp_path: Path) -> None:
    env = clean_env(sqlite_path=tmp_path / "pighand.sqlite3")
    env["PIGHAND_ENV"] = "staging"
    result = run_cli("db", "init", env=env)
    assert result.returncode != 0
    assert_one_line_naming(result.stderr, "PIGHAND_ENV", "'staging'", "development, testing, production")


def test_flask_app_variable_works_like_the_app_option(tmp_path: Path) -> None:
    flask = shutil.which("flask", path=str(Path(sys.executable).parent)) or shutil.which("flask")
    assert flask is not None, "the flask command is not installed"
    env = clean_env(sqlite_path=tmp_path / "pighand.sqlite3")
    env["FLASK_APP"] = "wsgi"
    added = subprocess.run([flask, "platform", "add", "wechat", "wx_env_app", "--secret", "s-env"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    listed = subprocess.run([flask, "platform", "list"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "wx_env_app" in listed.stdout and "s-env" not in listed.stdout + listed.stderr
    assert (tmp_path / "pighand.sqlite3").exists()


def test_the_settings_reach_gunicorn_bind_address(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(sqlite_path=tmp_path / "pighand.sqlite3", port=port, host="127.0.0.1")
    result = subprocess.run([sys.executable, "-c",
                             "import runpy; c = runpy.run_path('gunicorn.conf.py'); print(c['bind'])"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([f"127.0.0.1:{port}"])
