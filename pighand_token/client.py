"""Python client for a pighand-token server.

::

    from pighand_token.client import TokenClient

    with TokenClient("http://tokens.internal:3050", api_key="pht_...") as tokens:
        token = tokens.get("wechat", "wx1234567890abcdef")
        lease = tokens.get_expiring("wechat", "wx1234567890abcdef")  # .value, .expires_in, .expires_at
        body = tokens.call("wechat", "wx1234567890abcdef",
                           lambda t: requests.get(URL, params={"access_token": t}).json())

Every failure is a :class:`TokenClientError` carrying the envelope's status,
its ``error`` message and, when the server sent one, ``Retry-After`` in
seconds; one subclass per status family lets callers catch what they handle.

:meth:`TokenClient.call` runs a platform call with the current token and,
when the platform rejects that token as invalid, reports it as stale (``PUT``
with ``stale_token``) and runs the call once more with the replacement. The
function signals a rejection in any of these ways:

* it returns the platform's parsed JSON (a mapping) whose ``errcode``,
  ``code`` or ``sub_code`` (Alipay: inside the ``*_response`` object) is one
  of the platform's invalid-token codes in :data:`INVALID_TOKEN_CODES`;
* it returns a :class:`requests.Response` whose JSON body carries such a code;
* it raises a :class:`requests.RequestException` (typically
  :class:`requests.HTTPError` from ``raise_for_status()``) whose ``response``
  carries such a code;
* it raises an exception with an ``errcode`` or ``code`` attribute holding
  such a code, as platform SDKs do (wechatpy's ``WeChatClientException``);
* it raises :class:`StaleToken`, for any platform and any reason of its own.

Anything else, returned or raised, goes straight back to the caller. The
second attempt is never retried: its result is returned, or its exception
raised, whatever it says.

Thread safety: a client holds one :class:`requests.Session` and may be shared
by any number of threads; requests' connection pool is thread-safe and the
client never changes the session after construction.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

__all__ = [
    "INVALID_TOKEN_CODES",
    "BadRequest",
    "ConnectionFailed",
    "Expiring",
    "Forbidden",
    "NotFound",
    "PlatformError",
    "PlatformTimeout",
    "RateLimited",
    "ServerError",
    "StaleToken",
    "TokenClient",
    "TokenClientError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "token_rejected",
]

T = TypeVar("T")

_FEISHU_INVALID: frozenset[int | str] = frozenset({99991663, 99991664, 99991671})

#: Codes with which each platform rejects an access token as invalid, expired
#: or superseded: the answers after which :meth:`TokenClient.call` reports the
#: token as stale and tries once more. Read-only; pass ``invalid_token_codes``
#: to :class:`TokenClient` to change them for one client.
INVALID_TOKEN_CODES: Mapping[str, frozenset[int | str]] = MappingProxyType({
    # 40001 invalid or not the latest, 40014 invalid, 42001 expired.
    "wechat": frozenset({40001, 40014, 42001}),
    # 99991663 invalid tenant token, 99991664 invalid app token, 99991671 malformed token.
    "feishu": _FEISHU_INVALID,
    "feishu_app": _FEISHU_INVALID,
    "lark": _FEISHU_INVALID,
    "lark_app": _FEISHU_INVALID,
    # 40014 invalid, 42001 expired (WeCom's 40001 means a wrong secret, not a stale token).
    "wecom": frozenset({40014, 42001}),
    # HTTP 400/401 with {"code": "InvalidAuthentication"}.
    "dingtalk": frozenset({"InvalidAuthentication"}),
    # The same on v1.0 APIs for a third-party suite's token and its corps' tokens.
    "dingtalk_suite": frozenset({"InvalidAuthentication"}),
    "dingtalk_corp": frozenset({"InvalidAuthentication"}),
    # 20001 "Insufficient Token Permissions" with these sub_codes.
    "alipay": frozenset({"aop.invalid-app-auth-token", "aop.app-auth-token-time-out"}),
})

_CODE_KEYS = ("errcode", "code", "sub_code")
# The attributes an SDK's exception carries the platform's code in.
_CODE_ATTRIBUTES = ("errcode", "code")
_PLATFORM_ERROR = re.compile(r"^(?P<platform>[A-Za-z0-9_]+) platform error(?: (?P<errcode>\S+?))?: ")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


# -- exceptions -------------------------------------------------------------------
class TokenClientError(Exception):
    """An answer other than a token, or no answer at all.

    ``status`` is the envelope's ``code`` (the HTTP status), or ``None`` when
    the server could not be reached. ``message`` is the envelope's ``error``
    (or a description of what went wrong). ``retry_after`` is the server's
    ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message, retry_after)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = self.message if self.status is None else f"{self.status}: {self.message}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r}, " \
               f"retry_after={self.retry_after!r})"


