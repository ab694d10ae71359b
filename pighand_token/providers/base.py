"""What every platform provider shares: one HTTP call that turns transport
failures into UpstreamError and keeps secrets out of every message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import requests

from ..config import Settings
from ..core.domain import APPID_PATTERN, Credential, Token
from ..core.errors import UpstreamError, UpstreamTimeout
from ..core.ports import AccountGrants, Clock, Counters, GrantStore, Locks, TicketStore, TokenSource


@dataclass(frozen=True)
class TokenPlacement:
    """Where a platform's business API takes the access token, for the
    proxy (``/proxy/<platform>/<appid>/<path>``): a query parameter
    (``query``), or a header (``header``, its value ``prefix`` + token)."""

    query: str | None = None
    header: str | None = None
    prefix: str = ""

    def __post_init__(self) -> None:
        if (self.query is None) == (self.header is None):
            raise ValueError("a token goes into a query parameter or a header: name one")


@dataclass(frozen=True)
class ProviderContext:
    """What a provider factory may use to build its provider."""

    settings: Settings
    session: requests.Session
    clock: Clock
    # Durable state a platform hands over once per authorizing account
    # (Alipay merchant grants).
    grants: GrantStore | None = None
    # Shared across workers: for platform-side limits (WeChat force_refresh).
    locks: Locks | None = None
    counters: Counters | None = None
    # Third-party apps: the tickets their platforms push, the grants their
    # accounts give, and the service, for tokens made from other tokens.
    tickets: TicketStore | None = None
    account_grants: AccountGrants | None = None
    tokens: TokenSource | None = None


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets``, raw or URL-encoded (requests
    puts the encoded URL, query string included, into its messages)."""
    for secret in secrets:
        if secret:
            for spelling in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(spelling, "***")
    return text


def transport_error(platform: str, exc: requests.RequestException, secrets: Iterable[str],
                    session: requests.Session, *, what: str = "the platform") -> UpstreamError:
    """The retryable UpstreamError for a request that got no answer. Its
    message never holds ``secrets`` nor the proxy's credentials; a proxy that
    is down or refuses the tunnel is named as the cause (the proxy by its URL
    without credentials), not the platform."""
    proxy = str(getattr(session, "proxy_description", "") or "")
    proxy_url = str(getattr(session, "proxy_url", "") or "")
    reason = f"{type(exc).__name__}: {exc}"
    if proxy_url:
        reason = reason.replace(proxy_url, proxy)
    reason = redact(reason, [*secrets, *getattr(session, "hidden", ())])
    if isinstance(exc, requests.exceptions.ProxyError) and proxy:
        if "407 Proxy Authentication Required" in reason:  # the CONNECT tunnel refused
            refusal = proxy_refusal(platform, 407, session)
            if refusal is not None:
                return refusal
        return UpstreamError(platform, f"cannot reach {what} through platform_http_proxy {proxy} ({reason})",
                             retryable=True)
    return UpstreamError(platform, f"cannot reach {what} ({reason})", retryable=True)


def proxy_refusal(platform: str, status: int, session: requests.Session) -> UpstreamError | None:
    """The UpstreamError for the proxy's own 407 (its credentials are wrong
    or missing: not retried), or None for any other answer."""
    proxy = str(getattr(session, "proxy_description", "") or "")
    if status != 407 or not proxy:
        return None
    return UpstreamError(platform, f"platform_http_proxy {proxy} refused the request (HTTP 407 Proxy "
                         "Authentication Required): check the user and password in its URL")


class HttpProvider:
    """Base for providers that speak JSON over HTTPS."""

    platform = "?"
    # True where the platform hands back the same token until it expires and
    # never earlier issues a new one (WeCom).
    keeps_token_until_expiry = False
    # How the platform's business API takes the token (the proxy adds it
    # there), or None where there is no app token to add (Alipay signs each
    # request instead).
    token_placement: TokenPlacement | None = None
    # The codes with which the business API rejects a token as invalid,
    # expired or superseded (the proxy then refreshes it and replays).
    invalid_token_codes: frozenset[int | str] = frozenset()

    def __init__(self, *, session: requests.Session, base_url: str, timeout_s: float, clock: Clock,
                 options: Mapping[str, Any] | None = None, platform: str | None = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock
        self.options = dict(options or {})
        if platform is not None:
            self.platform = platform

    @classmethod
    def standard(cls, ctx: ProviderContext, *, platform: str, base_url: str,
                 **options: Any) -> HttpProvider:
        return cls(session=ctx.session, base_url=base_url, timeout_s=ctx.settings.upstream_timeout,
                   clock=ctx.clock, options=options, platform=platform)

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        raise NotImplementedError

    # -- what a platform's appids and secrets look like ------------------------
    # The appids (as used in the token URL) that appid_error accepts, as a
    # regular expression that matches them whole, and one such appid: the
    # document at /openapi.json declares them per platform, so that a client
    # generated from it, or a fuzzer, knows the form before it asks.
    appid_pattern: str = APPID_PATTERN.pattern
    appid_example: str | None = None

    def appid_error(self, appid: str) -> str | None:
        """Why ``appid`` (as used in the token URL) is malformed for this
        platform, or None. The generic character check has passed already."""
        return None

    # The platform of the credential row that serves this platform's tokens,
    # where that is another one (an authorizer's token is made with its
    # component's credential); None: this platform's own.
    credential_platform: str | None = None

    def account_error(self, appid: str) -> str | None:
        """Why the account that ``appid`` names cannot have a token (it has
        not authorized the third-party app, or revoked it), or None; None
        where tokens name no account."""
        return None

    def credential_appid(self, appid: str) -> str:
        """The appid of the credential row that serves ``appid``'s token
        (Alipay: ``<app_id>:<auth_app_id>`` is served by ``<app_id>``)."""
        return appid

    def check_credential(self, appid: str, secret: str) -> None:
        """Refuse a credential this platform cannot use (raise BadRequest)."""

    def token_appids(self, appid: str) -> list[str]:
        """The token appids the credential ``appid`` serves, for the
        scheduler (Alipay: one per authorized merchant)."""
        return [appid]

    def request_json(self, method: str, path: str, *, secrets: Iterable[str], accept_status: bool = False,
                     **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Send one request; return (HTTP status, JSON object).

        Transport failures, 5xx answers and garbled bodies (an HTML page or
        cut-off JSON behind HTTP 200, as a proxy or a platform under load may
        send) raise a retryable UpstreamError; a timeout raises UpstreamTimeout. A 4xx with a JSON
        body is returned when ``accept_status`` (platforms that report errors
        that way), else raised. Messages never contain ``secrets``: requests
        puts the full URL, query string included, into its exception texts.
        """
        secrets = [s for s in secrets if s]
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise UpstreamTimeout(self.platform, f"no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise transport_error(self.platform, exc, secrets, self.session) from None
        status = response.status_code
        refusal = proxy_refusal(self.platform, status, self.session)
        if refusal is not None:
            raise refusal
        try:
            body = response.json()
        except ValueError:
            body = None
        if status >= 500:
            raise UpstreamError(self.platform, f"HTTP {status} from the platform", retryable=True)
        if not isinstance(body, dict):
            # A 4xx page is an answer (a wrong base URL or path): not retried.
            raise UpstreamError(self.platform, f"unexpected answer (HTTP {status}, not a JSON object)",
                                retryable=status < 400)
        if status >= 400 and not accept_status:
            raise UpstreamError(self.platform, f"HTTP {status} from the platform")
        return status, body
