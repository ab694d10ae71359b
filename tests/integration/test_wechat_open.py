"""WeChat Open Platform components and their authorizers (platform-facts §7.1,
§7.2), against the fake platform over HTTP: it pushes real encrypted
callbacks to the shipped server and answers the component APIs the service
then calls."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from cryptography.fernet import Fernet
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner

from pighand_token.app import create_app
from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.domain import Client, Credential
from pighand_token.providers.third_party import AppSecrets
from tests.conftest import Server, clean_env, free_port, run_cli
from tests.fakes.wechat_open import (
    AUTHORIZER,
    AUTHORIZER_TOKEN_PATH,
    BAD_SIGNATURE,
    COMPONENT,
    COMPONENT_TOKEN_PATH,
    PREAUTHCODE_PATH,
    QUERY_AUTH_PATH,
    START_PUSH_TICKET_PATH,
    TAMPERED,
    TICKET_PATH,
    FakeWeChatOpen,
    Push,
)

APPID = "wxcomp0123456789ab"
SECRET = "component-S3cr3t-0123456789abcdef"
TOKEN = "cbT0ken-component-1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_APPID = "wxcompother0000000"
OTHER_SECRET = "other-S3cr3t-fedcba9876543210"
OTHER_TOKEN = "cbT0ken-other-2"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
ACCOUNT = "wxauthorizer000001"
TOKEN_APPID = f"{APPID}:{ACCOUNT}"
CALLBACK = f"/callback/wechat_component/{APPID}"
COMPONENT_URL = f"/token/wechat_component/{APPID}"
AUTHORIZER_URL = f"/token/wechat_authorizer/{TOKEN_APPID}"


# -- arrangement -----------------------------------------------------------------
@pytest.fixture
def wxopen() -> Iterator[FakeWeChatOpen]:
    with FakeWeChatOpen() as fake:
        fake.add_component(APPID, SECRET, TOKEN, AES_KEY)
        fake.add_component(OTHER_APPID, OTHER_SECRET, OTHER_TOKEN, OTHER_AES_KEY)
        yield fake


class Hub:
    """The shipped server on one SQLite file, with the component's credential
    stored as ``platform add`` stores it; the fake pushes to its callback."""

    def __init__(self, tmp_path: Path, fake: FakeWeChatOpen, *, seed: bool = True, **extra: Any) -> None:
        self.fake = fake
        self.tmp_path = tmp_path
        self.settings: dict[str, Any] = {
            "sqlite_path": str(tmp_path / "pighand.sqlite3"), "wechat_api_base": fake.base_url,
            "is_enable_schedule": False, "upstream_timeout": 3, "log_level": "debug",
            "encryption_key": Fernet.generate_key().decode(), "auth_required": False, **extra}
        self.app = create_app(overrides=self.settings)
        self.container = self.app.extensions["pighand"]
        if seed:
            self.container.credentials.add(Credential("wechat_component", APPID,
                                                      AppSecrets(SECRET, TOKEN, AES_KEY).encode()))
        self.server: Server | None = None

    def start(self, workers: int = 1) -> Hub:
        self.server = Server(self.tmp_path, workers=workers, threads=8, **self.settings).start()
        self.fake.set_callback_url(APPID, self.server.base_url + CALLBACK)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.base_url

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.put(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)

    def log(self) -> str:
        assert self.server is not None
        return self.server.log()

    # What is stored, read from the same SQL as the server's.
    def ticket(self) -> str | None:
        found = self.container.callbacks.tickets.latest("wechat_component", APPID)
        return None if found is None else str(found.value)

    def grant(self, account: str = ACCOUNT) -> Any:
        return self.container.callbacks.grants.get("wechat_authorizer", APPID, account)

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.settings["sqlite_path"])
        try:
            return list(db.execute(query).fetchall())
        finally:
            db.close()


@pytest.fixture
def hub(tmp_path: Path, wxopen: FakeWeChatOpen) -> Iterator[Hub]:
    made = Hub(tmp_path, wxopen).start()
    yield made
    made.stop()


def envelope(response: requests.Response) -> dict[str, Any]:
    data = response.json()
    assert data["code"] == response.status_code, data
    return dict(data)


def token_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    value = envelope(response)["data"]
    assert isinstance(value, str) and value
    return value


def acknowledged(push: Push) -> None:
    assert push.answered_success, (push.status, push.text, push.error)


def ticketed(hub: Hub) -> str:
    """Push a ticket and return it, as stored."""
    push = hub.fake.push_ticket(APPID)
    acknowledged(push)
    assert hub.ticket() == push.message["ComponentVerifyTicket"]
    return push.message["ComponentVerifyTicket"]


def authorized(hub: Hub, account: str = ACCOUNT) -> Push:
    push = hub.fake.authorize(APPID, account)
    acknowledged(push)
    return push


def secrets_seen(fake: FakeWeChatOpen) -> list[str]:
    """Everything secret the platform and the operator hold."""
    found = [SECRET, TOKEN, AES_KEY, OTHER_SECRET, OTHER_AES_KEY]
    found += [t.value for appid in (APPID, OTHER_APPID) for t in fake.tickets(appid)]
    found += fake.issued()
    with fake.lock:
        for auth in fake._authorizations.values():
            found += [r for r in [auth.refresh_token, *auth.retired_refresh] if r]
        found += list(fake._auth_codes)
    return found


def assert_no_secret(text: str, fake: FakeWeChatOpen) -> None:
    for secret in secrets_seen(fake):
        assert secret not in text, f"a secret ({secret[:6]}...) appears in the text"


def wechatpy_push(component: tuple[str, str, str], fields: dict[str, str | int]) -> tuple[dict[str, str], bytes]:
    """A callback made with wechatpy's WeChatCrypto alone (not the fake):
    its own reply envelope, as WeChat's encrypted-mode body."""
    appid, token, aes_key = component
    inner = "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" if isinstance(v, str) else f"<{k}>{v}</{k}>"
                              for k, v in fields.items()) + "</xml>"
    timestamp, nonce = str(int(time.time())), "1320562132"
    body = WeChatCrypto(token, aes_key, appid).encrypt_message(inner, nonce, timestamp)
    signer = WeChatSigner()
    signer.add_data(token, timestamp, nonce)
    encrypt = body.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    msg_signer = WeChatSigner()
    msg_signer.add_data(token, timestamp, nonce, encrypt)
    query = {"signature": signer.signature, "timestamp": timestamp, "nonce": nonce, "encrypt_type": "aes",
             "msg_signature": msg_signer.signature}
    return query, body.encode()


