"""pighand_token.client against the real app under the shipped server (auth on), which
fetches from the fake platforms over HTTP."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException

from pighand_token.client import (
    INVALID_TOKEN_CODES,
    BadRequest,
    ConnectionFailed,
    Expiring,
    Forbidden,
    NotFound,
    PlatformError,
    PlatformTimeout,
    RateLimited,
    ServerError,
    StaleToken,
    TokenClient,
    TokenClientError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    token_rejected,
)
from pighand_token.core.domain import Credential
from tests.conftest import Server, free_port
from tests.fakes.dingtalk import API_PATH as DING_API
from tests.fakes.dingtalk import TOKEN_HEADER, FakeDingTalk
from tests.fakes.feishu import TENANT_PATH, USERS_PATH, FakeFeishu
from tests.fakes.server import FakePlatform, Request
from tests.fakes.wechat import API_PATH, STABLE_PATH, TICKET_PATH, FakeWeChat
from tests.fakes.wecom import API_PATH as WECOM_API
from tests.fakes.wecom import TOKEN_PATH as WECOM_TOKEN
from tests.fakes.wecom import FakeWeCom
from tests.integration.test_security import APP, SECRET, add_client, secured_app

WX_POOL = [f"wx_client_{n:02d}" for n in range(16)]
BAD_SECRET_APP = "wx_client_badsecret"
FEISHU_APP, FEISHU_SECRET = "cli_a1b2c3d4client", "fs-S3cr3t-client"
CORP, AGENT, WECOM_SECRET = "ww0123456789abcdef", "1000002", "wc-S3cr3t-client"
DING_KEY, DING_SECRET = "dingclientappkey01", "dt-S3cr3t-client"


@dataclass
class Hub:
    url: str
    key: str  # scope "*"
    narrow_key: str  # scope wechat:APP only
    _pool: Iterator[str] = field(default_factory=lambda: iter(WX_POOL))

    def client(self, **options: Any) -> TokenClient:
        return TokenClient(self.url, self.key, **options)

    def fresh_app(self) -> str:
        """A WeChat appid no other test has used: force_refresh spacing and
        the refresh limit are per app."""
        return next(self._pool)


@pytest.fixture(scope="module")
def wechat() -> Iterator[FakeWeChat]:
    with FakeWeChat() as fake:
        fake.add_app(APP, SECRET)
        for appid in [*WX_POOL, BAD_SECRET_APP]:
            fake.add_app(appid, f"secret-{appid}")
        yield fake


@pytest.fixture(scope="module")
def feishu() -> Iterator[FakeFeishu]:
    with FakeFeishu() as fake:
        fake.add_app(FEISHU_APP, FEISHU_SECRET)
        yield fake


@pytest.fixture(scope="module")
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.add_app(CORP, AGENT, WECOM_SECRET)
        yield fake


@pytest.fixture(scope="module")
def dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.add_app(DING_KEY, DING_SECRET)
        yield fake


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, wechat: FakeWeChat, feishu: FakeFeishu, wecom: FakeWeCom,
        dingtalk: FakeDingTalk) -> Iterator[Hub]:
    """One server for the module: auth on, one refresh per client, app and minute."""
    tmp: Path = tmp_path_factory.mktemp("client")
    app = secured_app(wechat, tmp)
    credentials = app.extensions["pighand"].credentials
    for appid in WX_POOL:
        credentials.add(Credential("wechat", appid, f"secret-{appid}"))
    credentials.add(Credential("wechat", BAD_SECRET_APP, "not-the-secret"))
    credentials.add(Credential("feishu", FEISHU_APP, FEISHU_SECRET))
    credentials.add(Credential("wecom", f"{CORP}:{AGENT}", WECOM_SECRET))
    credentials.add(Credential("dingtalk", DING_KEY, DING_SECRET))
    key = add_client(app, "everything", "*")
    narrow_key = add_client(app, "narrow", f"wechat:{APP}")
    server = Server(tmp, auth_required=True, sqlite_path=str(tmp / "p.sqlite3"), is_enable_schedule=False,
                      wechat_api_base=wechat.base_url, feishu_api_base=feishu.base_url,
                      wecom_api_base=wecom.base_url, dingtalk_api_base=dingtalk.base_url,
                      upstream_timeout=2, refresh_limit_per_minute=1)
    with server:
        yield Hub(server.base_url, key, narrow_key)
        log = server.log()
    assert key not in log and narrow_key not in log


@pytest.fixture
def tokens(hub: Hub) -> Iterator[TokenClient]:
    with hub.client() as client:
        yield client


def wechat_api(wechat: FakeWeChat, token: str) -> dict[str, Any]:
    """A WeChat business API call: errcode 0, or 40001/42001 for a rejected token."""
    answer: dict[str, Any] = requests.get(wechat.url(API_PATH), params={"access_token": token}, timeout=5).json()
    return answer


def force_refreshes(wechat: FakeWeChat, appid: str) -> int:
    return sum(1 for call in wechat.find(STABLE_PATH, appid=appid) if call["force_refresh"])


# -- tokens ---------------------------------------------------------------------------
def test_get_returns_the_platform_token(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    token = tokens.get("wechat", appid)
    assert wechat.is_valid(token) and wechat.current_token(appid) == token
    assert tokens.get("wechat", appid) == token
    assert wechat.count(STABLE_PATH, appid=appid) == 1


def test_refresh_with_stale_token_replaces_it_once(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    first = tokens.get("wechat", appid)
    second = tokens.refresh("wechat", appid, stale_token=first)
    assert second != first and wechat.is_valid(second) and not wechat.is_valid(first)
    assert force_refreshes(wechat, appid) == 1
    # Reported again (another caller saw the same rejection): the replacement, no platform call.
    with hub.client() as other:
        assert other.refresh("wechat", appid, stale_token=first) == second
    assert tokens.refresh("wechat", appid, stale_token="83_never_issued") == second
    assert force_refreshes(wechat, appid) == 1 and tokens.get("wechat", appid) == second


def test_refresh_without_stale_token_asks_the_platform_and_is_rate_limited(hub: Hub, tokens: TokenClient,
                                                                           wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    first = tokens.get("wechat", appid)
    second = tokens.refresh("wechat", appid)
    assert second != first and wechat.current_token(appid) == second
    with pytest.raises(RateLimited) as caught:
        tokens.refresh("wechat", appid)
    error = caught.value
    assert error.status == 429 and error.retry_after is not None and 1 <= error.retry_after <= 60
    assert isinstance(error, TokenClientError) and error.message and "429" in str(error)
    assert tokens.get("wechat", appid) == second


def test_tickets(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    jsapi = tokens.ticket(appid)
    card = tokens.ticket(appid, "wx_card")
    assert jsapi == wechat.last(TICKET_PATH, type="jsapi")["ticket"]  # type: ignore[index]
    assert card == wechat.last(TICKET_PATH, type="wx_card")["ticket"]  # type: ignore[index]
    assert tokens.ticket(appid, type="jsapi", platform="wechat") == jsapi
    with pytest.raises(NotFound, match="unknown ticket type"):
        tokens.ticket(appid, "nope")


def test_one_client_shared_by_threads(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    seen: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                seen.append(tokens.get("wechat", appid))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(seen) == 60 and set(seen) == {wechat.current_token(appid)}
    assert wechat.count(STABLE_PATH, appid=appid) == 1


def test_answers_say_how_long_the_server_serves_them(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    before = time.time()
    lease = tokens.get_expiring("wechat", appid)
    # A 7200 s token, served until 300 s (corn_interval) before its end.
    assert isinstance(lease, Expiring) and lease.value == wechat.current_token(appid)
    assert lease.expires_in is not None and 6890 <= lease.expires_in <= 6900
    assert lease.expires_at is not None and before + lease.expires_in <= lease.expires_at <= time.time() + 6900
    assert lease.value not in repr(lease)
    assert tokens.get("wechat", appid) == lease.value  # get() is unchanged: the string
    replaced = tokens.refresh_expiring("wechat", appid, stale_token=lease.value)
    assert replaced.value != lease.value and replaced.expires_in is not None and 6890 <= replaced.expires_in <= 6900
    ticket = tokens.ticket_expiring(appid, "jsapi")
    assert ticket.value == tokens.ticket(appid) and ticket.expires_in is not None and ticket.expires_in > 6000


# -- errors from real answers -----------------------------------------------------------
def test_no_key_and_unknown_key_are_unauthorized(hub: Hub) -> None:
    with TokenClient(hub.url) as anonymous, pytest.raises(Unauthorized) as missing:
        anonymous.get("wechat", APP)
    assert missing.value.status == 401 and "API key is required" in missing.value.message
    wrong = "pht_" + "x" * 43
    with TokenClient(hub.url, wrong) as client, pytest.raises(Unauthorized) as unknown:
        client.get("wechat", APP)
    assert unknown.value.status == 401 and wrong not in str(unknown.value) + repr(unknown.value)
    assert wrong not in repr(client)


def test_scope_unknown_app_and_bad_appid(hub: Hub, tokens: TokenClient) -> None:
    with TokenClient(hub.url, hub.narrow_key) as narrow:
        assert narrow.get("wechat", APP)
        with pytest.raises(Forbidden) as outside:
            narrow.get("wechat", hub.fresh_app())
    assert outside.value.status == 403 and "narrow" in outside.value.message
    with pytest.raises(NotFound) as unknown_app:
        tokens.get("wechat", "wx_nobody_added")
    assert unknown_app.value.status == 404 and "wx_nobody_added" in unknown_app.value.message
    with pytest.raises(NotFound, match="supported platforms"):
        tokens.get("myspace", "wx_nobody_added")
    with pytest.raises(BadRequest) as bad:
        tokens.get("wechat", "not an appid!")
    assert bad.value.status == 400
    with pytest.raises(BadRequest):
        tokens.refresh("wechat", APP, stale_token="")
    with pytest.raises(ValueError):
        tokens.get("wechat", "")


def test_wrong_secret_is_a_platform_error_with_its_errcode(tokens: TokenClient, wechat: FakeWeChat) -> None:
    with pytest.raises(PlatformError) as first:
        tokens.get("wechat", BAD_SECRET_APP)
    error = first.value
    assert type(error) is PlatformError and error.status == 502
    assert error.errcode == 40125 and error.platform == "wechat" and "invalid appsecret" in error.message
    assert "not-the-secret" not in str(error)
    # Within the cooldown: the same error, no platform call, and when to come back.
    calls = wechat.count(STABLE_PATH, appid=BAD_SECRET_APP)
    with pytest.raises(PlatformError) as resting:
        tokens.get("wechat", BAD_SECRET_APP)
    assert resting.value.errcode == 40125 and resting.value.retry_after is not None
    assert 1 <= resting.value.retry_after <= 300
    assert wechat.count(STABLE_PATH, appid=BAD_SECRET_APP) == calls


def test_closed_port_is_connection_failed() -> None:
    with TokenClient(f"http://127.0.0.1:{free_port()}", "pht_secret-key-value", timeout=3) as client:
        with pytest.raises(ConnectionFailed) as caught:
            client.get("wechat", APP)
    error = caught.value
    assert error.status is None and isinstance(error, TokenClientError)
    assert "cannot reach" in error.message and "/token/wechat/" in error.message
    assert "pht_secret-key-value" not in "".join(traceback.format_exception(error))


def test_the_key_never_appears_in_errors(hub: Hub, tokens: TokenClient) -> None:
    errors: list[TokenClientError] = []
    for platform, appid in [("wechat", "wx_nobody_added"), ("wechat", "bad appid!"), ("wechat", BAD_SECRET_APP),
                            ("myspace", "x")]:
        with pytest.raises(TokenClientError) as caught:
            tokens.refresh(platform, appid, stale_token=hub.key)
        errors.append(caught.value)
    with TokenClient(hub.url, hub.narrow_key) as narrow, pytest.raises(Forbidden) as outside:
        narrow.get("wechat", BAD_SECRET_APP)
    errors.append(outside.value)
    with TokenClient(f"http://127.0.0.1:{free_port()}", hub.key, timeout=3) as closed:
        with pytest.raises(ConnectionFailed) as refused:
            closed.get("wechat", APP)
        assert hub.key not in repr(closed)
    errors.append(refused.value)
    with pytest.raises(ValueError) as userinfo:
        TokenClient("http://user:s3cr3t-pw@127.0.0.1:3050", hub.key)
    assert "s3cr3t-pw" not in str(userinfo.value)
    for error in errors:
        text = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
        assert hub.key not in text
    assert hub.key not in repr(tokens) and "'***'" in repr(tokens)


# -- answers that are not the envelope, and the rest of the status families -----------------
@pytest.fixture(scope="module")
def proxy() -> Iterator[FakePlatform]:
    """A stand-in for what sits in front of the server: canned answers per path."""
    answers: dict[str, tuple[int, Any, dict[str, str]]] = {
        "/token/p/html": (502, "<html><body>502 Bad Gateway</body></html>", {}),
        "/token/p/moved": (301, "", {"Location": "https://tokens.example/token/p/moved?x=1"}),
        "/token/p/nodata": (200, {"code": 200, "data": None, "error": ""}, {}),
        "/token/p/older": (200, {"code": 200, "data": "tok-from-an-older-server", "error": ""}, {}),
        "/token/p/500": (500, {"code": 500, "data": None, "error": "internal error; it has been logged"}, {}),
        "/token/p/503": (503, {"code": 503, "data": None, "error": "sql store unavailable"},
                         {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
        "/token/p/504": (504, {"code": 504, "data": None, "error": "wechat platform error: timed out"}, {}),
        "/token/p/405": (405, {"code": 405, "data": None, "error": "method not allowed"}, {}),
        "/token/p/429": (429, {"code": 429, "data": None, "error": "slow down"}, {"Retry-After": "7"}),
    }
    fake = FakePlatform()
    for path in answers:
        def answer(req: Request, path: str = path) -> tuple[int, Any, dict[str, str]]:
            return answers[path]
        fake.add_route("GET", path, answer)
    with fake:
        yield fake


def test_every_status_family_and_non_envelope_answers(proxy: FakePlatform) -> None:
    with TokenClient(proxy.base_url + "/", "pht_k") as client:
        cases: list[tuple[str, type[TokenClientError], int]] = [
            ("500", ServerError, 500), ("503", Unavailable, 503), ("504", PlatformTimeout, 504),
            ("429", RateLimited, 429), ("html", UnexpectedAnswer, 502), ("moved", UnexpectedAnswer, 301),
            ("nodata", UnexpectedAnswer, 200),
        ]
        for appid, kind, status in cases:
            with pytest.raises(kind) as caught:
                client.get("p", appid)
            assert caught.value.status == status, appid
        with pytest.raises(TokenClientError) as other:
            client.get("p", "405")
        assert type(other.value) is TokenClientError and other.value.status == 405
        with pytest.raises(UnexpectedAnswer) as html:
            client.get("p", "html")
        assert "502 Bad Gateway" in html.value.message and "envelope" in html.value.message
        with pytest.raises(UnexpectedAnswer, match=r"redirect to https://tokens.example/token/p/moved(?!\?)"):
            client.get("p", "moved")
        with pytest.raises(Unavailable) as later:
            client.get("p", "503")
        assert later.value.retry_after is not None and later.value.retry_after > 86400
        with pytest.raises(RateLimited) as limited:
            client.get("p", "429")
        assert limited.value.retry_after == 7
        with pytest.raises(PlatformError) as timeout:  # 504 is a platform error too
            client.get("p", "504")
        assert timeout.value.platform == "wechat" and timeout.value.errcode is None
        # A server from before expires_in: the token, and nothing said about its life.
        assert client.get_expiring("p", "older") == Expiring("tok-from-an-older-server", None, None)


# -- call() ----------------------------------------------------------------------------------
def test_call_reports_a_rejected_token_and_retries_once(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    stale = tokens.get("wechat", appid)
    wechat.invalidate(stale)
    seen: list[str] = []

    def fn(token: str) -> dict[str, Any]:
        seen.append(token)
        return wechat_api(wechat, token)

    result = tokens.call("wechat", appid, fn)
    assert result["errcode"] == 0 and result["ip_list"]
    assert len(seen) == 2 and seen[0] == stale and seen[1] != stale
    assert seen[1] == tokens.get("wechat", appid) and force_refreshes(wechat, appid) == 1
    # A healthy token: one call, nothing refreshed.
    assert tokens.call("wechat", appid, lambda token: wechat_api(wechat, token))["errcode"] == 0
    assert force_refreshes(wechat, appid) == 1


def test_call_accepts_a_raised_stale_token(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    stale = tokens.get("wechat", appid)
    seen: list[str] = []

    def fn(token: str) -> str:
        seen.append(token)
        if token == stale:
            raise StaleToken("our own check says so")
        return "done"

    assert tokens.call("wechat", appid, fn) == "done"
    assert seen[0] == stale and seen[1] != stale and wechat.is_valid(seen[1])


def wechatpy_with(token: str, wechat: FakeWeChat) -> WeChatClient:
    """The real wechatpy client on a given token, leaving rejections to its caller."""
    client = WeChatClient("unused", None, access_token=token, auto_retry=False, timeout=5)
    client.API_BASE_URL = wechat.url("/cgi-bin/")
    return client


def test_call_refreshes_once_when_an_sdk_raises_the_rejection(hub: Hub, tokens: TokenClient,
                                                              wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    stale = tokens.get("wechat", appid)
    wechat.invalidate(stale)
    seen: list[str] = []

    def fn(token: str) -> dict[str, Any]:
        seen.append(token)
        answer: dict[str, Any] = wechatpy_with(token, wechat).get(API_PATH.removeprefix("/cgi-bin/"))
        return answer

    with pytest.raises(WeChatClientException) as raised:  # what wechatpy does with 40001
        fn(stale)
    assert raised.value.errcode == 40001
    result = tokens.call("wechat", appid, fn)
    assert result["errcode"] == 0 and seen[1:] == [stale, tokens.get("wechat", appid)] and seen[2] != stale
    assert force_refreshes(wechat, appid) == 1

    # Other codes, and the code under `code` (as other SDKs name it), are judged alike.
    ran: list[str] = []

    def quota(token: str) -> None:
        ran.append(token)
        raise WeChatClientException(45009, "reach max api daily quota limit")

    with pytest.raises(WeChatClientException) as limited:
        tokens.call("wechat", appid, quota)
    assert limited.value.errcode == 45009 and len(ran) == 1

    class SdkError(Exception):
        def __init__(self, code: int | str) -> None:
            super().__init__(code)
            self.code = code

    other_app, by_code = hub.fresh_app(), []  # one refresh per client, app and minute here

    def rejected_by_code(token: str) -> str:
        by_code.append(token)
        if len(by_code) == 1:
            raise SdkError("42001")
        return "done"

    assert tokens.call("wechat", other_app, rejected_by_code) == "done"
    assert len(by_code) == 2 and by_code[0] != by_code[1] and force_refreshes(wechat, other_app) == 1
    assert token_rejected("wecom", SdkError(40014)) and not token_rejected("wecom", SdkError(40001))


def test_call_does_not_retry_other_errors(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    tokens.get("wechat", appid)
    calls = wechat.count(STABLE_PATH, appid=appid)
    quota = {"errcode": 45009, "errmsg": "reach max api daily quota limit"}
    ran: list[str] = []

    def returns_quota(token: str) -> dict[str, Any]:
        ran.append(token)
        return quota

    def fails(token: str) -> None:
        ran.append(token)
        raise KeyError("ip_list")

    assert tokens.call("wechat", appid, returns_quota) is quota
    with pytest.raises(KeyError):
        tokens.call("wechat", appid, fails)

    def raises_404(token: str) -> None:
        ran.append(token)
        requests.get(wechat.url("/cgi-bin/nowhere"), timeout=5).raise_for_status()

    with pytest.raises(requests.HTTPError):
        tokens.call("wechat", appid, raises_404)
    # WeCom's rejection codes are not WeChat's: 40001 from a WeChat API is, 40001 for WeCom is not.
    assert tokens.call("wecom", f"{CORP}:{AGENT}", lambda token: {"errcode": 40001})["errcode"] == 40001
    assert len(ran) == 3 and wechat.count(STABLE_PATH, appid=appid) == calls


def test_a_second_rejection_reaches_the_caller(hub: Hub, tokens: TokenClient, wechat: FakeWeChat) -> None:
    appid = hub.fresh_app()
    seen: list[str] = []

    def rejected_every_time(token: str) -> dict[str, Any]:
        seen.append(token)
        wechat.invalidate(token)
        return wechat_api(wechat, token)

    result = tokens.call("wechat", appid, rejected_every_time)
    assert result["errcode"] == 40001 and len(seen) == 2 and seen[0] != seen[1]
    assert force_refreshes(wechat, appid) == 1

    other_app, raised = hub.fresh_app(), []

    def raises_every_time(token: str) -> None:
        raised.append(token)
        raise StaleToken("rejected")

    with pytest.raises(StaleToken):
        tokens.call("wechat", other_app, raises_every_time)
    assert len(raised) == 2 and raised[0] != raised[1] and force_refreshes(wechat, other_app) == 1


def test_call_surfaces_a_refused_refresh(hub: Hub, tokens: TokenClient) -> None:
    appid = hub.fresh_app()
    tokens.refresh("wechat", appid)  # this minute's one refresh for this client and app
    with pytest.raises(RateLimited) as caught:
        tokens.call("wechat", appid, lambda token: (_ for _ in ()).throw(StaleToken()))
    assert isinstance(caught.value.__cause__, StaleToken)


def test_call_on_wecom_dingtalk_and_feishu(tokens: TokenClient, wecom: FakeWeCom, dingtalk: FakeDingTalk,
                                           feishu: FakeFeishu) -> None:
    wecom_app = f"{CORP}:{AGENT}"
    stale = tokens.get("wecom", wecom_app)
    wecom.invalidate(stale)

    def wecom_fn(token: str) -> dict[str, Any]:
        answer: dict[str, Any] = requests.get(wecom.url(WECOM_API), params={"access_token": token},
                                              timeout=5).json()
        return answer

    assert wecom_fn(stale)["errcode"] == 40014
    assert tokens.call("wecom", wecom_app, wecom_fn)["errcode"] == 0
    assert wecom.count(WECOM_TOKEN) == 2

    # DingTalk answers HTTP 400 {"code": "InvalidAuthentication"}: the HTTPError form.
    stale = tokens.get("dingtalk", DING_KEY)
    dingtalk.invalidate(stale)

    def dingtalk_fn(token: str) -> dict[str, Any]:
        answer = requests.get(dingtalk.url(DING_API), headers={TOKEN_HEADER: token}, timeout=5)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    assert tokens.call("dingtalk", DING_KEY, dingtalk_fn) == {"appList": []}
    assert dingtalk.is_valid(tokens.get("dingtalk", DING_KEY))

    # Feishu keeps handing out a token it revoked while 30+ minutes remain:
    # the server serves it once more, and the second rejection reaches the caller.
    stale = tokens.get("feishu", FEISHU_APP)
    feishu.invalidate(stale)
    seen: list[str] = []

    def feishu_fn(token: str) -> requests.Response:
        seen.append(token)
        return requests.get(feishu.url(USERS_PATH), headers={"Authorization": f"Bearer {token}"}, timeout=5)

    answer = tokens.call("feishu", FEISHU_APP, feishu_fn)
    assert answer.json()["code"] == 99991663 and seen == [stale, stale]
    assert feishu.count(TENANT_PATH) == 2


def test_rejection_codes_are_public_and_overridable(tokens: TokenClient, hub: Hub) -> None:
    assert INVALID_TOKEN_CODES["wechat"] == {40001, 40014, 42001}
    assert INVALID_TOKEN_CODES["feishu"] == INVALID_TOKEN_CODES["lark"] == {99991663, 99991664, 99991671}
    assert INVALID_TOKEN_CODES["wecom"] == {40014, 42001}
    assert INVALID_TOKEN_CODES["dingtalk"] == {"InvalidAuthentication"}
    assert INVALID_TOKEN_CODES["dingtalk_suite"] == INVALID_TOKEN_CODES["dingtalk_corp"] == {"InvalidAuthentication"}
    with pytest.raises(TypeError):
        INVALID_TOKEN_CODES["wechat"] = frozenset()  # type: ignore[index]
    assert token_rejected("wechat", {"errcode": "42001"}) and not token_rejected("wechat", {"errcode": 0})
    assert token_rejected("alipay", {"alipay_trade_pay_response": {"code": "20001",
                                                                   "sub_code": "aop.invalid-app-auth-token"}})
    assert not token_rejected("unknown", {"errcode": 40001}) and token_rejected("unknown", StaleToken())
    custom = hub.client(invalid_token_codes={"wechat": [45009]})
    assert custom.invalid_token_codes["wechat"] == {45009} and custom.invalid_token_codes["wecom"] == {40014, 42001}
    custom.close()
