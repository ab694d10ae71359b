"""SDK-compatible Redis keys (``redis_compat``): beside every WeChat/WeCom
token and ticket it writes to Redis, the hub writes the keys WxJava,
silenceper/wechat and wechatpy read, so an SDK pointed at that Redis uses
the hub's token and never fetches one.

wechatpy is the real one (1.8.18, its ``WeChatClient`` with its
``RedisStorage``) calling the fake WeChat API; for the Java and Go SDKs the
keys, values and TTLs are checked exactly against a real Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from wechatpy import WeChatClient
from wechatpy.session.redisstorage import RedisStorage

from pighand_token.app import create_app
from pighand_token.config import load_settings
from pighand_token.core.domain import Credential
from pighand_token.core.errors import SettingsError
from tests.conftest import REDIS, app_overrides, storage_overrides
from tests.fakes.wechat import API_PATH, STABLE_PATH, TICKET_PATH, TOKEN_PATH, FakeWeChat
from tests.fakes.wecom import TOKEN_PATH as WECOM_TOKEN
from tests.fakes.wecom import FakeWeCom

CORP, AGENT, WECOM_SECRET = "ww0123456789abcdef", "1000002", "wc-S3cr3t_4pp-1000002-xyz"
WECOM_APP = f"{CORP}:{AGENT}"
MARGIN_S = 300  # corn_interval's default: a 7200 s token is served until 300 s before its end


@pytest.fixture
def appid(wechat: FakeWeChat, redis_server: dict[str, Any]) -> Iterator[str]:
    """A WeChat appid of this test's own: silenceper's keys have no prefix
    option, so the appid is what keeps them apart; deleted afterwards."""
    name = f"wx{uuid.uuid4().hex[:16]}"
    wechat.add_app(name, f"secret-of-{name}")
    yield name
    client = redis.Redis(**redis_server)
    keys = list(client.scan_iter(match=f"gowechat_*{name}", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.add_app(CORP, AGENT, WECOM_SECRET)
        yield fake


@pytest.fixture
def make(tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat, wecom: FakeWeCom,
         redis_prefix: str) -> Any:
    """make(kind, **settings) -> an app on Redis whose SDK prefixes start
    with this test's Redis prefix (so its keys are cleaned up with it)."""
    def make_app(kind: str = "redis+sqlite", **extra: Any) -> Any:
        prefix = redis_prefix if kind == "redis+sqlite" else request.getfixturevalue("redis_cluster_prefix")
        settings = {"wecom_api_base": wecom.base_url, "redis_compat_wxjava_prefix": f"{prefix}wx",
                    "redis_compat_wxjava_cp_prefix": f"{prefix}wx:cp",
                    "redis_compat_wechatpy_prefix": f"{prefix}wechatpy", **extra}
        return create_app(overrides={**storage_overrides(kind, request, tmp_path),
                                     **app_overrides(wechat, **settings)})
    return make_app


def seed(app: Any, platform: str, appid: str, secret: str) -> None:
    app.extensions["pighand"].credentials.add(Credential(platform, appid, secret))


def served(app: Any, path: str) -> dict[str, Any]:
    response = app.test_client().get(path)
    body = response.get_json()
    assert response.status_code == 200, body
    return dict(body)


def hub_entry(client: Any, app: Any, platform: str, appid: str) -> dict[str, str]:
    """The hub's own hash of a token (value, expires_at, fetched_at)."""
    prefix = app.extensions["pighand"].settings.redis_key_prefix
    name = f"{prefix}pighand:token:{platform}:{appid}"
    if app.extensions["pighand"].settings.redis_cluster_nodes:
        name = f"{prefix}pighand:token:{{{platform}:{appid}}}"
    fields = client.hgetall(name)
    assert fields, f"no hub entry {name}"
    return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in fields.items()}


