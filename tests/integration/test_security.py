"""Callers authenticate with keys, secrets are encrypted at rest, refreshes
are rate-limited and audited, and no secret leaks."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet

from pighand_token.app import create_app
from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.domain import Client, Credential
from tests.conftest import Server, app_overrides, clean_env, run_cli, served
from tests.fakes.wechat import STABLE_PATH, FakeWeChat

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"


def add_client(app: Any, name: str, *scopes: str) -> str:
    key = new_key()
    container = app.extensions["pighand"]
    container.clients.repo.add(Client(name, hash_key(key), scopes, time.time()))
    container.clients.invalidate()
    return key


def secured_app(wechat: FakeWeChat, tmp_path: Path, **extra: Any) -> Any:
    """An app with keys required; served by the shipped server where the
    test runs with serving_path "served"."""
    overrides = {"sqlite_path": str(tmp_path / "p.sqlite3"),
                 **app_overrides(wechat, **{"auth_required": True, **extra})}
    app = create_app(overrides=overrides)
    app.extensions["pighand"].credentials.add(Credential("wechat", APP, SECRET))
    return served(app, overrides, tmp_path)


# -- keys and scopes -----------------------------------------------------------------
def test_missing_or_unknown_key_is_401_with_www_authenticate(wechat: FakeWeChat, tmp_path: Path,
                                                             serving_path: str) -> None:
    client = secured_app(wechat, tmp_path).test_client()
    for headers in ({}, {"Authorization": "Bearer pht_nope"}, {"X-Api-Key": "nope"}, {"Authorization": "Basic x"}):
        answer = client.get(f"/token/wechat/{APP}", headers=headers)
        assert answer.status_code == 401 and answer.get_json()["data"] is None
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert wechat.count() == 0


def test_key_in_either_header_works_inside_its_scope_only(wechat: FakeWeChat, tmp_path: Path,
                                                          serving_path: str) -> None:
    app = secured_app(wechat, tmp_path)
    app.extensions["pighand"].credentials.add(Credential("wechat", "wx_other", "other-secret"))
    key = add_client(app, "billing", f"wechat:{APP}")
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get(f"/token/wechat/{APP}", headers={"X-Api-Key": key}).status_code == 200
    outside = client.get("/token/wechat/wx_other", headers={"X-Api-Key": key})
    assert outside.status_code == 403 and "billing" in outside.get_json()["error"]
    assert client.get(f"/ticket/wechat/{APP}/jsapi", headers={"X-Api-Key": key}).status_code == 200
    assert wechat.count(STABLE_PATH, appid="wx_other") == 0


def test_x_api_key_wins_over_any_authorization_header(wechat: FakeWeChat, tmp_path: Path,
                                                       serving_path: str) -> None:
    """One rule: X-Api-Key when sent, else Authorization: Bearer. A
    gateway's own Authorization (Basic or Bearer) neither helps nor hurts."""
    app = secured_app(wechat, tmp_path)
    key = add_client(app, "billing", f"wechat:{APP}")
    client = app.test_client()
    for authorization in ("Bearer pht_bogus", "Basic dXNlcjpwYXNz", f"Bearer {key}"):
        answer = client.get(f"/token/wechat/{APP}", headers={"Authorization": authorization, "X-Api-Key": key})
        assert answer.status_code == 200, authorization
    for wrong in ("pht_bogus", key[:-1]):
        answer = client.get(f"/token/wechat/{APP}", headers={"Authorization": f"Bearer {key}", "X-Api-Key": wrong})
        assert answer.status_code == 401 and answer.get_json()["data"] is None
        assert key not in answer.get_data(as_text=True)


def test_platform_wide_and_all_apps_scopes(wechat: FakeWeChat, tmp_path: Path, serving_path: str) -> None:
    app = secured_app(wechat, tmp_path)
    platform_key = add_client(app, "ops", "wechat:*")
    all_key = add_client(app, "root", "*")
    client = app.test_client()
    for key in (platform_key, all_key):
        assert client.get(f"/token/wechat/{APP}", headers={"X-Api-Key": key}).status_code == 200


