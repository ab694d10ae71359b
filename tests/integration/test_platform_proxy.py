"""/proxy/<platform>/<appid>/<path>: platform API calls with the hub's token
added, in process, on real stores, against the fake platforms served over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pighand_token.app import create_app
from pighand_token.client import INVALID_TOKEN_CODES
from pighand_token.core.domain import Credential
from pighand_token.core.platform_proxy import REPLAY_BODY
from pighand_token.providers import REGISTRY
from tests.conftest import app_overrides, storage_overrides
from tests.fakes.dingtalk import API_PATH as DING_API
from tests.fakes.dingtalk import TOKEN_HEADER, FakeDingTalk
from tests.fakes.dingtalk import TOKEN_PATH as DING_TOKEN
from tests.fakes.feishu import USERS_PATH, FakeFeishu
from tests.fakes.server import Request
from tests.fakes.wechat import API_PATH, STABLE_PATH, FakeWeChat
from tests.fakes.wecom import API_PATH as WECOM_API
from tests.fakes.wecom import FakeWeCom
from tests.integration.test_security import add_client

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
CORP, AGENT = "ww0123456789abcdef", "1000002"
WECOM_APP = f"{CORP}:{AGENT}"
DING_KEY = "dingfakeappkey0001"
FEISHU_APP = "cli_a1b2c3d4e5f6a7b8"
SEND_PATH = "/cgi-bin/message/custom/send"
ECHO_PATH = "/cgi-bin/echo"


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.add_app(CORP, AGENT, "wc-S3cr3t_4pp-1000002-xyz")
        yield fake


@pytest.fixture
def dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.add_app(DING_KEY, "dt-S3cr3t_ding-0001-xyz")
        yield fake


@pytest.fixture
def feishu() -> Iterator[FakeFeishu]:
    with FakeFeishu() as fake:
        fake.add_app(FEISHU_APP, "fs-S3cr3t-app-0001")
        yield fake


def _send_handler(wechat: FakeWeChat) -> Any:
    """A business API that takes a JSON body and checks the token, like
    message/custom/send."""
    def send(req: Request) -> Any:
        status = wechat.token_status(req.query.get("access_token", ""))
        req.note(token=req.query.get("access_token"), size=len(req.body), sent=req.body[:64])
        if status:
            return 200, {"errcode": status, "errmsg": "invalid credential"}
        return 200, {"errcode": 0, "errmsg": "ok", "size": len(req.body)}
    return send


def _echo(req: Request) -> Any:
    """Answers with the request's headers, 201, and some hop-by-hop headers of its own."""
    req.note(headers=dict(req.headers))
    return 201, {"errcode": 0, "headers": req.headers}, {"Keep-Alive": "timeout=5", "X-Upstream": "yes",
                                                          "Trailer": "X-Checksum", "Set-Cookie": "sid=1"}


@pytest.fixture
def make(tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat, wecom: FakeWeCom,
         dingtalk: FakeDingTalk, feishu: FakeFeishu) -> Any:
    """make(kind="sqlite", **settings) -> an app with a credential on each platform."""
    wechat.add_route("POST", SEND_PATH, _send_handler(wechat))
    wechat.add_route("POST", ECHO_PATH, _echo)

    def make_app(kind: str = "sqlite", clock: Any = time.time, **extra: Any) -> Any:
        settings = {"wecom_api_base": wecom.base_url, "dingtalk_api_base": dingtalk.base_url,
                    "feishu_api_base": feishu.base_url, **extra}
        app = create_app(overrides={**storage_overrides(kind, request, tmp_path),
                                    **app_overrides(wechat, **settings)}, clock=clock)
        credentials = app.extensions["pighand"].credentials
        credentials.add(Credential("wechat", APP, SECRET))
        credentials.add(Credential("wecom", WECOM_APP, "wc-S3cr3t_4pp-1000002-xyz"))
        credentials.add(Credential("dingtalk", DING_KEY, "dt-S3cr3t_ding-0001-xyz"))
        credentials.add(Credential("feishu", FEISHU_APP, "fs-S3cr3t-app-0001"))
        return app
    return make_app


