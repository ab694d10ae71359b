"""Hostile input against the HTTP API: a hypothesis-driven fuzz of paths,
methods, headers and bodies on a real app (SQLite, fake WeChat over HTTP,
API keys on), plus the explicit hostile-input contract.

Every answer, whatever was sent: never a 500; ``Allow`` on 405,
``WWW-Authenticate`` on 401, ``Retry-After`` on 429; an ``X-Request-Id``
(the caller's when it is sane); no secret, API key or token where it does
not belong; no platform call for a refused request. Every answer of the
token API and every routing error is the JSON envelope with ``code`` equal
to the status and ``data`` null unless 200 (HEAD: no body), and a 200 from
the token API only ever serves the key's own app. (The status page at ``/``
and ``/metrics`` have formats of their own.)
"""

from __future__ import annotations

import io
import json
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect
from werkzeug.test import EnvironBuilder, TestResponse

from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.domain import Client, Credential
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"
SECRET = "FUZZ-s3cr3t-wx-7c1d9e4b2a"
SCOPED = "fuzz-scoped"
WECHAT_WIDE = "fuzz-wechat-wide"
ALL_APPS = "fuzz-all-apps"
MAX_BODY = 64 * 1024
UNREACHABLE = "http://127.0.0.1:9"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
KNOWN_STATUSES = {200, 400, 401, 403, 404, 405, 413, 429, 502, 503, 504}
TICKET_TYPES = ("jsapi", "wx_card")

FUZZ = settings(max_examples=800, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@dataclass
class Hub:
    app: Flask
    http: FlaskClient
    wechat: FakeWeChat
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.keys[SCOPED]

    def tokens(self) -> list[str]:
        return self.wechat.issued()

    def current_token(self) -> str | None:
        issued = self.wechat.issued(APP)
        return issued[-1] if issued else None

    def platforms(self) -> list[str]:
        return list(self.app.extensions["pighand"].service.platforms())

    def add_client(self, name: str, *scopes: str) -> str:
        container = self.app.extensions["pighand"]
        key = new_key()
        container.clients.repo.add(Client(name, hash_key(key), tuple(scopes), time.time()))
        container.clients.invalidate()
        self.keys[name] = key
        return key


@pytest.fixture
def wechat_mode() -> str:
    return "stable"


@pytest.fixture
def hub(make_app: Callable[..., Flask], wechat: FakeWeChat, wechat_mode: str) -> Hub:
    wechat.add_app(APP, SECRET)
    # Classic mode puts the secret in the query string; with the refresh
    # limit out of the way every PUT reaches the platform and its faults.
    limits = {"refresh_limit_per_minute": 1_000_000} if wechat_mode == "classic" else {}
    app = make_app("sqlite", auth_required=True, wechat_token_mode=wechat_mode, feishu_api_base=UNREACHABLE,
                   lark_api_base=UNREACHABLE, wecom_api_base=UNREACHABLE, dingtalk_api_base=UNREACHABLE,
                   alipay_gateway=UNREACHABLE, **limits)
    app.extensions["pighand"].credentials.add(Credential("wechat", APP, SECRET))
    made = Hub(app, app.test_client(), wechat)
    made.add_client(SCOPED, f"wechat:{APP}")
    return made


# -- what was sent ---------------------------------------------------------------
@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    # True: the headers carry the scoped key as the contract defines it
    # (X-Api-Key when sent, else Bearer in any case); False: they carry no
    # valid key.
    key_valid: bool
    request_id: str | None

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) <= 200 else self.body[:200] + b"..."
        return (f"Sent({self.method} {self.path[:300]!r} headers={self.headers!r} "
                f"body={body!r} ({0 if self.body is None else len(self.body)} bytes) key_valid={self.key_valid})")


KEY = "<<KEY>>"
KEY_CUT = "<<KEY-1>>"  # the key less its last character
KEY_SWAP = "<<KEY~>>"  # the key with its last character changed
CURRENT = "<<CURRENT>>"
# What a server hands over as header text: latin-1, no line breaks.
latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                       exclude_characters="\x7f" + "".join(map(chr, range(0x80, 0xA0)))) | st.just("\t")
header_text = st.text(latin1, max_size=80)
urlsafe = string.ascii_letters + string.digits + "-_"


