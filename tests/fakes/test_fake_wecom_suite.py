"""Tests of the fake WeCom third-party platform itself: real loopback HTTP, pushes
received and decrypted by a tiny wechatpy-based callback receiver."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import xmltodict
from wechatpy.enterprise.crypto import WeChatCrypto

from tests.fakes.wecom_suite import (
    API_PATH,
    CORP,
    CORP_TOKEN_PATH,
    PERMANENT_CODE_PATH,
    PRE_AUTH_CODE_PATH,
    PROVIDER_TOKEN_PATH,
    SUITE,
    SUITE_TOKEN_PATH,
    FakeWeComSuite,
)

SUITE_ID = "wwsuite0000000001"
SUITE_SECRET = "suite-secret-0001"
OTHER_ID = "wwsuite0000000002"
TOKEN = "cbtoken1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
PROVIDER_CORPID = "wwprovider000001"
PROVIDER_SECRET = "provider-secret"
CORPID = "wwcorp0000000001"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------- the receiver


@dataclass
class Receiver:
    """What a service's callback endpoint does, done with wechatpy: check the
    signature, decrypt, answer ``success`` (or 400 when anything is off)."""

    suites: dict[str, tuple[str, str]]  # suite id -> (Token, EncodingAESKey)
    provider_corpid: str
    messages: list[dict[str, str]] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    on_message: Callable[[dict[str, str]], None] | None = None
    server: ThreadingHTTPServer | None = None

    def url(self, suite_id: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback/wecom_suite/{suite_id}"

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, str]:
        suite_id = path.rsplit("/", 1)[-1]
        token, key = self.suites[suite_id]
        sig, ts, nonce = query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", "")
        try:
            if method == "GET":
                crypto = WeChatCrypto(token, key, self.provider_corpid)
                return 200, str(crypto.check_signature(sig, ts, nonce, query.get("echostr", "")))
            self.raw.append((query, body))
            plain = WeChatCrypto(token, key, suite_id).decrypt_message(body, sig, ts, nonce)
            message = dict(xmltodict.parse(plain)["xml"])
        except Exception as exc:  # noqa: BLE001 - any failure is a refusal
            self.rejected.append(type(exc).__name__)
            return 400, "bad message"
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)
        return 200, "success"

    def of_type(self, info_type: str) -> list[dict[str, str]]:
        return [m for m in self.messages if m.get("InfoType") == info_type]


def _serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, text = receiver.handle(self.command, split.path, query, body)
            payload = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver({SUITE_ID: (TOKEN, AES_KEY), OTHER_ID: ("cbtoken2", OTHER_AES_KEY)}, PROVIDER_CORPID)
    recv.server = _serve(recv)
    yield recv
    recv.server.shutdown()
    recv.server.server_close()


@pytest.fixture
def fake(receiver: Receiver) -> Iterator[FakeWeComSuite]:
    with FakeWeComSuite() as f:
        f.add_suite(SUITE_ID, SUITE_SECRET, token=TOKEN, encoding_aes_key=AES_KEY, callback_url=receiver.url(SUITE_ID))
        f.add_suite(OTHER_ID, "other-secret", token="cbtoken2", encoding_aes_key=OTHER_AES_KEY,
                    callback_url=receiver.url(OTHER_ID))
        f.set_provider(PROVIDER_CORPID, PROVIDER_SECRET)
        yield f


class Client:
    """The service's side of the token calls, as plain HTTP."""

    def __init__(self, fake: FakeWeComSuite) -> None:
        self.fake = fake
        self.http = requests.Session()

    def suite_token(self, ticket: str | None, **fields: Any) -> dict[str, Any]:
        body = {"suite_id": SUITE_ID, "suite_secret": SUITE_SECRET, "suite_ticket": ticket, **fields}
        return dict(self.http.post(self.fake.url(SUITE_TOKEN_PATH), json=body, timeout=5).json())

    def with_suite_token(self, path: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        params = {"suite_access_token": token}
        if body is None:
            return dict(self.http.get(self.fake.url(path), params=params, timeout=5).json())
        return dict(self.http.post(self.fake.url(path), params=params, json=body, timeout=5).json())

    def api(self, token: str) -> dict[str, Any]:
        return dict(self.http.get(self.fake.url(API_PATH), params={"access_token": token}, timeout=5).json())

    def fresh_suite_token(self) -> str:
        self.fake.push_ticket(SUITE_ID)
        return str(self.suite_token(self.fake.current_ticket(SUITE_ID))["suite_access_token"])


@pytest.fixture
def client(fake: FakeWeComSuite) -> Iterator[Client]:
    c = Client(fake)
    yield c
    c.http.close()


# -------------------------------------------------------------------- tickets


def test_ticket_push_is_signed_encrypted_xml_that_wechatpy_decrypts(fake: FakeWeComSuite, receiver: Receiver) -> None:
    fake.freeze()
    delivery = fake.push_ticket(SUITE_ID)
    assert delivery.ok and delivery.status == 200
    assert set(delivery.params) == {"msg_signature", "timestamp", "nonce"}
    assert delivery.params["timestamp"] == str(int(fake.now()))
    envelope = xmltodict.parse(receiver.raw[-1][1])["xml"]
    assert envelope["ToUserName"] == SUITE_ID and "AgentID" in envelope and envelope["Encrypt"]

    (message,) = receiver.messages
    assert list(message) == ["SuiteId", "InfoType", "TimeStamp", "SuiteTicket"]
    assert message["SuiteId"] == SUITE_ID and message["InfoType"] == "suite_ticket"
    assert message["TimeStamp"] == str(int(fake.now()))
    assert message["SuiteTicket"] == fake.current_ticket(SUITE_ID) == delivery.message["SuiteTicket"]
    assert fake.delivered("suite_ticket", SUITE_ID, ok=True) == 1


def test_suite_token_requires_a_pushed_ticket_and_right_credentials(fake: FakeWeComSuite, client: Client) -> None:
    assert client.suite_token("never-pushed")["errcode"] == 40085
    fake.push_ticket(SUITE_ID)
    ticket = fake.current_ticket(SUITE_ID)
    got = client.suite_token(ticket)
    assert got["errcode"] == 0 and got["errmsg"] == "ok" and got["expires_in"] == 7200
    assert fake.token_info(got["suite_access_token"]).kind == SUITE  # type: ignore[union-attr]

    assert client.suite_token(None)["errcode"] == 41023
    assert client.suite_token(ticket, suite_secret="wrong")["errcode"] == 40080
    assert client.suite_token(ticket, suite_id="wwunknown")["errcode"] == 40083
    assert client.suite_token(ticket, suite_id="")["errcode"] == 41021
    other = fake.push_ticket(OTHER_ID).message["SuiteTicket"]
    assert client.suite_token(other)["errcode"] == 40085  # a ticket is per suite
    err = client.suite_token("bogus")
    assert re.fullmatch(r"invalid suite_ticket, hint: \[\S+\], more info at "
                        r"https://open\.work\.weixin\.qq\.com/devtool/query\?e=40085", err["errmsg"])


def test_previous_ticket_stays_accepted_until_its_own_life_ends(fake: FakeWeComSuite, client: Client) -> None:
    fake.freeze()
    first = fake.push_ticket(SUITE_ID).message["SuiteTicket"]
    fake.advance(600)
    second = fake.push_ticket(SUITE_ID).message["SuiteTicket"]
    assert client.suite_token(first)["errcode"] == 0
    fake.advance(1200)  # first is 1800 s old now
    assert client.suite_token(first)["errcode"] == 40085
    assert client.suite_token(second)["errcode"] == 0

    fake.accept_previous_tickets = False
    third = fake.push_ticket(SUITE_ID).message["SuiteTicket"]
    assert client.suite_token(second)["errcode"] == 40085
    assert client.suite_token(third)["errcode"] == 0


def test_unpushed_ticket_is_valid_but_never_reaches_the_service(fake: FakeWeComSuite, receiver: Receiver,
                                                              client: Client) -> None:
    ticket = fake.issue_ticket(SUITE_ID)
    assert receiver.messages == [] and fake.delivered() == 0
    assert client.suite_token(ticket.value)["errcode"] == 0
    assert ticket.expires_at - ticket.issued_at == 1800


def test_background_pusher_pushes_tickets_until_stopped(fake: FakeWeComSuite, receiver: Receiver) -> None:
    fake.start_ticket_pusher(0.05, suite_ids=[SUITE_ID])
    deadline = time.monotonic() + 5
    while len(receiver.of_type("suite_ticket")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.stop_ticket_pusher()
    seen = len(receiver.messages)
    assert seen >= 3
    assert {m["SuiteId"] for m in receiver.messages} == {SUITE_ID}
    assert len({m["SuiteTicket"] for m in receiver.messages}) == seen  # a new ticket each time
    time.sleep(0.2)
    assert len(receiver.messages) == seen
    assert receiver.messages[-1]["SuiteTicket"] == fake.current_ticket(SUITE_ID)


# ------------------------------------------------------------- bad pushes


def test_bad_pushes_are_refused_by_a_correct_receiver(fake: FakeWeComSuite, receiver: Receiver) -> None:
    bad = [
        fake.push_ticket(SUITE_ID, bad_signature=True),
        fake.push_ticket(SUITE_ID, tamper=True),
        fake.push_ticket(SUITE_ID, as_suite=OTHER_ID),
        fake.push_ticket(SUITE_ID, receive_id=PROVIDER_CORPID),
    ]
    assert [d.variant for d in bad] == ["bad_signature", "tampered", f"as_suite:{OTHER_ID}", "receive_id"]
    assert [d.status for d in bad] == [400, 400, 400, 400]
    assert not any(d.ok for d in bad) and receiver.messages == []
    assert receiver.rejected[0] == "InvalidSignatureException"
    assert receiver.rejected[2] == "InvalidSignatureException"  # another suite's Token
    assert fake.delivered(ok=False) == 4

    # the misrouted ticket is real, but for the other suite
    misrouted = bad[2].message["SuiteTicket"]
    assert bad[2].message["SuiteId"] == OTHER_ID
    assert fake.ticket_accepted(OTHER_ID, misrouted) and not fake.ticket_accepted(SUITE_ID, misrouted)
    assert fake.push_ticket(SUITE_ID).ok  # a good one still passes


def test_redelivery_is_byte_identical(fake: FakeWeComSuite, receiver: Receiver) -> None:
    first = fake.push_ticket(SUITE_ID)
    fake.advance(3600)
    again = fake.redeliver(first)
    assert again.ok and again.variant == "redelivery"
    assert (again.params, again.body) == (first.params, first.body)
    assert receiver.raw[0] == receiver.raw[1]
    assert receiver.messages[0] == receiver.messages[1]
    assert fake.delivered("suite_ticket") == 2


def test_push_to_unreachable_callback_reports_the_failure(fake: FakeWeComSuite) -> None:
    fake.set_callback_url(SUITE_ID, "http://127.0.0.1:9/callback/wecom_suite/x")
    delivery = fake.push_ticket(SUITE_ID)
    assert delivery.status is None and delivery.error and not delivery.ok
    assert fake.ticket_accepted(SUITE_ID, delivery.message["SuiteTicket"])  # issued anyway
    fake.set_callback_url(SUITE_ID, None)
    with pytest.raises(ValueError):
        fake.push_ticket(SUITE_ID)


def test_service_may_call_the_fake_while_handling_a_push(fake: FakeWeComSuite, receiver: Receiver,
                                                         client: Client) -> None:
    got: list[dict[str, Any]] = []
    receiver.on_message = lambda message: got.append(client.suite_token(message["SuiteTicket"]))
    assert fake.push_ticket(SUITE_ID).ok
    assert got and got[0]["errcode"] == 0


# ---------------------------------------------------------- URL verification


def test_url_verification_echostr_uses_the_provider_corpid(fake: FakeWeComSuite, receiver: Receiver) -> None:
    check = fake.verify_url(SUITE_ID)
    assert check.ok and check.status == 200 and check.answer == check.echostr
    assert set(check.params) == {"msg_signature", "timestamp", "nonce", "echostr"}
    assert check.echostr.isdigit()

    sealed_for_suite = fake.verify_url(SUITE_ID, receive_id=SUITE_ID)
    assert not sealed_for_suite.ok and sealed_for_suite.status == 400
    assert not fake.verify_url(SUITE_ID, bad_signature=True).ok


# ------------------------------------------------------------- suite token


def test_suite_token_same_while_valid_then_expired_codes(fake: FakeWeComSuite, client: Client) -> None:
    fake.freeze()
    token = client.fresh_suite_token()
    fake.advance(1000)
    again = client.suite_token(fake.current_ticket(SUITE_ID))
    assert again["suite_access_token"] == token and again["expires_in"] == 6200
    assert client.with_suite_token(PRE_AUTH_CODE_PATH, token)["errcode"] == 0

    fake.advance(6200)
    assert fake.token_status(token) == 42009
    assert client.with_suite_token(PRE_AUTH_CODE_PATH, token)["errcode"] == 42009
    assert client.with_suite_token(PRE_AUTH_CODE_PATH, "bogus")["errcode"] == 40082
    missing = client.http.get(fake.url(PRE_AUTH_CODE_PATH), timeout=5).json()
    assert missing["errcode"] == 41022
    assert client.fresh_suite_token() != token


def test_repeat_issue_new_gives_fresh_tokens_old_ones_live_on(fake: FakeWeComSuite, client: Client) -> None:
    fake.repeat_issue = "new"
    first = client.fresh_suite_token()
    second = client.suite_token(fake.current_ticket(SUITE_ID))
    assert second["suite_access_token"] != first and second["expires_in"] == 7200
    assert fake.is_valid(first) and fake.is_valid(second["suite_access_token"])
    fake.invalidate(first)
    assert fake.token_status(first) == 40082
    assert fake.issued(SUITE, SUITE_ID) == [first, second["suite_access_token"]]


def test_two_hundred_concurrent_calls_get_one_token(fake: FakeWeComSuite) -> None:
    fake.push_ticket(SUITE_ID)
    body = {"suite_id": SUITE_ID, "suite_secret": SUITE_SECRET, "suite_ticket": fake.current_ticket(SUITE_ID)}
    results: list[str] = []

    def call() -> None:
        resp = requests.post(fake.url(SUITE_TOKEN_PATH), json=body, timeout=10)
        results.append(resp.json()["suite_access_token"])

    threads = [threading.Thread(target=call) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and len(set(results)) == 1
    assert fake.count(SUITE_TOKEN_PATH, suite_id=SUITE_ID, errcode=0) == 200


# --------------------------------------------------------- install and corps


def test_install_flow_from_pre_auth_code_to_corp_token(fake: FakeWeComSuite, receiver: Receiver,
                                                       client: Client) -> None:
    suite_token = client.fresh_suite_token()
    pre = client.with_suite_token(PRE_AUTH_CODE_PATH, suite_token)
    assert pre["errcode"] == 0 and pre["expires_in"] == 1200 and pre["pre_auth_code"]

    delivery = fake.authorize(SUITE_ID, CORPID, corp_name="Acme", state="s1")
    assert delivery.ok
    pushed = receiver.of_type("create_auth")[-1]
    assert list(pushed) == ["SuiteId", "AuthCode", "InfoType", "TimeStamp", "State"]
    assert pushed["SuiteId"] == SUITE_ID and pushed["State"] == "s1"

    got = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": pushed["AuthCode"]})
    assert got["errcode"] == 0 and got["expires_in"] == 7200
    assert got["permanent_code"] == fake.permanent_code(SUITE_ID, CORPID)
    assert got["auth_corp_info"]["corpid"] == CORPID and got["auth_corp_info"]["corp_name"] == "Acme"
    assert got["auth_info"]["agent"][0]["agentid"] == 1000002
    assert client.api(got["access_token"])["errcode"] == 0

    again = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": pushed["AuthCode"]})
    assert again["errcode"] == 40078  # single use

    body = {"auth_corpid": CORPID, "permanent_code": got["permanent_code"]}
    corp = client.with_suite_token(CORP_TOKEN_PATH, suite_token, body)
    assert corp["errcode"] == 0 and corp["access_token"] == got["access_token"]
    assert fake.token_info(corp["access_token"]).owner == f"{SUITE_ID}:{CORPID}"  # type: ignore[union-attr]

    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, {**body, "permanent_code": "x"})["errcode"] == 40084
    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, {**body, "auth_corpid": ""})["errcode"] == 84054
    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, {**body, "permanent_code": ""})["errcode"] == 41025
    assert fake.count(CORP_TOKEN_PATH, auth_corpid=CORPID, suite_id=SUITE_ID) == 3
    assert fake.count(CORP_TOKEN_PATH, auth_corpid=CORPID, errcode=0) == 1