# -- the token, the platform's way ------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
def test_wechat_call_carries_the_hubs_token_in_the_query_never_the_callers(make: Any, wechat: FakeWeChat,
                                                                            kind: str) -> None:
    client = make(kind).test_client()
    answer = client.get(f"/proxy/wechat/{APP}/cgi-bin/get_api_domain_ip?access_token=callers-own&lang=zh_CN")
    assert answer.status_code == 200
    assert answer.get_json()["ip_list"] == wechat.ip_list
    call = wechat.last(API_PATH)
    assert call is not None
    assert call["query"] == {"lang": "zh_CN", "access_token": wechat.current_token(APP)}


def test_wecom_call_carries_the_token_in_the_query(make: Any, wecom: FakeWeCom) -> None:
    answer = make().test_client().get(f"/proxy/wecom/{WECOM_APP}{WECOM_API}")
    assert answer.status_code == 200 and answer.get_json()["errcode"] == 0
    call = wecom.last(WECOM_API)
    assert call is not None and wecom.is_valid(call["query"]["access_token"])


def test_feishu_call_carries_a_bearer_token_not_the_callers_authorization(make: Any, feishu: FakeFeishu) -> None:
    answer = make().test_client().get(f"/proxy/feishu/{FEISHU_APP}{USERS_PATH}?page_size=10",
                                      headers={"Authorization": "Bearer callers-own"})
    assert answer.status_code == 200 and answer.get_json()["code"] == 0
    assert feishu.count(USERS_PATH) == 1


def test_dingtalk_v1_call_carries_the_token_header_and_is_replayed_after_invalid_authentication(
        make: Any, dingtalk: FakeDingTalk) -> None:
    client = make().test_client()
    assert client.get(f"/proxy/dingtalk/{DING_KEY}{DING_API}").status_code == 200
    first = dingtalk.last(DING_API)
    assert first is not None and dingtalk.is_valid(first["token"])
    dingtalk.invalidate(first["token"])
    answer = client.get(f"/proxy/dingtalk/{DING_KEY}{DING_API}", headers={TOKEN_HEADER: "callers-own"})
    assert answer.status_code == 200 and answer.get_json() == {"appList": []}
    rejected, replayed = dingtalk.find(DING_API)[-2:]
    assert rejected["token"] == first["token"] and rejected["status"] == 400
    assert replayed["token"] != first["token"] and dingtalk.is_valid(replayed["token"])
    assert dingtalk.count(DING_TOKEN) == 2


def test_every_platform_declares_its_token_codes_as_the_client_library_knows_them() -> None:
    for platform, codes in INVALID_TOKEN_CODES.items():
        provider = REGISTRY[platform]
        if platform == "alipay":
            continue
        declared = provider.__self__.invalid_token_codes  # type: ignore[attr-defined]
        assert declared == codes, platform


# -- invalid tokens: refresh once, replay once ------------------------------------------
def test_a_rejected_token_is_replaced_and_the_small_body_sent_again_with_the_new_one(make: Any,
                                                                                  wechat: FakeWeChat) -> None:
    app = make()
    client = app.test_client()
    old = client.get(f"/token/wechat/{APP}").get_json()["data"]
    wechat.invalidate(old)
    body = json.dumps({"touser": "o1", "msgtype": "text", "text": {"content": "hi"}}).encode()
    answer = client.post(f"/proxy/wechat/{APP}{SEND_PATH}", data=body, content_type="application/json")
    assert answer.status_code == 200 and answer.get_json() == {"errcode": 0, "errmsg": "ok", "size": len(body)}
    rejected, replayed = wechat.find(SEND_PATH)
    assert rejected["token"] == old and replayed["token"] == wechat.current_token(APP) != old
    assert rejected["size"] == replayed["size"] == len(body)
    # One replacement: the stable endpoint handed the old token back, force_refresh replaced it.
    assert sum(1 for c in wechat.find(STABLE_PATH) if c["force_refresh"]) == 1
    audit = app.extensions["pighand"].audit.tail(1)[0]
    assert (audit.action, audit.platform, audit.appid) == ("proxy.call", "wechat", APP)
    assert audit.outcome == f"POST {SEND_PATH}: HTTP 200 (replayed with a new token)"
    assert old not in audit.outcome