def fake_key() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(urlsafe, min_size=43, max_size=43).map(lambda t: "pht_" + t),
        st.sampled_from([KEY + "x", "x" + KEY, KEY_CUT, KEY_SWAP]),
        header_text.map(lambda t: t if t.strip() else "x" + t),
    )


@st.composite
def auth_headers(draw: st.DrawFn) -> tuple[dict[str, str], bool]:
    """Headers with the placeholder KEY for the scoped key, and whether
    they authenticate."""
    kind = draw(st.sampled_from(["bearer", "x-api-key"]) | st.sampled_from(
        ["none", "bearer", "x-api-key", "wrong-bearer", "wrong-x-api-key", "malformed", "malformed+x-api-key",
         "wrong-bearer+x-api-key", "bearer+wrong-x-api-key"]))
    bearer = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr"])) + draw(st.sampled_from([" ", "  "]))
    valid_bearer = bearer + KEY + draw(st.sampled_from(["", " "]))
    malformed = draw(st.one_of(
        st.sampled_from(["Bearer", "Bearer ", "Bearer\t" + KEY, KEY, "Basic " + KEY, "Token " + KEY,
                         "Basic dXNlcjpwYXNz", "Digest username=x", "Bearer:" + KEY, "Bearer=" + KEY]),
        header_text,
        st.integers(1_000, 50_000).map(lambda n: "Bearer " + "A" * n),
    ))
    wrong = draw(fake_key())
    headers: dict[str, str] = {}
    valid: bool
    if kind == "none":
        valid = False
    elif kind == "bearer":
        headers["Authorization"], valid = valid_bearer, True
    elif kind == "x-api-key":
        headers["X-Api-Key"], valid = KEY, True
    elif kind == "wrong-bearer":
        headers["Authorization"], valid = "Bearer " + wrong, False
    elif kind == "wrong-x-api-key":
        headers["X-Api-Key"], valid = wrong, False
    elif kind == "malformed":
        headers["Authorization"], valid = malformed, False
    else:
        first, second = kind.split("+")
        headers["Authorization"] = {"malformed": malformed, "wrong-bearer": "Bearer " + wrong,
                                    "bearer": valid_bearer}[first]
        headers["X-Api-Key"] = KEY if second == "x-api-key" else wrong
        valid = second == "x-api-key"  # the specific header wins, whatever Authorization says
    return headers, valid


content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
                     "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
                     "multipart/form-data", "application/octet-stream", "", "garbage/;;;=", "*/*"]),
    header_text,
)
request_ids = st.one_of(
    st.none(),
    st.from_regex(REQUEST_ID, fullmatch=True),
    st.text(string.ascii_letters, min_size=65, max_size=100),
    header_text,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _padded(size: int) -> bytes:
    head, tail = b'{"stale_token": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


plain_bodies = st.one_of(
    st.none(),
    st.just(b""),
    json_values.map(_dumps),
    st.fixed_dictionaries({}, optional={"stale_token": json_values | st.just(CURRENT),
                                        "nowToken": json_values | st.just(CURRENT)}).map(_dumps),
)
hostile_bodies = st.one_of(
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
    st.sampled_from([b"{", b"[1,", b'{"stale_token":', b"nul", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
                     b'{"stale_token": "x"} trailing', b"1" * 5000, b"NaN", b'"str"', b"\x00" * 10]),
    # Deeper than any recursion limit (hypothesis raises it while it runs).
    st.sampled_from([10_000, 3_000]).map(lambda n: _nested(n, "array")),
    st.tuples(st.integers(50, 10_000), st.sampled_from(["array", "object"])).map(lambda t: _nested(*t)),
    st.integers(MAX_BODY + 1, 3 * MAX_BODY).map(lambda n: b"x" * n),
    st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1]).map(_padded),
)
bodies = plain_bodies | hostile_bodies

methods = st.one_of(
    st.sampled_from(["GET", "PUT"]),
    st.sampled_from(["GET", "PUT", "HEAD"]),
    st.sampled_from(["POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "M-SEARCH",
                     "get", "put", "BREW"]),
    st.text(string.ascii_uppercase, min_size=1, max_size=12),
)

