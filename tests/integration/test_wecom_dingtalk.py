"""WeCom and DingTalk through the HTTP API, on real stores, against the fake
platforms served over HTTP (platform-facts §4, §5)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from pighand_token.app import create_app
from pighand_token.core.domain import Credential
from pighand_token.core.errors import BadRequest
from tests.conftest import app_overrides, clean_env, run_cli, storage_overrides
from tests.fakes.dingtalk import API_PATH as DING_API
from tests.fakes.dingtalk import TOKEN_HEADER, FakeDingTalk
from tests.fakes.dingtalk import TOKEN_PATH as DING_TOKEN
from tests.fakes.wechat import FakeWeChat
from tests.fakes.wecom import API_PATH as WECOM_API
from tests.fakes.wecom import TOKEN_PATH as GETTOKEN
from tests.fakes.wecom import FakeWeCom

CORP = "ww0123456789abcdef"
AGENT = "1000002"
WECOM_APP = f"{CORP}:{AGENT}"
WECOM_SECRET = "wc-S3cr3t_4pp-1000002-xyz"
DING_KEY = "dingfakeappkey0001"
DING_SECRET = "dt-S3cr3t_ding-0001-xyz"

KINDS = ["sqlite", "mysql", "postgres", "redis+mysql"]
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there (discard service is not run)


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.add_app(CORP, AGENT, WECOM_SECRET)
        yield fake


@pytest.fixture
def dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.add_app(DING_KEY, DING_SECRET)
        yield fake


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat, wecom: FakeWeCom,
         dingtalk: FakeDingTalk) -> Any:
    """make(kind, **settings) -> a Flask app whose WeCom/DingTalk base URLs
    point at the fakes; two apps made with one kind share their stores."""
    def make_app(kind: str = "sqlite", **extra: Any) -> Any:
        settings = {"wecom_api_base": wecom.base_url, "dingtalk_api_base": dingtalk.base_url, **extra}
        return create_app(overrides={**storage_overrides(kind, request, tmp_path),
                                     **app_overrides(wechat, **settings)})
    return make_app


def seed(app: Any, platform: str, appid: str, secret: str) -> None:
    app.extensions["pighand"].credentials.add(Credential(platform, appid, secret))


def envelope(response: Any) -> dict[str, Any]:
    data = response.get_json()
    # A token answer says how long it is served; an error does not.
    assert set(data) == {"code", "data", "error"} | ({"expires_in"} if data["code"] == 200 else set())
    assert data["code"] == response.status_code
    return dict(data)


def token_of(response: Any) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    value = envelope(response)["data"]
    assert isinstance(value, str) and value
    return value


def wecom_api_accepts(fake: FakeWeCom, token: str) -> bool:
    """Ask the fake's business API, over HTTP, whether it takes ``token``."""
    answer = requests.get(fake.url(WECOM_API), params={"access_token": token}, timeout=5).json()
    return bool(answer["errcode"] == 0)


def dingtalk_api_accepts(fake: FakeDingTalk, token: str) -> bool:
    return requests.get(fake.url(DING_API), headers={TOKEN_HEADER: token}, timeout=5).status_code == 200


def expiry_on(fake: FakeWeCom | FakeDingTalk, token: str) -> float:
    """When ``token`` dies on the platform's clock."""
    info = fake.token_info(token)
    assert info is not None, "the platform never issued this token"
    return info.expires_at


def owner_on(fake: FakeWeCom, token: str) -> str:
    """The ``corpid:agentid`` the platform issued ``token`` to."""
    info = fake.token_info(token)
    assert info is not None, "the platform never issued this token"
    return info.appid


def stored_expiry(app: Any, platform: str, appid: str) -> tuple[float, float]:
    """(expires_at, fetched_at) of the token in the SQLite store."""
    path = app.extensions["pighand"].settings.sqlite_path
    rows = sqlite3.connect(path).execute(
        "SELECT expires_at, fetched_at FROM token WHERE platform = ? AND appid = ?", (platform, appid)).fetchall()
    assert len(rows) == 1, rows
    return float(rows[0][0]), float(rows[0][1])


