"""Fake WeCom third-party platform: suites (第三方应用) and the provider (platform-facts §7.1, §7.3).

The platform side of the push model. WeCom POSTs encrypted instructions to each
suite's instruction-callback URL; the service derives a suite token from the
latest ``suite_ticket`` and each installing corp's token from the permanent code
it exchanged an ``auth_code`` for, once.

Endpoints (qyapi.weixin.qq.com):
  POST /cgi-bin/service/get_suite_token      {suite_id, suite_secret, suite_ticket}
  GET  /cgi-bin/service/get_pre_auth_code    ?suite_access_token=
  POST /cgi-bin/service/get_permanent_code   ?suite_access_token=  {auth_code}
  POST /cgi-bin/service/get_corp_token       ?suite_access_token=  {auth_corpid, permanent_code}
  POST /cgi-bin/service/get_provider_token   {corpid, provider_secret}
  GET  /cgi-bin/get_api_domain_ip            business-API stand-in checking a corp token

Pushes (to the suite's callback URL, ``?msg_signature=&timestamp=&nonce=``):
  suite_ticket, create_auth, change_auth, cancel_auth, reset_permanent_code,
  plus variants for tests: redelivery, bad signature, tampered ciphertext, a
  message of another suite (its key, its SuiteId), a wrong receive id.
  ``verify_url`` sends the GET ``?msg_signature&timestamp&nonce&echostr`` check.

Faithful (checked against WxJava weixin-java-cp tp, EasyWeChat OpenWork and the
WeCom global error-code list as WxJava carries it):
  - WXBizMsgCrypt done by wechatpy (``wechatpy.enterprise.crypto.PrpCrypto`` and
    its signer), so this fake is independent of the service's own crypto.
  - Envelope ``<xml><ToUserName>suite_id</ToUserName><Encrypt/><AgentID/></xml>``;
    inner XML ``SuiteId, InfoType, TimeStamp`` + ``SuiteTicket`` / ``AuthCode`` /
    ``AuthCorpId`` / ``State``. Messages use the suite id as receive id; the URL
    check's echostr uses the provider's corpid (EasyWeChat issue #1300, its
    OpenWork ``Server`` decrypts echostr with the provider encryptor).
  - Lives: tickets 1800 s (pushed every 600 s; an older ticket stays accepted
    until its own life ends, which is why WxJava keeps one 28 min), tokens
    7200 s, pre_auth_code 1200 s, auth_code 300 s ("5分钟内有效" in the
    create_auth push doc; the install redirect says ``expires_in=600``), auth
    codes single use.
  - Errcodes: 40085 bad/expired suite_ticket, 41023 missing ticket, 40083 unknown
    suite, 40080 bad suite_secret, 41021 missing suite_id, 41022 missing
    suite_access_token, 40082 bad suite token, 42009 expired suite token, 41008
    missing auth code, 40078 bad/used/expired auth code, 84054 missing
    auth_corpid, 41025 missing permanent code, 40084 bad permanent code, 40013
    unknown provider corpid, 40091 bad provider secret, 40014/42001/41001 corp
    tokens on business APIs; errmsg carries a hint and the devtool link.

Simplified:
  - ``repeat_issue = "same"`` (default): a token endpoint called again while its
    token lives answers the same token with its remaining life, as gettoken is
    documented (§4); ``"new"`` issues a fresh one and the old keeps working
    until its own expiry. Which one WeCom does for suite/provider tokens is not
    documented.
  - cancel_auth voids the permanent code (40084) and kills the corp's tokens at
    once; reset_permanent_code keeps the old permanent code working until the
    new auth code is exchanged.
  - No automatic retry of unanswered pushes: ``redeliver()`` resends one as-is.
  - The clock in TimeStamp / timestamp is the fake's clock (``advance`` moves it).

Run standalone: ``python -m tests.fakes.wecom_suite --suite ww1:secret:TOKEN:AESKEY:URL``.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.utils import WeChatSigner

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = [
    "Authorization",
    "AuthCode",
    "Delivery",
    "FakeWeComSuite",
    "Provider",
    "Suite",
    "Ticket",
    "Token",
    "Verification",
    "main",
]

SUITE_TOKEN_PATH = "/cgi-bin/service/get_suite_token"
PRE_AUTH_CODE_PATH = "/cgi-bin/service/get_pre_auth_code"
PERMANENT_CODE_PATH = "/cgi-bin/service/get_permanent_code"
CORP_TOKEN_PATH = "/cgi-bin/service/get_corp_token"
PROVIDER_TOKEN_PATH = "/cgi-bin/service/get_provider_token"
API_PATH = "/cgi-bin/get_api_domain_ip"

SUITE = "suite"
CORP = "corp"
PROVIDER = "provider"

_ERRMSG: dict[int, str] = {
    -1: "system busy",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40078: "invalid auth_code",
    40080: "invalid suite_secret",
    40082: "invalid suite_token",
    40083: "invalid suite_id",
    40084: "invalid permanent_code",
    40085: "invalid suite_ticket",
    40091: "invalid provider_secret",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "secret missing",
    41008: "auth_code missing",
    41021: "suite_id missing",
    41022: "suite_access_token missing",
    41023: "suite_ticket missing",
    41024: "suite_secret missing",
    41025: "permanent_code missing",
    42001: "access_token expired",
    42009: "suite_access_token expired",
    84054: "auth_corpid missing",
}

# Errcodes a dead token of each kind earns: (unknown or invalidated, expired).
_DEAD: dict[str, tuple[int, int]] = {SUITE: (40082, 42009), CORP: (40014, 42001), PROVIDER: (40014, 42001)}


@dataclass
class Suite:
    suite_id: str
    secret: str
    token: str  # callback Token
    encoding_aes_key: str  # 43 characters
    callback_url: str | None = None


@dataclass
class Provider:
    corpid: str
    secret: str


@dataclass
class Ticket:
    value: str
    suite_id: str
    issued_at: float
    expires_at: float


@dataclass
class Token:
    value: str
    kind: str  # suite | corp | provider
    owner: str  # suite_id; "suite_id:corpid"; provider corpid
    issued_at: float
    expires_at: float
    invalidated: bool = False


@dataclass
class AuthCode:
    value: str
    suite_id: str
    corpid: str
    issued_at: float
    expires_at: float
    used: bool = False


@dataclass
class Authorization:
    """One corp's installation of one suite."""

    suite_id: str
    corpid: str
    corp_name: str
    agentid: int
    state: str = ""
    permanent_code: str | None = None  # None until an auth code was exchanged
    cancelled: bool = False

    @property
    def owner(self) -> str:
        return f"{self.suite_id}:{self.corpid}"


