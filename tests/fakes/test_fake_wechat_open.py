"""Tests of the fake WeChat Open Platform itself: pushes go to a loopback receiver that
checks and decrypts them with wechatpy, token APIs are called over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import xmltodict
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature

from tests.fakes.wechat_open import (
    API_PATH,
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
)

APPID = "wxcomp0123456789ab"
SECRET = "component-secret-0123456789abcdef"
TOKEN = "callbacktoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_APPID = "wxcompother0000000"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
AUTHORIZER_APPID = "wxauthorizer000001"
TOKEN_KEY = "component_access_token"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ receiver


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: bytes
    message: dict[str, str] | None  # None when rejected
    rejected: str | None


@dataclass
class Receiver:
    """A tiny service callback endpoint: verifies and decrypts with wechatpy, answers success."""

    crypto: dict[str, WeChatCrypto]  # component appid -> its crypto
    tokens: dict[str, str]
    received: list[Received] = field(default_factory=list)
    on_message: Callable[[dict[str, str]], None] | None = None
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, appid: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback/wechat_open/{appid}"

    def messages(self, info_type: str | None = None) -> list[dict[str, str]]:
        with self.lock:
            found = [r.message for r in self.received if r.message is not None]
        return [m for m in found if info_type is None or m["InfoType"] == info_type]

    def wait_for(self, info_type: str, n: int = 1, timeout: float = 5) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(info_type)
            if len(found) >= n:
                return found
            time.sleep(0.01)
        raise AssertionError(f"{n} {info_type} message(s) not received within {timeout} s")

    def handle(self, path: str, query: dict[str, str], body: bytes) -> tuple[int, str]:
        appid = path.rsplit("/", 1)[-1]
        try:
            check_signature(self.tokens[appid], query["signature"], query["timestamp"], query["nonce"])
            plain = self.crypto[appid].decrypt_message(body, query["msg_signature"], query["timestamp"], query["nonce"])
            message = dict(xmltodict.parse(plain)["xml"])
        except (InvalidSignatureException, InvalidAppIdException, KeyError, ValueError) as exc:
            with self.lock:
                self.received.append(Received(path, query, body, None, type(exc).__name__))
            return 400, "rejected"
        with self.lock:
            self.received.append(Received(path, query, body, message, None))
        if self.on_message is not None:
            self.on_message(message)
        return 200, "success"


def _serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, text = receiver.handle(split.path, query, body)
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(
        crypto={
            APPID: WeChatCrypto(TOKEN, AES_KEY, APPID),
            OTHER_APPID: WeChatCrypto("othertoken", OTHER_AES_KEY, OTHER_APPID),
        },
        tokens={APPID: TOKEN, OTHER_APPID: "othertoken"},
    )
    rec.server = _serve(rec)
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
def fake(receiver: Receiver) -> Iterator[FakeWeChatOpen]:
    with FakeWeChatOpen() as f:
        f.add_component(APPID, SECRET, TOKEN, AES_KEY, receiver.url(APPID))
        f.add_component(OTHER_APPID, "other-secret", "othertoken", OTHER_AES_KEY, receiver.url(OTHER_APPID))
        yield f


class Client:
    """Thin helpers so tests read like the component calls a service makes."""

    def __init__(self, fake: FakeWeChatOpen) -> None:
        self.fake = fake
        self.http = requests.Session()

    def post(self, path: str, body: dict[str, Any], token: str | None = None, key: str = TOKEN_KEY) -> Any:
        params = {key: token} if token is not None else None
        resp = self.http.post(self.fake.url(path), params=params, json=body, timeout=5)
        assert resp.status_code == 200
        return resp.json()

    def component_token(self, ticket: str | None, secret: str = SECRET, appid: str = APPID) -> dict[str, Any]:
        body = {"component_appid": appid, "component_appsecret": secret, "component_verify_ticket": ticket}
        return dict(self.post(COMPONENT_TOKEN_PATH, body))

    def fresh_component_token(self) -> str:
        self.fake.push_ticket(APPID)
        got = self.component_token(self.fake.current_ticket(APPID))
        return str(got["component_access_token"])

    def query_auth(self, token: str, code: str) -> dict[str, Any]:
        return dict(self.post(QUERY_AUTH_PATH, {"component_appid": APPID, "authorization_code": code}, token))

    def authorizer_token(self, token: str, refresh: str | None, authorizer: str = AUTHORIZER_APPID) -> dict[str, Any]:
        body = {"component_appid": APPID, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh}
        return dict(self.post(AUTHORIZER_TOKEN_PATH, body, token))

    def get(self, path: str, **params: str) -> dict[str, Any]:
        resp = self.http.get(self.fake.url(path), params=params, timeout=5)
        assert resp.status_code == 200
        return dict(resp.json())

    def authorized(self, token: str) -> dict[str, Any]:
        """Authorize AUTHORIZER_APPID and exchange the pushed code."""
        push = self.fake.authorize(APPID, AUTHORIZER_APPID)
        info = self.query_auth(token, push.message["AuthorizationCode"])["authorization_info"]
        return dict(info)


@pytest.fixture
def wx(fake: FakeWeChatOpen) -> Iterator[Client]:
    client = Client(fake)
    yield client
    client.http.close()


# ---------------------------------------------------------------- ticket pushes


def test_ticket_push_is_the_platform_message_signed_and_encrypted(fake: FakeWeChatOpen, receiver: Receiver) -> None:
    fake.freeze()
    push = fake.push_ticket(APPID)
    assert push.answered_success and push.status == 200 and push.text == "success"

    (got,) = receiver.received
    assert got.path == f"/callback/wechat_open/{APPID}"
    assert set(got.query) == {"signature", "timestamp", "nonce", "encrypt_type", "msg_signature"}
    assert got.query["encrypt_type"] == "aes"
    assert got.query["timestamp"] == str(int(fake.now()))
    envelope = xmltodict.parse(got.body)["xml"]
    assert set(envelope) == {"AppId", "Encrypt"} and envelope["AppId"] == APPID
    assert got.message == {
        "AppId": APPID,
        "CreateTime": str(int(fake.now())),
        "InfoType": "component_verify_ticket",
        "ComponentVerifyTicket": fake.current_ticket(APPID),
    }
    assert push.message == got.message


def test_component_token_needs_a_pushed_ticket(wx: Client, fake: FakeWeChatOpen) -> None:
    assert wx.component_token("ticket@@@never-pushed")["errcode"] == 61006
    assert wx.component_token(None)["errcode"] == 61006
    fake.push_ticket(APPID)
    ticket = fake.current_ticket(APPID)
    got = wx.component_token(ticket)
    assert got["expires_in"] == 7200 and got["component_access_token"].startswith("83_")
    assert fake.is_valid(got["component_access_token"], COMPONENT)

    assert wx.component_token(ticket, secret="wrong")["errcode"] == 40125
    assert wx.component_token(ticket, secret="")["errcode"] == 41004
    assert wx.component_token(ticket, appid="wxunknown")["errcode"] == 61011
    other_ticket = fake.push_ticket(OTHER_APPID).message["ComponentVerifyTicket"]
    assert wx.component_token(other_ticket)["errcode"] == 61006  # another component's ticket
    assert fake.count(COMPONENT_TOKEN_PATH, appid=APPID, errcode=0) == 1


def test_previous_ticket_accepted_for_12_hours_unless_only_latest(wx: Client, fake: FakeWeChatOpen) -> None:
    first = fake.push_ticket(APPID).message["ComponentVerifyTicket"]
    fake.advance(600)
    second = fake.push_ticket(APPID).message["ComponentVerifyTicket"]
    assert first != second and fake.current_ticket(APPID) == second
    assert "component_access_token" in wx.component_token(first)

    fake.only_latest_ticket = True
    assert wx.component_token(first)["errcode"] == 61006
    assert "component_access_token" in wx.component_token(second)

    fake.advance(12 * 3600)
    expired = wx.component_token(second)
    assert expired["errcode"] == 61005 and expired["errmsg"].startswith("component ticket is expired")
    assert fake.current_ticket(APPID) is None


def test_new_component_token_leaves_old_one_working_for_grace(wx: Client, fake: FakeWeChatOpen) -> None:
    fake.grace_s = 60
    first = wx.fresh_component_token()
    second = wx.fresh_component_token()
    assert first != second
    assert "pre_auth_code" in wx.post(PREAUTHCODE_PATH, {"component_appid": APPID}, first)
    fake.advance(61)
    assert wx.post(PREAUTHCODE_PATH, {"component_appid": APPID}, first)["errcode"] == 40001
    got = wx.post(PREAUTHCODE_PATH, {"component_appid": APPID}, second, key="access_token")
    assert got["expires_in"] == 1800 and got["pre_auth_code"]
    fake.advance(7200)
    assert wx.post(PREAUTHCODE_PATH, {"component_appid": APPID}, second)["errcode"] == 42001
    assert wx.post(PREAUTHCODE_PATH, {"component_appid": APPID})["errcode"] == 41001


def test_start_push_ticket_answers_ok_then_pushes(wx: Client, fake: FakeWeChatOpen, receiver: Receiver) -> None:
    bad = wx.post(START_PUSH_TICKET_PATH, {"component_appid": APPID, "component_secret": "wrong"})
    assert bad["errcode"] == 40125
    unknown = wx.post(START_PUSH_TICKET_PATH, {"component_appid": "wxnope", "component_secret": SECRET})
    assert unknown["errcode"] == 40013
    ok = wx.post(START_PUSH_TICKET_PATH, {"component_appid": APPID, "component_secret": SECRET})
    assert ok == {"errcode": 0, "errmsg": "ok"}
    (message,) = receiver.wait_for("component_verify_ticket")
    assert message["ComponentVerifyTicket"] == fake.current_ticket(APPID)
    assert fake.count(START_PUSH_TICKET_PATH, appid=APPID) == 2


def test_background_pusher_is_off_by_default_and_pushes_every_interval(
    fake: FakeWeChatOpen, receiver: Receiver
) -> None:
    time.sleep(0.2)
    assert receiver.received == []
    fake.start_pushing(0.05, APPID)
    tickets = receiver.wait_for("component_verify_ticket", n=3)
    fake.stop_pushing()
    settled = len(receiver.messages())
    time.sleep(0.2)
    assert len(receiver.messages()) == settled
    assert len({m["ComponentVerifyTicket"] for m in tickets}) == len(tickets)
    assert {m["AppId"] for m in tickets} == {APPID}


# ------------------------------------------------------------- forged pushes


def test_bad_signature_tampered_and_foreign_key_pushes_are_rejected_by_wechatpy(
    wx: Client, fake: FakeWeChatOpen, receiver: Receiver
) -> None:
    bad = fake.push_ticket(APPID, fault=BAD_SIGNATURE)
    tampered = fake.push_ticket(APPID, fault=TAMPERED)
    foreign = fake.push_ticket(APPID, signed_by=OTHER_APPID)
    assert [p.status for p in (bad, tampered, foreign)] == [400, 400, 400]
    assert [r.rejected for r in receiver.received] == [
        "InvalidSignatureException",
        "InvalidAppIdException",  # the signature fits, the decrypted frame does not
        "InvalidSignatureException",
    ]
    assert all(r.path.endswith("/" + APPID) for r in receiver.received)
    # None of these carried a ticket the platform issued.
    assert fake.current_ticket(APPID) is None
    assert wx.component_token(bad.message["ComponentVerifyTicket"])["errcode"] == 61006
    assert wx.component_token(foreign.message["ComponentVerifyTicket"])["errcode"] == 61006


def test_redelivery_is_byte_identical(fake: FakeWeChatOpen, receiver: Receiver) -> None:
    first = fake.push_ticket(APPID)
    fake.advance(3600)
    again = fake.redeliver(first)
    assert again.redelivery and again.answered_success
    a, b = receiver.received
    assert (a.query, a.body) == (b.query, b.body)
    assert a.message == b.message
    assert len(fake.pushes) == 2


def test_push_to_unreachable_or_missing_url_records_the_failure(fake: FakeWeChatOpen) -> None:
    fake.set_callback_url(APPID, "http://127.0.0.1:9/callback/wechat_open/x")
    push = fake.push_ticket(APPID)
    assert push.status is None and push.error and not push.answered_success
    fake.set_callback_url(APPID, None)
    assert "no callback URL" in (fake.push_ticket(APPID).error or "")
    assert len(fake.pushes_of("component_verify_ticket", APPID)) == 2


# ------------------------------------------------------------- authorization


def test_authorize_pushes_authorized_with_a_single_use_code(
    wx: Client, fake: FakeWeChatOpen, receiver: Receiver
) -> None:
    token = wx.fresh_component_token()
    fake.freeze()
    push = fake.authorize(APPID, AUTHORIZER_APPID, func_info=[1, 15])
    (message,) = receiver.messages("authorized")
    assert list(message) == [
        "AppId",
        "CreateTime",
        "InfoType",
        "AuthorizerAppid",
        "AuthorizationCode",
        "AuthorizationCodeExpiredTime",
        "PreAuthCode",
    ]
    assert message["AuthorizerAppid"] == AUTHORIZER_APPID
    assert int(message["AuthorizationCodeExpiredTime"]) == int(message["CreateTime"]) + 600
    assert message == push.message

    info = wx.query_auth(token, message["AuthorizationCode"])["authorization_info"]
    assert info["authorizer_appid"] == AUTHORIZER_APPID
    assert info["expires_in"] == 7200
    assert info["func_info"] == [{"funcscope_category": {"id": 1}}, {"funcscope_category": {"id": 15}}]
    assert info["authorizer_refresh_token"] == fake.refresh_token(APPID, AUTHORIZER_APPID)
    assert fake.is_valid(info["authorizer_access_token"], AUTHORIZER)

    assert wx.query_auth(token, message["AuthorizationCode"])["errcode"] == 61009  # single use
    assert wx.query_auth(token, "queryauthcode@@@nope")["errcode"] == 61009
    late = fake.authorize(APPID, AUTHORIZER_APPID).message["AuthorizationCode"]
    fake.advance(600)
    assert wx.query_auth(token, late)["errcode"] == 61010


def test_service_may_call_back_into_the_fake_while_handling_a_push(
    wx: Client, fake: FakeWeChatOpen, receiver: Receiver
) -> None:
    token = wx.fresh_component_token()
    answers: list[dict[str, Any]] = []

    def exchange(message: dict[str, str]) -> None:
        if message["InfoType"] == "authorized":
            answers.append(Client(fake).query_auth(token, message["AuthorizationCode"]))

    receiver.on_message = exchange
    push = fake.authorize(APPID, AUTHORIZER_APPID)
    assert push.answered_success
    assert answers[0]["authorization_info"]["authorizer_appid"] == AUTHORIZER_APPID


def test_authorizer_token_refresh_keeps_refresh_token_by_default(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    info = wx.authorized(token)
    refresh = info["authorizer_refresh_token"]
    got = wx.authorizer_token(token, refresh)
    assert set(got) == {"authorizer_access_token", "expires_in", "authorizer_refresh_token"}
    assert got["expires_in"] == 7200 and got["authorizer_refresh_token"] == refresh
    assert got["authorizer_access_token"] != info["authorizer_access_token"]
    assert wx.authorizer_token(token, "refreshtoken@@@bogus")["errcode"] == 61023
    assert wx.authorizer_token(token, refresh, authorizer="wxnotauthorized")["errcode"] == 61023
    assert wx.authorizer_token(token, None)["errcode"] == 47001
    assert fake.count(AUTHORIZER_TOKEN_PATH, authorizer_appid=AUTHORIZER_APPID) == 3
    assert fake.count(AUTHORIZER_TOKEN_PATH, authorizer_appid=AUTHORIZER_APPID, errcode=0) == 1


def test_a_seeded_authorization_answers_like_one_pushed_and_exchanged(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    pushes = len(fake.pushes)
    refresh = fake.add_authorization(APPID, "wxseeded0001")
    assert fake.refresh_token(APPID, "wxseeded0001") == refresh and len(fake.pushes) == pushes
    got = wx.authorizer_token(token, refresh, authorizer="wxseeded0001")
    assert got["authorizer_refresh_token"] == refresh and fake.is_valid(got["authorizer_access_token"])
    assert wx.authorizer_token(token, refresh, authorizer="wxseeded0002")["errcode"] == 61023


def test_refresh_token_rotation_refuses_the_old_one(wx: Client, fake: FakeWeChatOpen) -> None:
    fake.rotate_refresh_tokens = True
    token = wx.fresh_component_token()
    old = wx.authorized(token)["authorizer_refresh_token"]
    got = wx.authorizer_token(token, old)
    new = got["authorizer_refresh_token"]
    assert new != old and fake.refresh_token(APPID, AUTHORIZER_APPID) == new
    refused = wx.authorizer_token(token, old)
    assert refused["errcode"] == 61023 and refused["errmsg"].startswith("refresh_token is invalid")
    assert "authorizer_access_token" in wx.authorizer_token(token, new)


def test_reauthorization_kills_the_previous_refresh_token(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    first = wx.authorized(token)["authorizer_refresh_token"]
    push = fake.update_authorization(APPID, AUTHORIZER_APPID, func_info=[1])
    assert push.info_type == "updateauthorized" and push.answered_success
    # Until the new code is exchanged the old refresh token still works.
    assert "authorizer_access_token" in wx.authorizer_token(token, first)
    second = wx.query_auth(token, push.message["AuthorizationCode"])["authorization_info"]
    assert second["func_info"] == [{"funcscope_category": {"id": 1}}]
    assert wx.authorizer_token(token, first)["errcode"] == 61023
    assert "authorizer_access_token" in wx.authorizer_token(token, second["authorizer_refresh_token"])


def test_unauthorize_pushes_and_kills_refresh_and_authorizer_tokens(
    wx: Client, fake: FakeWeChatOpen, receiver: Receiver
) -> None:
    token = wx.fresh_component_token()
    info = wx.authorized(token)
    access = info["authorizer_access_token"]
    assert wx.get(API_PATH, access_token=access)["errcode"] == 0
    push = fake.unauthorize(APPID, AUTHORIZER_APPID)
    assert push.answered_success
    (message,) = receiver.messages("unauthorized")
    assert message == {
        "AppId": APPID,
        "CreateTime": message["CreateTime"],
        "InfoType": "unauthorized",
        "AuthorizerAppid": AUTHORIZER_APPID,
    }
    assert wx.authorizer_token(token, info["authorizer_refresh_token"])["errcode"] == 61023
    assert wx.get(API_PATH, access_token=access)["errcode"] == 40001
    assert fake.refresh_token(APPID, AUTHORIZER_APPID) is None


def test_authorizer_tokens_get_jsapi_tickets_component_tokens_do_not(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    access = wx.authorized(token)["authorizer_access_token"]
    jsapi = wx.get(TICKET_PATH, access_token=access, type="jsapi")
    assert jsapi["errcode"] == 0 and jsapi["expires_in"] == 7200 and jsapi["ticket"]
    assert wx.get(TICKET_PATH, access_token=access, type="jsapi")["ticket"] == jsapi["ticket"]
    assert wx.get(TICKET_PATH, access_token=access, type="wx_card")["ticket"] != jsapi["ticket"]
    assert wx.get(TICKET_PATH, access_token=access, type="nope")["errcode"] == 40097
    assert wx.get(TICKET_PATH, access_token=token, type="jsapi")["errcode"] == 40001
    assert wx.get(TICKET_PATH, type="jsapi")["errcode"] == 41001
    assert fake.count(TICKET_PATH, authorizer_appid=AUTHORIZER_APPID, type="jsapi") == 2
    fake.advance(7200)
    assert wx.get(TICKET_PATH, access_token=access, type="jsapi")["errcode"] == 42001
    # an authorizer token is no component token
    assert wx.post(PREAUTHCODE_PATH, {"component_appid": APPID}, access)["errcode"] == 40001


# --------------------------------------------------- faults, counts, concurrency


def test_faults_and_call_log_from_the_base(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    fake.fail_with_errcode_next(1, -1, "system error", path=AUTHORIZER_TOKEN_PATH)
    refresh = wx.authorized(token)["authorizer_refresh_token"]
    assert wx.authorizer_token(token, refresh) == {"errcode": -1, "errmsg": "system error"}
    assert "authorizer_access_token" in wx.authorizer_token(token, refresh)
    fake.fail_next(1, status=503, path=COMPONENT_TOKEN_PATH)
    resp = wx.http.post(fake.url(COMPONENT_TOKEN_PATH), json={}, timeout=5)
    assert resp.status_code == 503
    assert fake.count(AUTHORIZER_TOKEN_PATH, fault="errcode", authorizer_appid=AUTHORIZER_APPID) == 1
    assert fake.count(QUERY_AUTH_PATH, component_appid=APPID, authorizer_appid=AUTHORIZER_APPID) == 1
    assert fake.count(COMPONENT_TOKEN_PATH, fault="status") == 1


def test_200_concurrent_token_calls(wx: Client, fake: FakeWeChatOpen) -> None:
    token = wx.fresh_component_token()
    refresh = wx.authorized(token)["authorizer_refresh_token"]
    ticket = fake.current_ticket(APPID)

    def call(i: int) -> Any:
        if i % 2:
            body = {"component_appid": APPID, "authorizer_appid": AUTHORIZER_APPID, "authorizer_refresh_token": refresh}
            return requests.post(
                fake.url(AUTHORIZER_TOKEN_PATH), params={"component_access_token": token}, json=body, timeout=10
            ).json()
        body = {"component_appid": APPID, "component_appsecret": SECRET, "component_verify_ticket": ticket}
        return requests.post(fake.url(COMPONENT_TOKEN_PATH), json=body, timeout=10).json()

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(call, range(200)))
    assert all("errcode" not in r for r in results), [r for r in results if "errcode" in r][:3]
    assert fake.count(AUTHORIZER_TOKEN_PATH, errcode=0) == 100
    assert len(set(fake.issued(AUTHORIZER, APPID, AUTHORIZER_APPID))) == 101
    assert len(fake.issued(COMPONENT, APPID)) == 101
    assert fake.errors == []


def test_standalone_main_serves_component_token() -> None:
    spec = f"{APPID}:{SECRET}:{TOKEN}:{AES_KEY}"
    command = [sys.executable, "-m", "tests.fakes.wechat_open", "--port", "0", "--component", spec]
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            body = {"component_appid": APPID, "component_appsecret": SECRET, "component_verify_ticket": "x"}
            got = requests.post(base_url + COMPONENT_TOKEN_PATH, json=body, timeout=5).json()
            assert got["errcode"] == 61006
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0