# -- the fakes themselves -----------------------------------------------------------
def test_fake_wecom_keeps_the_token_until_expiry_and_checks_it(wecom: FakeWeCom) -> None:
    params = {"corpid": CORP, "corpsecret": WECOM_SECRET}
    first = requests.get(wecom.url(GETTOKEN), params=params, timeout=5).json()
    again = requests.get(wecom.url(GETTOKEN), params=params, timeout=5).json()
    assert first["errcode"] == 0 and again["access_token"] == first["access_token"]
    assert [c["appid"] for c in wecom.find(GETTOKEN)] == [WECOM_APP, WECOM_APP]
    wecom.advance(7200)
    expired = requests.get(wecom.url(WECOM_API), params={"access_token": first["access_token"]}, timeout=5).json()
    assert expired["errcode"] == 42001
    renewed = requests.get(wecom.url(GETTOKEN), params=params, timeout=5).json()
    assert renewed["access_token"] != first["access_token"] and renewed["expires_in"] == 7200
    bogus = requests.get(wecom.url(WECOM_API), params={"access_token": "nope"}, timeout=5).json()
    assert bogus["errcode"] == 40014
    assert requests.get(wecom.url(WECOM_API), timeout=5).json()["errcode"] == 41001
    for query, errcode in [({"corpid": CORP}, 41004), ({"corpsecret": "x"}, 41002),
                           ({"corpid": "wwother", "corpsecret": WECOM_SECRET}, 40013),
                           ({"corpid": CORP, "corpsecret": "wrong"}, 40001)]:
        answer = requests.get(wecom.url(GETTOKEN), params=query, timeout=5).json()
        assert answer["errcode"] == errcode and "more info at" in answer["errmsg"]


def test_fake_dingtalk_extends_the_same_token_and_refuses_form_bodies(dingtalk: FakeDingTalk) -> None:
    url = dingtalk.url(DING_TOKEN)
    first = requests.post(url, json={"appKey": DING_KEY, "appSecret": DING_SECRET}, timeout=5)
    assert first.status_code == 200 and first.json()["expireIn"] == 7200
    token = first.json()["accessToken"]
    expiry = expiry_on(dingtalk, token)
    dingtalk.advance(7000)
    again = requests.post(url, json={"appKey": DING_KEY, "appSecret": DING_SECRET}, timeout=5)
    assert again.json() == {"accessToken": token, "expireIn": 7200}
    assert expiry_on(dingtalk, token) == pytest.approx(expiry + 7000)
    dingtalk.advance(7201)
    assert not dingtalk.is_valid(token)
    assert requests.get(dingtalk.url(DING_API), headers={TOKEN_HEADER: token}, timeout=5).json()["code"] == \
        "InvalidAuthentication"
    renewed = requests.post(url, json={"appKey": DING_KEY, "appSecret": DING_SECRET}, timeout=5).json()
    assert renewed["accessToken"] != token
    form = requests.post(url, data={"appKey": DING_KEY, "appSecret": DING_SECRET}, timeout=5)
    assert form.status_code == 400 and form.json()["code"] == "Missingbody"
    assert "body is mandatory" in form.json()["message"] and form.json()["requestid"]
    wrong = requests.post(url, json={"appKey": DING_KEY, "appSecret": "nope"}, timeout=5)
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalidClientIdOrSecret"
    assert requests.get(url, timeout=5).status_code == 404


