"""The status page at / (Flask test client, SQLite, fake WeChat over HTTP) and
``flask --app wsgi token status`` in its own process."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pighand_token.app import create_app
from pighand_token.core.domain import Credential
from pighand_token.web.status_page import expires_in_text, human_duration, table_lines
from tests.conftest import app_overrides, clean_env, run_cli
from tests.fakes.wechat import FakeWeChat
from tests.integration.test_security import add_client

OK, OK_SECRET = "wx_app_1", "s3cr3t-wx-1"  # the wechat fixture's app
BAD, BAD_SECRET = "wx_bad_secret", "right-secret-2"
IP, IP_SECRET = "wx_not_whitelisted", "s3cr3t-wx-3"
HOSTILE, HOSTILE_SECRET = "wx_hostile", "s3cr3t-wx-4"
EGRESS_IP = "203.0.113.7"
SCRIPT = "<script>alert('pwned')</script>"
SECRETS = (OK_SECRET, BAD_SECRET, "wrong-secret", IP_SECRET, HOSTILE_SECRET)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_app(wechat: FakeWeChat, tmp_path: Path, *, clock: Clock | None = None, **extra: Any) -> Any:
    overrides = {"sqlite_path": str(tmp_path / "p.sqlite3"), **app_overrides(wechat, **extra)}
    return create_app(overrides=overrides, clock=clock or time.time)


def add(app: Any, appid: str, secret: str, platform: str = "wechat") -> None:
    app.extensions["pighand"].credentials.add(Credential(platform, appid, secret))


def visible_text(page: str) -> str:
    """The page's text as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    body = re.sub(r"<style.*?</style>|<head.*?</head>", "", page, flags=re.S)
    body = re.sub(r"</?(?:span|code|strong)\b[^>]*>", "", body)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def row_text(page: str, appid: str) -> str:
    rows = [r for r in re.findall(r"<tr\b.*?</tr>", page, flags=re.S) if f">{appid}<" in r]
    assert len(rows) == 1, f"expected one row for {appid}"
    return visible_text(rows[0])


def no_leaks(page: str, wechat: FakeWeChat) -> None:
    for secret in SECRETS:
        assert secret not in page
    for token in wechat.issued():
        assert token not in page
        assert token[:20] not in page


@pytest.fixture
def populated(wechat: FakeWeChat, tmp_path: Path) -> Any:
    """Tokens in every state the page shows: valid, inside margin, failing
    (wrong secret), failing after an IP-whitelist error, expired, missing."""
    wechat.add_app(BAD, BAD_SECRET)
    wechat.add_app(IP, IP_SECRET, whitelist_error_ip=EGRESS_IP)
    wechat.add_app("wx_expired", "s3cr3t-exp")
    wechat.add_app("wx_margin", "s3cr3t-margin")
    clock = Clock()
    app = make_app(wechat, tmp_path, clock=clock, corn_interval=300)
    for appid, secret in ((OK, OK_SECRET), (BAD, "wrong-secret"), (IP, IP_SECRET), ("wx_expired", "s3cr3t-exp"),
                          ("wx_margin", "s3cr3t-margin"), ("wx_missing", "s3cr3t-missing")):
        add(app, appid, secret)
    http = app.test_client()
    assert http.get("/token/wechat/wx_expired").status_code == 200
    clock.now += 3000
    assert http.get("/token/wechat/wx_margin").status_code == 200
    clock.now += 6620
    assert http.get(f"/token/wechat/{OK}").status_code == 200
    assert http.get(f"/token/wechat/{BAD}").status_code == 502
    assert http.get(f"/token/wechat/{IP}").status_code == 502
    # wx_expired: its 7200 s are long over; wx_margin: 100 s left, inside its 300 s margin;
    # wx_app_1: 6720 s left.
    clock.now += 480
    return app