# -- callbacks -------------------------------------------------------------------
def test_pushed_ticket_is_stored_and_makes_the_component_token(hub: Hub) -> None:
    ticket = ticketed(hub)
    token = token_of(hub.get(COMPONENT_URL))
    call = hub.fake.last(COMPONENT_TOKEN_PATH)
    assert call is not None and call["ticket"] == ticket and call["token"] == token
    assert hub.fake.is_valid(token, COMPONENT)
    assert_no_secret(hub.log(), hub.fake)


def test_an_older_ticket_delivered_after_a_newer_one_is_acknowledged_and_ignored(hub: Hub) -> None:
    older = hub.fake.push_ticket(APPID)
    hub.fake.advance(600)
    newer = hub.fake.push_ticket(APPID)
    acknowledged(older)
    acknowledged(newer)
    acknowledged(hub.fake.redeliver(older))
    assert hub.ticket() == newer.message["ComponentVerifyTicket"]
    token_of(hub.get(COMPONENT_URL))
    call = hub.fake.last(COMPONENT_TOKEN_PATH)
    assert call is not None and call["ticket"] == newer.message["ComponentVerifyTicket"]


def test_authorization_is_exchanged_at_once_and_its_token_served_as_it_is(hub: Hub) -> None:
    ticketed(hub)
    push = authorized(hub)
    assert hub.fake.count(QUERY_AUTH_PATH) == 1
    grant = hub.grant()
    assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
    func_info = json.loads(grant.info)["func_info"]
    authorization = hub.fake.authorization(APPID, ACCOUNT)
    assert authorization is not None
    assert [f["funcscope_category"]["id"] for f in func_info] == authorization.func_info
    issued = hub.fake.last(QUERY_AUTH_PATH)
    assert issued is not None
    assert token_of(hub.get(AUTHORIZER_URL)) == issued["issued"]
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 0

    # WeChat delivers again when it missed the answer: no second exchange.
    acknowledged(hub.fake.redeliver(push))
    assert hub.fake.count(QUERY_AUTH_PATH) == 1
    assert token_of(hub.get(AUTHORIZER_URL)) == issued["issued"]

    # updateauthorized: a new code, exchanged at once, the new grant stored.
    acknowledged(hub.fake.update_authorization(APPID, ACCOUNT, func_info=[1, 2]))
    assert hub.fake.count(QUERY_AUTH_PATH) == 2
    grant = hub.grant()
    assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
    assert [f["funcscope_category"]["id"] for f in json.loads(grant.info)["func_info"]] == [1, 2]
    last = hub.fake.last(QUERY_AUTH_PATH)
    assert last is not None and token_of(hub.get(AUTHORIZER_URL)) == last["issued"]
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 0
    assert_no_secret(hub.log(), hub.fake)