class BadRequest(TokenClientError):
    """400 (malformed appid, body or ``stale_token``) or 413 (body too large)."""


class Unauthorized(TokenClientError):
    """401: no API key, or an unknown or revoked one."""


class Forbidden(TokenClientError):
    """403: the key's scope does not cover this app."""


class NotFound(TokenClientError):
    """404: unknown platform, no credential for the appid, or unknown ticket type."""


class RateLimited(TokenClientError):
    """429: too many refreshes for this client and app, or the platform's own
    refresh limits; ``retry_after`` says when to ask again."""


class PlatformError(TokenClientError):
    """502: the platform refused or failed the call (wrong secret, IP not
    whitelisted, quota, ...). During the server's cooldown ``retry_after`` is
    set.

    ``platform`` and ``errcode`` (the platform's own code, an ``int`` when
    numeric) are read from the message when it names them, else ``None``.
    """

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message, retry_after)
        self.platform: str | None = None
        self.errcode: int | str | None = None
        found = _PLATFORM_ERROR.match(message)
        if found:
            self.platform = found["platform"]
            code = found["errcode"]
            if code is not None:
                self.errcode = int(code) if re.fullmatch(r"-?\d+", code) else code


class PlatformTimeout(PlatformError):
    """504: the platform did not answer within the server's ``upstream_timeout``."""


class Unavailable(TokenClientError):
    """503: a store of the server is unavailable, or another worker's refresh
    took too long."""


class ServerError(TokenClientError):
    """500 and other 5xx statuses in the envelope: an unexpected server error."""


class ConnectionFailed(TokenClientError):
    """The server could not be reached or did not answer in time (``status`` is ``None``)."""


class UnexpectedAnswer(TokenClientError):
    """An answer that is not the pighand-token envelope (a proxy's error page,
    a redirect, the wrong ``base_url``), or a success without a token."""


class StaleToken(Exception):
    """Raise from a :meth:`TokenClient.call` function to say the platform
    rejected the token it was given; ``call`` then refreshes it and calls the
    function once more."""


_BY_STATUS: dict[int, type[TokenClientError]] = {
    400: BadRequest,
    413: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    429: RateLimited,
    500: ServerError,
    502: PlatformError,
    503: Unavailable,
    504: PlatformTimeout,
}


def _error_for(status: int, message: str, retry_after: float | None) -> TokenClientError:
    cls = _BY_STATUS.get(status) or (ServerError if 500 <= status < 600 else TokenClientError)
    return cls(status, message, retry_after)


# -- invalid-token detection ------------------------------------------------------
def token_rejected(platform: str, outcome: object,
                   codes: Mapping[str, Iterable[int | str]] = INVALID_TOKEN_CODES) -> bool:
    """Whether ``outcome`` (what a platform call returned or raised) shows the
    platform rejected its token as invalid, by ``codes[platform]``.

    ``outcome`` may be a :class:`StaleToken` (always a rejection), a parsed
    JSON mapping, a :class:`requests.Response`, a
    :class:`requests.RequestException` with a response, or any other
    exception whose ``errcode`` or ``code`` attribute holds the code (an SDK's
    own, e.g. wechatpy's ``WeChatClientException``); anything else is not a
    rejection.
    """
    if isinstance(outcome, StaleToken):
        return True
    wanted = {str(code) for code in codes.get(platform, ())}
    if not wanted:
        return False
    if isinstance(outcome, BaseException):
        for name in _CODE_ATTRIBUTES:
            if _is_code(getattr(outcome, name, None), wanted):
                return True
    if isinstance(outcome, requests.RequestException):
        outcome = outcome.response
    if isinstance(outcome, requests.Response):
        try:
            outcome = outcome.json()
        except ValueError:
            return False
    if not isinstance(outcome, Mapping):
        return False
    places: list[Mapping[Any, Any]] = [outcome]
    places += [value for key, value in outcome.items()
               if isinstance(key, str) and key.endswith("_response") and isinstance(value, Mapping)]
    for place in places:
        for key in _CODE_KEYS:
            if _is_code(place.get(key), wanted):
                return True
    return False