def test_key_lifecycle_under_the_shipped_server(tmp_path: Path, wechat: FakeWeChat) -> None:
    settings = {"sqlite_path": str(tmp_path / "p.sqlite3"), "wechat_api_base": wechat.base_url,
                "is_enable_schedule": False}
    env = clean_env(**settings)
    assert run_cli("platform", "add", "wechat", APP, "--secret", SECRET, env=env).returncode == 0
    added = run_cli("client", "add", "billing", "--app", f"wechat:{APP}", env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert re.fullmatch(r"pht_[A-Za-z0-9_-]{40,}", key)  # the key, on a line by itself
    listing = run_cli("client", "list", env=env)
    assert "billing" in listing.stdout and f"wechat:{APP}" in listing.stdout and key not in listing.stdout
    with Server(tmp_path, workers=3, auth_required=True, **settings) as server:
        url = f"{server.base_url}/token/wechat/{APP}"
        assert requests.get(url, timeout=10).status_code == 401
        assert all(requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
                   for _ in range(6))
        # Last use is written off the request path, with the next reload of the view (2 s).
        deadline = time.monotonic() + 6
        while not re.search(r"billing\s+\S+\s+\S+ \S+\s+\d{4}-\d\d-\d\d",
                            last_used := run_cli("client", "list", env=env).stdout):
            assert time.monotonic() < deadline, last_used
            time.sleep(0.3)
        assert run_cli("client", "revoke", "billing", env=env).returncode == 0
        time.sleep(2.5)  # every worker reloads its view of the clients table within 2 s
        assert {requests.get(url, headers={"X-Api-Key": key}, timeout=10).status_code for _ in range(9)} == {401}
        log = server.log()
    assert key not in log and SECRET not in log
    audit = run_cli("audit", "tail", "-n", "10", env=env).stdout
    assert "client.add" in audit and "client.revoke" in audit and "credential.add" in audit


def test_client_add_refuses_no_scope_and_unknown_platforms(wechat: FakeWeChat, tmp_path: Path) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "p.sqlite3"))
    assert run_cli("client", "add", "x", env=env).returncode != 0
    bad = run_cli("client", "add", "x", "--app", "myspace:1", env=env)
    assert bad.returncode != 0 and "wechat" in bad.stderr
    assert run_cli("client", "add", "x", "--all-apps", env=env).returncode == 0
    assert run_cli("client", "add", "x", "--all-apps", env=env).returncode != 0  # duplicate


# -- encryption at rest ----------------------------------------------------------------
def test_secrets_and_tokens_are_encrypted_at_rest(wechat: FakeWeChat, tmp_path: Path) -> None:
    app = secured_app(wechat, tmp_path, auth_required=False)
    token = app.test_client().get(f"/token/wechat/{APP}").get_json()["data"]
    raw = (tmp_path / "p.sqlite3").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite3-*"))
    assert SECRET.encode() not in raw and token.encode() not in raw
    db = sqlite3.connect(tmp_path / "p.sqlite3")
    assert db.execute("SELECT secret FROM platform").fetchone()[0].startswith("fernet:")
    key_file = tmp_path / "encryption.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_rotation_with_two_keys(wechat: FakeWeChat, tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = {"sqlite_path": str(tmp_path / "p.sqlite3"), "wechat_api_base": wechat.base_url,
                "is_enable_schedule": False}
    assert run_cli("platform", "add", "wechat", APP, "--secret", SECRET,
                     env=clean_env(encryption_key=old, **settings)).returncode == 0
    # New key first, old one still there to decrypt: works before rotating.
    both = clean_env(encryption_key=f"{new},{old}", **settings)
    assert run_cli("token", "get", "wechat", APP, env=both).returncode == 0
    rotated = run_cli("secrets", "rotate", env=both)
    assert rotated.returncode == 0 and "platform: 1" in rotated.stdout and "token: 1" in rotated.stdout
    only_new = clean_env(encryption_key=new, **settings)
    assert run_cli("token", "get", "wechat", APP, env=only_new).returncode == 0
    only_old = run_cli("platform", "list", env=clean_env(encryption_key=old, **settings))
    assert only_old.returncode == 0  # listing needs no secret
    refused = run_cli("token", "refresh", "wechat", APP, env=clean_env(encryption_key=old, **settings))
    assert refused.returncode != 0 and "cannot be decrypted" in refused.stderr and SECRET not in refused.stderr
    assert "secrets.rotate" in run_cli("audit", "tail", env=only_new).stdout