# -- WeCom ----------------------------------------------------------------------
def test_wecom_get_calls_gettoken_once_and_serves_from_storage(make: Any, wecom: FakeWeCom, kind: str) -> None:
    app = make(kind)
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    client = app.test_client()
    token = token_of(client.get(f"/token/wecom/{WECOM_APP}"))
    assert wecom_api_accepts(wecom, token)
    for _ in range(5):
        assert token_of(client.get(f"/token/wecom/{WECOM_APP}")) == token
    # Another process on the same stores: its in-process cache is empty.
    assert token_of(make(kind).test_client().get(f"/token/wecom/{WECOM_APP}")) == token
    calls = wecom.find(GETTOKEN)
    assert len(calls) == 1
    # gettoken takes the corpid and the app's secret; the agentid only keys the cache.
    assert calls[0]["appid"] == WECOM_APP and set(calls[0]["query"]) == {"corpid", "corpsecret"}


def test_wecom_apps_of_one_corp_have_their_own_tokens(make: Any, wecom: FakeWeCom) -> None:
    wecom.add_app(CORP, "1000003", "wc-other-app-secret")
    app = make()
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    seed(app, "wecom", f"{CORP}:1000003", "wc-other-app-secret")
    client = app.test_client()
    first = token_of(client.get(f"/token/wecom/{WECOM_APP}"))
    second = token_of(client.get(f"/token/wecom/{CORP}:1000003"))
    assert first != second
    assert owner_on(wecom, first) == WECOM_APP
    assert owner_on(wecom, second) == f"{CORP}:1000003"
    assert [c["appid"] for c in wecom.find(GETTOKEN)] == [WECOM_APP, f"{CORP}:1000003"]


def test_wecom_put_gets_the_same_token_back_in_one_call(make: Any, wecom: FakeWeCom, kind: str) -> None:
    app = make(kind)
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    client = app.test_client()
    token = token_of(client.get(f"/token/wecom/{WECOM_APP}"))
    # Within its validity gettoken hands back the same token: one call, no loop.
    assert token_of(client.put(f"/token/wecom/{WECOM_APP}")) == token
    assert wecom.count(GETTOKEN) == 2
    assert token_of(client.put(f"/token/wecom/{WECOM_APP}", json={"stale_token": token})) == token
    assert wecom.count(GETTOKEN) == 3
    # WeCom invalidated it early (APIs now answer 40014): the caller's PUT gets a new one.
    wecom.invalidate(token)
    assert not wecom_api_accepts(wecom, token)
    new = token_of(client.put(f"/token/wecom/{WECOM_APP}", json={"stale_token": token}))
    assert new != token and wecom_api_accepts(wecom, new)
    assert wecom.count(GETTOKEN) == 4
    assert token_of(make(kind).test_client().get(f"/token/wecom/{WECOM_APP}")) == new
    assert wecom.count(GETTOKEN) == 4


@pytest.mark.parametrize("reporting", ["remaining", "full"])
def test_wecom_same_token_never_gets_a_later_expiry(make: Any, wecom: FakeWeCom, reporting: str) -> None:
    # Whether a repeated gettoken reports the remaining or the full life is
    # undocumented; the life is not extended either way.
    wecom.repeat_expires_in = reporting
    wecom.add_app(CORP, "1000009", "wc-short-secret", expires_in=60)
    appid = f"{CORP}:1000009"
    app = make("sqlite")
    seed(app, "wecom", appid, "wc-short-secret")
    client = app.test_client()
    token = token_of(client.get(f"/token/wecom/{appid}"))
    first_expiry, first_fetch = stored_expiry(app, "wecom", appid)
    real_expiry = expiry_on(wecom, token)
    assert first_expiry <= real_expiry
    wecom.advance(20)  # the platform's clock only: its token has 40 s left
    assert token_of(client.put(f"/token/wecom/{appid}")) == token
    expiry, fetched = stored_expiry(app, "wecom", appid)
    assert fetched > first_fetch
    assert expiry <= first_expiry + 0.001
    assert wecom.find(GETTOKEN)[-1]["status"] == 200 and wecom.count(GETTOKEN) == 2