safe_segment = st.text(string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=24)
segments = st.one_of(
    st.sampled_from(["wechat", APP, "jsapi", "wx_card", "token", "ticket", "", ".", "..", "%2e%2e", "%2F", "%00",
                     "wx%5Fapp%5F1", "WeChat", "wechat ", "a" * 128, "a" * 129, "%ff%fe", "~", "%", "%zz"]),
    safe_segment,
    st.text(max_size=30),
    st.binary(max_size=24).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.integers(200, 20_000).map(lambda n: "a" * n),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["stale_token=", "nowToken=", "stale_token=abc", "stale_token=" + CURRENT,
                     "stale_token=a&stale_token=b", "&&&", "=", "%ff=%fe"]),
    st.text(max_size=60),
)


@st.composite
def paths(draw: st.DrawFn, platforms: list[str]) -> str:
    platform = draw(st.just("wechat") | st.sampled_from(platforms) | segments)
    appid = draw(st.just(APP) | st.sampled_from([APP, "wx_other", "wx%5Fapp%5F1"]) | segments)
    shape = draw(st.sampled_from(["token", "token", "token", "ticket", "free"]))
    if shape == "token":
        path = f"/token/{platform}/{appid}"
    elif shape == "ticket":
        path = f"/ticket/{platform}/{appid}/{draw(st.sampled_from(TICKET_TYPES) | segments)}"
    else:
        prefix = draw(st.sampled_from(["/token/", "/ticket/", "/", "/token", "/TOKEN/", "/static/", "/token//",
                                       "/healthz", "/readyz", "/metrics", "/openapi.json"]))
        path = prefix + "/".join(draw(st.lists(segments, max_size=5)))
    path += draw(st.sampled_from([""] * 6 + ["/", "//", "/..", "/."]))
    query = draw(queries)
    return path + ("?" + query if query else "")


@st.composite
def requests(draw: st.DrawFn, platforms: list[str]) -> Sent:
    headers, key_valid = draw(auth_headers())
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    request_id = draw(request_ids)
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["Accept", "X-Forwarded-For", "Cookie", "X-Custom", "Origin"]))] = \
            draw(header_text)
    if draw(st.booleans()):
        # Aimed at the key's own app, where the most code runs.
        method = draw(st.sampled_from(["GET", "PUT", "PUT", "PUT", "HEAD", "OPTIONS"]))
        path = draw(st.sampled_from([f"/token/wechat/{APP}", f"/token/wechat/{APP}", "/token/wechat/wx%5Fapp%5F1",
                                     f"/ticket/wechat/{APP}/jsapi", f"/ticket/wechat/{APP}/wx_card"]))
        query = draw(queries)
        path += "?" + query if query else ""
        body = draw(hostile_bodies if method == "PUT" and draw(st.booleans()) else bodies)
    else:
        method, path, body = draw(methods), draw(paths(platforms)), draw(bodies)
    return Sent(method, path, headers, body, key_valid, request_id)


faults = st.sampled_from([None] * 8 + [("status", 500), ("status", 429), ("errcode", -1), ("errcode", 40001),
                                       ("errcode", 45009)])


# -- sending and judging -----------------------------------------------------------
def _fill(text: str, hub: Hub, key: str) -> str:
    # (KEY_CUT + a fixed letter would be the real key whenever it ends in that letter.)
    swapped = key[:-1] + ("B" if key.endswith("A") else "A")
    filled = text.replace(KEY_SWAP, swapped).replace(KEY_CUT, key[:-1]).replace(KEY, key)
    return filled.replace(CURRENT, hub.current_token() or "83_none")


def send(hub: Hub, sent: Sent, key: str) -> TestResponse:
    headers = {name: _fill(value, hub, key) for name, value in sent.headers.items()}
    body = sent.body
    if body is not None and CURRENT.encode() in body:
        body = body.replace(CURRENT.encode(), (hub.current_token() or "83_none").encode())
    # A full URL, so that a path starting with // stays a path.
    response: TestResponse = hub.http.open("http://localhost" + _fill(sent.path, hub, key), method=sent.method,
                                           headers=headers, data=body)
    return response


@dataclass
class Route:
    kind: str  # "api" (the token blueprint), "other" (status page, ops), "not_found", "method", "redirect"
    endpoint: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def is_app(self, platform: str, appid: str) -> bool:
        return self.kind == "api" and self.args.get("platform") == platform and self.args.get("appid") == appid