def test_unauthorized_forgets_the_authorizer(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    token_of(hub.get(AUTHORIZER_URL))
    jsapi = token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi"))
    acknowledged(hub.fake.unauthorize(APPID, ACCOUNT))
    assert hub.grant() is None
    answer = hub.get(AUTHORIZER_URL)
    assert answer.status_code == 404 and "authorize" in envelope(answer)["error"]
    ticket = hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi")
    assert ticket.status_code == 404 and jsapi not in ticket.text
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 0
    assert ACCOUNT not in run_cli("wechat", "authorizers", APPID, env=clean_env(**hub.settings)).stdout

    # Authorizing again brings it back, with a new grant and token.
    hub.fake.advance(5)
    authorized(hub)
    token = token_of(hub.get(AUTHORIZER_URL))
    assert hub.fake.is_valid(token, AUTHORIZER)
    token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi"))
    again = hub.fake.last(TICKET_PATH, type="jsapi")
    assert hub.fake.count(TICKET_PATH, type="jsapi") == 2 and again is not None
    assert again["query"]["access_token"] == token  # asked again with the new token, not kept from before


def test_an_unknown_info_type_is_acknowledged_and_logged(hub: Hub) -> None:
    push = hub.fake.push_message(APPID, {"AppId": APPID, "CreateTime": int(time.time()),
                                         "InfoType": "notify_third_fasteregister"})
    acknowledged(push)
    assert "notify_third_fasteregister" in hub.log()
    assert hub.ticket() is None


@pytest.mark.parametrize("forgery", [BAD_SIGNATURE, TAMPERED, "other component's key"])
def test_forged_pushes_are_401_and_store_nothing(hub: Hub, forgery: str) -> None:
    how: dict[str, Any] = {"signed_by": OTHER_APPID} if forgery.startswith("other") else {"fault": forgery}
    ticket = hub.fake.push_ticket(APPID, **how)
    assert ticket.status == 401, (ticket.status, ticket.text)
    assert envelope_of_text(ticket)["code"] == 401
    assert hub.ticket() is None
    ticketed(hub)
    grant = hub.fake.authorize(APPID, ACCOUNT, **how)
    assert grant.status == 401
    assert hub.grant() is None and hub.fake.count(QUERY_AUTH_PATH) == 0
    assert_no_secret(hub.log() + (ticket.text or "") + (grant.text or ""), hub.fake)


def envelope_of_text(push: Push) -> dict[str, Any]:
    data = json.loads(push.text or "{}")
    assert set(data) == {"code", "data", "error"} and data["data"] is None, data
    return dict(data)


def test_a_push_for_an_unknown_component_is_404(hub: Hub) -> None:
    push = hub.fake.push_ticket(APPID)
    answer = hub.post("/callback/wechat_component/wxcompunknown00000", params=push.query, data=push.body)
    assert answer.status_code == 404 and envelope(answer)["data"] is None


def test_a_body_over_64_kib_is_413(hub: Hub) -> None:
    push = hub.fake.push_ticket(APPID)
    body = push.body.replace(b"</xml>", b"<Pad>" + b"x" * 65536 + b"</Pad></xml>")
    answer = hub.post(CALLBACK, params=push.query, data=body, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 413 and envelope(answer)["data"] is None


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b']><xml><AppId>&lol9;</AppId><Encrypt>x</Encrypt></xml>')
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                   b"<xml><AppId>&xxe;</AppId><Encrypt>x</Encrypt></xml>")


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, b"<xml><Encrypt>unclosed", b"\xff\xfe not xml"],
                         ids=["billion-laughs", "external-entity", "unclosed", "not-xml"])
def test_hostile_or_malformed_xml_is_400_and_harms_nothing(hub: Hub, body: bytes) -> None:
    push = hub.fake.push_ticket(APPID, fault=BAD_SIGNATURE)  # a query with a timestamp and nonce
    started = time.monotonic()
    answer = hub.post(CALLBACK, params=push.query, data=body, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 400, answer.text
    assert time.monotonic() - started < 5
    assert "root:" not in answer.text and envelope(answer)["data"] is None
    assert hub.ticket() is None
    ticketed(hub)  # the server is unharmed
    assert token_of(hub.get(COMPONENT_URL))


def test_hostile_xml_inside_a_correctly_signed_message_is_400(hub: Hub) -> None:
    """The decrypted message is parsed with entities off too: a sender who
    holds the key still cannot expand entities in it."""
    crypto = WeChatCrypto(TOKEN, AES_KEY, APPID)
    timestamp, nonce = str(int(time.time())), "42"
    inner = BILLION_LAUGHS.decode().replace("<AppId>&lol9;</AppId><Encrypt>x</Encrypt>",
                                            "<InfoType>&lol9;</InfoType>")
    encrypt = crypto.encrypt_message(inner, nonce, timestamp).split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    signer = WeChatSigner()
    signer.add_data(TOKEN, timestamp, nonce, encrypt)
    body = f"<xml><AppId><![CDATA[{APPID}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    answer = hub.post(CALLBACK, params={"timestamp": timestamp, "nonce": nonce, "encrypt_type": "aes",
                                        "msg_signature": signer.signature}, data=body)
    assert answer.status_code == 400, answer.text
    ticketed(hub)


def test_get_on_the_callback_is_405(hub: Hub) -> None:
    answer = hub.get(CALLBACK)
    assert answer.status_code == 405 and envelope(answer)["data"] is None
    assert "POST" in answer.headers.get("Allow", "")