@dataclass
class Delivery:
    """One push as sent to the service and what it answered."""

    info_type: str
    suite_id: str  # the suite whose callback URL received it
    message: dict[str, str]  # the plaintext fields
    plaintext: str  # the inner XML
    url: str | None
    params: dict[str, str] = field(default_factory=dict)
    body: str = ""
    variant: str | None = None  # None, bad_signature, tampered, as_suite:<id>, receive_id, redelivery
    status: int | None = None  # None: not sent, or no HTTP answer
    answer: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The service acknowledged it the way WeCom expects: HTTP 200 and ``success``."""
        return self.status == 200 and self.answer.strip() == "success"


@dataclass
class Verification:
    ok: bool
    echostr: str  # the plaintext the service had to give back
    status: int | None
    answer: str
    params: dict[str, str]
    error: str | None = None


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _inner_xml(fields: Mapping[str, str | int]) -> str:
    parts = ["<xml>"]
    for key, value in fields.items():
        text = str(value) if isinstance(value, int) else _cdata(value)
        parts.append(f"<{key}>{text}</{key}>")
    parts.append("</xml>")
    return "".join(parts)


def _signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    signer = WeChatSigner()
    signer.add_data(token, timestamp, nonce, encrypt)
    return str(signer.signature)


def _aes_key(encoding_aes_key: str) -> bytes:
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:
        raise ValueError("EncodingAESKey must be 43 base64 characters (32 bytes)")
    return key


def _encrypt(encoding_aes_key: str, text: str, receive_id: str) -> str:
    return PrpCrypto(_aes_key(encoding_aes_key)).encrypt(text, receive_id).decode("ascii")


def _tamper(encrypt: str) -> str:
    """Flip a bit pattern in the first cipher block. In CBC that garbles only the
    random prefix and flips the top byte of the 4-byte length that follows, so
    the text still decrypts, but the message length and receive id come out wrong."""
    raw = bytearray(base64.b64decode(encrypt))
    raw[0] ^= 0x5A
    return base64.b64encode(bytes(raw)).decode("ascii")


def _numeric(digits: int) -> str:
    return str(secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1))


class FakeWeComSuite(FakePlatform):
    """WeCom's service-provider APIs and instruction pushes, over loopback HTTP."""

    appid_keys = ("suite_id", "corpid")

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.suites: dict[str, Suite] = {}
        self.provider: Provider | None = None
        self.token_life_s: int = 7200
        self.ticket_life_s: int = 1800
        self.ticket_interval_s: float = 600.0
        self.pre_auth_code_life_s: int = 1200
        self.auth_code_life_s: int = 300
        # False: only the latest pushed ticket is accepted (stricter than WeCom).
        self.accept_previous_tickets: bool = True
        self.repeat_issue: str = "same"  # or "new"
        self.push_timeout_s: float = 5.0
        self.ip_list: list[str] = ["198.51.100.30", "198.51.100.31"]
        self._tickets: dict[str, list[Ticket]] = {}
        self._tokens: dict[str, Token] = {}
        self._current: dict[tuple[str, str], Token] = {}
        self._pre_auth_codes: dict[str, tuple[str, float]] = {}  # code -> (suite_id, expires_at)
        self._auth_codes: dict[str, AuthCode] = {}
        self._authorizations: dict[tuple[str, str], Authorization] = {}
        self._deliveries: list[Delivery] = []
        self._pusher: threading.Thread | None = None
        self._pusher_stop = threading.Event()

    # ------------------------------------------------------------------ setup

    def add_suite(self, suite_id: str, secret: str, *, token: str, encoding_aes_key: str,
                  callback_url: str | None = None) -> Suite:
        _aes_key(encoding_aes_key)  # fail early on a malformed key
        suite = Suite(suite_id, secret, token, encoding_aes_key, callback_url)
        with self.lock:
            self.suites[suite_id] = suite
            self._tickets.setdefault(suite_id, [])
        return suite

    def set_callback_url(self, suite_id: str, url: str | None) -> None:
        with self.lock:
            self.suites[suite_id].callback_url = url

    def set_provider(self, corpid: str, secret: str) -> Provider:
        with self.lock:
            self.provider = Provider(corpid, secret)
        return self.provider

    def stop(self) -> None:
        self.stop_ticket_pusher()
        super().stop()

    # ---------------------------------------------------------------- tickets

    def issue_ticket(self, suite_id: str) -> Ticket:
        """A new suite_ticket, valid on the platform from now on, without pushing it
        (as if the push got lost)."""
        with self.lock:
            now = self.now()
            ticket = Ticket(secrets.token_urlsafe(48), suite_id, now, now + self.ticket_life_s)
            self._tickets.setdefault(suite_id, []).append(ticket)
            return ticket

    def current_ticket(self, suite_id: str) -> str | None:
        with self.lock:
            tickets = self._tickets.get(suite_id) or []
            return tickets[-1].value if tickets else None

    def ticket_accepted(self, suite_id: str, value: str) -> bool:
        """Would get_suite_token accept ``value`` for this suite now?"""
        with self.lock:
            tickets = self._tickets.get(suite_id) or []
            now = self.now()
            candidates = tickets if self.accept_previous_tickets else tickets[-1:]
            return any(t.value == value and now < t.expires_at for t in candidates)

    def push_ticket(self, suite_id: str, *, bad_signature: bool = False, tamper: bool = False,
                    as_suite: str | None = None, receive_id: str | None = None) -> Delivery:
        """Issue a ticket and push it (``InfoType=suite_ticket``). With ``as_suite``
        the ticket belongs to that other suite and is sealed with its key, but goes
        to ``suite_id``'s callback URL (a misrouted push)."""
        owner = as_suite or suite_id
        ticket = self.issue_ticket(owner)
        fields: dict[str, str | int] = {"SuiteId": owner, "InfoType": "suite_ticket", "TimeStamp": int(self.now()),
                  "SuiteTicket": ticket.value}
        return self._push(suite_id, fields, bad_signature=bad_signature, tamper=tamper,
                          as_suite=as_suite, receive_id=receive_id)

    def start_ticket_pusher(self, interval_s: float | None = None, suite_ids: Iterable[str] | None = None) -> None:
        """Push a ticket to every suite with a callback URL every ``interval_s`` real
        seconds (default ``ticket_interval_s``), the first one at once."""
        self.stop_ticket_pusher()
        every = self.ticket_interval_s if interval_s is None else interval_s
        chosen = None if suite_ids is None else list(suite_ids)
        self._pusher_stop.clear()

        def run() -> None:
            while not self._pusher_stop.is_set():
                with self.lock:
                    targets = [s.suite_id for s in self.suites.values()
                               if s.callback_url and (chosen is None or s.suite_id in chosen)]
                for suite_id in targets:
                    self.push_ticket(suite_id)
                self._pusher_stop.wait(every)

        self._pusher = threading.Thread(target=run, name="FakeWeComSuite-ticket-pusher", daemon=True)
        self._pusher.start()

    def stop_ticket_pusher(self) -> None:
        pusher = self._pusher
        if pusher is None:
            return
        self._pusher_stop.set()
        pusher.join(timeout=self.push_timeout_s + 1)
        self._pusher = None

    # ---------------------------------------------------------- authorization

    def authorize(self, suite_id: str, corpid: str, *, corp_name: str | None = None, agentid: int = 1000002,
                  state: str = "", push: bool = True) -> Delivery:
        """A corp installs the suite: a single-use auth code is created and pushed
        (``InfoType=create_auth``). With ``push=False`` the code is only in the
        returned Delivery's message, as if it came back on the install redirect."""
        with self.lock:
            auth = self._authorizations.get((suite_id, corpid))
            if auth is None or auth.cancelled:
                auth = Authorization(suite_id, corpid, corp_name or f"Corp {corpid}", agentid, state)
                self._authorizations[(suite_id, corpid)] = auth
            code = self._new_auth_code(suite_id, corpid)
        fields: dict[str, str | int] = {"SuiteId": suite_id, "AuthCode": code.value, "InfoType": "create_auth",
                  "TimeStamp": int(self.now()), "State": state}
        return self._push(suite_id, fields, send=push)

    def change_auth(self, suite_id: str, corpid: str, *, state: str = "") -> Delivery:
        """The corp's admin changed the installation's scope (``InfoType=change_auth``)."""
        fields: dict[str, str | int] = {"SuiteId": suite_id, "InfoType": "change_auth", "TimeStamp": int(self.now()),
                  "AuthCorpId": corpid, "State": state}
        return self._push(suite_id, fields)

    def cancel_auth(self, suite_id: str, corpid: str) -> Delivery:
        """The corp uninstalled the suite: its permanent code is void (40084) and its
        tokens die at once; then ``InfoType=cancel_auth`` is pushed."""
        with self.lock:
            auth = self._authorizations.get((suite_id, corpid))
            if auth is not None:
                auth.cancelled = True
                auth.permanent_code = None
                for token in self._tokens.values():
                    if token.kind == CORP and token.owner == auth.owner:
                        token.invalidated = True
        fields: dict[str, str | int] = {"SuiteId": suite_id, "InfoType": "cancel_auth", "TimeStamp": int(self.now()),
                  "AuthCorpId": corpid}
        return self._push(suite_id, fields)

    def reset_permanent_code(self, suite_id: str, corpid: str) -> Delivery:
        """The provider reset the corp's permanent code: a new auth code is pushed
        (``InfoType=reset_permanent_code``); exchanging it voids the old code."""
        with self.lock:
            if (suite_id, corpid) not in self._authorizations:
                raise KeyError(f"{corpid} has not installed {suite_id}")
            code = self._new_auth_code(suite_id, corpid)
        fields: dict[str, str | int] = {"SuiteId": suite_id, "AuthCode": code.value, "InfoType": "reset_permanent_code",
                  "TimeStamp": int(self.now())}
        return self._push(suite_id, fields)

    def authorization(self, suite_id: str, corpid: str) -> Authorization | None:
        with self.lock:
            return self._authorizations.get((suite_id, corpid))

    def permanent_code(self, suite_id: str, corpid: str) -> str | None:
        auth = self.authorization(suite_id, corpid)
        return auth.permanent_code if auth else None

    def _new_auth_code(self, suite_id: str, corpid: str) -> AuthCode:
        now = self.now()
        code = AuthCode(secrets.token_urlsafe(64), suite_id, corpid, now, now + self.auth_code_life_s)
        self._auth_codes[code.value] = code
        return code

    # ------------------------------------------------------------------ pushing

    def push_message(self, suite_id: str, fields: Mapping[str, str | int], *, bad_signature: bool = False,
                     tamper: bool = False, as_suite: str | None = None, receive_id: str | None = None) -> Delivery:
        """Push any instruction (fields of the inner XML, in order) to the suite's URL."""
        return self._push(suite_id, dict(fields), bad_signature=bad_signature, tamper=tamper,
                          as_suite=as_suite, receive_id=receive_id)

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send a past push again, byte for byte (same nonce, timestamp, signature)."""
        again = Delivery(delivery.info_type, delivery.suite_id, dict(delivery.message), delivery.plaintext,
                         delivery.url, dict(delivery.params), delivery.body, "redelivery")
        return self._send(again)

    @property
    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    def delivered(self, info_type: str | None = None, suite_id: str | None = None, *, ok: bool | None = None) -> int:
        """How many pushes were sent (of ``info_type``, to ``suite_id``, acknowledged or not)."""
        return sum(1 for d in self.deliveries
                   if d.url is not None
                   and (info_type is None or d.info_type == info_type)
                   and (suite_id is None or d.suite_id == suite_id)
                   and (ok is None or d.ok == ok))

    def verify_url(self, suite_id: str, *, receive_id: str | None = None, bad_signature: bool = False) -> Verification:
        """WeCom's URL check: GET ``?msg_signature&timestamp&nonce&echostr`` to the
        suite's callback URL; passes when the answer is the decrypted echostr."""
        with self.lock:
            suite = self.suites[suite_id]
            url = suite.callback_url
            rid = receive_id if receive_id is not None else (self.provider.corpid if self.provider else suite_id)
            plain = _numeric(19)
            echostr = _encrypt(suite.encoding_aes_key, plain, rid)
            timestamp, nonce = str(int(self.now())), _numeric(10)
            token = suite.token if not bad_signature else suite.token + "x"
            params = {"msg_signature": _signature(token, timestamp, nonce, echostr), "timestamp": timestamp,
                      "nonce": nonce, "echostr": echostr}
        if url is None:
            raise ValueError(f"suite {suite_id} has no callback URL")
        try:
            resp = requests.get(url, params=params, timeout=self.push_timeout_s)
        except requests.RequestException as exc:
            return Verification(False, plain, None, "", params, f"{type(exc).__name__}: {exc}")
        return Verification(resp.status_code == 200 and resp.text == plain, plain, resp.status_code, resp.text,
                            params)

    def _push(self, suite_id: str, fields: dict[str, str | int], *, send: bool = True, bad_signature: bool = False,
              tamper: bool = False, as_suite: str | None = None, receive_id: str | None = None) -> Delivery:
        with self.lock:
            target = self.suites[suite_id]
            sealer = self.suites[as_suite] if as_suite else target
            plaintext = _inner_xml(fields)
            rid = receive_id if receive_id is not None else sealer.suite_id
            encrypt = _encrypt(sealer.encoding_aes_key, plaintext, rid)
            variant = None
            if tamper:
                encrypt, variant = _tamper(encrypt), "tampered"
            timestamp, nonce = str(int(self.now())), _numeric(10)
            signature = _signature(sealer.token, timestamp, nonce, encrypt)
            if bad_signature:
                signature, variant = _signature(sealer.token, timestamp, nonce, encrypt + "x"), "bad_signature"
            if as_suite:
                variant = f"as_suite:{as_suite}"
            elif receive_id is not None:
                variant = "receive_id"
            body = (f"<xml><ToUserName>{_cdata(sealer.suite_id)}</ToUserName>"
                    f"<Encrypt>{_cdata(encrypt)}</Encrypt><AgentID>{_cdata('')}</AgentID></xml>")
            delivery = Delivery(str(fields.get("InfoType", "")), suite_id, {k: str(v) for k, v in fields.items()},
                                plaintext, target.callback_url if send else None,
                                {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}, body, variant)
        if not send:
            with self.lock:
                self._deliveries.append(delivery)
            return delivery
        if delivery.url is None:
            raise ValueError(f"suite {suite_id} has no callback URL")
        return self._send(delivery)

    def _send(self, delivery: Delivery) -> Delivery:
        # Outside the lock: the service may call this fake while it handles the push.
        assert delivery.url is not None
        try:
            resp = requests.post(delivery.url, params=delivery.params, data=delivery.body.encode("utf-8"),
                                 headers={"Content-Type": "text/xml"}, timeout=self.push_timeout_s)
            delivery.status, delivery.answer = resp.status_code, resp.text
        except requests.RequestException as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self._deliveries.append(delivery)
        return delivery

    # ---------------------------------------------------------- token helpers

    def token_status(self, token: str, at: float | None = None) -> int:
        """The errcode an API would give ``token`` now (or at ``at``): 0 when alive,
        else 40082/42009 for suite tokens, 40014/42001 for corp and provider ones."""
        with self.lock:
            info = self._tokens.get(token)
            if info is None:
                return 40014
            bad, expired = _DEAD[info.kind]
            if info.invalidated:
                return bad
            return expired if (self.now() if at is None else at) >= info.expires_at else 0

    def is_valid(self, token: str, at: float | None = None) -> bool:
        return self.token_status(token, at) == 0

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def issued(self, kind: str | None = None, owner: str | None = None) -> list[str]:
        """Tokens issued so far, oldest first; corp owners are ``suite_id:corpid``."""
        with self.lock:
            return [t.value for t in self._tokens.values()
                    if (kind is None or t.kind == kind) and (owner is None or t.owner == owner)]

    def current_token(self, kind: str, owner: str) -> str | None:
        with self.lock:
            token = self._current.get((kind, owner))
            return token.value if token else None

    def invalidate(self, token: str) -> None:
        """Kill a token early (WeCom may do so): APIs refuse it, the token endpoint issues a new one."""
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.invalidated = True

    # --------------------------------------------------------------- internals

    def _err(self, errcode: int) -> Reply:
        hint = f"{int(self.now())}_{secrets.randbelow(100)}_{secrets.token_hex(16)}"
        return 200, {"errcode": errcode,
                     "errmsg": f"{_ERRMSG.get(errcode, 'error')}, hint: [{hint}], more info at "
                               f"https://open.work.weixin.qq.com/devtool/query?e={errcode}"}

    def _token_for(self, kind: str, owner: str, *, fresh: bool = False) -> tuple[Token, int]:
        """The token to hand out and its expires_in, per ``repeat_issue``."""
        now = self.now()
        current = self._current.get((kind, owner))
        if (not fresh and self.repeat_issue == "same" and current is not None and not current.invalidated
                and current.expires_at - now >= 1):
            return current, int(current.expires_at - now)
        token = Token(secrets.token_urlsafe(96), kind, owner, now, now + self.token_life_s)
        self._tokens[token.value] = token
        self._current[(kind, owner)] = token
        return token, self.token_life_s

    def _suite_of(self, req: Request) -> tuple[str | None, Reply | None]:
        """The suite a ``suite_access_token`` query parameter belongs to, or the error reply."""
        value = req.query.get("suite_access_token", "")
        if not value:
            return None, self._err(41022)
        info = self._tokens.get(value)
        if info is None or info.kind != SUITE:
            return None, self._err(40082)
        status = self.token_status(value)
        if status:
            return None, self._err(status)
        return info.owner, None

    def call_fields(self, request: Request) -> dict[str, Any]:
        body = request.json_object()
        if request.path == SUITE_TOKEN_PATH:
            return {"appid": body.get("suite_id") or None, "suite_id": body.get("suite_id") or None,
                    "suite_ticket": body.get("suite_ticket") or None}
        if request.path == PROVIDER_TOKEN_PATH:
            return {"appid": body.get("corpid") or None, "corpid": body.get("corpid") or None}
        if request.path in (PRE_AUTH_CODE_PATH, PERMANENT_CODE_PATH, CORP_TOKEN_PATH):
            info = self._tokens.get(request.query.get("suite_access_token", ""))
            suite_id = info.owner if info is not None and info.kind == SUITE else None
            return {"appid": suite_id, "suite_id": suite_id, "auth_corpid": body.get("auth_corpid") or None}
        if request.path == API_PATH:
            info = self._tokens.get(request.query.get("access_token", ""))
            return {"appid": info.owner if info else None, "token": request.query.get("access_token") or None}
        return {"appid": self.extract_appid(request)}

    # ---------------------------------------------------------------- handlers

    @route("POST", SUITE_TOKEN_PATH)
    def _get_suite_token(self, req: Request) -> Reply:
        body = req.json_object()
        suite_id, secret, ticket = (str(body.get(k) or "") for k in ("suite_id", "suite_secret", "suite_ticket"))
        if not suite_id:
            return self._err(41021)
        if not secret:
            return self._err(41024)
        if not ticket:
            return self._err(41023)
        suite = self.suites.get(suite_id)
        if suite is None:
            return self._err(40083)
        if secret != suite.secret:
            return self._err(40080)
        if not self.ticket_accepted(suite_id, ticket):
            return self._err(40085)
        token, expires_in = self._token_for(SUITE, suite_id)
        req.note(token=token.value)
        return 200, {"errcode": 0, "errmsg": "ok", "suite_access_token": token.value, "expires_in": expires_in}

    @route("GET", PRE_AUTH_CODE_PATH)
    def _get_pre_auth_code(self, req: Request) -> Reply:
        suite_id, error = self._suite_of(req)
        if error is not None or suite_id is None:
            return error or self._err(40082)
        code = secrets.token_urlsafe(48)
        self._pre_auth_codes[code] = (suite_id, self.now() + self.pre_auth_code_life_s)
        return 200, {"errcode": 0, "errmsg": "ok", "pre_auth_code": code, "expires_in": self.pre_auth_code_life_s}

    @route("POST", PERMANENT_CODE_PATH)
    def _get_permanent_code(self, req: Request) -> Reply:
        suite_id, error = self._suite_of(req)
        if error is not None or suite_id is None:
            return error or self._err(40082)
        value = str(req.json_object().get("auth_code") or "")
        if not value:
            return self._err(41008)
        code = self._auth_codes.get(value)
        if code is None or code.used or code.suite_id != suite_id or self.now() >= code.expires_at:
            return self._err(40078)  # unknown, consumed, another suite's, or past its life
        code.used = True
        auth = self._authorizations[(suite_id, code.corpid)]
        auth.permanent_code = secrets.token_urlsafe(32)
        auth.cancelled = False
        corp_token, expires_in = self._token_for(CORP, auth.owner, fresh=True)
        req.note(auth_corpid=auth.corpid, token=corp_token.value)
        return 200, {
            "errcode": 0,
            "errmsg": "ok",
            "access_token": corp_token.value,
            "expires_in": expires_in,
            "permanent_code": auth.permanent_code,
            "auth_corp_info": {
                "corpid": auth.corpid,
                "corp_name": auth.corp_name,
                "corp_type": "verified",
                "corp_square_logo_url": "https://p.qlogo.cn/bizmail/fake/0",
                "corp_user_max": 200,
                "corp_full_name": auth.corp_name,
                "subject_type": 1,
                "corp_scale": "1-50人",
                "corp_industry": "IT服务",
                "corp_sub_industry": "计算机软件/硬件/信息服务",
            },
            "auth_info": {"agent": [{
                "agentid": auth.agentid,
                "name": f"App of {suite_id}",
                "square_logo_url": "https://p.qlogo.cn/bizmail/fake/1",
                "privilege": {"level": 1, "allow_party": [1], "allow_user": [], "allow_tag": [],
                              "extra_party": [], "extra_user": [], "extra_tag": []},
            }]},
            "auth_user_info": {"userid": "admin", "open_userid": f"wo{secrets.token_hex(8)}", "name": "Admin",
                               "avatar": "https://p.qlogo.cn/bizmail/fake/2"},
            "state": auth.state,
        }

    @route("POST", CORP_TOKEN_PATH)
    def _get_corp_token(self, req: Request) -> Reply:
        suite_id, error = self._suite_of(req)
        if error is not None or suite_id is None:
            return error or self._err(40082)
        body = req.json_object()
        corpid, permanent = str(body.get("auth_corpid") or ""), str(body.get("permanent_code") or "")
        if not corpid:
            return self._err(84054)
        if not permanent:
            return self._err(41025)
        auth = self._authorizations.get((suite_id, corpid))
        if auth is None or auth.cancelled or auth.permanent_code is None or permanent != auth.permanent_code:
            return self._err(40084)
        token, expires_in = self._token_for(CORP, auth.owner)
        req.note(token=token.value)
        return 200, {"errcode": 0, "errmsg": "ok", "access_token": token.value, "expires_in": expires_in}

    @route("POST", PROVIDER_TOKEN_PATH)
    def _get_provider_token(self, req: Request) -> Reply:
        body = req.json_object()
        corpid, secret = str(body.get("corpid") or ""), str(body.get("provider_secret") or "")
        if not corpid:
            return self._err(41002)
        if not secret:
            return self._err(41004)
        if self.provider is None or corpid != self.provider.corpid:
            return self._err(40013)
        if secret != self.provider.secret:
            return self._err(40091)
        token, expires_in = self._token_for(PROVIDER, corpid)
        req.note(token=token.value)
        return 200, {"errcode": 0, "errmsg": "ok", "provider_access_token": token.value, "expires_in": expires_in}

    @route("GET", API_PATH)
    def _api_domain_ip(self, req: Request) -> Reply:
        token = req.query.get("access_token", "")
        if not token:
            return self._err(41001)
        info = self._tokens.get(token)
        if info is None or info.kind != CORP:
            return self._err(40014)
        status = self.token_status(token)
        if status:
            return self._err(status)
        return 200, {"errcode": 0, "errmsg": "ok", "ip_list": list(self.ip_list)}