def route_of(app: Flask, response: TestResponse) -> Route:
    environ = response.request.environ
    adapter = app.url_map.bind_to_environ(environ)
    try:
        endpoint, args = adapter.match(method=environ["REQUEST_METHOD"])
    except RequestRedirect:
        return Route("redirect")
    except MethodNotAllowed:
        return Route("method")
    except NotFound:
        return Route("not_found")
    except HTTPException:
        return Route("not_found")
    kind = "api" if str(endpoint).startswith("token.") else "other"
    return Route(kind, str(endpoint), dict(args))


def envelope(response: TestResponse) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.headers
    data = json.loads(response.get_data(as_text=True))
    assert isinstance(data, dict) and set(data) - {"expires_in"} == {"code", "data", "error"}, data
    if "expires_in" in data:  # a token or ticket answer, and only that
        assert response.status_code == 200 and isinstance(data["expires_in"], int) and data["expires_in"] >= 0, data
        assert response.headers["Cache-Control"] == f"private, max-age={data['expires_in']}"
    if response.status_code >= 400:
        assert response.headers["Cache-Control"] == "no-store", response.headers
    assert data["code"] == response.status_code, data
    assert isinstance(data["error"], str)
    if response.status_code == 200:
        assert isinstance(data["data"], str) and data["data"] and data["error"] == ""
    else:
        assert data["data"] is None and data["error"], data
    return data


def judge(hub: Hub, sent: Sent, response: TestResponse, calls_before: int, *, in_scope: Callable[[Route], bool],
          key_name: str = SCOPED) -> None:
    status = response.status_code
    method = response.request.method
    route = route_of(hub.app, response)
    body = response.get_data()
    text = body.decode("utf-8", "replace")
    header_blob = "\n".join(f"{name}: {value}" for name, value in response.headers.items())

    event(f"{route.kind} {method if method in ('GET', 'PUT', 'HEAD') else 'other'} {status}")
    assert status != 500, text
    assert status in KNOWN_STATUSES, (status, header_blob, text)

    request_id = response.headers.get("X-Request-Id", "")
    assert REQUEST_ID.fullmatch(request_id), header_blob
    if sent.request_id is not None and REQUEST_ID.fullmatch(sent.request_id):
        assert request_id == sent.request_id

    if method == "HEAD":
        assert body == b""
    elif route.kind != "other":
        envelope(response)

    if status == 405:
        allowed = {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()}
        assert "GET" in allowed and method not in allowed, header_blob
    if status == 401:
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), header_blob
    if status == 429:
        assert int(response.headers.get("Retry-After", "0")) >= 1, header_blob

    for secret in [SECRET, *hub.keys.values()]:
        assert secret not in text and secret not in header_blob, "a secret or API key leaked"
    tokens = hub.tokens()
    assert not any(token in header_blob for token in tokens), "a token leaked into a header"
    if status != 200 or route.kind != "api":
        assert not any(token in text for token in tokens), "a token leaked outside a token answer"

    key_sent = any(hub.keys[key_name] in value for value in response.request.headers.values())
    allowed_app = route.kind == "api" and in_scope(route)
    if route.kind == "not_found":
        assert status == 404
    elif route.kind == "method":
        assert status == 405
    elif route.kind == "api":
        if not sent.key_valid:
            assert status == 401
        elif not allowed_app:
            assert status == 403
        else:
            assert status not in (401, 403)

    if status == 200 and route.kind != "other":
        assert allowed_app and key_sent and sent.key_valid, "200 outside the key's scope"
        if method != "HEAD" and route.endpoint.endswith("token") and method in ("GET", "PUT"):
            assert envelope(response)["data"] in tokens
    if hub.wechat.count() != calls_before:
        assert allowed_app and key_sent and method in ("GET", "HEAD", "PUT"), "platform called for a refused request"
    if status == 413:
        assert method == "PUT" and sent.body is not None and len(sent.body) > MAX_BODY
    if (status not in (401, 403, 404, 405) and method == "PUT" and route.endpoint.endswith("token")
            and sent.body is not None and len(sent.body) > MAX_BODY):
        assert status == 413


