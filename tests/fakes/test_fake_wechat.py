"""Tests of the fake WeChat platform itself, over real loopback HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.server import FakePlatform, Reply, Request, route
from tests.fakes.wechat import API_PATH, STABLE_PATH, TICKET_PATH, TOKEN_PATH, FakeWeChat

APPID = "wx1234567890abcdef"
SECRET = "0123456789abcdef0123456789abcdef"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeWeChat]:
    with FakeWeChat() as f:
        f.add_app(APPID, SECRET)
        yield f


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


class Client:
    """Thin helpers so tests read like the WeChat calls they make."""

    def __init__(self, fake: FakeWeChat, http: requests.Session) -> None:
        self.fake = fake
        self.http = http

    def classic(self, **params: str | None) -> dict[str, Any]:
        query = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, **params}
        query = {k: v for k, v in query.items() if v is not None}
        resp = self.http.get(self.fake.url(TOKEN_PATH), params=query, timeout=5)
        assert resp.status_code == 200
        return dict(resp.json())

    def stable(self, force: bool = False, **fields: Any) -> dict[str, Any]:
        body = {
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": SECRET,
            "force_refresh": force,
            **fields,
        }
        resp = self.http.post(self.fake.url(STABLE_PATH), json=body, timeout=5)
        assert resp.status_code == 200
        return dict(resp.json())

    def api(self, token: str) -> dict[str, Any]:
        resp = self.http.get(self.fake.url(API_PATH), params={"access_token": token}, timeout=5)
        assert resp.status_code == 200
        return dict(resp.json())

    def ticket(self, token: str, type_: str = "jsapi") -> dict[str, Any]:
        params = {"access_token": token, "type": type_}
        resp = self.http.get(self.fake.url(TICKET_PATH), params=params, timeout=5)
        assert resp.status_code == 200
        return dict(resp.json())


@pytest.fixture
def wx(fake: FakeWeChat, http: requests.Session) -> Client:
    return Client(fake, http)


# ---------------------------------------------------------------- classic token


def test_classic_token_shape(wx: Client) -> None:
    got = wx.classic()
    token = got["access_token"]
    assert got["expires_in"] == 7200
    assert "errcode" not in got
    assert token.startswith("83_")
    assert len(token) >= 130
    assert re.fullmatch(r"83_[A-Za-z0-9_-]+", token)
    assert wx.api(token) == {"errcode": 0, "errmsg": "ok", "ip_list": wx.fake.ip_list}


def test_classic_every_call_rotates_and_old_token_gets_five_minutes(wx: Client) -> None:
    first = wx.classic()["access_token"]
    second = wx.classic()["access_token"]
    assert first != second
    assert wx.fake.is_valid(first) and wx.fake.is_valid(second)

    wx.fake.advance(299)
    assert wx.api(first)["errcode"] == 0

    wx.fake.advance(2)
    dead = wx.api(first)
    assert dead["errcode"] == 40001
    assert dead["errmsg"].startswith("invalid credential, access_token is invalid or not latest")
    assert wx.api(second)["errcode"] == 0


def test_classic_grace_is_capped_by_remaining_life(wx: Client) -> None:
    wx.fake.add_app(APPID, SECRET, expires_in=100)
    first = wx.classic()["access_token"]
    wx.fake.advance(50)
    second = wx.classic()["access_token"]
    wx.fake.advance(49)
    assert wx.fake.is_valid(first)
    wx.fake.advance(2)  # first reached its own expiry long before the 300 s grace ends
    assert wx.api(first)["errcode"] == 42001
    assert wx.api(second)["errcode"] == 0
    wx.fake.advance(50)
    assert wx.api(second)["errcode"] == 42001


def test_classic_custom_grace(wx: Client) -> None:
    wx.fake.grace_s = 2
    first = wx.classic()["access_token"]
    wx.classic()
    wx.fake.advance(2.5)
    assert wx.fake.token_status(first) == 40001


@pytest.mark.parametrize(
    ("params", "errcode", "errmsg"),
    [
        ({"appid": "wx_unknown"}, 40013, "invalid appid"),
        ({"secret": "wrong"}, 40001, "invalid credential, access_token is invalid or not latest"),
        ({"grant_type": "password"}, 40002, "invalid grant_type"),
        ({"appid": None}, 41002, "appid missing"),
        ({"secret": None}, 41004, "appsecret missing"),
    ],
)
def test_classic_errcodes(wx: Client, params: dict[str, Any], errcode: int, errmsg: str) -> None:
    got = wx.classic(**params)
    assert got["errcode"] == errcode
    assert got["errmsg"].startswith(errmsg)
    assert "rid: " in got["errmsg"]
    assert "access_token" not in got
    assert wx.fake.issued() == []


def test_ip_whitelist_error_on_both_endpoints(wx: Client) -> None:
    wx.fake.add_app(APPID, SECRET, whitelist_error_ip="203.0.113.7")
    pattern = r"invalid ip 203\.0\.113\.7 ipv6 ::ffff:203\.0\.113\.7, not in whitelist rid: [0-9a-f-]+"
    for got in (wx.classic(), wx.stable()):
        assert got["errcode"] == 40164
        assert re.fullmatch(pattern, got["errmsg"])
    wx.fake.apps[APPID].whitelist_error_ip = None
    assert "access_token" in wx.classic()


# ----------------------------------------------------------------- stable token


def test_stable_returns_same_token_with_remaining_life(wx: Client) -> None:
    wx.fake.freeze()
    first = wx.stable()
    assert first["expires_in"] == 7200
    wx.fake.advance(1000)
    again = wx.stable()
    assert again["access_token"] == first["access_token"]
    assert again["expires_in"] == 6200
    assert isinstance(again["expires_in"], int)
    assert wx.fake.issued(mode="stable") == [first["access_token"]]


def test_stable_rotates_in_last_five_minutes_and_old_stays_until_expiry(wx: Client) -> None:
    wx.fake.freeze()
    old = wx.stable()["access_token"]
    wx.fake.advance(7200 - 301)
    assert wx.stable() == {"access_token": old, "expires_in": 301}

    wx.fake.advance(2)  # 299 s left: inside the rotation window
    rotated = wx.stable()
    new = rotated["access_token"]
    assert new != old
    assert rotated["expires_in"] == 7200
    assert wx.api(old)["errcode"] == 0  # both usable during the handover

    wx.fake.advance(300)
    assert wx.api(old)["errcode"] == 42001
    assert wx.api(new)["errcode"] == 0
    assert wx.stable()["access_token"] == new


def test_stable_short_lifetime_with_smaller_rotation_window(wx: Client) -> None:
    wx.fake.add_app(APPID, SECRET, expires_in=20)
    wx.fake.rotate_before_s = 5
    wx.fake.freeze()
    token = wx.stable()["access_token"]
    wx.fake.advance(10)
    assert wx.stable() == {"access_token": token, "expires_in": 10}
    wx.fake.advance(6)
    assert wx.stable()["access_token"] != token


def test_stable_and_classic_pools_are_independent(wx: Client) -> None:
    stable = wx.stable()["access_token"]
    classic = wx.classic()["access_token"]
    wx.classic()
    wx.fake.advance(400)  # classic grace over; stable untouched
    assert wx.stable()["access_token"] == stable
    assert wx.fake.is_valid(stable)
    assert not wx.fake.is_valid(classic)
    wx.stable(force=True)
    assert wx.fake.current_token(APPID, "classic") is not None
    assert wx.fake.current_token(APPID, "stable") != stable


def test_stable_concurrent_callers_get_one_token(wx: Client) -> None:
    results: list[str] = []

    def call() -> None:
        resp = requests.post(
            wx.fake.url(STABLE_PATH),
            json={"grant_type": "client_credential", "appid": APPID, "secret": SECRET},
            timeout=5,
        )
        results.append(resp.json()["access_token"])

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16
    assert len(set(results)) == 1


def beijing_noon(wx: Client) -> None:
    """Move the fake's clock to the next noon in Beijing, whose calendar day
    the daily limits count in, so no limit resets in the middle of a test."""
    now = wx.fake.now()
    noon = (now + 8 * 3600) // 86400 * 86400 + 4 * 3600
    wx.fake.advance(noon - now if noon > now else noon + 86400 - now)


def test_force_refresh_kills_previous_token_and_respects_limits(wx: Client) -> None:
    beijing_noon(wx)
    wx.fake.force_refresh_daily_limit = 2
    old = wx.stable()["access_token"]

    forced = wx.stable(force=True)
    new = forced["access_token"]
    assert new != old and forced["expires_in"] == 7200
    assert wx.api(old)["errcode"] == 40001  # invalidated at once
    assert wx.api(new)["errcode"] == 0

    wx.fake.advance(29)
    too_soon = wx.stable(force=True)
    assert too_soon["errcode"] == 45011
    assert wx.fake.is_valid(new)

    wx.fake.advance(1)
    second = wx.stable(force=True)["access_token"]
    assert second != new and not wx.fake.is_valid(new)

    wx.fake.advance(60)
    assert wx.stable(force=True)["errcode"] == 45009  # daily force limit (2 here)
    assert wx.stable()["access_token"] == second  # normal mode still fine

    wx.fake.advance(86400)
    assert "access_token" in wx.stable(force=True)
    assert wx.fake.count(STABLE_PATH, force_refresh=True) == 5
    assert wx.fake.count(STABLE_PATH, force_refresh=True, errcode=0) == 3


@pytest.mark.parametrize(
    ("fields", "errcode"),
    [
        ({"secret": "wrong"}, 40125),
        ({"appid": "wx_unknown"}, 40013),
        ({"grant_type": "nope"}, 40002),
        ({"secret": ""}, 41004),
    ],
)
def test_stable_errcodes(wx: Client, fields: dict[str, Any], errcode: int) -> None:
    got = wx.stable(**fields)
    assert got["errcode"] == errcode
    assert "access_token" not in got


def test_stable_wrong_secret_message(wx: Client) -> None:
    assert wx.stable(secret="wrong")["errmsg"].startswith("invalid appsecret rid: ")


def test_stable_requires_json_post(wx: Client) -> None:
    form = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    as_form = wx.http.post(wx.fake.url(STABLE_PATH), data=form, timeout=5).json()
    assert as_form["errcode"] == 41002
    as_get = wx.http.get(wx.fake.url(STABLE_PATH), params=form, timeout=5).json()
    assert as_get["errcode"] == 43002
    assert wx.fake.issued() == []


# ------------------------------------------------------------------------ quota


def test_daily_quota_45009_per_appid_and_day(wx: Client) -> None:
    beijing_noon(wx)
    wx.fake.daily_quota = 3
    wx.fake.add_app("wx_other", "other")
    for _ in range(3):
        assert "access_token" in wx.classic()
    over = wx.classic()
    assert over["errcode"] == 45009
    assert over["errmsg"].startswith("reach max api daily quota limit")
    assert "access_token" in wx.classic(appid="wx_other", secret="other")

    wx.fake.reset_quota(APPID)
    assert "access_token" in wx.classic()


def test_stable_quota_and_day_rollover(wx: Client) -> None:
    beijing_noon(wx)
    wx.fake.daily_quota = 2
    wx.stable()
    wx.stable()
    assert wx.stable()["errcode"] == 45009
    wx.fake.advance(86400)
    assert "access_token" in wx.stable()


# ---------------------------------------------------------------------- tickets


def test_ticket_same_while_valid_and_always_7200(wx: Client) -> None:
    token = wx.stable()["access_token"]
    first = wx.ticket(token)
    assert first["errcode"] == 0 and first["errmsg"] == "ok"
    assert first["expires_in"] == 7200
    assert len(first["ticket"]) > 40

    wx.fake.advance(1000)
    again = wx.ticket(token)
    assert again["ticket"] == first["ticket"]
    assert again["expires_in"] == 7200  # not the remaining time

    card = wx.ticket(token, "wx_card")
    assert card["errcode"] == 0 and card["ticket"] != first["ticket"]

    wx.fake.advance(6300)  # ticket issued 7300 s ago: expired
    fresh = wx.stable()["access_token"]
    assert wx.ticket(fresh)["ticket"] != first["ticket"]


def test_ticket_errors(wx: Client) -> None:
    token = wx.stable()["access_token"]
    assert wx.ticket("83_bogus")["errcode"] == 40001
    assert wx.ticket(token, "nope")["errcode"] == 40097
    missing = wx.http.get(wx.fake.url(TICKET_PATH), params={"type": "jsapi"}, timeout=5).json()
    assert missing["errcode"] == 41001
    assert wx.fake.count(TICKET_PATH, mode="ticket") == 3
    assert wx.fake.count(TICKET_PATH, appid=APPID) == 1  # only the known token maps to an app


# ------------------------------------------------------------ validity helpers


def test_is_valid_invalidate_and_expiry(wx: Client) -> None:
    assert not wx.fake.is_valid("83_never_issued")
    assert wx.api("83_never_issued")["errcode"] == 40001

    token = wx.stable()["access_token"]
    wx.fake.invalidate(token)
    assert wx.api(token)["errcode"] == 40001
    # the endpoint still hands out the rejected token: only force_refresh replaces it
    assert wx.stable()["access_token"] == token
    assert wx.stable(force=True)["access_token"] != token

    wx.fake.advance(7200)
    assert wx.fake.token_status(wx.fake.issued()[-1]) == 42001
    missing = wx.http.get(wx.fake.url(API_PATH), timeout=5).json()
    assert missing["errcode"] == 41001


# ------------------------------------------------------- faults, delay, counts


def test_fail_next_then_recovery(wx: Client) -> None:
    wx.fake.fail_next(2)
    for _ in range(2):
        resp = wx.http.get(wx.fake.url(TOKEN_PATH), params={"appid": APPID}, timeout=5)
        assert resp.status_code == 500
    assert "access_token" in wx.classic()
    assert wx.fake.issued() != []
    assert wx.fake.count(TOKEN_PATH, fault="status", status=500, appid=APPID) == 2
    assert wx.fake.count(TOKEN_PATH, fault=None, status=200) == 1


def test_fail_next_custom_status_body_and_path(wx: Client) -> None:
    wx.fake.fail_next(1, status=503, body="busy", path=STABLE_PATH)
    assert "access_token" in wx.classic()  # other paths unaffected
    resp = wx.http.post(wx.fake.url(STABLE_PATH), json={}, timeout=5)
    assert (resp.status_code, resp.text) == (503, "busy")
    assert "access_token" in wx.stable()


def test_fail_with_errcode_next(wx: Client) -> None:
    wx.fake.fail_with_errcode_next(1, -1, "system error")
    assert wx.stable() == {"errcode": -1, "errmsg": "system error"}
    assert "access_token" in wx.stable()
    assert wx.fake.count(STABLE_PATH, fault="errcode", errcode=-1, mode="stable") == 1
    assert wx.fake.issued(mode="stable") != []


def test_delay_applies_to_every_call_until_cleared(wx: Client) -> None:
    wx.fake.delay(0.2)
    start = time.monotonic()
    wx.classic()
    wx.stable()
    assert time.monotonic() - start >= 0.4
    wx.fake.delay(0)
    start = time.monotonic()
    wx.classic()
    assert time.monotonic() - start < 0.2


def test_call_log_fields_and_count(wx: Client) -> None:
    wx.classic()
    token = wx.stable()["access_token"]
    wx.stable(force=True)
    wx.api(token)
    wx.classic(appid="wx_unknown")

    calls = wx.fake.calls
    assert [c["mode"] for c in calls] == ["classic", "stable", "stable", "api", "classic"]
    assert all({"path", "method", "appid", "time", "status"} <= c.keys() for c in calls)
    assert calls[1]["force_refresh"] is False and calls[2]["force_refresh"] is True
    assert calls[1]["method"] == "POST" and calls[1]["token"] == token
    assert calls[3]["appid"] == APPID and calls[3]["errcode"] == 40001

    assert wx.fake.count() == 5
    assert wx.fake.count(TOKEN_PATH) == 2
    assert wx.fake.count(TOKEN_PATH, appid=APPID) == 1
    assert wx.fake.count(TOKEN_PATH, errcode=40013) == 1
    assert wx.fake.count(mode="stable", force_refresh=False) == 1
    t0 = calls[0]["time"]
    wx.fake.advance(100)
    wx.classic()
    assert wx.fake.calls[-1]["time"] - t0 >= 100


def test_freeze_and_unfreeze_clock(wx: Client) -> None:
    wx.fake.freeze()
    t0 = wx.fake.now()
    time.sleep(0.02)
    assert wx.fake.now() == t0
    wx.fake.advance(5)
    assert wx.fake.now() == t0 + 5
    wx.fake.unfreeze()
    assert t0 + 5 <= wx.fake.now() < t0 + 6

    wx.fake.clear_calls()
    assert wx.fake.count() == 0


# -------------------------------------------------------------- base and lifecycle


def test_lifecycle_and_unknown_routes() -> None:
    fake = FakeWeChat()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    fake.start()
    url = fake.base_url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    assert requests.get(url + "/nope", timeout=5).status_code == 404
    assert requests.delete(url + TOKEN_PATH, timeout=5).status_code == 405
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(url + TOKEN_PATH, timeout=2)


def test_stop_closes_keepalive_connections_and_wakes_delayed_calls(http: requests.Session) -> None:
    fake = FakeWeChat().start()
    fake.add_app(APPID, SECRET)
    url = fake.url(API_PATH)
    assert http.get(url, timeout=5).status_code == 200  # leaves a pooled keep-alive connection
    fake.delay(30)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            requests.get(url, timeout=5)
        except requests.RequestException as exc:
            errors.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.1)
    start = time.monotonic()
    fake.stop()
    worker.join(5)
    assert time.monotonic() - start < 2
    assert not worker.is_alive()
    with pytest.raises(requests.ConnectionError):
        http.get(url, timeout=2)


class _Echo(FakePlatform):
    """A minimal other platform: Feishu-style error envelope and app_id key."""

    errcode_key = "code"
    errmsg_key = "msg"

    @route("POST", "/echo")
    def echo(self, req: Request) -> Reply:
        req.note(kind="echo")
        return 200, {"code": 0, "json": req.json(), "query": req.query}

    @route("GET", "/boom")
    def boom(self, req: Request) -> Reply:
        raise ValueError("handler bug")


def test_base_platform_is_generic() -> None:
    with _Echo() as fake:
        resp = requests.post(fake.url("/echo?x=1"), json={"app_id": "cli_1"}, timeout=5)
        assert resp.json() == {"code": 0, "json": {"app_id": "cli_1"}, "query": {"x": "1"}}
        form = requests.post(fake.url("/echo"), data={"app_id": "cli_2"}, timeout=5)
        assert form.json()["json"] is None
        fake.fail_with_errcode_next(1, 99991663, "tenant token invalid")
        bad = requests.post(fake.url("/echo"), json={}, timeout=5)
        assert bad.json() == {"code": 99991663, "msg": "tenant token invalid"}
        assert requests.get(fake.url("/boom"), timeout=5).status_code == 500
        assert "handler bug" in fake.errors[-1]
        fake.add_route("GET", "/extra", lambda req: (201, {"ok": True}, {"X-Fake": "1"}))
        extra = requests.get(fake.url("/extra"), timeout=5)
        assert (extra.status_code, extra.headers["X-Fake"]) == (201, "1")

        assert fake.count("/echo", appid="cli_1", kind="echo") == 1
        assert fake.count("/echo", appid="cli_2") == 1
        assert fake.count("/echo", errcode=99991663, fault="errcode") == 1


def test_standalone_main_prints_base_url() -> None:
    command = [sys.executable, "-m", "tests.fakes.wechat", "--port", "0"]
    command += ["--app", f"{APPID}:{SECRET}:60"]
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
            params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
            got = requests.get(base_url + TOKEN_PATH, params=params, timeout=5).json()
            assert got["expires_in"] == 60
            assert got["access_token"].startswith("83_")
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0