def test_a_large_body_is_not_replayed_the_platforms_answer_goes_back_and_the_token_is_replaced(
        make: Any, wechat: FakeWeChat) -> None:
    client = make().test_client()
    old = client.get(f"/token/wechat/{APP}").get_json()["data"]
    wechat.invalidate(old)
    body = b"x" * (REPLAY_BODY + 1)
    answer = client.post(f"/proxy/wechat/{APP}{SEND_PATH}", data=body, content_type="application/octet-stream")
    assert answer.status_code == 200 and answer.get_json()["errcode"] == 40001
    assert [c["size"] for c in wechat.find(SEND_PATH)] == [len(body)]
    # The next caller gets the replacement at once.
    again = client.post(f"/proxy/wechat/{APP}{SEND_PATH}", data=b"{}", content_type="application/json")
    assert again.get_json()["errcode"] == 0
    assert wechat.last(SEND_PATH)["token"] == wechat.current_token(APP) != old  # type: ignore[index]


def test_a_token_the_platform_hands_back_unchanged_is_not_replayed(make: Any, feishu: FakeFeishu) -> None:
    client = make().test_client()
    assert client.get(f"/proxy/feishu/{FEISHU_APP}{USERS_PATH}").status_code == 200
    token = client.get(f"/token/feishu/{FEISHU_APP}").get_json()["data"]
    feishu.invalidate(token)  # the token endpoint still hands it out
    answer = client.get(f"/proxy/feishu/{FEISHU_APP}{USERS_PATH}")
    assert answer.get_json()["code"] == 99991663
    assert feishu.count(USERS_PATH) == 2  # not sent a third time with the same token


# -- what is passed on, what is not ------------------------------------------------------
def test_the_callers_credentials_cookies_and_hop_by_hop_headers_stay_behind(make: Any,
                                                                            wechat: FakeWeChat) -> None:
    app = make(auth_required=True)
    key = add_client(app, "billing", f"wechat:{APP}")
    answer = app.test_client().post(
        f"/proxy/wechat/{APP}{ECHO_PATH}", data=b"{}", content_type="application/json",
        headers={"X-Api-Key": key, "Authorization": "Bearer someone-elses", "Cookie": "session=1",
                 "Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
                 "Proxy-Authorization": "Basic eDp5", "X-Forwarded-For": "10.1.2.3", "X-Keep": "kept"})
    assert answer.status_code == 201
    sent = wechat.last(ECHO_PATH)["headers"]  # type: ignore[index]
    assert sent["x-keep"] == "kept" and sent["content-type"] == "application/json"
    for name in ("x-api-key", "authorization", "cookie", "x-hop", "keep-alive", "proxy-authorization",
                 "x-forwarded-for"):
        assert name not in sent, name
    assert key not in json.dumps(sent)
    # The platform's answer comes back with its status and headers, hop-by-hop ones removed.
    assert answer.headers["X-Upstream"] == "yes" and answer.headers["Set-Cookie"] == "sid=1"
    assert "Keep-Alive" not in answer.headers and "Trailer" not in answer.headers
    assert answer.headers["X-Request-Id"]
    # A cookie the platform set for one caller is never sent on another's call.
    app.test_client().post(f"/proxy/wechat/{APP}{ECHO_PATH}", data=b"{}", headers={"X-Api-Key": key})
    assert "cookie" not in wechat.last(ECHO_PATH)["headers"]  # type: ignore[index]


@pytest.mark.parametrize("path", [
    "a/../cgi-bin/token", "cgi-bin/%2e%2e/x", "./cgi-bin/x", "cgi-bin%2fx", "cgi-bin%2Fx", "cgi-bin%5cx",
    "cgi-bin\\x", "http://evil.example/x", "https:/evil.example", "//evil.example/x",
    "user@evil.example/x", "", "cgi-bin/%00x",
])
def test_a_path_that_could_leave_the_base_is_refused_before_anything_is_sent(make: Any, wechat: FakeWeChat,
                                                                            path: str) -> None:
    client = make().test_client()
    before = wechat.count()
    answer = client.get(f"/proxy/wechat/{APP}/{path}")
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert answer.get_json()["code"] == 400 and answer.get_json()["data"] is None
    assert wechat.count() == before