def _arm(wechat: FakeWeChat, fault: tuple[str, int] | None) -> None:
    wechat.clear_faults()
    if fault is None:
        return
    kind, code = fault
    if kind == "status":
        wechat.fail_next(1, status=code)
    else:
        wechat.fail_with_errcode_next(1, code, "injected")


def _scoped_app(route: Route) -> bool:
    return route.is_app("wechat", APP)


# -- the fuzz ------------------------------------------------------------------------
PLATFORMS = ["alipay", "dingtalk", "feishu", "feishu_app", "lark", "lark_app", "wecom"]


@pytest.mark.parametrize("wechat_mode", ["stable", "classic"])
@FUZZ
@given(sent=requests(PLATFORMS), fault=faults)
def test_fuzz_any_request_with_the_scoped_key(hub: Hub, sent: Sent, fault: tuple[str, int] | None) -> None:
    _arm(hub.wechat, fault)
    calls_before = hub.wechat.count()
    response = send(hub, sent, hub.key)
    judge(hub, sent, response, calls_before, in_scope=_scoped_app)


appids = st.one_of(
    st.just(APP),
    safe_segment,
    st.tuples(safe_segment, safe_segment).map(":".join),
    st.tuples(safe_segment, st.integers(0, 10**12)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.text(string.ascii_letters + string.digits + "_.:-", min_size=120, max_size=140),
    st.text(max_size=20).filter(lambda t: t != "" and "/" not in t),
)


@st.composite
def api_requests(draw: st.DrawFn, platforms: list[str]) -> Sent:
    platform = draw(st.sampled_from(platforms) | safe_segment)
    appid = quote(draw(appids), safe=":")
    if draw(st.booleans()):
        path = f"/token/{platform}/{appid}"
        method = draw(st.sampled_from(["GET", "PUT", "HEAD"]))
    else:
        path = f"/ticket/{platform}/{appid}/{draw(st.sampled_from(TICKET_TYPES) | safe_segment)}"
        method = draw(st.sampled_from(["GET", "HEAD"]))
    headers = {"Authorization": f"Bearer {KEY}"}
    body = draw(st.none() | json_values.map(_dumps) | st.sampled_from([b"{", b"[]", b'{"stale_token": ""}']))
    return Sent(method, path, headers, body if method == "PUT" else None, True, None)


@pytest.fixture
def wide_hub(hub: Hub) -> Hub:
    hub.add_client(ALL_APPS, "*")
    return hub


@FUZZ
@given(data=st.data())
def test_fuzz_every_platform_and_appid_with_an_all_apps_key(wide_hub: Hub, data: st.DataObject) -> None:
    hub, key = wide_hub, wide_hub.keys[ALL_APPS]
    platforms = hub.platforms()
    sent = data.draw(api_requests(platforms))
    calls_before = hub.wechat.count()
    response = send(hub, sent, key)
    judge(hub, sent, response, calls_before, in_scope=lambda route: True, key_name=ALL_APPS)
    status = response.status_code
    route = route_of(hub.app, response)
    if status == 200 or hub.wechat.count() != calls_before:
        assert route.is_app("wechat", APP)
    assert route.kind == "api", sent
    platform, appid = route.args.get("platform"), route.args.get("appid", "")
    if platform not in platforms:
        # A PUT's body is read first: a bad one is a 400 whatever the platform.
        assert status == 404 or (status == 400 and sent.body is not None)
        if status == 404 and sent.method != "HEAD":
            assert all(name in envelope(response)["error"] for name in platforms)
    elif not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", appid):
        assert status == 400
    if not route.is_app("wechat", APP):
        # No credential: refused before any platform is asked (their
        # addresses are unreachable here, so asking would be a 502).
        assert status in (400, 404, 429), response.get_data(as_text=True)


# -- the hostile-input contract, case by case ---------------------------------------------
def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("appid", ["bad!id", "a" * 129, "x%20y", "%E4%B8%AD", "wx_app_1%00", "a b"])
def test_malformed_appid_is_400(hub: Hub, appid: str) -> None:
    key = hub.add_client(WECHAT_WIDE, "wechat:*")
    for path in (f"/token/wechat/{appid}", f"/ticket/wechat/{appid}/jsapi"):
        answer = hub.http.get(path, headers=_bearer(key))
        assert answer.status_code == 400, path
        envelope(answer)
    answer = hub.http.put(f"/token/wechat/{appid}", headers=_bearer(key))
    assert answer.status_code == 400
    assert hub.wechat.count() == 0


def test_longest_appid_is_well_formed(hub: Hub) -> None:
    key = hub.add_client(WECHAT_WIDE, "wechat:*")
    answer = hub.http.get("/token/wechat/" + "a" * 128, headers=_bearer(key))
    assert answer.status_code == 404 and "a" * 128 in envelope(answer)["error"]
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY])
def test_body_over_the_cap_is_413(hub: Hub, size: int) -> None:
    answer = hub.http.put(f"/token/wechat/{APP}", headers=_bearer(hub.key), data=_padded(size),
                          content_type="application/json")
    assert answer.status_code == 413
    envelope(answer)
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY])
def test_streamed_body_over_the_cap_is_413(hub: Hub, size: int) -> None:
    # No Content-Length: a server that de-chunks the body terminates the input.
    environ = EnvironBuilder(path=f"/token/wechat/{APP}", method="PUT", headers=list(_bearer(hub.key).items()),
                             input_stream=io.BytesIO(_padded(size))).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    answer = hub.http.open(environ)
    assert answer.status_code == 413
    envelope(answer)
    assert hub.wechat.count() == 0


