"""The platform API proxy: ``/proxy/<platform>/<appid>/<path>``.

A caller sends a platform API call here without a token; the hub adds the
current one the platform's way (``TokenPlacement`` of the provider), sends
it to the platform's configured API base + ``<path>`` and streams the answer
back. Tokens never leave the hub, and the platform sees one egress.

- Streams both ways: a request body is read from the caller as the platform
  takes it, and the answer is passed on as it arrives; neither is held whole
  in memory (a 20 MB media upload or download costs a few buffers).
- The host is never the caller's to choose: ``<path>`` is checked before
  anything is sent (``..``, absolute URLs, ``@`` in the first segment,
  encoded slashes and backslashes are refused) and re-encoded segment by
  segment under the base.
- On the platform's invalid-token answer (small JSON carrying one of the
  provider's ``invalid_token_codes``) the token is replaced through the
  service's stale-token refresh (one platform call however many callers saw
  it) and the call is sent once more with the replacement, if its body can
  be sent again: none, or one small enough to have been kept (``REPLAY_BODY``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote_plus

import requests
import urllib3.exceptions

from ..providers.base import TokenPlacement, redact
from .domain import Token
from .errors import BadRequest, PighandError, RateLimited, Unavailable, UpstreamError, UpstreamTimeout
from .ports import Clock, Counters
from .service import TokenService

log = logging.getLogger(__name__)

# A body up to this size is read first and kept, so the call can be sent
# again after an invalid-token answer; a larger one streams and is not replayed.
REPLAY_BODY = 1024 * 1024
# An answer is looked into for the platform's errcode only when it is JSON
# (or text, which WeChat uses for some JSON errors) and at most this large.
INSPECT_BODY = 64 * 1024
CHUNK = 64 * 1024
# Route classes (the first two path segments) counted apart per process;
# callers choose paths, so the label's values are capped.
MAX_ROUTE_CLASSES = 256

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade"})
# The caller's own credentials and what describes its connection to the hub:
# the platform gets none of them. Content-Length is set again for the body
# as it is sent; Host is the platform's.
NOT_FORWARDED = frozenset({"x-api-key", "authorization", "cookie", "host", "content-length", "expect",
                           "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                           "x-forwarded-port", "x-real-ip"})
_JSON_OR_TEXT = re.compile(r"^\s*(?:application/(?:[\w.+-]+\+)?json|text/plain|text/json)\b", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ROUTE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Path characters sent as they are (RFC 3986 pchar); anything else is percent-encoded.
_SAFE_IN_SEGMENT = "!$&'()*+,;=:@-._~"


class BodyTooLarge(PighandError):
    status = 413


class ProxyMetrics(Protocol):
    def proxy_call(self, platform: str, route: str, status: int, errcode: str, replayed: bool,
                   seconds: float) -> None: ...


@dataclass(frozen=True)
class ProxyLimits:
    max_body: int = 20 * 1024 * 1024
    """Largest request body forwarded (``proxy_max_body``); larger is 413."""
    timeout_s: float = 30.0
    """Seconds to connect, and between bytes of the answer (``proxy_timeout``)."""
    rate_limit: int = 0
    """Calls per second per client (``proxy_rate_limit``); 0: none."""


@dataclass
class ProxyCall:
    """One caller's request, as the edge read it."""

    platform: str
    appid: str
    method: str
    path: str
    """``<path>``, percent-decoded (as the server hands it over)."""
    query_string: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: IO[bytes] | None = None
    content_length: int | None = None
    """The declared length; None with a chunked body (or none at all)."""
    chunked: bool = False
    raw_uri: str | None = None
    """The request target as the caller sent it, where the server passes it on."""
    client: str | None = None