def test_alipay_has_no_token_to_add(make: Any) -> None:
    answer = make().test_client().get("/proxy/alipay/2021000000000001:2021000000000002/gateway.do")
    assert answer.status_code == 400 and "alipay has no app access token" in answer.get_json()["error"]


def test_unknown_apps_and_platforms_are_404(make: Any, wechat: FakeWeChat) -> None:
    client = make()
    assert client.test_client().get(f"/proxy/wechat/wx_missing{API_PATH}").status_code == 404
    assert client.test_client().get(f"/proxy/nowhere/{APP}{API_PATH}").status_code == 404
    assert wechat.count(API_PATH) == 0


def test_keys_and_scopes_apply_as_for_the_token(make: Any, wechat: FakeWeChat) -> None:
    app = make(auth_required=True)
    other = add_client(app, "other", "wechat:wx_other")
    client = app.test_client()
    assert client.get(f"/proxy/wechat/{APP}{API_PATH}").status_code == 401
    assert client.get(f"/proxy/wechat/{APP}{API_PATH}", headers={"X-Api-Key": other}).status_code == 403
    assert wechat.count(API_PATH) == 0


# -- limits and failures -------------------------------------------------------------------
def test_a_declared_body_over_proxy_max_body_is_413_before_anything_is_sent(make: Any, wechat: FakeWeChat) -> None:
    answer = make(proxy_max_body=1000).test_client().post(f"/proxy/wechat/{APP}{SEND_PATH}", data=b"x" * 1001)
    assert answer.status_code == 413 and answer.get_json()["code"] == 413
    assert wechat.count(SEND_PATH) == 0


def test_calls_over_proxy_rate_limit_are_429_per_client(make: Any, wechat: FakeWeChat) -> None:
    now = [1_800_000_000.25]
    app = make(proxy_rate_limit=2, auth_required=True, clock=lambda: now[0])
    one, two = add_client(app, "one", "*"), add_client(app, "two", "*")
    client = app.test_client()
    statuses = [client.get(f"/proxy/wechat/{APP}{API_PATH}", headers={"X-Api-Key": one}).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get(f"/proxy/wechat/{APP}{API_PATH}", headers={"X-Api-Key": two}).status_code == 200
    now[0] += 1  # the next second
    assert client.get(f"/proxy/wechat/{APP}{API_PATH}", headers={"X-Api-Key": one}).status_code == 200


def test_an_unreachable_platform_is_502_and_a_slow_one_504(make: Any, wechat: FakeWeChat) -> None:
    app = make(proxy_timeout=0.5)
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}").status_code == 200
    wechat.delay(2)
    slow = client.get(f"/proxy/wechat/{APP}{API_PATH}")
    assert slow.status_code == 504 and "proxy_timeout" in slow.get_json()["error"]
    wechat.delay(0)
    wechat.stop()
    down = client.get(f"/proxy/wechat/{APP}{API_PATH}")
    assert down.status_code == 502 and down.get_json()["code"] == 502
    token = app.extensions["pighand"].service.get("wechat", APP).value
    assert token not in down.get_json()["error"]


def test_proxied_calls_are_counted_by_platform_route_class_and_errcode(make: Any, wechat: FakeWeChat) -> None:
    client = make().test_client()
    client.get(f"/proxy/wechat/{APP}{API_PATH}")
    wechat.fail_with_errcode_next(1, 45009, "reach max api daily quota limit", path=API_PATH)
    client.get(f"/proxy/wechat/{APP}{API_PATH}")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert ('pighand_proxy_calls_total{errcode="",platform="wechat",replayed="false",'
            'route="cgi-bin/get_api_domain_ip",status="200"}') in metrics
    assert ('pighand_proxy_calls_total{errcode="45009",platform="wechat",replayed="false",'
            'route="cgi-bin/get_api_domain_ip",status="200"}') in metrics