def _is_code(value: object, wanted: set[str]) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool) and str(value) in wanted


@dataclass(frozen=True)
class Expiring:
    """A token or ticket and how long the server will keep serving it.

    ``expires_in`` is the server's whole seconds (``None`` from a server that
    does not send it); ``expires_at`` is this machine's ``time.time()`` when
    the answer arrived plus ``expires_in``. Cache the value until then, and
    ask again afterwards: the server has a new one by that time.
    """

    value: str = field(repr=False)
    expires_in: int | None
    expires_at: float | None


# -- the client -------------------------------------------------------------------
class TokenClient:
    """Client of one pighand-token server.

    ``base_url`` is where the server answers (a path prefix is kept, e.g.
    ``https://gw.internal/pighand``); ``api_key`` is sent as
    ``Authorization: Bearer <key>`` and never appears in a message or repr.
    ``timeout`` (seconds, or a ``(connect, read)`` pair) bounds each request.
    ``session``, when given, is used instead of one of the client's own and
    is not closed by :meth:`close`. ``invalid_token_codes`` replaces entries of
    :data:`INVALID_TOKEN_CODES` per platform for :meth:`call`.

    Safe to share between threads. Use it as a context manager, or call
    :meth:`close` to release its connections.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float | tuple[float, float] = 10,
                 session: requests.Session | None = None,
                 invalid_token_codes: Mapping[str, Iterable[int | str]] | None = None) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("base_url must be an http:// or https:// URL without query, e.g. http://127.0.0.1:3050")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry user:password; pass the key as api_key")
        self.base_url = base_url.strip().rstrip("/")
        self._api_key = api_key or None
        self._timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "pighand-token-client"}
        if self._api_key is not None:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        merged = {platform: frozenset(found) for platform, found in INVALID_TOKEN_CODES.items()}
        for platform, found in (invalid_token_codes or {}).items():
            merged[platform] = frozenset(found)
        self.invalid_token_codes: Mapping[str, frozenset[int | str]] = MappingProxyType(merged)

    # -- tokens -------------------------------------------------------------------
    def get(self, platform: str, appid: str) -> str:
        """The current token of ``platform``/``appid`` (``GET /token/...``)."""
        return self.get_expiring(platform, appid).value

    def get_expiring(self, platform: str, appid: str) -> Expiring:
        """:meth:`get`, with how long the server will keep serving the token."""
        return self._request("GET", self._path("token", platform, appid))

    def refresh(self, platform: str, appid: str, stale_token: str | None = None) -> str:
        """A replacement token (``PUT /token/...``).

        With ``stale_token`` (the token a platform just rejected) the server
        answers with the current token if it is already a different one, and
        asks the platform only if ``stale_token`` is still current; every
        caller reporting the same token gets the same replacement. Without
        it, the server asks the platform for a new token (refreshes running
        at the same time share one call). Refreshes that reach the platform
        count against the client's per-app limit (429 beyond it).
        """
        return self.refresh_expiring(platform, appid, stale_token).value

    def refresh_expiring(self, platform: str, appid: str, stale_token: str | None = None) -> Expiring:
        """:meth:`refresh`, with how long the server will keep serving the token."""
        body = None if stale_token is None else {"stale_token": stale_token}
        return self._request("PUT", self._path("token", platform, appid), body)

    def ticket(self, appid: str, type: str = "jsapi", platform: str = "wechat") -> str:
        """A platform ticket made with the managed token: WeChat ``jsapi``
        (JS-SDK) or ``wx_card`` (card API) (``GET /ticket/...``)."""
        return self.ticket_expiring(appid, type, platform).value

    def ticket_expiring(self, appid: str, type: str = "jsapi", platform: str = "wechat") -> Expiring:
        """:meth:`ticket`, with how long the server will keep serving the ticket."""
        return self._request("GET", self._path("ticket", platform, appid, type))

    def call(self, platform: str, appid: str, fn: Callable[[str], T]) -> T:
        """``fn(token)`` with the current token; if the platform rejected that
        token (see the module documentation for how ``fn`` shows it), the
        token is reported stale and ``fn`` runs once more with its
        replacement. Returns what ``fn`` returns; the second attempt's result
        or exception is passed on as it is.

        Errors of the token server itself (getting or refreshing the token)
        raise :class:`TokenClientError`.
        """
        token = self.get(platform, appid)
        try:
            result = fn(token)
        except Exception as exc:
            if not token_rejected(platform, exc, self.invalid_token_codes):
                raise
            fresh = self._replacement(platform, appid, token, exc)
        else:
            if not token_rejected(platform, result, self.invalid_token_codes):
                return result
            fresh = self._replacement(platform, appid, token, None)
        return fn(fresh)

    def _replacement(self, platform: str, appid: str, stale: str, cause: BaseException | None) -> str:
        try:
            return self.refresh(platform, appid, stale_token=stale)
        except TokenClientError as exc:
            if cause is not None:
                raise exc from cause
            raise

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Release the client's connections (a session passed in is left open)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "'***'" if self._api_key is not None else "None"
        return f"TokenClient({self.base_url!r}, api_key={key})"

    # -- HTTP ---------------------------------------------------------------------
    @staticmethod
    def _path(kind: str, *segments: str) -> str:
        for segment in segments:
            if not isinstance(segment, str) or not segment:
                raise ValueError(f"platform, appid and ticket type must be non-empty strings, got {segment!r}")
        return "/" + "/".join([kind, *(quote(segment, safe=":") for segment in segments)])

    def _request(self, method: str, path: str, body: dict[str, str] | None = None) -> Expiring:
        where = f"{method} {self.base_url}{path}"
        try:
            response = self._session.request(method, self.base_url + path, headers=self._headers, json=body,
                                             timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ConnectionFailed(None, self._scrub(f"{where}: cannot reach pighand-token: {_reason(exc)}")) \
                from exc
        with response:
            return self._token(where, response)

    def _token(self, where: str, response: requests.Response) -> Expiring:
        status = response.status_code
        retry_after = _retry_after(response.headers.get("Retry-After"))
        try:
            body = response.json()
        except ValueError:
            body = None
        if not _is_envelope(body):
            raise UnexpectedAnswer(status, self._scrub(
                f"{where} answered HTTP {status} with {_describe(response)}, not the pighand-token envelope "
                '{"code", "data", "error"}; check base_url'), retry_after)
        code, data, error = body["code"], body["data"], body["error"]
        if code == 200 and 200 <= status < 300:
            if isinstance(data, str) and data:
                return _expiring(data, body.get("expires_in"))
            raise UnexpectedAnswer(status, f"{where} answered 200 without a token", retry_after)
        error_status = code if code >= 400 else status
        if error_status < 400:
            raise UnexpectedAnswer(status, self._scrub(
                f"{where} answered HTTP {status} with envelope code {code}: {error or 'no message'}"), retry_after)
        raise _error_for(error_status, self._scrub(error or f"HTTP {status}"), retry_after)

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


def _expiring(value: str, expires_in: object) -> Expiring:
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        return Expiring(value, None, None)  # a server from before expires_in
    return Expiring(value, expires_in, time.time() + expires_in)


def _is_envelope(body: object) -> bool:
    return (isinstance(body, dict) and {"code", "data", "error"} <= body.keys()
            and isinstance(body["code"], int) and not isinstance(body["code"], bool)
            and isinstance(body["error"], str))


def _describe(response: requests.Response) -> str:
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    location = response.headers.get("Location")
    if location and 300 <= response.status_code < 400:
        return f"a redirect to {urlsplit(location)._replace(query='', fragment='').geturl()}"
    text = " ".join(response.text[:120].split())
    return f"a {kind} body {text!r}" if text else f"an empty {kind} body"


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