def assert_sdk_key(client: Any, name: str, value: str, serve_until: float, written_after: float) -> None:
    """``name`` holds exactly ``value`` and lives no longer than the hub
    serves the token, and less than 60 s shorter."""
    stored = client.get(name)
    assert stored is not None, f"no key {name}"
    assert (stored.decode() if isinstance(stored, bytes) else stored) == value, name
    ttl_s = client.pttl(name) / 1000
    read_at = time.time()
    assert ttl_s <= serve_until - written_after, name
    assert ttl_s > serve_until - read_at - 60, name


# -- wechatpy, the real SDK -------------------------------------------------------------
def test_wechatpy_with_its_redis_storage_uses_the_hubs_token_and_never_calls_the_token_endpoint(
        make: Any, wechat: FakeWeChat, appid: str, redis_prefix: str) -> None:
    app = make(redis_compat=["wechatpy"])
    seed(app, "wechat", appid, f"secret-of-{appid}")
    hub_token = served(app, f"/token/wechat/{appid}")["data"]
    calls_to_token_endpoints = wechat.count(STABLE_PATH) + wechat.count(TOKEN_PATH)
    assert calls_to_token_endpoints == 1

    storage = RedisStorage(redis.Redis(**REDIS), prefix=f"{redis_prefix}wechatpy")
    sdk = WeChatClient(appid, f"secret-of-{appid}", session=storage, timeout=5)
    sdk.API_BASE_URL = wechat.url("/cgi-bin/")  # the fake platform instead of api.weixin.qq.com
    assert sdk.access_token == hub_token
    for _ in range(3):
        answer = sdk.get(API_PATH.removeprefix("/cgi-bin/"))
        assert answer["errcode"] == 0 and answer["ip_list"]
    assert wechat.count(STABLE_PATH) + wechat.count(TOKEN_PATH) == calls_to_token_endpoints
    assert [call["query"]["access_token"] for call in wechat.find(API_PATH)] == [hub_token] * 3


def test_wechatpy_takes_the_hubs_jsapi_and_card_tickets_without_asking_the_platform(
        make: Any, wechat: FakeWeChat, appid: str, redis_prefix: str) -> None:
    app = make(redis_compat=["wechatpy"])
    seed(app, "wechat", appid, f"secret-of-{appid}")
    jsapi = served(app, f"/ticket/wechat/{appid}/jsapi")["data"]
    card = served(app, f"/ticket/wechat/{appid}/wx_card")["data"]
    before = wechat.count()

    storage = RedisStorage(redis.Redis(**REDIS), prefix=f"{redis_prefix}wechatpy")
    sdk = WeChatClient(appid, f"secret-of-{appid}", session=storage, timeout=5)
    sdk.API_BASE_URL = wechat.url("/cgi-bin/")
    assert sdk.jsapi.get_jsapi_ticket() == jsapi
    assert sdk.jsapi.get_jsapi_card_ticket() == card
    assert wechat.count() == before
    assert wechat.count(TICKET_PATH) == 2


def test_wechatpy_keys_are_json_as_its_storage_writes_them_with_the_expiry_2_0_reads(
        make: Any, appid: str, redis_prefix: str, redis_client: redis.Redis) -> None:
    app = make(redis_compat=["wechatpy"])
    seed(app, "wechat", appid, f"secret-of-{appid}")
    before = time.time()
    hub_token = served(app, f"/token/wechat/{appid}")["data"]
    entry = hub_entry(redis_client, app, "wechat", appid)
    expires_at = float(entry["expires_at"])
    serve_until = expires_at - MARGIN_S
    prefix = f"{redis_prefix}wechatpy"
    assert_sdk_key(redis_client, f"{prefix}:{appid}_access_token", json.dumps(hub_token), serve_until, before)
    assert_sdk_key(redis_client, f"{prefix}:{appid}_access_token_expires_at", json.dumps(int(expires_at)),
                   serve_until, before)