# ------------------------------------------------------------------ standalone


def _parse_suite(spec: str) -> tuple[str, str, str, str, str | None]:
    # The callback URL contains ":" itself, so split off the first four fields only.
    parts = spec.split(":", 4)
    if len(parts) < 4 or not all(parts[:4]) or len(parts[3]) != 43:
        raise argparse.ArgumentTypeError(f"expected SUITE_ID:SECRET:TOKEN:AESKEY43[:CALLBACK_URL], got {spec!r}")
    return parts[0], parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake WeCom third-party platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--suite", type=_parse_suite, action="append", default=[],
                        metavar="SUITE_ID:SECRET:TOKEN:AESKEY[:CALLBACK_URL]")
    parser.add_argument("--provider", default=None, metavar="CORPID:SECRET")
    parser.add_argument("--push-every", type=float, default=0.0, help="push tickets every N s (0: never)")
    args = parser.parse_args(argv)

    fake = FakeWeComSuite(port=args.port)
    for suite_id, secret, token, aes_key, url in args.suite:
        fake.add_suite(suite_id, secret, token=token, encoding_aes_key=aes_key, callback_url=url)
    if args.provider:
        corpid, _, secret = args.provider.partition(":")
        fake.set_provider(corpid, secret)
    if args.push_every > 0:
        fake.start_ticket_pusher(args.push_every)
    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
