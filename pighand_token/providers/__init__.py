"""Platform providers. Adding a platform: one module, one setting for its
base URL, and one line here naming the factory that builds it."""

from __future__ import annotations

from collections.abc import Callable

from .base import HttpProvider, ProviderContext
from .wechat import WeChatProvider

REGISTRY: dict[str, Callable[[ProviderContext], HttpProvider]] = {
    "wechat": WeChatProvider.build,
}

__all__ = ["REGISTRY", "HttpProvider", "ProviderContext"]