# -- WxJava and silenceper: keys, values and TTLs exactly ------------------------------------
@pytest.mark.parametrize("kind", ["redis+sqlite", "redis-cluster+sqlite"])
def test_wxjava_and_silenceper_read_the_token_under_their_own_keys(make: Any, appid: str, kind: str,
                                                                   request: pytest.FixtureRequest) -> None:
    app = make(kind, redis_compat=["wxjava", "silenceper"])
    client: Any = (request.getfixturevalue("redis_cluster").cluster_client() if "cluster" in kind
                   else request.getfixturevalue("redis_client"))
    prefix = app.extensions["pighand"].settings.redis_compat_wxjava_prefix
    seed(app, "wechat", appid, f"secret-of-{appid}")
    before = time.time()
    hub_token = served(app, f"/token/wechat/{appid}")["data"]
    serve_until = float(hub_entry(client, app, "wechat", appid)["expires_at"]) - MARGIN_S
    for name in (f"{prefix}:access_token:{appid}",
                 f"gowechat_officialaccount__access_token_{appid}",
                 f"gowechat_miniprogram__access_token_{appid}",
                 # wechat_token_mode stable (the default): silenceper's StableAccessToken key too.
                 f"gowechat_officialaccount__stable_access_token_{appid}",
                 f"gowechat_miniprogram__stable_access_token_{appid}"):
        assert_sdk_key(client, name, hub_token, serve_until, before)


def test_in_classic_mode_silenceper_gets_no_stable_token_key(make: Any, appid: str,
                                                               redis_client: redis.Redis) -> None:
    app = make(redis_compat=["silenceper"], wechat_token_mode="classic")
    seed(app, "wechat", appid, f"secret-of-{appid}")
    hub_token = served(app, f"/token/wechat/{appid}")["data"]
    assert redis_client.get(f"gowechat_officialaccount__access_token_{appid}") == hub_token
    assert redis_client.get(f"gowechat_officialaccount__stable_access_token_{appid}") is None


def test_wxjava_and_silenceper_read_the_tickets_under_their_own_keys(make: Any, appid: str,
                                                                     redis_client: redis.Redis) -> None:
    app = make(redis_compat=["wxjava", "silenceper"])
    prefix = app.extensions["pighand"].settings.redis_compat_wxjava_prefix
    seed(app, "wechat", appid, f"secret-of-{appid}")
    before = time.time()
    jsapi = served(app, f"/ticket/wechat/{appid}/jsapi")["data"]
    card = served(app, f"/ticket/wechat/{appid}/wx_card")["data"]
    jsapi_until = float(hub_entry(redis_client, app, "wechat_jsapi_ticket", appid)["expires_at"]) - MARGIN_S
    card_until = float(hub_entry(redis_client, app, "wechat_wx_card_ticket", appid)["expires_at"]) - MARGIN_S
    assert_sdk_key(redis_client, f"{prefix}:ticket:key:{appid}:jsapi", jsapi, jsapi_until, before)
    assert_sdk_key(redis_client, f"{prefix}:ticket:key:{appid}:wx_card", card, card_until, before)
    assert_sdk_key(redis_client, f"gowechat_officialaccount__jsapi_ticket_{appid}", jsapi, jsapi_until, before)