def test_corp_token_expiry_and_dead_token_codes(fake: FakeWeComSuite, client: Client) -> None:
    fake.freeze()
    suite_token = client.fresh_suite_token()
    code = fake.authorize(SUITE_ID, CORPID, push=False).message["AuthCode"]
    got = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": code})
    fake.advance(7200)
    assert client.api(got["access_token"])["errcode"] == 42001
    assert client.api("bogus")["errcode"] == 40014
    assert client.api(suite_token)["errcode"] == 40014  # a suite token is no corp token
    assert client.http.get(fake.url(API_PATH), timeout=5).json()["errcode"] == 41001
    fresh_suite = client.fresh_suite_token()
    body = {"auth_corpid": CORPID, "permanent_code": got["permanent_code"]}
    renewed = client.with_suite_token(CORP_TOKEN_PATH, fresh_suite, body)
    assert renewed["access_token"] != got["access_token"] and renewed["expires_in"] == 7200
    assert fake.current_token(CORP, f"{SUITE_ID}:{CORPID}") == renewed["access_token"]


def test_auth_code_lives_five_minutes_and_belongs_to_its_suite(fake: FakeWeComSuite, client: Client) -> None:
    fake.freeze()
    suite_token = client.fresh_suite_token()
    fake.push_ticket(OTHER_ID)
    other_token = client.suite_token(fake.current_ticket(OTHER_ID), suite_id=OTHER_ID,
                                     suite_secret="other-secret")["suite_access_token"]
    first = fake.authorize(SUITE_ID, CORPID, push=False)
    assert first.url is None and first.status is None
    code = first.message["AuthCode"]
    assert client.with_suite_token(PERMANENT_CODE_PATH, other_token, {"auth_code": code})["errcode"] == 40078
    fake.advance(300)
    assert client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": code})["errcode"] == 40078
    assert client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {})["errcode"] == 41008


