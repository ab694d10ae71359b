"""Feishu and Lark (tenant and app access tokens) through the HTTP API, on
real stores, against the fake platform served over HTTP.

The app runs on the fake platform's clock, so moving that clock into a
token's last 30 minutes moves the service there too."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pighand_token.app import create_app
from pighand_token.core.domain import Credential, TokenKey
from tests.conftest import STORAGE_KINDS, app_overrides, storage_overrides
from tests.fakes.feishu import APP, APP_PATH, TENANT, TENANT_PATH, USERS_PATH, FakeFeishu

APP_ID = "cli_a1b2c3d4e5f6a7b8"
SECRET = "s3cr3t-feishu-a1b2"
PLATFORMS = ["feishu", "feishu_app", "lark", "lark_app"]
# Nothing listens here: the platform that is not under test points at it, so
# a call to the wrong host fails.
DEAD = "http://127.0.0.1:9"


def token_kind(platform: str) -> str:
    return APP if platform.endswith("_app") else TENANT


def token_path(platform: str) -> str:
    return APP_PATH if platform.endswith("_app") else TENANT_PATH


def url(platform: str, appid: str = APP_ID) -> str:
    return f"/token/{platform}/{appid}"


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    # A token answer says how long it is served; an error does not.
    assert set(data) == {"code", "data", "error"} | ({"expires_in"} if data["code"] == 200 else set())
    assert data["code"] == response.status_code
    return dict(data)


def seed(app: Any, platform: str, appid: str = APP_ID, secret: str = SECRET) -> None:
    app.extensions["pighand"].credentials.add(Credential(platform, appid, secret))


@pytest.fixture
def fake() -> Iterator[FakeFeishu]:
    with FakeFeishu() as platform:
        platform.add_app(APP_ID, SECRET)
        yield platform


@pytest.fixture
def make_feishu_app(tmp_path: Path, request: pytest.FixtureRequest, fake: FakeFeishu) -> Any:
    """make_feishu_app(platform, kind="sqlite", **settings) -> a Flask app on
    that storage whose ``platform`` host is the fake (the other one is dead)."""
    def make(platform: str, kind: str = "sqlite", **extra: Any) -> Any:
        lark = platform.startswith("lark")
        bases = {"feishu_api_base": DEAD if lark else fake.base_url, "lark_api_base": fake.base_url if lark else DEAD}
        overrides = {**storage_overrides(kind, request, tmp_path), **app_overrides(fake, **bases, **extra)}  # type: ignore[arg-type]
        return create_app(overrides=overrides, clock=fake.now)
    return make


def business_api(fake: FakeFeishu, token: str) -> dict[str, Any]:
    answer = requests.get(fake.url(USERS_PATH), params={"page_size": 10},
                          headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return dict(answer.json())


# -- fetching and serving ------------------------------------------------------
@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_get_fetches_once_and_repeat_gets_are_served_from_storage(make_feishu_app: Any, fake: FakeFeishu,
                                                                  platform: str, kind: str) -> None:
    app = make_feishu_app(platform, kind)
    seed(app, platform)
    client = app.test_client()
    first = client.get(url(platform))
    assert first.status_code == 200
    token = body(first)["data"]
    assert fake.is_valid(token, token_kind(platform))
    for _ in range(5):
        assert body(client.get(url(platform)))["data"] == token
    # Another process on the same stores: its in-process cache is empty.
    assert body(make_feishu_app(platform, kind).test_client().get(url(platform)))["data"] == token
    calls = fake.find(token_path(platform))
    assert fake.count() == len(calls) == 1
    assert calls[0]["body"] == {"app_id": APP_ID, "app_secret": SECRET} and calls[0]["status"] == 200
    stored = app.extensions["pighand"].service.get(platform, APP_ID)
    assert stored.value == token and stored.expires_at - stored.fetched_at == pytest.approx(7200, abs=1)


@pytest.mark.parametrize("platform", ["feishu", "lark"])
def test_served_tenant_token_works_on_business_apis_until_it_expires(make_feishu_app: Any, fake: FakeFeishu,
                                                                     platform: str) -> None:
    app = make_feishu_app(platform)
    seed(app, platform)
    token = body(app.test_client().get(url(platform)))["data"]
    assert business_api(fake, token)["code"] == 0
    last = fake.last(USERS_PATH)
    assert last is not None and last["appid"] == APP_ID
    fake.advance(7201)
    assert business_api(fake, token)["code"] == 99991663


def test_app_access_token_is_served_not_the_tenant_token_in_the_same_answer(make_feishu_app: Any,
                                                                             fake: FakeFeishu) -> None:
    app = make_feishu_app("feishu_app")
    seed(app, "feishu_app")
    token = body(app.test_client().get(url("feishu_app")))["data"]
    assert fake.is_valid(token, APP) and not fake.is_valid(token, TENANT)
    # The same answer carried a tenant token; business APIs that want one refuse the app token.
    assert fake.issued(APP_ID, TENANT) and token not in fake.issued(APP_ID, TENANT)
    assert business_api(fake, token)["code"] == 99991663


# -- refreshing ----------------------------------------------------------------
@pytest.mark.parametrize("platform", PLATFORMS)
def test_put_before_the_last_30_minutes_gets_the_same_token_back_in_one_call(make_feishu_app: Any,
                                                                            fake: FakeFeishu,
                                                                            platform: str) -> None:
    app = make_feishu_app(platform)
    seed(app, platform)
    client = app.test_client()
    old = body(client.get(url(platform)))["data"]
    fake.advance(1000)
    answer = client.put(url(platform))
    assert answer.status_code == 200 and body(answer)["data"] == old
    assert fake.count(token_path(platform)) == 2
    # Stored with the remaining life the platform reported.
    stored = app.extensions["pighand"].service.get(platform, APP_ID)
    assert stored.value == old and stored.expires_at == pytest.approx(fake.now() + 6200, abs=2)
    assert body(client.get(url(platform)))["data"] == old
    assert fake.count(token_path(platform)) == 2 and fake.is_valid(old)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgres", "redis+mysql"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_put_in_the_last_30_minutes_gets_a_new_token_and_the_old_stays_valid(make_feishu_app: Any,
                                                                            fake: FakeFeishu, platform: str,
                                                                            kind: str) -> None:
    app = make_feishu_app(platform, kind)
    seed(app, platform)
    client = app.test_client()
    old = body(client.get(url(platform)))["data"]
    fake.advance(7200 - 1700)
    new = body(client.put(url(platform)))["data"]
    assert new != old
    assert fake.is_valid(old) and fake.is_valid(new)  # no cut-over needed
    assert fake.count(token_path(platform)) == 2
    assert body(client.get(url(platform)))["data"] == new
    assert body(make_feishu_app(platform, kind).test_client().get(url(platform)))["data"] == new
    assert fake.count(token_path(platform)) == 2
    fake.advance(1700)
    assert not fake.is_valid(old) and fake.is_valid(new)


def test_put_with_a_rejected_token_the_platform_still_hands_out_serves_it_once(make_feishu_app: Any,
                                                                                fake: FakeFeishu,
                                                                                caplog: pytest.LogCaptureFixture
                                                                                ) -> None:
    app = make_feishu_app("feishu")
    seed(app, "feishu")
    client = app.test_client()
    token = body(client.get(url("feishu")))["data"]
    fake.invalidate(token)
    assert business_api(fake, token)["code"] == 99991663
    logger = logging.getLogger("pighand_token")
    logger.addHandler(caplog.handler)
    try:
        answer = client.put(url("feishu"), json={"stale_token": token})
    finally:
        logger.removeHandler(caplog.handler)
    # Asking again would only return it again: one call, the token served, an alert logged.
    assert answer.status_code == 200 and body(answer)["data"] == token
    assert fake.count(TENANT_PATH) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("handed back the token being replaced" in m for m in warnings), warnings
    assert SECRET not in caplog.text


def test_get_inside_the_margin_refreshes_into_a_new_token(make_feishu_app: Any, fake: FakeFeishu) -> None:
    # Default corn_interval 300 s: the margin lies inside the last 30 minutes.
    app = make_feishu_app("feishu")
    seed(app, "feishu")
    client = app.test_client()
    old = body(client.get(url("feishu")))["data"]
    fake.advance(7200 - 200)
    new = body(client.get(url("feishu")))["data"]
    assert new != old and fake.is_valid(new) and fake.is_valid(old)
    assert body(client.get(url("feishu")))["data"] == new
    assert fake.count(TENANT_PATH) == 2


def test_long_corn_interval_takes_the_same_token_back_then_a_new_one_without_looping(make_feishu_app: Any,
                                                                                     fake: FakeFeishu) -> None:
    # corn_interval 3600 s: the margin (min(3600, 7200 / 2)) starts an hour
    # before expiry, when the platform still hands back the same token.
    app = make_feishu_app("feishu", corn_interval=3600)
    seed(app, "feishu")
    client = app.test_client()
    old = body(client.get(url("feishu")))["data"]
    fake.advance(3700)  # 3500 s left
    assert body(client.get(url("feishu")))["data"] == old
    assert fake.count(TENANT_PATH) == 2
    # Stored with its remaining life, so its margin is now 1750 s: served without calls.
    for _ in range(5):
        assert body(client.get(url("feishu")))["data"] == old
    assert fake.count(TENANT_PATH) == 2
    fake.advance(1800)  # 1700 s left: inside the margin and the last 30 minutes
    new = body(client.get(url("feishu")))["data"]
    assert new != old and fake.is_valid(old) and fake.is_valid(new)
    assert fake.count(TENANT_PATH) == 3


@pytest.mark.parametrize("platform", ["feishu", "lark_app"])
def test_scheduler_refresh_lands_in_the_last_30_minutes(make_feishu_app: Any, fake: FakeFeishu,
                                                        platform: str) -> None:
    app = make_feishu_app(platform)  # corn_interval 300 s
    seed(app, platform)
    service = app.extensions["pighand"].service
    key = TokenKey(platform, APP_ID)
    assert service.refresh_due().refreshed == [key]
    old = service.get(platform, APP_ID).value
    assert service.refresh_due().fresh == [key]
    fake.advance(7200 - 590)  # it would enter its 300 s margin before the next tick
    assert service.refresh_due().refreshed == [key]
    new = service.get(platform, APP_ID).value
    assert new != old and fake.is_valid(new) and fake.is_valid(old)
    assert service.refresh_due().fresh == [key]
    assert fake.count(token_path(platform)) == 2


def test_scheduler_with_a_long_interval_takes_the_same_token_once_then_a_new_one(make_feishu_app: Any,
                                                                               fake: FakeFeishu) -> None:
    # corn_interval 1200 s: a token is due 2400 s before expiry, when the
    # platform hands back the same one; the next tick gets the new one.
    app = make_feishu_app("feishu", corn_interval=1200)
    seed(app, "feishu")
    service = app.extensions["pighand"].service
    service.refresh_due()
    old = service.get("feishu", APP_ID).value
    fake.advance(5000)  # 2200 s left
    service.refresh_due()
    same = service.get("feishu", APP_ID)
    assert same.value == old and same.expires_at == pytest.approx(fake.now() + 2200, abs=2)
    fake.advance(1200)  # the next tick: 1000 s left
    service.refresh_due()
    new = service.get("feishu", APP_ID).value
    assert new != old and fake.is_valid(new)
    assert fake.count(TENANT_PATH) == 3  # one call per tick, never more


# -- errors --------------------------------------------------------------------
@pytest.mark.parametrize("error_status", [200, 400])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_rejected_secret_is_502_with_10014_and_no_secret(make_feishu_app: Any, fake: FakeFeishu, platform: str,
                                                         error_status: int) -> None:
    fake.error_status = error_status  # some clients see these errors as HTTP 400
    app = make_feishu_app(platform)
    seed(app, platform, secret="wrong-secret-value")
    client = app.test_client()
    answer = client.get(url(platform))
    data = body(answer)
    assert answer.status_code == 502 and data["data"] is None
    assert "10014" in data["error"] and "app secret invalid" in data["error"]
    assert "wrong-secret-value" not in answer.get_data(as_text=True)
    assert fake.count() == 1  # a configuration error is not retried
    resting = client.get(url(platform))
    assert resting.status_code == 502 and "10014" in body(resting)["error"] and "Retry-After" in resting.headers
    assert "wrong-secret-value" not in resting.get_data(as_text=True)
    assert fake.count() == 1


@pytest.mark.parametrize("error_status", [200, 400])
@pytest.mark.parametrize("platform", ["feishu", "lark_app"])
def test_unknown_app_is_502_with_10014(make_feishu_app: Any, fake: FakeFeishu, platform: str,
                                       error_status: int) -> None:
    fake.error_status = error_status
    app = make_feishu_app(platform)
    seed(app, platform, appid="cli_0000000000000000")
    answer = app.test_client().get(url(platform, "cli_0000000000000000"))
    assert answer.status_code == 502
    assert "10014" in body(answer)["error"] and "app id not exists" in body(answer)["error"]
    assert SECRET not in answer.get_data(as_text=True)
    assert fake.count() == 1


def test_malformed_app_id_is_502_with_10003(make_feishu_app: Any, fake: FakeFeishu) -> None:
    app = make_feishu_app("feishu")
    seed(app, "feishu", appid="not-an-app-id")
    answer = app.test_client().get(url("feishu", "not-an-app-id"))
    assert answer.status_code == 502 and "10003" in body(answer)["error"]
    assert fake.count() == 1


def test_rate_limit_is_not_retried_and_rests_for_the_platform_reset_time(make_feishu_app: Any,
                                                                         fake: FakeFeishu) -> None:
    fake.rate_limit_next(1, reset_s=40)
    app = make_feishu_app("feishu")
    seed(app, "feishu")
    client = app.test_client()
    first = client.get(url("feishu"))
    assert first.status_code == 502 and "99991400" in body(first)["error"]
    assert fake.count() == 1
    resting = client.get(url("feishu"))
    assert resting.status_code == 502 and 39 <= int(resting.headers["Retry-After"]) <= 40
    assert fake.count() == 1
    fake.advance(41)
    answer = client.get(url("feishu"))
    assert answer.status_code == 200 and fake.is_valid(body(answer)["data"])
    assert fake.count() == 2


def test_platform_5xx_and_garbled_answers_are_retried(make_feishu_app: Any, fake: FakeFeishu) -> None:
    app = make_feishu_app("lark")
    seed(app, "lark")
    fake.fail_next(1, status=503)
    fake.fail_next(1, status=200, body={"code": 0, "msg": "ok"})  # no token in it
    answer = app.test_client().get(url("lark"))
    assert answer.status_code == 200 and fake.is_valid(body(answer)["data"])
    assert fake.count() == 3


def test_unknown_platform_404_lists_feishu_and_lark(make_feishu_app: Any) -> None:
    answer = make_feishu_app("feishu").test_client().get("/token/feishu_bot/" + APP_ID)
    assert answer.status_code == 404
    assert all(name in body(answer)["error"] for name in PLATFORMS)