def test_wecom_rejected_secret_is_502_with_40001_and_not_retried(make: Any, wecom: FakeWeCom, kind: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make(kind)
    seed(app, "wecom", WECOM_APP, "wc-wrong-secret-value")
    answer = app.test_client().get(f"/token/wecom/{WECOM_APP}")
    data = envelope(answer)
    assert answer.status_code == 502 and data["data"] is None
    assert "wecom platform error 40001" in data["error"] and "corpsecret is wrong" in data["error"]
    assert "wc-wrong-secret-value" not in answer.get_data(as_text=True)
    assert "wc-wrong-secret-value" not in caplog.text
    assert wecom.count(GETTOKEN) == 1


@pytest.mark.parametrize("appid,errcode", [("wwunknowncorp0000:1000002", "40013")])
def test_wecom_unknown_corp_is_502_with_40013(make: Any, wecom: FakeWeCom, appid: str, errcode: str) -> None:
    app = make()
    seed(app, "wecom", appid, WECOM_SECRET)
    answer = app.test_client().get(f"/token/wecom/{appid}")
    assert answer.status_code == 502 and f"wecom platform error {errcode}" in envelope(answer)["error"]
    assert WECOM_SECRET not in answer.get_data(as_text=True)
    assert wecom.count(GETTOKEN) == 1


def test_wecom_untrusted_ip_is_502_with_60020_naming_the_ip(make: Any, wecom: FakeWeCom) -> None:
    wecom.trust_ip(CORP, AGENT, "203.0.113.9")
    app = make()
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    answer = app.test_client().get(f"/token/wecom/{WECOM_APP}")
    error = envelope(answer)["error"]
    assert answer.status_code == 502 and "60020" in error and "203.0.113.9" in error
    assert wecom.count(GETTOKEN) == 1
    # Once the operator adds the IP, the next call (after the cooldown) succeeds.
    wecom.trust_ip(CORP, AGENT, None)
    app.extensions["pighand"].service.clear_cooldown(app.extensions["pighand"].service.key("wecom", WECOM_APP))
    assert wecom_api_accepts(wecom, token_of(app.test_client().get(f"/token/wecom/{WECOM_APP}")))


def test_wecom_busy_is_retried(make: Any, wecom: FakeWeCom) -> None:
    app = make()
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    wecom.fail_with_errcode_next(2, -1, "system busy")
    token = token_of(app.test_client().get(f"/token/wecom/{WECOM_APP}"))
    assert wecom_api_accepts(wecom, token)
    assert [c["errcode"] for c in wecom.find(GETTOKEN)] == [-1, -1, 0]


def test_wecom_transport_failure_keeps_the_secret_in_the_url_out_of_everything(
        make: Any, caplog: pytest.LogCaptureFixture) -> None:
    # requests puts the URL, query string included, into its error text; the
    # secret's characters below are URL-encoded there.
    secret = "wc+S3cr3t/with=odd&chars"
    caplog.set_level(logging.DEBUG)
    app = make(wecom_api_base=CLOSED_PORT, upstream_timeout=0.5)
    seed(app, "wecom", WECOM_APP, secret)
    answer = app.test_client().get(f"/token/wecom/{WECOM_APP}")
    text = answer.get_data(as_text=True)
    assert answer.status_code == 502 and "cannot reach the platform" in envelope(answer)["error"]
    assert "corpsecret=***" in text
    for spelling in (secret, quote(secret, safe=""), "S3cr3t"):
        assert spelling not in text
        assert spelling not in caplog.text


@pytest.mark.parametrize("appid", ["ww0123456789abcdef", "ww0123456789abcdef:", ":1000002",
                                   "ww0123456789abcdef:abc", "ww0123456789abcdef:1000002:7"])
def test_wecom_malformed_appid_is_400_and_calls_nothing(make: Any, wecom: FakeWeCom, appid: str) -> None:
    answer = make().test_client().get(f"/token/wecom/{appid}")
    assert answer.status_code == 400 and "<corpid>:<agentid>" in envelope(answer)["error"]
    assert wecom.count() == 0


def test_platform_add_checks_wecom_and_dingtalk_credentials(tmp_path: Path) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "cli.sqlite3"))
    refused = run_cli("platform", "add", "wecom", "ww0123456789abcdef", "--secret", "x", env=env)
    assert refused.returncode != 0 and "<corpid>:<agentid>" in refused.stderr
    spaced = run_cli("platform", "add", "wecom", WECOM_APP, "--secret", "two words", env=env)
    assert spaced.returncode != 0 and "without spaces" in spaced.stderr
    colon = run_cli("platform", "add", "dingtalk", "ding:1", "--secret", "x", env=env)
    assert colon.returncode != 0 and "appKey" in colon.stderr
    for platform, appid, secret in (("wecom", WECOM_APP, WECOM_SECRET), ("dingtalk", DING_KEY, DING_SECRET)):
        added = run_cli("platform", "add", platform, appid, "--secret", secret, env=env)
        assert added.returncode == 0, added.stderr
    listed = run_cli("platform", "list", env=env)
    assert WECOM_APP in listed.stdout and DING_KEY in listed.stdout and WECOM_SECRET not in listed.stdout


