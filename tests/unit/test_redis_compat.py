"""Which SDK keys a token gets, by platform and settings (the names alone;
tests/integration/test_redis_compat.py writes and reads them in Redis)."""

from __future__ import annotations

import json

import pytest

from pighand_token.adapters.redis_compat import RedisCompat
from pighand_token.core.domain import Token, TokenKey

TOKEN = Token(value="83_Xk2token", expires_at=1_800_007_200.75, fetched_at=1_800_000_000.0)


def names(compat: RedisCompat, platform: str, appid: str) -> list[str]:
    return [key.name for key in compat.keys(TokenKey(platform, appid))]


def test_every_sdk_gets_its_wechat_token_keys() -> None:
    compat = RedisCompat(["wxjava", "silenceper", "wechatpy"])
    assert names(compat, "wechat", "wx1") == [
        "wx:access_token:wx1",
        "gowechat_officialaccount__access_token_wx1", "gowechat_officialaccount__stable_access_token_wx1",
        "gowechat_miniprogram__access_token_wx1", "gowechat_miniprogram__stable_access_token_wx1",
        "wechatpy:wx1_access_token", "wechatpy:wx1_access_token_expires_at",
    ]


def test_classic_mode_writes_no_silenceper_stable_key() -> None:
    compat = RedisCompat(["silenceper"], wechat_stable=False)
    assert names(compat, "wechat", "wx1") == ["gowechat_officialaccount__access_token_wx1",
                                              "gowechat_miniprogram__access_token_wx1"]


def test_values_are_raw_for_java_and_go_and_json_for_wechatpy() -> None:
    compat = RedisCompat(["wxjava", "wechatpy"])
    values = {key.name: key.value(TOKEN) for key in compat.keys(TokenKey("wechat", "wx1"))}
    assert values == {"wx:access_token:wx1": "83_Xk2token",
                      "wechatpy:wx1_access_token": json.dumps("83_Xk2token"),
                      "wechatpy:wx1_access_token_expires_at": "1800007200"}


def test_ticket_keys_follow_each_sdks_ticket_names() -> None:
    compat = RedisCompat(["wxjava", "silenceper", "wechatpy"], wxjava_prefix="mp", wechatpy_prefix="py")
    assert names(compat, "wechat_jsapi_ticket", "wx1") == [
        "mp:ticket:key:wx1:jsapi", "gowechat_officialaccount__jsapi_ticket_wx1",
        "py:wx1_jsapi_ticket", "py:wx1_jsapi_ticket_expires_at"]
    assert names(compat, "wechat_wx_card_ticket", "wx1") == [
        "mp:ticket:key:wx1:wx_card", "py:wx1_jsapi_card_ticket", "py:wx1_jsapi_card_ticket_expires_at"]


@pytest.mark.parametrize(("prefix", "name"), [
    ("wx:cp", "wx:cp:wechat_cp_access_token_key:ww1:1000002"),
    ("wx:cp:", "wx:cp:wechat_cp_access_token_key:ww1:1000002"),
    ("", "wechat_cp_access_token_key:ww1:1000002"),
    ("  ", "wechat_cp_access_token_key:ww1:1000002"),
])
def test_the_wxjava_cp_key_takes_the_prefix_as_wxjava_joins_it(prefix: str, name: str) -> None:
    compat = RedisCompat(["wxjava", "silenceper", "wechatpy"], wxjava_cp_prefix=prefix)
    assert names(compat, "wecom", "ww1:1000002") == [name]


@pytest.mark.parametrize("platform", ["feishu", "dingtalk", "alipay", "wechat_authorizer", "wecom_corp"])
def test_other_platforms_get_no_sdk_keys(platform: str) -> None:
    assert names(RedisCompat(["wxjava", "silenceper", "wechatpy"]), platform, "x1") == []