# -- interoperability -----------------------------------------------------------------
def test_a_message_encrypted_by_wechatpy_is_accepted(hub: Hub) -> None:
    query, body = wechatpy_push((APPID, TOKEN, AES_KEY), {
        "AppId": APPID, "CreateTime": int(time.time()), "InfoType": "component_verify_ticket",
        "ComponentVerifyTicket": "ticket@@@made-by-wechatpy"})
    answer = hub.post(CALLBACK, params=query, data=body, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 200 and answer.text == "success"
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert hub.ticket() == "ticket@@@made-by-wechatpy"


# -- tokens ------------------------------------------------------------------------
def test_without_a_ticket_the_token_is_awaited_and_a_push_requested(hub: Hub) -> None:
    hub.fake.start_push_delay_s = 1.5  # the requested push comes after these requests
    answers = [hub.get(COMPONENT_URL) for _ in range(5)]
    for answer in answers:
        error = envelope(answer)["error"]
        assert answer.status_code == 503 and "waiting for the platform to push a component_verify_ticket" in error
        assert 0 < int(answer.headers["Retry-After"]) <= 60
    assert hub.fake.count(START_PUSH_TICKET_PATH) == 1
    deadline = time.monotonic() + 5
    while hub.ticket() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert token_of(hub.get(COMPONENT_URL))
    assert_no_secret(hub.log() + "".join(a.text for a in answers), hub.fake)


def test_a_ticket_past_its_life_is_no_ticket(hub: Hub) -> None:
    hub.fake.advance(-13 * 3600)  # written 13 hours ago: a ticket lives 12
    acknowledged(hub.fake.push_ticket(APPID))
    hub.fake.advance(13 * 3600)
    answer = hub.get(COMPONENT_URL)
    assert answer.status_code == 503, answer.text
    assert "the last one received has expired" in envelope(answer)["error"]
    assert hub.fake.count(COMPONENT_TOKEN_PATH) == 0 and hub.fake.count(START_PUSH_TICKET_PATH) == 1


@pytest.mark.parametrize("how", ["rejected", "expired"])
def test_a_component_token_the_platform_no_longer_takes_is_replaced_once(hub: Hub, how: str) -> None:
    ticketed(hub)
    old = token_of(hub.get(COMPONENT_URL))
    if how == "rejected":
        hub.fake.invalidate(old)  # 40001
    else:
        hub.fake.advance(7200)  # the platform's clock only: 42001 there
        acknowledged(hub.fake.push_ticket(APPID))  # the old ticket has 10 h left; a fresh one anyway
    with ThreadPoolExecutor(6) as pool:
        pages = list(pool.map(lambda _: hub.get(f"/authorize/wechat_component/{APPID}",
                                                params={"redirect_uri": "https://isv.example/back"}), range(6)))
    assert [p.status_code for p in pages] == [200] * 6, [p.text for p in pages]
    assert hub.fake.count(COMPONENT_TOKEN_PATH) == 2
    new = token_of(hub.get(COMPONENT_URL))
    assert new != old and hub.fake.is_valid(new, COMPONENT)


def test_a_rotated_refresh_token_is_stored_before_the_token_is_served_and_the_old_one_never_sent(hub: Hub) -> None:
    hub.fake.rotate_refresh_tokens = True
    ticketed(hub)
    authorized(hub)
    first_refresh = hub.fake.refresh_token(APPID, ACCOUNT)
    token = token_of(hub.get(AUTHORIZER_URL))
    sent: list[str] = []
    for _ in range(3):
        token = token_of(hub.put(AUTHORIZER_URL, json={"stale_token": token}))
        grant = hub.grant()
        # The one the platform takes now is already stored when the token comes back.
        assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
        assert hub.fake.is_valid(token, AUTHORIZER)
    sent = [c["body"]["authorizer_refresh_token"] for c in hub.fake.find(AUTHORIZER_TOKEN_PATH)]
    assert len(sent) == 3 and len(set(sent)) == 3 and sent[0] == first_refresh
    assert all(c["errcode"] == 0 for c in hub.fake.find(AUTHORIZER_TOKEN_PATH))
    assert_no_secret(hub.log(), hub.fake)


def test_a_refresh_token_the_platform_refuses_is_a_clear_502_without_a_retry_storm(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    token = token_of(hub.get(AUTHORIZER_URL))
    hub.fake.unauthorize(APPID, ACCOUNT, deliver=False)  # the push is lost: the refresh token is dead (61023)
    answers = [hub.put(AUTHORIZER_URL, json={"stale_token": token}) for _ in range(5)]
    first = envelope(answers[0])
    assert answers[0].status_code == 502 and "authorize" in first["error"] and "61023" in first["error"]
    for answer in answers[1:]:
        assert answer.status_code in (502, 503), answer.text
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 1
    # The account authorizes again: its new token is served at once, the rest over.
    hub.fake.advance(5)
    authorized(hub)
    again = token_of(hub.get(AUTHORIZER_URL))
    assert hub.fake.is_valid(again, AUTHORIZER) and hub.fake.count(AUTHORIZER_TOKEN_PATH) == 1
    assert_no_secret(hub.log() + "".join(a.text for a in answers), hub.fake)


def test_puts_with_one_stale_token_coalesce_into_one_refresh(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    stale = token_of(hub.get(AUTHORIZER_URL))
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: hub.put(AUTHORIZER_URL, json={"stale_token": stale}), range(12)))
    served = {token_of(a) for a in answers}
    assert len(served) == 1 and stale not in served
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 1


def test_jsapi_and_wx_card_tickets_of_an_authorizer(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    token = token_of(hub.get(AUTHORIZER_URL))
    for kind in ("jsapi", "wx_card"):
        first = token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/{kind}"))
        again = token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/{kind}"))
        assert first == again
        call = hub.fake.last(TICKET_PATH, type=kind)
        assert call is not None and call["query"]["access_token"] == token
        assert hub.fake.count(TICKET_PATH, type=kind) == 1
    assert hub.get(f"/ticket/wechat_authorizer/{APPID}:wxnotauthorized00/jsapi").status_code == 404


def add_key(hub: Hub, name: str, *scopes: str) -> dict[str, str]:
    key = new_key()
    hub.container.clients.repo.add(Client(name, hash_key(key), scopes, time.time()))
    return {"X-API-Key": key}


def test_scopes_cover_authorizers_and_the_authorization_routes_need_the_component(
        tmp_path: Path, wxopen: FakeWeChatOpen) -> None:
    hub = Hub(tmp_path, wxopen, auth_required=True)
    keys = {scope: add_key(hub, scope.replace("*", "all").replace(":", "-"), scope)
            for scope in (f"wechat_authorizer:{TOKEN_APPID}", "wechat_authorizer:*", "*",
                          f"wechat_component:{APPID}", f"wechat_authorizer:{APPID}:wxsomeoneelse0000")}
    hub.start()
    try:
        ticketed(hub)
        authorized(hub)
        expected = {f"wechat_authorizer:{TOKEN_APPID}": (200, 403), "wechat_authorizer:*": (200, 403),
                    "*": (200, 200), f"wechat_component:{APPID}": (403, 200),
                    f"wechat_authorizer:{APPID}:wxsomeoneelse0000": (403, 403)}
        for scope, (token_status, authorize_status) in expected.items():
            got = hub.get(AUTHORIZER_URL, headers=keys[scope]).status_code
            page = hub.get(f"/authorize/wechat_component/{APPID}", headers=keys[scope],
                           params={"redirect_uri": "https://isv.example/back"}).status_code
            code = hub.post(f"/authorize/wechat_component/{APPID}", headers=keys[scope],
                            json={"auth_code": "not-a-code"}).status_code
            assert (got, page) == (token_status, authorize_status), scope
            assert (code == 403) == (authorize_status == 403), (scope, code)
        assert hub.get(AUTHORIZER_URL).status_code == 401
        assert hub.get(f"/authorize/wechat_component/{APPID}",
                       params={"redirect_uri": "https://isv.example/back"}).status_code == 401
        # The callback takes no key: the platform cannot send one.
        acknowledged(hub.fake.push_ticket(APPID))
    finally:
        hub.stop()


def test_authorization_page_url_and_a_redirected_auth_code(hub: Hub) -> None:
    ticketed(hub)
    page = hub.get(f"/authorize/wechat_component/{APPID}",
                   params={"redirect_uri": "https://isv.example/back?x=1", "auth_type": "2"})
    url = envelope(page)["data"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://mp.weixin.qq.com/cgi-bin/componentloginpage"
    assert query["component_appid"] == APPID and query["redirect_uri"] == "https://isv.example/back?x=1"
    assert query["auth_type"] == "2" and query["pre_auth_code"] in hub.fake._pre_auth_codes
    assert hub.fake.count(PREAUTHCODE_PATH) == 1
    assert hub.get(f"/authorize/wechat_component/{APPID}",
                   params={"redirect_uri": "javascript:alert(1)"}).status_code == 400
    wrong_type = hub.get(f"/authorize/wechat_component/{APPID}",
                         params={"redirect_uri": "https://isv.example/back", "auth_type": "4"})
    assert wrong_type.status_code == 400 and "auth_type must be 1" in envelope(wrong_type)["error"]
    assert hub.fake.count(PREAUTHCODE_PATH) == 1

    # The push is lost; the redirect brings the code instead.
    push = hub.fake.authorize(APPID, ACCOUNT, deliver=False)
    answer = hub.post(f"/authorize/wechat_component/{APPID}", json={"auth_code": push.message["AuthorizationCode"]})
    assert envelope(answer)["data"] == ACCOUNT
    grant = hub.grant()
    assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
    issued = hub.fake.last(QUERY_AUTH_PATH)
    assert issued is not None and token_of(hub.get(AUTHORIZER_URL)) == issued["issued"]
    assert hub.post(f"/authorize/wechat_component/{APPID}", json={}).status_code == 400
    # The page reloaded: the same code again answers the same account.
    used_again = hub.post(f"/authorize/wechat_component/{APPID}",
                          json={"auth_code": push.message["AuthorizationCode"]})
    assert used_again.status_code == 200 and envelope(used_again)["data"] == ACCOUNT
    assert hub.grant() == grant
    never = hub.post(f"/authorize/wechat_component/{APPID}", json={"auth_code": "queryauthcode@@@never-issued"})
    assert never.status_code == 502 and "61009" in never.text and "never-issued" not in never.text
    assert_no_secret(hub.log() + page.text + answer.text, hub.fake)


# -- durability at rest ------------------------------------------------------------
def test_tickets_and_refresh_tokens_are_sealed_in_sql(hub: Hub) -> None:
    ticket = ticketed(hub)
    authorized(hub)
    refresh = hub.fake.refresh_token(APPID, ACCOUNT)
    assert refresh is not None
    [(stored_ticket,)] = hub.rows("SELECT ticket FROM pushed_ticket")
    [(stored_refresh, info)] = hub.rows("SELECT secret, info FROM account_grant")
    assert ticket not in stored_ticket and refresh not in stored_refresh
    assert stored_ticket.startswith("fernet:") and stored_refresh.startswith("fernet:")
    assert refresh not in info and ticket not in info
    [(credential,)] = hub.rows("SELECT secret FROM platform WHERE platform = 'wechat_component'")
    assert SECRET not in credential and AES_KEY not in credential and TOKEN not in credential


# -- scheduler ---------------------------------------------------------------------
def test_the_scheduler_refreshes_component_and_authorizer_tokens_near_expiry(
        tmp_path: Path, wxopen: FakeWeChatOpen) -> None:
    """In process, on the fake's clock; the pushes are posted to it as the
    fake built them."""
    settings = {"sqlite_path": str(tmp_path / "p.sqlite3"), "wechat_api_base": wxopen.base_url,
                "is_enable_schedule": False, "auth_required": False, "corn_interval": 300}
    wxopen.rotate_refresh_tokens = True
    app = create_app(overrides=settings, clock=wxopen.now)
    container = app.extensions["pighand"]
    container.credentials.add(Credential("wechat_component", APPID, AppSecrets(SECRET, TOKEN, AES_KEY).encode()))
    client = app.test_client()
    for push in (wxopen.push_ticket(APPID), wxopen.authorize(APPID, ACCOUNT, deliver=False)):
        answer = client.post(CALLBACK, query_string=push.query, data=push.body, content_type="text/xml")
        assert answer.get_data(as_text=True) == "success"
    service = container.service
    report = service.refresh_due()
    assert {(k.platform, k.appid) for k in report.refreshed} == set()
    assert wxopen.count(COMPONENT_TOKEN_PATH) == 1 and wxopen.count(AUTHORIZER_TOKEN_PATH) == 0
    wxopen.advance(7200 - 200)  # both tokens now end within the margin
    report = service.refresh_due()
    # The authorizer's refresh needs the component token, and takes a new
    # one on the way when the old one is inside its margin: the component is
    # then fresh by the time its own turn comes.
    assert ("wechat_authorizer", TOKEN_APPID) in {(k.platform, k.appid) for k in report.refreshed}
    assert not report.failed
    assert wxopen.count(COMPONENT_TOKEN_PATH) == 2 and wxopen.count(AUTHORIZER_TOKEN_PATH) == 1
    for url, kind in ((AUTHORIZER_URL, AUTHORIZER), (COMPONENT_URL, COMPONENT)):
        token = client.get(url).get_json()["data"]
        info = wxopen.token_info(token)
        assert wxopen.is_valid(token, kind) and info is not None and info.expires_at > wxopen.now() + 7000
    assert wxopen.count(COMPONENT_TOKEN_PATH) == 2 and wxopen.count(AUTHORIZER_TOKEN_PATH) == 1
    assert {(k.platform, k.appid) for k in service.refresh_due().refreshed} == set()
    grant = container.callbacks.grants.get("wechat_authorizer", APPID, ACCOUNT)
    assert grant is not None and grant.secret == wxopen.refresh_token(APPID, ACCOUNT)  # the rotated one


# -- CLI ---------------------------------------------------------------------------
def test_cli_adds_a_component_lists_authorizers_and_prints_the_authorization_url(
        tmp_path: Path, wxopen: FakeWeChatOpen) -> None:
    hub = Hub(tmp_path, wxopen, seed=False)
    env = clean_env(**{k: v for k, v in hub.settings.items()})
    added = run_cli("platform", "add", "wechat_component", APPID, "--secret", SECRET, "--callback-token", TOKEN,
                    "--encoding-aes-key", AES_KEY, env=env)
    assert added.returncode == 0, added.stderr
    prompted = run_cli("platform", "add", "wechat_component", OTHER_APPID, env=env,
                       input=f"{OTHER_SECRET}\n{OTHER_TOKEN}\n{OTHER_AES_KEY}\n")
    assert prompted.returncode == 0, prompted.stdout + prompted.stderr
    stored = hub.container.credentials.get("wechat_component", OTHER_APPID)
    assert stored is not None and AppSecrets.parse(stored.secret, "wechat_component") == \
        AppSecrets(OTHER_SECRET, OTHER_TOKEN, OTHER_AES_KEY)
    bad_key = run_cli("platform", "add", "wechat_component", "wxcompbadkey00000", "--secret", SECRET,
                      "--callback-token", TOKEN, "--encoding-aes-key", "short", env=env)
    assert bad_key.returncode != 0 and "EncodingAESKey" in bad_key.stdout + bad_key.stderr

    hub.start()
    try:
        ticketed(hub)
        authorized(hub)
        token = token_of(hub.get(AUTHORIZER_URL))
        listing = run_cli("wechat", "authorizers", APPID, env=env)
        assert listing.returncode == 0, listing.stderr
        header, line, total = listing.stdout.splitlines()
        assert header.split() == ["AUTHORIZER", "AUTHORIZED", "UPDATED", "TOKEN", "EXPIRES_IN", "LAST_ERROR"]
        assert line.startswith(ACCOUNT) and line.count("UTC") == 2 and " valid " in line and line.endswith("-")
        assert total == "1 authorizer(s)"
        # The account's refresh token dies without the push reaching us: the listing says so.
        hub.fake.unauthorize(APPID, ACCOUNT, deliver=False)
        assert hub.put(AUTHORIZER_URL, json={"stale_token": token}).status_code == 502
        failing = run_cli("wechat", "authorizers", APPID, env=env)
        line = failing.stdout.splitlines()[1]
        assert line.startswith(ACCOUNT) and "must authorize the component again" in line, failing.stdout
        url = run_cli("wechat", "authorize-url", APPID, "--redirect-uri", "https://isv.example/back", env=env)
        assert url.returncode == 0, url.stderr
        assert url.stdout.startswith("https://mp.weixin.qq.com/cgi-bin/componentloginpage?")
        assert "pre_auth_code=preauthcode" in url.stdout
        unknown = run_cli("wechat", "authorizers", "wxcompunknown00000", env=env)
        assert unknown.returncode != 0
        everything = "".join(r.stdout + r.stderr for r in (added, prompted, bad_key, listing, failing, url,
                                                               unknown))
        assert_no_secret(everything + hub.log(), hub.fake)
    finally:
        hub.stop()


# -- late redeliveries -------------------------------------------------------------
def test_an_unauthorized_delivered_again_after_the_account_authorized_anew_forgets_nothing(hub: Hub) -> None:
    """WeChat delivers a push again when it missed the answer; by then the
    account may have authorized again. The message's CreateTime orders them."""
    ticketed(hub)
    authorized(hub)
    hub.fake.advance(30)
    removal = hub.fake.unauthorize(APPID, ACCOUNT)
    acknowledged(removal)
    hub.fake.advance(30)
    authorized(hub)
    acknowledged(hub.fake.redeliver(removal))
    grant = hub.grant()
    assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
    token = token_of(hub.get(AUTHORIZER_URL))
    assert hub.fake.is_valid(token, AUTHORIZER)
    assert "arrived after a later" in hub.log()


def test_a_late_unauthorized_after_a_redirected_reauthorization_forgets_nothing(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    hub.fake.advance(30)
    removal = hub.fake.unauthorize(APPID, ACCOUNT, deliver=False)  # delivered late, below
    hub.fake.advance(30)
    authorized(hub)
    hub.fake.advance(30)
    page = hub.fake.authorize(APPID, ACCOUNT, deliver=False)  # this time the redirect brings the code
    answer = hub.post(f"/authorize/wechat_component/{APPID}", json={"auth_code": page.message["AuthorizationCode"]})
    assert envelope(answer)["data"] == ACCOUNT
    acknowledged(hub.fake.redeliver(removal))
    grant = hub.grant()
    assert grant is not None and grant.secret == hub.fake.refresh_token(APPID, ACCOUNT)
    assert hub.fake.is_valid(token_of(hub.get(AUTHORIZER_URL)), AUTHORIZER)


def test_an_authorization_delivered_again_after_the_account_left_is_acknowledged(hub: Hub) -> None:
    """Its code is spent (61009): sending it again can never work, so it is
    acknowledged rather than failed into endless redeliveries."""
    ticketed(hub)
    first = authorized(hub)
    hub.fake.advance(30)
    acknowledged(hub.fake.unauthorize(APPID, ACCOUNT))
    assert hub.grant() is None
    acknowledged(hub.fake.redeliver(first))
    assert hub.grant() is None
    assert hub.get(AUTHORIZER_URL).status_code == 404
    assert "the platform refused its code" in hub.log() and "61009" in hub.log()


def test_an_unauthorized_that_cannot_reach_redis_is_not_acknowledged_until_done(tmp_path: Path,
                                                                               wxopen: FakeWeChatOpen) -> None:
    """Redis still holds the account's token: answering success would have
    the token served again once Redis is back. WeChat delivers it again."""
    from tests.integration.test_redis_connections import wait_ping

    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(folder)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hub = None
    try:
        client = redis.Redis(port=port, decode_responses=True)
        wait_ping(client)
        hub = Hub(tmp_path, wxopen, redis_host="127.0.0.1", redis_port=port).start()
        ticketed(hub)
        authorized(hub)
        token_of(hub.get(AUTHORIZER_URL))
        assert client.keys(f"*{ACCOUNT}*")
        redis_proc.send_signal(signal.SIGSTOP)
        removal = hub.fake.unauthorize(APPID, ACCOUNT)
        assert removal.status == 503 and not removal.answered_success, (removal.status, removal.text)
        redis_proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15  # WeChat delivers again; Redis' breaker closes within seconds
        again = hub.fake.redeliver(removal)
        while not again.answered_success and time.monotonic() < deadline:
            assert again.status == 503, (again.status, again.text)
            time.sleep(0.5)
            again = hub.fake.redeliver(removal)
        acknowledged(again)
        assert not client.keys(f"*{ACCOUNT}*") and hub.grant() is None
        assert hub.get(AUTHORIZER_URL).status_code == 404
    finally:
        redis_proc.send_signal(signal.SIGCONT)
        if hub is not None:
            hub.stop()
        redis_proc.kill()
        redis_proc.wait(timeout=10)


def test_an_authorization_delivered_again_after_a_later_one_is_acknowledged_and_ignored(hub: Hub) -> None:
    ticketed(hub)
    first = authorized(hub)
    hub.fake.advance(30)
    acknowledged(hub.fake.update_authorization(APPID, ACCOUNT, func_info=[1, 2]))
    latest = hub.grant()
    late = hub.fake.redeliver(first)
    acknowledged(late)
    assert hub.fake.count(QUERY_AUTH_PATH) == 2
    assert hub.grant() == latest


def test_an_authorization_before_any_ticket_is_not_acknowledged_until_it_is_stored(hub: Hub) -> None:
    push = hub.fake.authorize(APPID, ACCOUNT)
    assert push.status == 503 and not push.answered_success, (push.status, push.text)
    assert hub.grant() is None
    deadline = time.monotonic() + 5  # the service asked WeChat to push a ticket
    while hub.ticket() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    acknowledged(hub.fake.redeliver(push))
    assert hub.grant() is not None and hub.fake.count(QUERY_AUTH_PATH) == 1


def test_a_chunked_body_over_64_kib_is_413(hub: Hub) -> None:
    push = hub.fake.push_ticket(APPID)
    body = push.body.replace(b"</xml>", b"<Pad>" + b"x" * 70000 + b"</Pad></xml>")
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))  # no Content-Length
    answer = hub.post(CALLBACK, params=push.query, data=chunks, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 413, answer.text


def test_a_chunked_push_within_the_limit_is_read_whole(hub: Hub) -> None:
    hub.fake.set_callback_url(APPID, None)
    push = hub.fake.push_ticket(APPID)
    chunks = (push.body[i:i + 64] for i in range(0, len(push.body), 64))  # no Content-Length
    answer = hub.post(CALLBACK, params=push.query, data=chunks, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 200 and answer.text == "success"
    assert hub.ticket() == push.message["ComponentVerifyTicket"]


@pytest.mark.parametrize("errcode", [61005, 61006])
def test_a_ticket_wechat_refuses_is_retired_and_a_push_asked_for(hub: Hub, errcode: int) -> None:
    """The stored ticket is one WeChat no longer takes (expired on its
    side, or pushed before a secret reset): one call, not one per request;
    a push asked for now rather than up to 10 minutes later; the pushed
    ticket then serves at once, however soon it lands."""
    ticketed(hub)
    hub.fake.advance(5)  # the requested push is written in a later second than the stored one
    hub.fake.fail_with_errcode_next(3, errcode, path=COMPONENT_TOKEN_PATH)
    hub.fake.start_push_delay_s = 1.0
    answers = [hub.get(COMPONENT_URL) for _ in range(4)]
    first = envelope(answers[0])
    assert answers[0].status_code == 503 and str(errcode) in first["error"]
    assert "component_verify_ticket" in first["error"] and "asked to push one" in first["error"]
    for answer in answers[1:]:
        error = envelope(answer)["error"]
        assert answer.status_code == 503 and "the platform refused the last one received" in error
        assert int(answer.headers["Retry-After"]) > 0
    assert hub.fake.count(COMPONENT_TOKEN_PATH) == 1  # the one refusal, then the rest
    assert hub.fake.count(START_PUSH_TICKET_PATH) == 1
    deadline = time.monotonic() + 5  # the requested push, stored (not only sent)
    while time.monotonic() < deadline and (len(hub.fake.pushes_of("component_verify_ticket")) < 2
                                           or hub.ticket() != hub.fake.current_ticket(APPID)):
        time.sleep(0.05)
    hub.fake.clear_faults()
    token = token_of(hub.get(COMPONENT_URL))
    assert hub.fake.is_valid(token, COMPONENT)
    last = hub.fake.last(COMPONENT_TOKEN_PATH)
    assert last is not None and last["ticket"] == hub.fake.current_ticket(APPID)
    assert_no_secret(hub.log() + "".join(a.text for a in answers), hub.fake)


def test_authorizer_names_that_cannot_be_served_are_400_or_404(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    for path, status in [(f"/token/wechat_authorizer/{ACCOUNT}", 400),
                         (f"/token/wechat_authorizer/{APPID}:{ACCOUNT}:extra", 400),
                         (f"/token/wechat_authorizer/wxcompunknown00000:{ACCOUNT}", 404),
                         (f"/token/wechat_authorizer/{APPID}:wxnotauthorized00", 404),
                         ("/authorize/wechat_component/wxcompunknown00000?redirect_uri=https://isv.example/", 404),
                         (f"/authorize/wechat_authorizer/{TOKEN_APPID}?redirect_uri=https://isv.example/", 404),
                         (f"/callback/wechat_authorizer/{APPID}", 404)]:
        answer = hub.get(path) if not path.startswith("/callback") else hub.post(path, data=b"<xml/>")
        assert answer.status_code == status, (path, answer.text)
        assert envelope(answer)["data"] is None
    assert hub.fake.count(AUTHORIZER_TOKEN_PATH) == 0


def test_a_redirected_auth_code_the_push_already_exchanged_answers_the_account(hub: Hub) -> None:
    """WeChat pushes ``authorized`` and redirects the account with the same
    code; whichever reaches the service second finds it stored."""
    ticketed(hub)
    push = authorized(hub)
    grant = hub.grant()
    answer = hub.post(f"/authorize/wechat_component/{APPID}", json={"auth_code": push.message["AuthorizationCode"]})
    assert answer.status_code == 200 and envelope(answer)["data"] == ACCOUNT, answer.text
    # WeChat refused the spent code (61009); nothing it handed over was replaced.
    assert hub.fake.count(QUERY_AUTH_PATH, errcode=0) == 1 and hub.grant() == grant


def test_removing_the_component_stops_serving_its_authorizers(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    token = token_of(hub.get(AUTHORIZER_URL))
    token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi"))
    removed = run_cli("platform", "remove", "wechat_component", APPID, env=clean_env(**hub.settings))
    assert removed.returncode == 0, removed.stderr
    # Each worker's memory drops what the CLI deleted within local_cache_ttl.
    deadline = time.monotonic() + 8
    while True:
        answers = [hub.get(AUTHORIZER_URL) for _ in range(4)]
        answers += [hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi") for _ in range(4)]
        if {a.status_code for a in answers} == {404}:
            break
        assert time.monotonic() - deadline < 0, [a.text for a in answers]
        time.sleep(0.1)
    assert all(token not in a.text for a in answers)
    assert hub.get(COMPONENT_URL).status_code == 404

    # Added back, the component serves its authorizers again from their kept
    # refresh tokens: no account has to authorize again.
    added = run_cli("platform", "add", "wechat_component", APPID, "--secret", SECRET, "--callback-token", TOKEN,
                    "--encoding-aes-key", AES_KEY, env=clean_env(**hub.settings))
    assert added.returncode == 0, added.stderr
    fresh = token_of(hub.get(AUTHORIZER_URL))
    assert fresh != token and hub.fake.is_valid(fresh, AUTHORIZER)
    assert hub.fake.count(QUERY_AUTH_PATH) == 1 and hub.fake.count(AUTHORIZER_TOKEN_PATH) == 1


def test_the_status_page_and_metrics_name_authorizers_and_no_secret(hub: Hub) -> None:
    ticketed(hub)
    authorized(hub)
    token_of(hub.get(AUTHORIZER_URL))
    token_of(hub.get(f"/ticket/wechat_authorizer/{TOKEN_APPID}/jsapi"))
    page = hub.get("/", headers={"Accept": "text/html"})
    metrics = hub.get("/metrics")
    assert page.status_code == 200 and metrics.status_code == 200
    assert TOKEN_APPID in page.text
    assert_no_secret(page.text + metrics.text + hub.log(), hub.fake)