def test_check_credential_rules(make: Any) -> None:
    providers = make().extensions["pighand"].service.providers
    providers["wecom"].check_credential(WECOM_APP, WECOM_SECRET)
    providers["dingtalk"].check_credential(DING_KEY, DING_SECRET)
    for platform, appid, secret in (("wecom", "ww1:x1", "s"), ("wecom", WECOM_APP, " s"),
                                    ("wecom", WECOM_APP, ""), ("dingtalk", DING_KEY, "a\nb")):
        with pytest.raises(BadRequest):
            providers[platform].check_credential(appid, secret)


# -- DingTalk -------------------------------------------------------------------
def test_dingtalk_get_posts_json_once_and_serves_from_storage(make: Any, dingtalk: FakeDingTalk,
                                                              kind: str) -> None:
    app = make(kind)
    seed(app, "dingtalk", DING_KEY, DING_SECRET)
    client = app.test_client()
    token = token_of(client.get(f"/token/dingtalk/{DING_KEY}"))
    assert dingtalk_api_accepts(dingtalk, token)
    for _ in range(5):
        assert token_of(client.get(f"/token/dingtalk/{DING_KEY}")) == token
    assert token_of(make(kind).test_client().get(f"/token/dingtalk/{DING_KEY}")) == token
    calls = dingtalk.find(DING_TOKEN)
    assert len(calls) == 1
    assert calls[0]["content_type"] == "application/json"
    assert calls[0]["body"] == {"appKey": DING_KEY, "appSecret": DING_SECRET}


def test_dingtalk_put_extends_the_same_token_in_one_call(make: Any, dingtalk: FakeDingTalk, kind: str) -> None:
    app = make(kind)
    seed(app, "dingtalk", DING_KEY, DING_SECRET)
    client = app.test_client()
    token = token_of(client.get(f"/token/dingtalk/{DING_KEY}"))
    first = app.extensions["pighand"].service.get("dingtalk", DING_KEY)
    platform_expiry = expiry_on(dingtalk, token)
    dingtalk.advance(600)  # the platform's clock: the token has 6600 s left there
    assert token_of(client.put(f"/token/dingtalk/{DING_KEY}")) == token
    assert expiry_on(dingtalk, token) == pytest.approx(platform_expiry + 600, abs=1)
    assert dingtalk.count(DING_TOKEN) == 2
    # Every tier holds the extended token: a fresh process reads a later expiry.
    again = make(kind).extensions["pighand"].service.get("dingtalk", DING_KEY)
    assert again.value == token and again.fetched_at > first.fetched_at
    assert again.expires_at > first.expires_at
    # A caller reporting the token as stale gets it back too: the platform has no other.
    assert token_of(client.put(f"/token/dingtalk/{DING_KEY}", json={"stale_token": token})) == token
    assert dingtalk.count(DING_TOKEN) == 3
    assert dingtalk_api_accepts(dingtalk, token)