@dataclass
class ProxyAnswer:
    """The platform's answer: status, headers (hop-by-hop removed) and the
    body as it arrives. ``body`` must be consumed or closed."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]
    path: str
    route: str
    errcode: str = ""
    replayed: bool = False
    refreshed: bool = False
    upstream_s: float = 0.0
    log_fields: dict[str, Any] = field(default_factory=dict)


def upstream_path(path: str, raw_uri: str | None = None) -> str:
    """``path`` (percent-decoded) as the path sent under the platform's base:
    each segment encoded again. BadRequest if it could leave the base or
    name another host: a ``..`` or ``.`` segment, an absolute URL
    (``http://...``, ``//host``), ``@`` in the first segment, a backslash,
    an encoded slash or backslash (in the decoded path, or in ``raw_uri``
    where the server passes the request target on)."""
    if not path:
        raise BadRequest("name the platform API path after the appid: /proxy/<platform>/<appid>/<path>")
    refused = None
    lowered = path.lower()
    raw = (raw_uri or "").split("?", 1)[0].lower()
    if "\\" in path or "%5c" in lowered or "%5c" in raw:
        refused = "a backslash"
    elif "%2f" in lowered or "%2f" in raw:
        refused = "an encoded slash (%2F)"
    elif path.startswith("/") or "://" in path or _SCHEME.match(path):
        refused = "an absolute URL"
    elif "@" in path.split("/", 1)[0]:
        refused = "'@' before the first '/'"
    elif any(segment in (".", "..") for segment in path.split("/")):
        refused = "a '.' or '..' segment"
    elif _CONTROL.search(path):
        refused = "a control character"
    if refused is not None:
        raise BadRequest(f"the proxied path may not contain {refused}: it must name an API under the "
                         "platform's base")
    return "/" + "/".join(quote(segment, safe=_SAFE_IN_SEGMENT) for segment in path.split("/"))


def route_class(path: str) -> str:
    """The API path's first two segments (``cgi-bin/message``): what metrics
    count by, never the whole path."""
    parts = [p for p in path.split("/") if p][:2]
    if not parts or not all(_ROUTE_SEGMENT.match(p) for p in parts):
        return "other"
    return "/".join(parts)


def query_with_token(query_string: str, placement: TokenPlacement, token: str) -> str:
    """The caller's query string without any parameter of the token's name
    (the hub's token replaces it, never joins it), plus the token when the
    platform takes it there."""
    kept = []
    for item in query_string.split("&") if query_string else ():
        name = unquote_plus(item.split("=", 1)[0])
        if placement.query is not None and name.lower() == placement.query.lower():
            continue
        if item:
            kept.append(item)
    if placement.query is not None:
        kept.append(f"{placement.query}={quote(token, safe='')}")
    return "&".join(kept)


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The hop-by-hop header names: the fixed ones, Proxy-*, and those the
    Connection header names."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return names


def forwarded_headers(headers: Sequence[tuple[str, str]], placement: TokenPlacement) -> dict[str, str]:
    """The caller's headers the platform gets: not its credentials, cookies,
    hop-by-hop or connection headers, nor any of the token header's name."""
    dropped = hop_by_hop(headers) | NOT_FORWARDED
    if placement.header is not None:
        dropped.add(placement.header.lower())
    kept: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in dropped or lowered.startswith("proxy-"):
            continue
        kept[name] = f"{kept[name]}, {value}" if name in kept else value
    if not any(name.lower() == "accept-encoding" for name in kept):
        # Else requests asks for gzip, and the caller would get an encoding
        # it never asked for (the answer passes undecoded).
        kept["Accept-Encoding"] = "identity"
    return kept


class _LimitedBody:
    """The caller's body as requests sends it: read in chunks, at most
    ``max_body`` bytes (more raises BodyTooLarge), with ``len`` where the
    length was declared so the platform gets a Content-Length."""

    def __init__(self, stream: IO[bytes], max_body: int, length: int | None, prefix: bytes = b"") -> None:
        self._stream = stream
        self._max = max_body
        self._length = length
        self._prefix = prefix
        self.read_bytes = len(prefix)
        self.too_large = False

    def __len__(self) -> int:
        return self._length or 0

    def read(self, size: int = CHUNK) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        want = CHUNK if size is None or size < 0 else min(size, CHUNK)
        if self._length is not None:
            want = min(want, self._length - self.read_bytes)
            if want <= 0:
                return b""
        chunk = bytes(self._stream.read(want))
        self.read_bytes += len(chunk)
        if self.read_bytes > self._max:
            self.too_large = True
            raise BodyTooLarge(f"request body over proxy_max_body ({self._max} bytes)")
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(CHUNK)
            if not chunk:
                return
            yield chunk


class PlatformProxy:
    def __init__(self, *, service: TokenService, session: requests.Session, limits: ProxyLimits,
                 counters: Counters | None, metrics: ProxyMetrics | None = None, clock: Clock = time.time) -> None:
        self.service = service
        self.session = session
        self.limits = limits
        self.counters = counters
        self.metrics = metrics
        self.clock = clock
        self._routes: set[str] = set()
        self._routes_mutex = threading.Lock()
        self._transport: dict[str, dict[str, Any]] = {}

    def forward(self, call: ProxyCall) -> ProxyAnswer:
        provider = self.service.providers.get(call.platform)
        placement = getattr(provider, "token_placement", None) if provider is not None else None
        if provider is not None and placement is None:
            raise BadRequest(f"{call.platform} has no app access token for the proxy to add (each request is "
                             "signed with the app's key instead): call its gateway directly")
        path = upstream_path(call.path, call.raw_uri)
        if call.content_length is not None and call.content_length > self.limits.max_body:
            raise BodyTooLarge(f"request body of {call.content_length} bytes is over proxy_max_body "
                               f"({self.limits.max_body} bytes)")
        self._spend_rate(call.client or "anonymous")
        token = self.service.get(call.platform, call.appid)  # 404 unknown app, 400 bad appid ...
        assert placement is not None
        base_url: str = getattr(provider, "base_url", "")
        codes: frozenset[int | str] = getattr(provider, "invalid_token_codes", frozenset())
        body, replay = self._body(call)
        headers = forwarded_headers(call.headers, placement)
        route = self._route_class(call.path)
        started = time.monotonic()
        answer = self._send(call, base_url, path, placement, token, headers, body)
        errcode, kept = self._inspect(answer)
        refreshed = replayed = False
        if errcode is not None and _is_code(errcode, codes):
            log.warning("%s rejected the token of appid %s through the proxy (%s); replacing it",
                        call.platform, call.appid, errcode)
            replacement = self._replace(call, token)
            refreshed = replacement is not None
            if replacement is not None and replay:
                answer.close()
                answer = self._send(call, base_url, path, placement, replacement, headers,
                                    body if isinstance(body, bytes) else None)
                errcode, kept = self._inspect(answer)
                replayed = True
        upstream_s = time.monotonic() - started
        code = "" if errcode in (None, 0, "0", "") else str(errcode)[:40]
        if self.metrics is not None:
            self.metrics.proxy_call(call.platform, route, answer.status_code, code, replayed, upstream_s)
        dropped = hop_by_hop(answer.raw.headers.items())
        headers_out = [(name, value) for name, value in answer.raw.headers.items()
                       if name.lower() not in dropped and not name.lower().startswith("proxy-")]
        fields = {"kind": "proxy_call", "platform": call.platform, "appid": call.appid, "client": call.client,
                  "method": call.method, "path": path, "route": route, "status": answer.status_code,
                  "errcode": code or None, "refreshed": refreshed, "replayed": replayed,
                  "upstream_ms": round(upstream_s * 1000, 1)}
        log.info("proxied call", extra={"event": fields})
        return ProxyAnswer(status=answer.status_code, headers=headers_out, body=_stream(answer, kept, call.platform),
                           path=path, route=route, errcode=code, replayed=replayed, refreshed=refreshed,
                           upstream_s=upstream_s, log_fields=fields)

    # -- the parts -------------------------------------------------------------
    def _spend_rate(self, client: str) -> None:
        limit = self.limits.rate_limit
        if not limit or self.counters is None:
            return
        now = self.clock()
        window = math.floor(now)
        try:
            wait_s = self.counters.hit(f"proxy:{client}", limit=limit, window_start=window,
                                       window_end=window + 1, now=now)
        except Unavailable as exc:
            log.warning("proxy rate limit not applied: %s", exc.message)
            return
        if wait_s is not None:
            raise RateLimited(f"client {client!r} sent {limit} proxied calls this second (proxy_rate_limit)",
                              wait_s)

    def _body(self, call: ProxyCall) -> tuple[bytes | _LimitedBody | None, bool]:
        """The body to send and whether the call can be sent twice: no body,
        or one read whole because it is small; a larger one streams."""
        if call.body is None or (call.content_length in (None, 0) and not call.chunked):
            return None, True
        if call.content_length is not None and call.content_length <= REPLAY_BODY:
            data = _read_exactly(call.body, call.content_length)
            return data, True
        if call.content_length is None:
            # Chunked: kept when it turns out small, else sent on as it comes.
            head = _read_up_to(call.body, REPLAY_BODY + 1)
            if len(head) > self.limits.max_body:
                raise BodyTooLarge(f"request body over proxy_max_body ({self.limits.max_body} bytes)")
            if len(head) <= REPLAY_BODY:
                return head, True
            return _LimitedBody(call.body, self.limits.max_body, None, prefix=head), False
        return _LimitedBody(call.body, self.limits.max_body, call.content_length), False

    def _send(self, call: ProxyCall, base_url: str, path: str, placement: TokenPlacement, token: Token,
              headers: Mapping[str, str], body: bytes | _LimitedBody | None) -> requests.Response:
        query = query_with_token(call.query_string, placement, token.value)
        url = base_url + path + (f"?{query}" if query else "")
        sent = dict(headers)
        if placement.header is not None:
            sent[placement.header] = placement.prefix + token.value
        data: Any = body
        if isinstance(body, _LimitedBody) and call.content_length is None:
            data = iter(body)  # no length: chunked to the platform too
        try:
            # Sent by the session's adapter (its pools, and whatever egress
            # it is given), not through the session itself: the session's
            # cookie jar would keep one caller's Set-Cookie for the next.
            prepared = requests.PreparedRequest()
            prepared.prepare(method=call.method, url=url, headers={**self.session.headers, **sent}, data=data)
            adapter = self.session.get_adapter(url)
            return adapter.send(prepared, stream=True, timeout=self.limits.timeout_s, **self._transport_for(base_url))
        except BodyTooLarge:
            raise
        except requests.Timeout:
            raise UpstreamTimeout(call.platform, f"no answer within proxy_timeout ({self.limits.timeout_s:g} s)") \
                from None
        except requests.RequestException as exc:
            if isinstance(body, _LimitedBody) and body.too_large:
                raise BodyTooLarge(f"request body over proxy_max_body ({self.limits.max_body} bytes)") from None
            reason = redact(f"{type(exc).__name__}: {exc}", [token.value])
            raise UpstreamError(call.platform, f"cannot reach the platform ({reason})", retryable=True) from None

    def _transport_for(self, base_url: str) -> dict[str, Any]:
        """The session's proxies, TLS verification and client certificate
        for ``base_url``, environment included (``HTTPS_PROXY``, ``NO_PROXY``,
        ``REQUESTS_CA_BUNDLE``), as ``Session.request`` would merge them: worked
        out once per base, since requests reads the whole environment again on
        every call (about a third of a proxied call's time)."""
        found = self._transport.get(base_url)
        if found is None:
            merged = self.session.merge_environment_settings(base_url + "/", {}, None, None, None)
            found = self._transport[base_url] = {name: merged[name] for name in ("proxies", "verify", "cert")}
        return found

    def _inspect(self, answer: requests.Response) -> tuple[int | str | None, bytes | None]:
        """The platform's errcode when the answer is small JSON (its bytes,
        read to look, are returned to be sent on); (None, None) for anything
        else, which is left unread."""
        content_type = answer.headers.get("Content-Type", "")
        if not _JSON_OR_TEXT.match(content_type):
            return None, None
        length = answer.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > INSPECT_BODY):
            return None, None
        try:
            kept = answer.raw.read(INSPECT_BODY + 1, decode_content=False)
        except (requests.RequestException, OSError, ValueError) as exc:
            log.warning("the platform's answer broke off: %s", type(exc).__name__)
            return None, b""
        kept = bytes(kept or b"")
        if len(kept) > INSPECT_BODY:  # no length given, and larger: passed on, not looked into
            return None, kept
        return _errcode(_decoded(kept, answer.headers.get("Content-Encoding", ""))), kept

    def _replace(self, call: ProxyCall, rejected: Token) -> Token | None:
        """The token that replaces ``rejected`` (one platform call however
        many callers saw it: the service's stale-token refresh), or None if
        there is none to try (refresh refused or failed, or the platform
        handed back the same token)."""
        try:
            replacement = self.service.refresh(call.platform, call.appid, stale_token=rejected.value,
                                               caller=call.client or "anonymous")
        except PighandError as exc:
            log.warning("cannot replace the rejected %s token of appid %s: %s", call.platform, call.appid,
                        exc.message)
            return None
        return replacement if replacement.value != rejected.value else None

    def _route_class(self, path: str) -> str:
        route = route_class(path)
        if route in self._routes:
            return route
        with self._routes_mutex:
            if len(self._routes) >= MAX_ROUTE_CLASSES:
                return "other"
            self._routes.add(route)
        return route


def _is_code(errcode: int | str, codes: frozenset[int | str]) -> bool:
    if errcode in codes:
        return True
    # "40001" where the platform sent a string; 40001.0 never.
    return isinstance(errcode, str) and errcode.lstrip("-").isdigit() and int(errcode) in codes


def _errcode(body: bytes) -> int | str | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    for key in ("errcode", "code"):
        value = parsed.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | str):
            return value
    return None