@pytest.mark.parametrize("cp_prefix", ["wx:cp", "wx:cp:", ""])
def test_wxjava_cp_reads_the_wecom_token_under_corpid_and_agentid(make: Any, wecom: FakeWeCom, cp_prefix: str,
                                                                  redis_prefix: str,
                                                                  redis_client: redis.Redis) -> None:
    # With an empty prefix WxJava adds none: the key is the bare name, made
    # this test's own by the corpid.
    corp = f"ww{uuid.uuid4().hex[:16]}" if not cp_prefix else CORP
    wecom.add_app(corp, AGENT, WECOM_SECRET)
    app = make(redis_compat=["wxjava"], redis_compat_wxjava_cp_prefix=f"{redis_prefix}{cp_prefix}" if cp_prefix
               else "")
    seed(app, "wecom", f"{corp}:{AGENT}", WECOM_SECRET)
    before = time.time()
    hub_token = served(app, f"/token/wecom/{corp}:{AGENT}")["data"]
    serve_until = float(hub_entry(redis_client, app, "wecom", f"{corp}:{AGENT}")["expires_at"]) - MARGIN_S
    name = (f"{redis_prefix}wx:cp:" if cp_prefix else "") + f"wechat_cp_access_token_key:{corp}:{AGENT}"
    try:
        assert_sdk_key(redis_client, name, hub_token, serve_until, before)
        assert wecom.count(WECOM_TOKEN) == 1
    finally:
        if not cp_prefix:
            redis_client.delete(name)


# -- every write, and the delete ---------------------------------------------------------
def test_a_back_fill_from_sql_writes_the_sdk_keys_again_without_a_platform_call(
        make: Any, wechat: FakeWeChat, appid: str, redis_client: redis.Redis, redis_prefix: str) -> None:
    app = make(redis_compat=["wxjava", "wechatpy"], save_model="all", local_cache_ttl=0)
    seed(app, "wechat", appid, f"secret-of-{appid}")
    hub_token = served(app, f"/token/wechat/{appid}")["data"]
    # Redis loses everything of this test (a restart without persistence).
    names = [*redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert f"{redis_prefix}wx:access_token:{appid}" in names
    redis_client.delete(*names)
    before = time.time()
    assert served(app, f"/token/wechat/{appid}")["data"] == hub_token
    assert wechat.count(STABLE_PATH) == 1
    serve_until = float(hub_entry(redis_client, app, "wechat", appid)["expires_at"]) - MARGIN_S
    assert_sdk_key(redis_client, f"{redis_prefix}wx:access_token:{appid}", hub_token, serve_until, before)
    assert_sdk_key(redis_client, f"{redis_prefix}wechatpy:{appid}_access_token", json.dumps(hub_token),
                   serve_until, before)


def test_a_forgotten_token_takes_its_sdk_keys_with_it(make: Any, appid: str, redis_client: redis.Redis,
                                                      redis_prefix: str) -> None:
    app = make(redis_compat=["wxjava", "silenceper", "wechatpy"])
    seed(app, "wechat", appid, f"secret-of-{appid}")
    served(app, f"/token/wechat/{appid}")
    names = (f"{redis_prefix}wx:access_token:{appid}", f"gowechat_officialaccount__access_token_{appid}",
             f"{redis_prefix}wechatpy:{appid}_access_token")
    assert all(redis_client.get(name) for name in names)
    app.extensions["pighand"].service.forget("wechat", appid)
    assert [redis_client.get(name) for name in names] == [None, None, None]


def test_other_platforms_get_no_sdk_keys(make: Any, redis_client: redis.Redis, redis_prefix: str) -> None:
    app = make(redis_compat=["wxjava", "silenceper", "wechatpy"])
    seed(app, "wecom", WECOM_APP, WECOM_SECRET)
    served(app, f"/token/wecom/{WECOM_APP}")
    # Only WxJava has a WeCom key that names the app (corpid and agentid).
    sdk_keys = sorted(name for name in redis_client.scan_iter(match=f"{redis_prefix}*")
                      if "pighand:" not in name and name != f"{redis_prefix}wecom_{WECOM_APP}")
    assert sdk_keys == [f"{redis_prefix}wx:cp:wechat_cp_access_token_key:{WECOM_APP}"]
    assert redis_client.get(f"gowechat_work__access_token_{CORP}") is None


def test_without_redis_the_setting_stops_start_up() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"redis_compat": ["wechatpy"]}, environ={})
    assert caught.value.message.startswith("redis_compat=")
    assert "no Redis is configured" in caught.value.message