def test_body_at_the_cap_is_read(hub: Hub) -> None:
    answer = hub.http.put(f"/token/wechat/{APP}", headers=_bearer(hub.key), data=_padded(MAX_BODY),
                          content_type="application/json")
    assert answer.status_code == 200
    assert envelope(answer)["data"] in hub.tokens()


@pytest.mark.parametrize("payload", [
    b"{not json", b"[1, 2]", b"5", b"null", b'"text"', b"true", b'{"stale_token": 5}', b'{"stale_token": ""}',
    b'{"stale_token": ["x"]}', b'{"stale_token": {"a": 1}}', b'{"nowToken": false}', b"\xff\xfe\x00",
    b'{"stale_token": "x"', b"1" * 5000,
    _nested(5000, "array"), _nested(5000, "object"), _nested(1200, "array"),
], ids=lambda p: repr(p[:24]) + f"({len(p)})")
def test_malformed_or_mistyped_body_is_400(hub: Hub, payload: bytes) -> None:
    answer = hub.http.put(f"/token/wechat/{APP}", headers=_bearer(hub.key), data=payload,
                          content_type="application/json")
    assert answer.status_code == 400, answer.get_data(as_text=True)
    envelope(answer)
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("query", ["stale_token=", "nowToken="])
def test_empty_stale_token_in_query_is_400(hub: Hub, query: str) -> None:
    answer = hub.http.put(f"/token/wechat/{APP}?{query}", headers=_bearer(hub.key))
    assert answer.status_code == 400
    envelope(answer)
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("with_key", [True, False])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "TRACE", "BREW"])
def test_wrong_method_is_405_with_allow(hub: Hub, method: str, with_key: bool) -> None:
    headers = _bearer(hub.key) if with_key else {}
    for path in (f"/token/wechat/{APP}", f"/ticket/wechat/{APP}/jsapi"):
        answer = hub.http.open(path, method=method, headers=headers)
        assert answer.status_code == 405
        envelope(answer)
        allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
        assert "GET" in allowed and method not in allowed
    assert hub.wechat.count() == 0


def test_options_answers_the_envelope_with_allow(hub: Hub) -> None:
    answer = hub.http.options(f"/token/wechat/{APP}", headers=_bearer(hub.key))
    assert {"GET", "PUT"} <= {m.strip() for m in answer.headers.get("Allow", "").split(",")}
    assert answer.status_code != 500
    envelope(answer)
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("path", [f"/token//wechat/{APP}", f"/token/wechat//{APP}", f"/token/wechat/%2F/{APP}",
                                  "/ticket//wechat/x/jsapi"])
def test_doubled_slash_answers_the_envelope(hub: Hub, path: str) -> None:
    answer = hub.http.get(path, headers=_bearer(hub.key))
    assert answer.status_code != 500
    envelope(answer)
    if 300 <= answer.status_code < 400:
        assert answer.headers.get("Location")
    assert hub.wechat.count() == 0