# -- the page ------------------------------------------------------------------------
def test_page_lists_every_token_with_its_state_expiry_and_last_error(populated: Any, wechat: FakeWeChat) -> None:
    answer = populated.test_client().get("/")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    page = answer.get_data(as_text=True)
    text = visible_text(page)

    assert "6 tokens" in text
    for count, state in ((1, "valid"), (1, "inside margin"), (2, "failing"), (1, "expired"), (1, "missing")):
        assert f"{count} {state}" in text

    ok = row_text(page, OK)
    assert "wechat" in ok and "valid" in ok and "1 h 52 min" in ok
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", ok)
    assert "none" in ok

    assert "inside margin" in row_text(page, "wx_margin") and "1 min" in row_text(page, "wx_margin")
    assert "expired" in row_text(page, "wx_expired") and "ago" in row_text(page, "wx_expired")
    missing = row_text(page, "wx_missing")
    assert "missing" in missing and "never" in missing

    bad = row_text(page, BAD)
    assert "failing" in bad and "40125" in bad and "invalid appsecret" in bad
    assert "whitelist" not in bad

    ip = row_text(page, IP)
    assert "failing" in ip and "40164" in ip
    assert f"Egress IP {EGRESS_IP}: add this IP to the platform's whitelist" in ip
    # Highlighted, and called out at the top as well.
    assert f'<span class="ip">{EGRESS_IP}</span>' in page
    callout = f"wechat refused calls from {EGRESS_IP} ({IP}): add this IP to the platform's whitelist"
    assert callout in text and text.index(callout) < text.index("Platform AppID State")

    # Problems first.
    order = re.findall(r'<td class="appid">([^<]+)</td>', page)
    assert order == [BAD, IP, "wx_expired", "wx_missing", "wx_margin", OK]
    # Each state looks different.
    classes = set(re.findall(r'class="pill (state-[a-z-]+)"', page))
    assert classes == {"state-valid", "state-inside-margin", "state-failing", "state-expired", "state-missing"}
    no_leaks(page, wechat)


def test_page_with_no_credentials_says_so(wechat: FakeWeChat, tmp_path: Path) -> None:
    answer = make_app(wechat, tmp_path).test_client().get("/")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    text = visible_text(answer.get_data(as_text=True))
    assert "0 tokens" in text and "No credentials configured" in text
    assert "pighand-token platform add <platform> <appid>" in text


def test_hostile_platform_error_text_is_escaped(wechat: FakeWeChat, tmp_path: Path) -> None:
    wechat.add_app(HOSTILE, HOSTILE_SECRET)
    app = make_app(wechat, tmp_path)
    add(app, HOSTILE, HOSTILE_SECRET)
    wechat.fail_with_errcode_next(1, 40013, f'{SCRIPT}<img src=x onerror="alert(1)"> & "quotes"')
    assert app.test_client().get(f"/token/wechat/{HOSTILE}").status_code == 502
    answer = app.test_client().get("/")
    page = answer.get_data(as_text=True)
    assert "<script" not in page.lower() and "<img" not in page
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert "&#34;quotes&#34;" in page and "&amp;" in page
    # As text, the reader sees exactly what the platform said.
    assert f"{SCRIPT}<img src=x onerror=\"alert(1)\"> & \"quotes\"" in row_text(page, HOSTILE)
    # And no script would run even if something slipped through.
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_error_text_naming_a_whitelist_ip_in_markup_cannot_inject(wechat: FakeWeChat, tmp_path: Path) -> None:
    wechat.add_app(HOSTILE, HOSTILE_SECRET)
    app = make_app(wechat, tmp_path)
    add(app, HOSTILE, HOSTILE_SECRET)
    wechat.fail_with_errcode_next(1, 40164, f"invalid ip 198.51.100.9</span>{SCRIPT}, not in whitelist")
    app.test_client().get(f"/token/wechat/{HOSTILE}")
    page = app.test_client().get("/").get_data(as_text=True)
    assert "<script" not in page.lower() and "</span><script" not in page
    assert '<span class="ip">198.51.100.9</span>' in page


# -- keys and scopes -----------------------------------------------------------------
def secured(wechat: FakeWeChat, tmp_path: Path) -> Any:
    wechat.add_app("wx_other", "s3cr3t-other")
    app = make_app(wechat, tmp_path, auth_required=True)
    add(app, OK, OK_SECRET)
    add(app, "wx_other", "s3cr3t-other")
    return app