def test_change_cancel_and_reset_permanent_code(fake: FakeWeComSuite, receiver: Receiver, client: Client) -> None:
    suite_token = client.fresh_suite_token()
    code = fake.authorize(SUITE_ID, CORPID).message["AuthCode"]
    first = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": code})

    assert fake.change_auth(SUITE_ID, CORPID, state="s2").ok
    change = receiver.of_type("change_auth")[-1]
    assert list(change) == ["SuiteId", "InfoType", "TimeStamp", "AuthCorpId", "State"]
    assert change["AuthCorpId"] == CORPID

    reset = fake.reset_permanent_code(SUITE_ID, CORPID)
    assert reset.ok
    pushed = receiver.of_type("reset_permanent_code")[-1]
    assert list(pushed) == ["SuiteId", "AuthCode", "InfoType", "TimeStamp"]
    old_body = {"auth_corpid": CORPID, "permanent_code": first["permanent_code"]}
    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, old_body)["errcode"] == 0  # until exchanged
    second = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": pushed["AuthCode"]})
    assert second["permanent_code"] != first["permanent_code"]
    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, old_body)["errcode"] == 40084
    new_body = {"auth_corpid": CORPID, "permanent_code": second["permanent_code"]}
    corp_token = client.with_suite_token(CORP_TOKEN_PATH, suite_token, new_body)["access_token"]

    assert fake.cancel_auth(SUITE_ID, CORPID).ok
    cancel = receiver.of_type("cancel_auth")[-1]
    assert list(cancel) == ["SuiteId", "InfoType", "TimeStamp", "AuthCorpId"]
    assert client.with_suite_token(CORP_TOKEN_PATH, suite_token, new_body)["errcode"] == 40084
    assert client.api(corp_token)["errcode"] == 40014
    assert fake.authorization(SUITE_ID, CORPID).cancelled  # type: ignore[union-attr]

    again = fake.authorize(SUITE_ID, CORPID).message["AuthCode"]  # reinstall
    third = client.with_suite_token(PERMANENT_CODE_PATH, suite_token, {"auth_code": again})
    assert third["errcode"] == 0 and client.api(third["access_token"])["errcode"] == 0


