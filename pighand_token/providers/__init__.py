"""Platform providers. Adding a platform: one module, one setting for its
base URL, and one line here naming the factory that builds it."""

from __future__ import annotations

from collections.abc import Callable

from .alipay import AlipayProvider
from .base import HttpProvider, ProviderContext
from .dingtalk import DingTalkProvider
from .dingtalk_isv import DingTalkCorpProvider, DingTalkSuiteProvider
from .feishu import FeishuProvider
from .feishu_store import FeishuStoreProvider, FeishuTenantProvider
from .wechat import WeChatProvider
from .wechat_open import WeChatAuthorizerProvider, WeChatComponentProvider
from .wecom import WeComProvider
from .wecom_isv import WeComCorpProvider, WeComProviderTokenProvider, WeComSuiteProvider

REGISTRY: dict[str, Callable[[ProviderContext], HttpProvider]] = {
    "feishu": FeishuProvider.build,
    "feishu_app": FeishuProvider.build_app,
    "lark": FeishuProvider.build_lark,
    "lark_app": FeishuProvider.build_lark_app,
    "wechat": WeChatProvider.build,
    "wecom": WeComProvider.build,
    "dingtalk": DingTalkProvider.build,
    "alipay": AlipayProvider.build,
    "wechat_component": WeChatComponentProvider.build,
    "wechat_authorizer": WeChatAuthorizerProvider.build,
    "wecom_suite": WeComSuiteProvider.build,
    "wecom_corp": WeComCorpProvider.build,
    "wecom_provider": WeComProviderTokenProvider.build,
    "feishu_store": FeishuStoreProvider.build,
    "feishu_tenant": FeishuTenantProvider.build,
    "lark_store": FeishuStoreProvider.build_lark,
    "lark_tenant": FeishuTenantProvider.build_lark,
    "dingtalk_suite": DingTalkSuiteProvider.build,
    "dingtalk_corp": DingTalkCorpProvider.build,
}

__all__ = ["REGISTRY", "HttpProvider", "ProviderContext"]