def test_unknown_platform_is_404_listing_platforms(hub: Hub) -> None:
    key = hub.add_client(ALL_APPS, "*")
    for path in (f"/token/nope/{APP}", f"/ticket/nope/{APP}/jsapi"):
        answer = hub.http.get(path, headers=_bearer(key))
        assert answer.status_code == 404
        error = envelope(answer)["error"]
        assert all(name in error for name in hub.platforms()), error
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("path", [
    "/token/wechat/wx_other", "/token/feishu/" + APP, "/token/nope/" + APP, "/ticket/wechat/wx_other/jsapi",
    "/token/wechat/bad!id",
])
def test_scoped_key_on_another_app_is_403(hub: Hub, path: str) -> None:
    for method in ("GET", "PUT"):
        if path.startswith("/ticket/") and method == "PUT":
            continue
        answer = hub.http.open(path, method=method, headers=_bearer(hub.key))
        assert answer.status_code == 403
        envelope(answer)
    answer = hub.http.get(path, headers={"X-Api-Key": hub.key})
    assert answer.status_code == 403
    assert hub.wechat.count() == 0


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer pht_not_a_key"}, {"X-Api-Key": "pht_not_a_key"}, {"X-Api-Key": ""},
], ids=lambda h: repr(h))
def test_missing_or_unknown_key_is_401_with_www_authenticate(hub: Hub, headers: dict[str, str]) -> None:
    for method, path in (("GET", f"/token/wechat/{APP}"), ("PUT", f"/token/wechat/{APP}"),
                         ("GET", f"/ticket/wechat/{APP}/jsapi"), ("GET", "/token/nope/x")):
        answer = hub.http.open(path, method=method, headers=headers)
        assert answer.status_code == 401
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
        envelope(answer)
    assert hub.wechat.count() == 0


def test_revoked_key_is_401(hub: Hub) -> None:
    container = hub.app.extensions["pighand"]
    assert container.clients.repo.remove(SCOPED)
    container.clients.invalidate()
    answer = hub.http.get(f"/token/wechat/{APP}", headers=_bearer(hub.key))
    assert answer.status_code == 401
    envelope(answer)
    assert hub.wechat.count() == 0


def test_unknown_route_is_404_envelope(hub: Hub) -> None:
    for path in ("/token", "/token/", "/token/wechat", f"/token/wechat/{APP}/extra", "/static/x", "/ticket/wechat/x"):
        answer = hub.http.get(path, headers=_bearer(hub.key))
        assert answer.status_code == 404, path
        envelope(answer)
    assert hub.wechat.count() == 0


def test_request_id_is_echoed_only_when_sane(hub: Hub) -> None:
    sane = hub.http.get("/", headers={"X-Request-Id": "abc-123:x.y_z"})
    assert sane.headers["X-Request-Id"] == "abc-123:x.y_z"
    for insane in ("a" * 65, "bad id", "<script>", "ok\tno"):
        answer = hub.http.get(f"/token/wechat/{APP}", headers={"X-Request-Id": insane})
        assert REQUEST_ID.fullmatch(answer.headers["X-Request-Id"]) and answer.headers["X-Request-Id"] != insane


def test_valid_key_gets_the_token_and_nothing_leaks(hub: Hub) -> None:
    for headers in (_bearer(hub.key), {"X-Api-Key": hub.key}, {"Authorization": f"bearer {hub.key}"}):
        answer = hub.http.get(f"/token/wechat/{APP}", headers=headers)
        assert answer.status_code == 200
        token = envelope(answer)["data"]
        assert hub.wechat.is_valid(token)
        blob = answer.get_data(as_text=True) + str(answer.headers)
        assert SECRET not in blob and hub.key not in blob and token not in str(answer.headers)
    assert hub.wechat.count() == 1


@pytest.mark.parametrize("path", ["", "//"])
def test_paths_werkzeug_would_redirect_answer_the_404_envelope(hub: Any, path: str) -> None:
    client = hub.app.test_client()
    answer = client.open(environ_overrides={"PATH_INFO": path}) if not path else client.get(path)
    assert answer.status_code == 404 and "Location" not in answer.headers
    assert answer.get_json() == {"code": 404, "data": None, "error": answer.get_json()["error"]}
