"""The Redis keys WeChat/WeCom SDKs read their tokens from (``redis_compat``).

With ``redis_compat`` set, every write of a WeChat or WeCom token or ticket
to Redis (:class:`pighand_token.adapters.redis.RedisTokenStore.put`: fresh
fetches, back-fills from SQL and write-backs alike) also writes the keys the
chosen SDKs look in, in the same script, so an SDK pointed at that Redis finds
a token and never asks the platform itself. Each key lives exactly as long
as the hub serves the token (its ``expires_in``); deleting the token deletes
them too. ``redis_key_prefix`` does not apply: the SDKs' own names are
written, with the SDK's own prefix option where it has one.

This is the one module of the adapters that knows platform names: the keys
are the SDKs' contract, not the hub's.

What is not written, and why:

- silenceper for WeCom (``gowechat_work__access_token_<corpid>``): the key
  has no agent id, while each app (agent) of a corp has its own token, so
  two apps of one corp would overwrite each other's.
- wechatpy for WeCom (``<corpid>_<first 10 characters of the secret>_access_token``
  in 2.0): the key is made from the secret, which the hub never puts in a
  key name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.domain import Token, TokenKey

# How a key's value is made from the token:
RAW = "raw"  # the token string as it is
JSON = "json"  # json.dumps(token string), as wechatpy's RedisStorage.set writes it
JSON_EXPIRES_AT = "json-expires-at"  # json.dumps(int(expires_at)), an epoch second

# The hub's ticket keys (core/service.py get_ticket): <platform>_<type>_ticket.
_WECHAT_TICKETS = {"wechat_jsapi_ticket": "jsapi", "wechat_wx_card_ticket": "wx_card"}


@dataclass(frozen=True)
class SdkKey:
    name: str
    encoding: str

    def value(self, token: Token) -> str:
        if self.encoding == JSON:
            return json.dumps(token.value)
        if self.encoding == JSON_EXPIRES_AT:
            return json.dumps(int(token.expires_at))
        return token.value


class RedisCompat:
    """The SDK keys for one token, given the ``redis_compat`` settings."""

    def __init__(self, sdks: Iterable[str], *, wxjava_prefix: str = "wx", wxjava_cp_prefix: str = "wx:cp",
                 wechatpy_prefix: str = "wechatpy", wechat_stable: bool = True) -> None:
        self.sdks = frozenset(sdks)
        self.wxjava_prefix = wxjava_prefix
        # WxJava's CP storage adds the ':' itself when the prefix lacks one,
        # and uses none when it is blank (StringUtils.isBlank).
        if not wxjava_cp_prefix.strip():
            wxjava_cp_prefix = ""
        elif not wxjava_cp_prefix.endswith(":"):
            wxjava_cp_prefix += ":"
        self.wxjava_cp_prefix = wxjava_cp_prefix
        self.wechatpy_prefix = wechatpy_prefix
        self.wechat_stable = wechat_stable

    def __bool__(self) -> bool:
        return bool(self.sdks)

    def keys(self, key: TokenKey) -> list[SdkKey]:
        """The SDK keys of ``key``'s token or ticket (none for other platforms)."""
        keys: list[SdkKey] = []
        if key.platform == "wechat":
            keys += self._wechat_token(key.appid)
        elif key.platform in _WECHAT_TICKETS:
            keys += self._wechat_ticket(key.appid, _WECHAT_TICKETS[key.platform])
        elif key.platform == "wecom":
            keys += self._wecom_token(key.appid)
        return keys

    def _wechat_token(self, appid: str) -> list[SdkKey]:
        keys = []
        if "wxjava" in self.sdks:
            # WxJava weixin-java-mp, me/chanjar/weixin/mp/config/impl/WxMpRedisConfigImpl.java:
            # ACCESS_TOKEN_KEY_TPL "%s:access_token:%s" (keyPrefix, appId), a plain string
            # value; isAccessTokenExpired() is getExpire(key) < 2, so the TTL is what it goes by.
            # The starter's keyPrefix defaults to "wx" (WxMpProperties.java).
            keys.append(SdkKey(f"{self.wxjava_prefix}:access_token:{appid}", RAW))
        if "silenceper" in self.sdks:
            # silenceper/wechat v2, credential/default_access_token.go:
            # fmt.Sprintf("%s_access_token_%s", cacheKeyPrefix, appID) with
            # CacheKeyOfficialAccountPrefix "gowechat_officialaccount_" and
            # CacheKeyMiniProgramPrefix "gowechat_miniprogram_" (hence the double
            # underscore); cache/redis.go stores the string as it is (SETEX). An appid
            # is one or the other, and the hub is not told which: both are written.
            for prefix in ("gowechat_officialaccount_", "gowechat_miniprogram_"):
                keys.append(SdkKey(f"{prefix}_access_token_{appid}", RAW))
                if self.wechat_stable:
                    # StableAccessToken in the same file: "%s_stable_access_token_%s".
                    keys.append(SdkKey(f"{prefix}_stable_access_token_{appid}", RAW))
        if "wechatpy" in self.sdks:
            # wechatpy client/base.py (1.8 and 2.0): access_token_key is
            # "{appid}_access_token"; 2.0 keeps expires_at in the session too, under
            # "{appid}_access_token_expires_at", and fetches when it is 60 s away.
            # session/redisstorage.py: key "{prefix}:{key}", value json.dumps(value).
            keys.append(SdkKey(f"{self.wechatpy_prefix}:{appid}_access_token", JSON))
            keys.append(SdkKey(f"{self.wechatpy_prefix}:{appid}_access_token_expires_at", JSON_EXPIRES_AT))
        return keys

    def _wechat_ticket(self, appid: str, ticket_type: str) -> list[SdkKey]:
        keys = []
        if "wxjava" in self.sdks:
            # WxMpRedisConfigImpl.java: TICKET_KEY_TPL "%s:ticket:key:%s:%s" (keyPrefix,
            # appId, TicketType.getCode()); the codes are "jsapi" and "wx_card"
            # (weixin-java-common .../common/enums/TicketType.java).
            keys.append(SdkKey(f"{self.wxjava_prefix}:ticket:key:{appid}:{ticket_type}", RAW))
        if "silenceper" in self.sdks and ticket_type == "jsapi":
            # credential/default_js_ticket.go: "%s_jsapi_ticket_%s" with the official
            # account prefix (officialaccount/js/js.go); it has no card ticket.
            keys.append(SdkKey(f"gowechat_officialaccount__jsapi_ticket_{appid}", RAW))
        if "wechatpy" in self.sdks:
            # wechatpy client/api/jsapi.py (1.8 and 2.0): get_jsapi_ticket() reads
            # "{appid}_jsapi_ticket" and "{appid}_jsapi_ticket_expires_at";
            # get_jsapi_card_ticket() "{appid}_jsapi_card_ticket" and
            # "{appid}_jsapi_card_ticket_expires_at"; it fetches once expires_at < now.
            name = "jsapi_ticket" if ticket_type == "jsapi" else "jsapi_card_ticket"
            keys.append(SdkKey(f"{self.wechatpy_prefix}:{appid}_{name}", JSON))
            keys.append(SdkKey(f"{self.wechatpy_prefix}:{appid}_{name}_expires_at", JSON_EXPIRES_AT))
        return keys

    def _wecom_token(self, appid: str) -> list[SdkKey]:
        keys = []
        if "wxjava" in self.sdks:
            # WxJava weixin-java-cp, me/chanjar/weixin/cp/config/impl/AbstractWxCpInRedisConfigImpl.java:
            # setAgentId() makes prefix + "wechat_cp_access_token_key:" + corpId + ":" + agentId,
            # the prefix ending in ':' ("wx:cp" in the starter's WxCpProperties); a
            # plain string value. The hub's wecom appid is that <corpid>:<agentid>.
            keys.append(SdkKey(f"{self.wxjava_cp_prefix}wechat_cp_access_token_key:{appid}", RAW))
        return keys