def test_dingtalk_new_token_after_expiry(make: Any, dingtalk: FakeDingTalk) -> None:
    app = make("redis+mysql")
    seed(app, "dingtalk", DING_KEY, DING_SECRET)
    client = app.test_client()
    old = token_of(client.get(f"/token/dingtalk/{DING_KEY}"))
    dingtalk.advance(7201)  # it expired on the platform (e.g. a clock the service did not share)
    assert not dingtalk_api_accepts(dingtalk, old)
    new = token_of(client.put(f"/token/dingtalk/{DING_KEY}", json={"stale_token": old}))
    assert new != old and dingtalk_api_accepts(dingtalk, new)
    assert token_of(make("redis+mysql").test_client().get(f"/token/dingtalk/{DING_KEY}")) == new
    assert dingtalk.count(DING_TOKEN) == 2


def test_dingtalk_rejected_secret_is_502_with_its_code(make: Any, dingtalk: FakeDingTalk, kind: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make(kind)
    seed(app, "dingtalk", DING_KEY, "dt-wrong-secret-value")
    answer = app.test_client().get(f"/token/dingtalk/{DING_KEY}")
    data = envelope(answer)
    assert answer.status_code == 502 and data["data"] is None
    assert "dingtalk platform error invalidClientIdOrSecret" in data["error"]
    assert "requestid" in data["error"]
    assert "dt-wrong-secret-value" not in answer.get_data(as_text=True)
    assert "dt-wrong-secret-value" not in caplog.text
    assert dingtalk.count(DING_TOKEN) == 1  # a wrong secret is not retried


def test_dingtalk_unknown_appkey_is_502(make: Any, dingtalk: FakeDingTalk) -> None:
    app = make()
    seed(app, "dingtalk", "dingunknownkey", DING_SECRET)
    answer = app.test_client().get("/token/dingtalk/dingunknownkey")
    assert answer.status_code == 502 and "invalidClientIdOrSecret" in envelope(answer)["error"]
    assert DING_SECRET not in answer.get_data(as_text=True)


def test_dingtalk_rate_limit_is_retried(make: Any, dingtalk: FakeDingTalk) -> None:
    app = make()
    seed(app, "dingtalk", DING_KEY, DING_SECRET)
    dingtalk.fail_with_code_next(1, "Forbidden.AccessDenied.QpsLimitForApi", "qps limited", status=403)
    token = token_of(app.test_client().get(f"/token/dingtalk/{DING_KEY}"))
    assert dingtalk_api_accepts(dingtalk, token)
    assert [c["status"] for c in dingtalk.find(DING_TOKEN)] == [403, 200]


def test_dingtalk_transport_failure_is_502_without_secret(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make(dingtalk_api_base=CLOSED_PORT, upstream_timeout=0.5)
    seed(app, "dingtalk", DING_KEY, DING_SECRET)
    answer = app.test_client().get(f"/token/dingtalk/{DING_KEY}")
    assert answer.status_code == 502 and "cannot reach the platform" in envelope(answer)["error"]
    assert DING_SECRET not in answer.get_data(as_text=True) and DING_SECRET not in caplog.text


def test_dingtalk_appid_with_colon_is_400(make: Any, dingtalk: FakeDingTalk) -> None:
    answer = make().test_client().get("/token/dingtalk/ding:1000002")
    assert answer.status_code == 400 and "appKey" in envelope(answer)["error"]
    assert dingtalk.count() == 0


def test_unknown_platform_lists_wecom_and_dingtalk(make: Any) -> None:
    answer = make().test_client().get("/token/nope/x")
    error = envelope(answer)["error"]
    assert answer.status_code == 404 and "wecom" in error and "dingtalk" in error