def _decoded(body: bytes, encoding: str) -> bytes:
    """``body`` without its gzip/deflate content coding, for looking into
    only (at most a few times INSPECT_BODY); b"" when it cannot be."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return b""
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        return inflater.decompress(body, 16 * INSPECT_BODY)
    except zlib.error:
        return b""


def _read_exactly(stream: IO[bytes], length: int) -> bytes:
    parts, left = [], length
    while left > 0:
        chunk = bytes(stream.read(min(left, CHUNK)))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_up_to(stream: IO[bytes], limit: int) -> bytes:
    parts, read = [], 0
    while read < limit:
        chunk = bytes(stream.read(min(limit - read, CHUNK)))
        if not chunk:
            break
        parts.append(chunk)
        read += len(chunk)
    return b"".join(parts)


def _stream(answer: requests.Response, kept: bytes | None, platform: str) -> Iterator[bytes]:
    """The answer's bytes as they arrive (undecoded: Content-Encoding and
    Content-Length pass unchanged), the upstream connection released at the
    end or when the caller goes away."""
    try:
        if kept:
            yield kept
        for chunk in answer.raw.stream(CHUNK, decode_content=False):
            if chunk:
                yield chunk
    except (requests.RequestException, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
        # The status went out already: the caller sees a short body.
        log.warning("%s answer broke off while streaming: %s", platform, type(exc).__name__)
    finally:
        answer.close()
