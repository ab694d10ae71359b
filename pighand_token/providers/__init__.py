"""Platform providers. Adding a platform: one module and one line here."""

from __future__ import annotations

from .base import HttpProvider
from .wechat import WeChatProvider

REGISTRY: dict[str, type[HttpProvider]] = {
    "wechat": WeChatProvider,
}

__all__ = ["REGISTRY", "HttpProvider"]
