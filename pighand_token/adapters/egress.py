"""The requests Session every platform call goes through.

Built once by bootstrap and handed to every provider (token and ticket
fetches, third-party calls), so ``platform_http_proxy`` and ``no_proxy``
apply to all of them in one place.

``trust_env`` is off: the host's ``HTTP_PROXY`` / ``HTTPS_PROXY`` /
``ALL_PROXY`` / ``NO_PROXY`` and ``~/.netrc`` are not read. With them read, a
proxy variable set for some other program on the host would silently take
platform calls off the one whitelisted egress (or onto one) whatever the
settings say; the settings are the only source, and
``PIGHAND_PLATFORM_HTTP_PROXY`` / ``PIGHAND_NO_PROXY`` set them from the
environment when that is wanted. The CA bundle variables
(``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) change no route, only which
certificates are trusted (a proxy that inspects TLS needs its CA there), so
bootstrap still passes them on as ``ca_bundle``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from ..core.egress import NoProxy, redact_url


def ca_bundle_from(environ: Mapping[str, str] = os.environ) -> str | None:
    """The CA bundle requests would take from the environment, or None."""
    return environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or None


class PlatformSession(requests.Session):
    """A Session that sends every request through ``proxy_url`` unless
    ``no_proxy`` names its host; without ``proxy_url``, straight out."""

    def __init__(self, proxy_url: str = "", no_proxy: tuple[str, ...] = (), *, ca_bundle: str | None = None) -> None:
        super().__init__()
        self.trust_env = False
        if ca_bundle:
            self.verify = ca_bundle
        self.headers["User-Agent"] = "pighand-token"
        self.proxy_url = proxy_url
        self.no_proxy = NoProxy(no_proxy)
        self._via_proxy = {"http": proxy_url, "https": proxy_url} if proxy_url else {}

    @property
    def proxy_description(self) -> str:
        """The proxy as it may be shown (credentials hidden), or "" for none."""
        return redact_url(self.proxy_url) if self.proxy_url else ""

    @property
    def hidden(self) -> tuple[str, ...]:
        """What must never appear in a message: the proxy's password, and
        its user:password pair (the user name alone may be a plain word)."""
        if not self.proxy_url:
            return ()
        userinfo = urlsplit(self.proxy_url).netloc.rpartition("@")[0]
        password = userinfo.partition(":")[2]
        return tuple(part for part in {password, unquote(password), userinfo, unquote(userinfo)} if part)

    def proxies_for(self, url: str) -> dict[str, str]:
        if not self._via_proxy or self.no_proxy.bypasses(url):
            return {}
        return dict(self._via_proxy)

    # requests asks these two for the proxies of a request and of each
    # redirect it follows; both now answer from the settings alone.
    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        merged["proxies"] = self.proxies_for(str(url))
        return merged

    def rebuild_proxies(self, prepared_request: Any, proxies: Any) -> dict[str, str]:
        return dict(super().rebuild_proxies(prepared_request, self.proxies_for(str(prepared_request.url))))