def test_plaintext_rows_from_the_original_are_read_and_converted(wechat: FakeWeChat, tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    app = secured_app(wechat, tmp_path, auth_required=False)  # creates the tables
    db = sqlite3.connect(path)
    db.execute("INSERT INTO platform (platform, appid, secret) VALUES ('wechat', 'wx_node', 'node-plain-secret')")
    db.commit()
    wechat.add_app("wx_node", "node-plain-secret")
    assert app.test_client().get("/token/wechat/wx_node").status_code == 200
    env = clean_env(sqlite_path=str(path), wechat_api_base=wechat.base_url)
    converted = run_cli("secrets", "encrypt", env=env)
    assert converted.returncode == 0 and "platform: 1" in converted.stdout  # only the plaintext row
    secrets_stored = [r[0] for r in db.execute("SELECT secret FROM platform")]
    assert all(s.startswith("fernet:") for s in secrets_stored) and len(secrets_stored) == 2
    assert run_cli("token", "refresh", "wechat", "wx_node", env=env).returncode == 0


SERVERS = {"serve": ["python3", "-m", "pighand_token", "serve"],
           "gunicorn": ["python3", "-m", "gunicorn", "-c", "gunicorn.conf.py"]}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_production_refuses_to_start_without_a_key(tmp_path: Path, server: str) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "p.sqlite3"), port=3999)
    env["PIGHAND_ENV"] = "production"
    proc = subprocess.run(SERVERS[server], cwd=Path(__file__).parents[2],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if "encryption_key" in line]


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_production_refuses_to_start_with_auth_off_even_on_loopback(tmp_path: Path, server: str) -> None:
    # Behind a reverse proxy on the same host every caller is loopback.
    env = clean_env(sqlite_path=str(tmp_path / "p.sqlite3"), host="127.0.0.1", port=3999, auth_required=False,
                    encryption_key=Fernet.generate_key().decode())
    env["PIGHAND_ENV"] = "production"
    proc = subprocess.run(SERVERS[server], cwd=Path(__file__).parents[2],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "auth_required=False is invalid" in lines[0], proc.stderr


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_wrong_encryption_key_stops_the_start_with_one_line(tmp_path: Path, server: str) -> None:
    right, wrong = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = {"sqlite_path": str(tmp_path / "p.sqlite3"), "port": 3999, "auth_required": False}
    added = run_cli("platform", "add", "wechat", "wx_app_1", "--secret-file", "-", input="s3cr3t\n",
                    env=clean_env(**settings, encryption_key=right))
    assert added.returncode == 0, added.stderr
    proc = subprocess.run(SERVERS[server], cwd=Path(__file__).parents[2],
                          env=clean_env(**settings, encryption_key=wrong), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "encryption_key=<1 key(s)> is invalid: no configured key decrypts" in lines[0], lines
    assert right not in proc.stderr and wrong not in proc.stderr
    # The old key beside a new one (a rotation under way) opens them.
    with_both = run_cli("platform", "list", env=clean_env(**settings, encryption_key=f"{wrong},{right}"))
    assert with_both.returncode == 0 and "1 credential(s)" in with_both.stdout


@pytest.mark.parametrize("value", [",", " , "])
def test_an_encryption_key_naming_no_key_is_one_line(tmp_path: Path, value: str) -> None:
    result = run_cli("platform", "list", env=clean_env(sqlite_path=str(tmp_path / "p.sqlite3"), encryption_key=value))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pighand-token: bad setting: encryption_key={value!r} is invalid: it names no key; allowed values are one or "
        "more Fernet keys separated by commas"]


def test_readyz_reports_a_wrong_encryption_key_and_names_no_host(tmp_path: Path, wechat: FakeWeChat) -> None:
    settings = {"sqlite_path": str(tmp_path / "p.sqlite3")}
    right = Fernet.generate_key().decode()
    run_cli("platform", "add", "wechat", "wx_app_1", "--secret-file", "-", input="s3cr3t\n",
            env=clean_env(**settings, encryption_key=right))
    other_key = Fernet.generate_key().decode()
    wrong = create_app(overrides={**settings, **app_overrides(wechat), "encryption_key": other_key})
    answer = wrong.test_client().get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["error"] == "not ready: encryption_key"
    good = create_app(overrides={**settings, **app_overrides(wechat), "encryption_key": right})
    assert good.test_client().get("/readyz").status_code == 200
    down = create_app(overrides={"mysql_host": "127.0.0.1", "mysql_port": 9, "mysql_username": "svc_user",
                                 **settings, **app_overrides(wechat)})
    answer = down.test_client().get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["error"] == "not ready: mysql"


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_auth_off_refuses_a_public_bind(tmp_path: Path, server: str) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "p.sqlite3"), host="0.0.0.0", port=3999, auth_required=False)
    proc = subprocess.run(SERVERS[server], cwd=Path(__file__).parents[2],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "loopback" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- refresh limits and audit --------------------------------------------------------
def test_refreshes_reaching_the_platform_are_rate_limited_per_client_and_app(wechat: FakeWeChat,
                                                                             tmp_path: Path) -> None:
    app = secured_app(wechat, tmp_path, refresh_limit_per_minute=3, wechat_token_mode="classic")
    key = add_client(app, "billing", "*")
    other = add_client(app, "crm", "*")
    client = app.test_client()
    answers = [client.put(f"/token/wechat/{APP}", headers={"X-Api-Key": key}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert answers[-1].get_json()["data"] is None
    # A stale_token that is no longer current makes no call and is not counted.
    assert client.put(f"/token/wechat/{APP}", headers={"X-Api-Key": key},
                      json={"stale_token": "83_old"}).status_code == 200
    assert client.put(f"/token/wechat/{APP}", headers={"X-Api-Key": other}).status_code == 200
    assert wechat.count("/cgi-bin/token") == 4


def test_wechat_force_refresh_keeps_30_seconds_apart(wechat: FakeWeChat, tmp_path: Path) -> None:
    app = secured_app(wechat, tmp_path, auth_required=False)
    client = app.test_client()
    first = client.get(f"/token/wechat/{APP}").get_json()["data"]
    second = client.put(f"/token/wechat/{APP}", json={"stale_token": first}).get_json()["data"]
    refused = client.put(f"/token/wechat/{APP}", json={"stale_token": second})
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
    assert sum(1 for c in wechat.find(STABLE_PATH) if c["force_refresh"]) == 1


def test_wechat_force_refresh_stops_at_20_a_day(wechat: FakeWeChat, tmp_path: Path) -> None:
    # Noon in Beijing, whose calendar day the limit counts in.
    now = [1_790_000_000 - 1_790_000_000 % 86400 + 4 * 3600.0]
    app = create_app(overrides={"sqlite_path": str(tmp_path / "p.sqlite3"), **app_overrides(wechat)},
                     clock=lambda: now[0])
    app.extensions["pighand"].credentials.add(Credential("wechat", APP, SECRET))
    wechat.force_refresh_spacing_s = 0
    wechat.force_refresh_daily_limit = 1000  # the limit under test is the service's own
    client = app.test_client()
    token = client.get(f"/token/wechat/{APP}").get_json()["data"]
    statuses = []
    for _ in range(21):
        now[0] += 31
        answer = client.put(f"/token/wechat/{APP}", json={"stale_token": token})
        statuses.append(answer.status_code)
        token = answer.get_json()["data"] or token
    assert statuses[:20] == [200] * 20 and statuses[20] == 429
    assert sum(1 for c in wechat.find(STABLE_PATH) if c["force_refresh"]) == 20


def test_put_is_audited_with_client_request_id_and_address(wechat: FakeWeChat, tmp_path: Path) -> None:
    app = secured_app(wechat, tmp_path)
    key = add_client(app, "billing", "*")
    client = app.test_client()
    answer = client.put(f"/token/wechat/{APP}", headers={"X-Api-Key": key, "X-Request-Id": "req-42"},
                        environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == "req-42"
    failed = client.put("/token/wechat/wx_missing", headers={"X-Api-Key": key})
    assert failed.status_code == 404
    entries = app.extensions["pighand"].audit.tail(5)
    assert [(e.action, e.client, e.platform, e.appid) for e in entries] == [
        ("token.refresh", "billing", "wechat", APP), ("token.refresh", "billing", "wechat", "wx_missing")]
    assert entries[0].outcome == "ok" and entries[0].request_id == "req-42" and entries[0].remote_addr == "10.9.8.7"
    assert entries[1].outcome.startswith("failed 404")
    assert failed.headers["X-Request-Id"] and failed.headers["X-Request-Id"] != "req-42"


def test_revoked_key_stops_on_both_paths_after_the_reload(wechat: FakeWeChat, tmp_path: Path,
                                                          serving_path: str) -> None:
    app = secured_app(wechat, tmp_path)
    key = add_client(app, "billing", "*")
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}", headers={"X-Api-Key": key}).status_code == 200
    assert client.get(f"/token/wechat/{APP}", headers={"X-Api-Key": key}).status_code == 200  # cached now
    # Revoked by another process: this one's view reloads within 2 s.
    assert app.extensions["pighand"].clients.repo.remove("billing")
    time.sleep(2.1)
    answer = client.get(f"/token/wechat/{APP}", headers={"X-Api-Key": key})
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