def test_without_a_key_the_page_is_401_html_explaining_how_to_send_one(wechat: FakeWeChat, tmp_path: Path) -> None:
    app = secured(wechat, tmp_path)
    http = app.test_client()
    for headers in ({}, {"Authorization": "Bearer pht_nope"}, {"X-Api-Key": "nope"}):
        answer = http.get("/", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        text = visible_text(answer.get_data(as_text=True))
        assert "401 · API key required" in text
        assert "curl" in text and "Authorization: Bearer <your key>" in text and "X-Api-Key: <your key>" in text
        assert OK not in text and "wx_other" not in text
    # A key in the URL is not a key.
    key = add_client(app, "ops", "*")
    assert http.get(f"/?key={key}").status_code == 401
    assert http.get(f"/?api_key={key}").status_code == 401
    assert wechat.count() == 0


def test_a_key_sees_only_the_apps_its_scope_covers(wechat: FakeWeChat, tmp_path: Path) -> None:
    app = secured(wechat, tmp_path)
    http = app.test_client()
    everything = add_client(app, "ops", "*")
    one = add_client(app, "shop", f"wechat:{OK}")
    elsewhere = add_client(app, "lark-bot", "feishu:*")

    page = http.get("/", headers={"Authorization": f"Bearer {everything}"}).get_data(as_text=True)
    assert f">{OK}<" in page and ">wx_other<" in page and "2 tokens" in visible_text(page)

    answer = http.get("/", headers={"X-Api-Key": one})
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert f">{OK}<" in page and "wx_other" not in page
    assert "1 token " in visible_text(page) and "shop" in visible_text(page)
    assert one not in page and everything not in page

    page = http.get("/", headers={"Authorization": f"Bearer {elsewhere}"}).get_data(as_text=True)
    assert OK not in page and "wx_other" not in page
    assert "No tokens in this key's scope" in visible_text(page)


def test_json_api_errors_keep_the_envelope(wechat: FakeWeChat, tmp_path: Path) -> None:
    answer = secured(wechat, tmp_path).test_client().get(f"/token/wechat/{OK}")
    assert answer.status_code == 401 and answer.get_json()["code"] == 401


# -- formatting ----------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [
    (6720, "1 h 52 min"), (7200, "2 h"), (7199.9, "1 h 59 min"), (180, "3 min"), (59, "59 s"), (0.4, "0 s"),
    (90061, "1 d 1 h"), (86400, "1 d"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_expires_in_text() -> None:
    assert expires_in_text(None) == "-"
    assert expires_in_text(-125) == "expired 2 min ago"
    assert expires_in_text(3600) == "1 h"


def test_table_lines_are_aligned(populated: Any) -> None:
    rows = populated.extensions["pighand"].service.status()
    lines = table_lines(rows)
    header, body = lines[0], lines[1:len(rows) + 1]
    starts = [header.index(name) for name in ("APPID", "STATE", "EXPIRES IN", "LAST REFRESH", "LAST ERROR")]
    for line in body:
        for start in starts:
            assert line[start - 2:start] == "  " and line[start] != " "


# -- the command ---------------------------------------------------------------------
def test_token_status_command_prints_the_table(wechat: FakeWeChat, tmp_path: Path) -> None:
    wechat.add_app(BAD, BAD_SECRET)
    wechat.add_app(IP, IP_SECRET, whitelist_error_ip=EGRESS_IP)
    env = clean_env(sqlite_path=tmp_path / "cli.sqlite3", wechat_api_base=wechat.base_url,
                    is_enable_schedule=False, upstream_timeout=2)
    empty = run_cli("token", "status", env=env)
    assert empty.returncode == 0, empty.stderr
    assert "no credentials configured" in empty.stdout

    for appid, secret in ((OK, OK_SECRET), (BAD, "wrong-secret"), (IP, IP_SECRET), ("wx_missing", "s3cr3t-m")):
        added = run_cli("platform", "add", "wechat", appid, "--secret", secret, env=env)
        assert added.returncode == 0, added.stderr
    got = run_cli("token", "get", "wechat", OK, env=env)
    assert got.returncode == 0, got.stderr
    token = got.stdout.strip()
    for appid in (BAD, IP):
        assert run_cli("token", "get", "wechat", appid, env=env).returncode != 0

    result = run_cli("token", "status", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].split() == ["PLATFORM", "APPID", "STATE", "EXPIRES", "IN", "LAST", "REFRESH", "LAST", "ERROR"]
    by_appid = {line.split()[1]: line for line in lines[1:5]}
    assert set(by_appid) == {OK, BAD, IP, "wx_missing"}
    assert " valid " in by_appid[OK] and "1 h 59 min" in by_appid[OK] and " UTC " in by_appid[OK]
    assert " failing " in by_appid[BAD] and "40125 invalid appsecret" in by_appid[BAD]
    assert " failing " in by_appid[IP] and "40164 " in by_appid[IP]
    assert " missing " in by_appid["wx_missing"]
    column = lines[0].index("STATE")
    assert {line[column:].split()[0] for line in lines[1:5]} == {"valid", "failing", "missing"}
    assert f"wechat {IP}: the platform refused calls from {EGRESS_IP}: add this IP to the platform's whitelist" in out
    assert lines[-1] == "4 token(s): 1 valid, 2 failing, 1 missing"
    assert "\x1b[" not in out  # no colours when not on a terminal
    for secret in (*SECRETS, "s3cr3t-m"):
        assert secret not in out and secret not in result.stderr
    assert token not in out and token not in result.stderr