# ------------------------------------------------------------------ provider


def test_provider_token_and_its_errors(fake: FakeWeComSuite, client: Client) -> None:
    def provider(**fields: str) -> dict[str, Any]:
        body = {"corpid": PROVIDER_CORPID, "provider_secret": PROVIDER_SECRET, **fields}
        return dict(client.http.post(fake.url(PROVIDER_TOKEN_PATH), json=body, timeout=5).json())

    got = provider()
    assert got["errcode"] == 0 and got["expires_in"] == 7200 and got["provider_access_token"]
    assert provider()["provider_access_token"] == got["provider_access_token"]
    assert provider(provider_secret="wrong")["errcode"] == 40091
    assert provider(corpid="wwnobody")["errcode"] == 40013
    assert provider(provider_secret="")["errcode"] == 41004
    assert fake.count(PROVIDER_TOKEN_PATH, corpid=PROVIDER_CORPID) == 4


# ------------------------------------------------------ faults and the log


def test_faults_and_call_log_from_the_base(fake: FakeWeComSuite, client: Client) -> None:
    fake.push_ticket(SUITE_ID)
    ticket = fake.current_ticket(SUITE_ID)
    fake.fail_with_errcode_next(1, -1, "system busy", path=SUITE_TOKEN_PATH)
    assert client.suite_token(ticket) == {"errcode": -1, "errmsg": "system busy"}
    fake.fail_next(1, status=502, path=SUITE_TOKEN_PATH)
    resp = client.http.post(fake.url(SUITE_TOKEN_PATH), json={}, timeout=5)
    assert resp.status_code == 502
    ok = client.suite_token(ticket)
    assert ok["errcode"] == 0
    assert fake.count(SUITE_TOKEN_PATH, fault="errcode", suite_id=SUITE_ID) == 1
    assert fake.count(SUITE_TOKEN_PATH, errcode=0, token=ok["suite_access_token"]) == 1
    assert fake.last(SUITE_TOKEN_PATH)["suite_ticket"] == ticket  # type: ignore[index]
    assert client.http.get(fake.url(SUITE_TOKEN_PATH), timeout=5).status_code == 405


def test_standalone_main_prints_base_url() -> None:
    command = [sys.executable, "-m", "tests.fakes.wecom_suite", "--port", "0",
               "--suite", f"{SUITE_ID}:{SUITE_SECRET}:{TOKEN}:{AES_KEY}",
               "--provider", f"{PROVIDER_CORPID}:{PROVIDER_SECRET}"]
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
            body = {"corpid": PROVIDER_CORPID, "provider_secret": PROVIDER_SECRET}
            assert requests.post(base_url + PROVIDER_TOKEN_PATH, json=body, timeout=5).json()["errcode"] == 0
            body = {"suite_id": SUITE_ID, "suite_secret": SUITE_SECRET, "suite_ticket": "none"}
            assert requests.post(base_url + SUITE_TOKEN_PATH, json=body, timeout=5).json()["errcode"] == 40085
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0
