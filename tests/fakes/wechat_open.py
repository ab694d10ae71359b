"""Fake WeChat Open Platform ("third-party platform", component) (platform-facts §7.1, §7.2).

The fake plays both sides of the platform: it PUSHES encrypted callbacks to the service's
authorization-event URL, and it ANSWERS the component token APIs the service then calls.

Pushed (POST <callback_url>?signature&timestamp&nonce&encrypt_type=aes&msg_signature):
  component_verify_ticket   push_ticket(); optional background pusher; api_start_push_ticket
  authorized                authorize(): a fresh authorization code (single use)
  updateauthorized          update_authorization(): a fresh code, new func_info
  unauthorized              unauthorize(): refresh token and authorizer tokens die

Endpoints:
  POST /cgi-bin/component/api_component_token      ticket must be one the fake pushed
  POST /cgi-bin/component/api_create_preauthcode   pre_auth_code, 1800 s
  POST /cgi-bin/component/api_query_auth           code -> authorization_info (single use)
  POST /cgi-bin/component/api_authorizer_token     refresh token -> authorizer token
  POST /cgi-bin/component/api_start_push_ticket    answers ok, pushes a ticket soon after
  GET  /cgi-bin/ticket/getticket                   jsapi / wx_card ticket for authorizer tokens
  GET  /cgi-bin/get_api_domain_ip                  business-API stand-in checking an authorizer token

Faithful (checked against wechatpy 1.8.18 ``wechatpy/component.py`` and
``wechatpy/crypto``, WxJava ``weixin-java-open`` ``WxOpenComponentServiceImpl`` and
``WxMpErrorMsgEnum``, and the Open Platform pages quoted by them):
- Crypto is wechatpy's own ``WeChatCrypto`` (AES-256-CBC, 32-byte PKCS#7, receive id =
  component appid); the body is ``<xml><AppId/><Encrypt/></xml>``; the query carries
  ``signature`` = sha1(sorted(token, timestamp, nonce)) and ``msg_signature`` over the
  ciphertext too; the decrypted XML has AppId, CreateTime (the fake clock), InfoType and
  the documented fields; the service must answer the bare text ``success``.
- A ticket is valid 12 h from its push and earlier unexpired tickets stay accepted (the
  docs tell platforms to keep "the most recent usable" ticket; ``only_latest_ticket``
  turns that off). Unknown ticket: 61006; a pushed but expired one: 61005.
- Tokens live 7200 s; expired: 42001; unknown, superseded or killed: 40001.
- Authorization codes are single use (61009 on reuse, 61010 once expired).
- A new exchange of an authorization code (re-authorization) kills the previous refresh
  token ("用户重新授权后，之前的刷新令牌会失效"); a dead refresh token answers 61023.
- Component APIs accept the token as ``component_access_token`` (old docs, wechatpy,
  WxJava) or ``access_token`` (current docs) in the query.

Simplified or assumed (no source states them):
- Authorization code life: 600 s (``auth_code_expires_in``); AuthorizationCodeExpiredTime
  is sent as the absolute Unix time CreateTime + that life.
- A new component / authorizer token leaves the previous ones working for ``grace_s``
  (300 s, as for Official Account tokens), then they answer 40001.
- Refresh-token rotation is off by default (the platform usually hands the same one back);
  ``rotate_refresh_tokens = True`` makes every api_authorizer_token answer carry a new one
  and refuse the old one with 61023 (after ``refresh_grace_s``, default 0).
- Tickets pushed with a fault (bad signature, tampered ciphertext, foreign key) carry a
  ticket the platform never issued, so api_component_token refuses it with 61006.
- No daily quotas, no IP whitelist, no retry of unanswered pushes (``redeliver()`` sends
  an old push again byte for byte when a test wants one).

Run standalone:
``python -m tests.fakes.wechat_open --component APPID:SECRET:TOKEN:AESKEY:CALLBACK_URL``.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import xmltodict  # type: ignore[import-untyped]
from wechatpy.crypto import WeChatCrypto  # type: ignore[import-untyped]
from wechatpy.utils import WeChatSigner  # type: ignore[import-untyped]

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = [
    "Authorization",
    "Component",
    "FakeWeChatOpen",
    "Push",
    "Token",
    "VerifyTicket",
    "main",
]

COMPONENT_TOKEN_PATH = "/cgi-bin/component/api_component_token"
PREAUTHCODE_PATH = "/cgi-bin/component/api_create_preauthcode"
QUERY_AUTH_PATH = "/cgi-bin/component/api_query_auth"
AUTHORIZER_TOKEN_PATH = "/cgi-bin/component/api_authorizer_token"
START_PUSH_TICKET_PATH = "/cgi-bin/component/api_start_push_ticket"
TICKET_PATH = "/cgi-bin/ticket/getticket"
API_PATH = "/cgi-bin/get_api_domain_ip"

COMPONENT = "component"
AUTHORIZER = "authorizer"
TICKET_TYPES = ("jsapi", "wx_card")

#: Faults a push can carry: what a forger or a broken network would send.
BAD_SIGNATURE = "bad_signature"  # msg_signature / signature do not match
TAMPERED = "tampered"  # ciphertext altered, then signed again: decryption must fail
PUSH_FAULTS = (BAD_SIGNATURE, TAMPERED)

DEFAULT_FUNC_INFO = (1, 15, 4, 7, 2, 3, 11, 6, 5, 8, 13, 9, 10, 12, 22, 23, 26, 27, 33)

_ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40013: "invalid appid",
    40097: "invalid args",
    40125: "invalid appsecret",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    47001: "data format error",
    61005: "component ticket is expired",
    61006: "component ticket is invalid",
    61009: "code is invalid",
    61010: "code is expired",
    61011: "invalid component",
    61023: "refresh_token is invalid",
}


def _rid() -> str:
    return f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _message_xml(fields: Mapping[str, str | int]) -> str:
    parts = []
    for key, value in fields.items():
        text = str(value) if isinstance(value, int) else _cdata(value)
        parts.append(f"<{key}>{text}</{key}>")
    return "<xml>" + "".join(parts) + "</xml>"


def _sha1_sorted(*parts: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


@dataclass
class Component:
    """One registered ISV platform app with its callback settings."""

    appid: str
    secret: str
    token: str  # callback Token
    aes_key: str  # EncodingAESKey, 43 characters
    callback_url: str | None = None  # http://127.0.0.1:<port>/callback/<kind>/<id>

    @property
    def crypto(self) -> Any:
        return WeChatCrypto(self.token, self.aes_key, self.appid)


@dataclass
class VerifyTicket:
    value: str
    component_appid: str
    issued_at: float
    expires_at: float


@dataclass
class Token:
    value: str
    kind: str  # COMPONENT or AUTHORIZER
    component_appid: str
    authorizer_appid: str | None
    issued_at: float
    expires_at: float  # natural expiry
    valid_until: float  # lowered when superseded or killed
    rejected: bool = False


@dataclass
class AuthCode:
    value: str
    component_appid: str
    authorizer_appid: str
    pre_auth_code: str
    func_info: list[int]
    expires_at: float
    used: bool = False


@dataclass
class Authorization:
    """One account (Official Account / Mini Program) authorizing one component."""

    component_appid: str
    authorizer_appid: str
    func_info: list[int]
    active: bool = True
    refresh_token: str | None = None  # handed over by api_query_auth
    # retired refresh tokens -> instant they stop working (rotation grace)
    retired_refresh: dict[str, float] = field(default_factory=dict)


@dataclass
class Push:
    """One callback POST the fake made (or tried to make), with the service's answer."""

    component_appid: str
    info_type: str
    url: str
    query: dict[str, str]
    body: bytes
    message: dict[str, str]  # the decrypted fields, as the service should see them
    plaintext: str  # the decrypted XML
    fault: str | None = None
    signed_by: str | None = None  # another component whose key was used
    redelivery: bool = False
    sent_at: float = 0.0
    status: int | None = None  # None: not sent, or the connection failed
    text: str | None = None
    error: str | None = None

    @property
    def answered_success(self) -> bool:
        return self.status == 200 and (self.text or "").strip() == "success"


class FakeWeChatOpen(FakePlatform):
    """In-memory WeChat Open Platform: pushes callbacks, answers the component APIs."""

    appid_keys = ("component_appid", "appid")

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.components: dict[str, Component] = {}
        # Knobs, per instance so tests can shrink or change them.
        self.token_expires_in: int = 7200
        self.ticket_life_s: float = 12 * 3600
        self.only_latest_ticket: bool = False  # True: a newer push retires older tickets
        self.grace_s: float = 300  # superseded tokens keep working this long
        self.pre_auth_code_expires_in: int = 1800
        self.auth_code_expires_in: int = 600
        self.rotate_refresh_tokens: bool = False
        self.refresh_grace_s: float = 0  # rotated-out refresh token works this long
        self.jsapi_ticket_expires_in: int = 7200
        self.start_push_delay_s: float = 0.05  # api_start_push_ticket pushes after this
        self.push_timeout_s: float = 5.0
        self.ip_list: list[str] = ["198.51.100.10", "198.51.100.11"]
        self.pushes: list[Push] = []
        self._tickets: dict[str, list[VerifyTicket]] = {}
        self._tokens: dict[str, Token] = {}
        self._pre_auth_codes: dict[str, tuple[str, float]] = {}  # code -> (component, expires_at)
        self._auth_codes: dict[str, AuthCode] = {}
        self._authorizations: dict[tuple[str, str], Authorization] = {}
        self._jsapi_tickets: dict[tuple[str, str], tuple[str, float]] = {}
        self._pusher: threading.Thread | None = None
        self._pusher_stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------------ setup

    def add_component(
        self,
        appid: str,
        secret: str,
        token: str,
        aes_key: str,
        callback_url: str | None = None,
    ) -> Component:
        if len(aes_key) != 43:
            raise ValueError("EncodingAESKey must be 43 characters")
        component = Component(appid, secret, token, aes_key, callback_url)
        with self.lock:
            self.components[appid] = component
        return component

    def add_authorization(self, component_appid: str, authorizer_appid: str,
                          func_info: list[int] | None = None) -> str:
        """An account that authorized the component earlier, without a push or a code
        (for seeding many accounts at once); returns its refresh token."""
        with self.lock:
            auth = Authorization(component_appid, authorizer_appid, list(func_info or DEFAULT_FUNC_INFO),
                                 refresh_token="refreshtoken@@@" + secrets.token_urlsafe(32))
            self._authorizations[(component_appid, authorizer_appid)] = auth
            return str(auth.refresh_token)

    def set_callback_url(self, appid: str, url: str | None) -> None:
        with self.lock:
            self.components[appid].callback_url = url

    def stop(self) -> None:
        self.stop_pushing()
        super().stop()
        for worker in list(self._workers):
            worker.join(timeout=self.push_timeout_s + 1)
        self._workers.clear()

    # ---------------------------------------------------------------- pushing

    def push_ticket(
        self,
        component_appid: str,
        *,
        fault: str | None = None,
        signed_by: str | None = None,
    ) -> Push:
        """Issue a new component_verify_ticket and push it. With a fault or a foreign key
        the message carries a ticket the platform never issued."""
        with self.lock:
            component = self.components[component_appid]
            now = self.now()
            forged = fault is not None or signed_by is not None
            value = self._new_ticket_value()
            if not forged:
                ticket = VerifyTicket(value, component.appid, now, now + self.ticket_life_s)
                self._tickets.setdefault(component.appid, []).append(ticket)
            fields: dict[str, str | int] = {
                "AppId": component.appid,
                "CreateTime": int(now),
                "InfoType": "component_verify_ticket",
                "ComponentVerifyTicket": value,
            }
            push = self._build_push(component, fields, fault=fault, signed_by=signed_by)
        return self._deliver(push)

    def authorize(
        self,
        component_appid: str,
        authorizer_appid: str,
        *,
        func_info: list[int] | None = None,
        deliver: bool = True,
        fault: str | None = None,
        signed_by: str | None = None,
    ) -> Push:
        """An account authorizes the component: a fresh authorization code is created and
        pushed as ``authorized``. ``deliver=False`` builds the push without sending it (the
        code then reaches the service only through the redirect, ``push.message``)."""
        return self._authorization_event(
            "authorized", component_appid, authorizer_appid, func_info, deliver, fault, signed_by
        )

    def update_authorization(
        self,
        component_appid: str,
        authorizer_appid: str,
        *,
        func_info: list[int] | None = None,
        deliver: bool = True,
        fault: str | None = None,
        signed_by: str | None = None,
    ) -> Push:
        """The account changes the permissions it granted: ``updateauthorized`` with a new code."""
        return self._authorization_event(
            "updateauthorized", component_appid, authorizer_appid, func_info, deliver, fault, signed_by
        )

    def unauthorize(
        self,
        component_appid: str,
        authorizer_appid: str,
        *,
        deliver: bool = True,
        fault: str | None = None,
        signed_by: str | None = None,
    ) -> Push:
        """The account withdraws its authorization: its refresh token and authorizer tokens
        stop working at once, and ``unauthorized`` is pushed."""
        with self.lock:
            component = self.components[component_appid]
            auth = self._authorizations.get((component_appid, authorizer_appid))
            if auth is not None:
                auth.active = False
                now = self.now()
                if auth.refresh_token is not None:
                    auth.retired_refresh[auth.refresh_token] = now
                    auth.refresh_token = None
                for token in self._tokens.values():
                    if token.kind == AUTHORIZER and token.authorizer_appid == authorizer_appid:
                        if token.component_appid == component_appid:
                            token.valid_until = min(token.valid_until, now)
            fields: dict[str, str | int] = {
                "AppId": component.appid,
                "CreateTime": int(self.now()),
                "InfoType": "unauthorized",
                "AuthorizerAppid": authorizer_appid,
            }
            push = self._build_push(component, fields, fault=fault, signed_by=signed_by)
        return self._deliver(push) if deliver else push

    def push_message(
        self,
        component_appid: str,
        fields: Mapping[str, str | int],
        *,
        fault: str | None = None,
        signed_by: str | None = None,
    ) -> Push:
        """Encrypt, sign and POST an arbitrary message (fields in order, AppId/CreateTime
        not added): for InfoTypes the fake does not model."""
        with self.lock:
            component = self.components[component_appid]
            push = self._build_push(component, dict(fields), fault=fault, signed_by=signed_by)
        return self._deliver(push)

    def redeliver(self, push: Push) -> Push:
        """Send an earlier push again, byte for byte (same nonce, timestamp, signatures)."""
        again = Push(
            component_appid=push.component_appid,
            info_type=push.info_type,
            url=push.url,
            query=dict(push.query),
            body=push.body,
            message=dict(push.message),
            plaintext=push.plaintext,
            fault=push.fault,
            signed_by=push.signed_by,
            redelivery=True,
        )
        return self._deliver(again)

    def start_pushing(self, interval_s: float, component_appid: str | None = None) -> None:
        """Push a fresh ticket every `interval_s` seconds (wall time) to every component
        with a callback URL, or to one. The platform does this every 600 s."""
        self.stop_pushing()
        self._pusher_stop.clear()

        def loop() -> None:
            while not self._pusher_stop.wait(interval_s):
                with self.lock:
                    targets = [
                        c.appid
                        for c in self.components.values()
                        if c.callback_url and (component_appid is None or c.appid == component_appid)
                    ]
                for appid in targets:
                    if self._pusher_stop.is_set():
                        return
                    self.push_ticket(appid)

        self._pusher = threading.Thread(target=loop, name="FakeWeChatOpen-pusher", daemon=True)
        self._pusher.start()

    def stop_pushing(self) -> None:
        pusher = self._pusher
        if pusher is None:
            return
        self._pusher_stop.set()
        pusher.join(timeout=self.push_timeout_s + 1)
        self._pusher = None

    def pushes_of(self, info_type: str | None = None, component_appid: str | None = None) -> list[Push]:
        with self.lock:
            return [
                p
                for p in self.pushes
                if (info_type is None or p.info_type == info_type)
                and (component_appid is None or p.component_appid == component_appid)
            ]

    # ---------------------------------------------------------- test helpers

    def current_ticket(self, component_appid: str) -> str | None:
        """The latest ticket the platform pushed (unexpired), as the service should hold it."""
        with self.lock:
            live = [t for t in self._tickets.get(component_appid, []) if t.expires_at > self.now()]
            return live[-1].value if live else None

    def tickets(self, component_appid: str) -> list[VerifyTicket]:
        with self.lock:
            return list(self._tickets.get(component_appid, []))

    def token_status(self, token: str, kind: str | None = None) -> int:
        """The errcode an API would give `token` now: 0, 40001 or 42001."""
        with self.lock:
            info = self._tokens.get(token)
            now = self.now()
            if info is None or (kind is not None and info.kind != kind):
                return 40001
            if now >= info.expires_at:
                return 42001
            if info.rejected or now >= info.valid_until:
                return 40001
            return 0

    def is_valid(self, token: str, kind: str | None = None) -> bool:
        return self.token_status(token, kind) == 0

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def invalidate(self, token: str) -> None:
        """Make every API reject `token` with 40001 from now on."""
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.rejected = True

    def issued(
        self,
        kind: str | None = None,
        component_appid: str | None = None,
        authorizer_appid: str | None = None,
    ) -> list[str]:
        """Tokens issued so far, oldest first."""
        with self.lock:
            return [
                t.value
                for t in self._tokens.values()
                if (kind is None or t.kind == kind)
                and (component_appid is None or t.component_appid == component_appid)
                and (authorizer_appid is None or t.authorizer_appid == authorizer_appid)
            ]

    def authorization(self, component_appid: str, authorizer_appid: str) -> Authorization | None:
        with self.lock:
            return self._authorizations.get((component_appid, authorizer_appid))

    def refresh_token(self, component_appid: str, authorizer_appid: str) -> str | None:
        """The refresh token the platform currently accepts for this account."""
        with self.lock:
            auth = self._authorizations.get((component_appid, authorizer_appid))
            return auth.refresh_token if auth is not None and auth.active else None

    def auth_code(self, code: str) -> AuthCode | None:
        with self.lock:
            return self._auth_codes.get(code)

    # ------------------------------------------------------------- internals

    def _err(self, errcode: int, errmsg: str | None = None) -> Reply:
        text = errmsg if errmsg is not None else _ERRMSG.get(errcode, "error")
        return 200, {"errcode": errcode, "errmsg": f"{text} rid: {_rid()}"}

    def _new_ticket_value(self) -> str:
        return "ticket@@@" + secrets.token_urlsafe(64)

    def _new_token_value(self) -> str:
        while True:
            value = "83_" + secrets.token_urlsafe(100)
            if value not in self._tokens:
                return value

    def _issue(self, kind: str, component_appid: str, authorizer_appid: str | None) -> Token:
        now = self.now()
        # Earlier tokens of the same holder keep working for min(grace, own remaining life).
        for old in self._tokens.values():
            if (old.kind, old.component_appid, old.authorizer_appid) == (kind, component_appid, authorizer_appid):
                old.valid_until = min(old.valid_until, now + self.grace_s)
        token = Token(
            value=self._new_token_value(),
            kind=kind,
            component_appid=component_appid,
            authorizer_appid=authorizer_appid,
            issued_at=now,
            expires_at=now + self.token_expires_in,
            valid_until=now + self.token_expires_in,
        )
        self._tokens[token.value] = token
        return token

    def _authorization_event(
        self,
        info_type: str,
        component_appid: str,
        authorizer_appid: str,
        func_info: list[int] | None,
        deliver: bool,
        fault: str | None,
        signed_by: str | None,
    ) -> Push:
        with self.lock:
            component = self.components[component_appid]
            now = self.now()
            key = (component_appid, authorizer_appid)
            auth = self._authorizations.get(key)
            if func_info is not None:
                funcs = list(func_info)
            else:
                funcs = list(auth.func_info) if auth is not None else list(DEFAULT_FUNC_INFO)
            if auth is None:
                auth = Authorization(component_appid, authorizer_appid, funcs)
                self._authorizations[key] = auth
            auth.active = True
            auth.func_info = funcs
            pre_auth_code = "preauthcode@@@" + secrets.token_urlsafe(32)
            code = AuthCode(
                value="queryauthcode@@@" + secrets.token_urlsafe(48),
                component_appid=component_appid,
                authorizer_appid=authorizer_appid,
                pre_auth_code=pre_auth_code,
                func_info=funcs,
                expires_at=now + self.auth_code_expires_in,
            )
            forged = fault is not None or signed_by is not None
            if not forged:
                self._auth_codes[code.value] = code
            fields: dict[str, str | int] = {
                "AppId": component.appid,
                "CreateTime": int(now),
                "InfoType": info_type,
                "AuthorizerAppid": authorizer_appid,
                "AuthorizationCode": code.value,
                "AuthorizationCodeExpiredTime": int(now) + self.auth_code_expires_in,
                "PreAuthCode": pre_auth_code,
            }
            push = self._build_push(component, fields, fault=fault, signed_by=signed_by)
        return self._deliver(push) if deliver else push

    def _build_push(
        self,
        component: Component,
        fields: Mapping[str, str | int],
        *,
        fault: str | None,
        signed_by: str | None,
    ) -> Push:
        if fault is not None and fault not in PUSH_FAULTS:
            raise ValueError(f"unknown push fault {fault!r}; expected one of {PUSH_FAULTS}")
        signer = self.components[signed_by] if signed_by is not None else component
        plaintext = _message_xml(fields)
        timestamp = str(int(self.now()))
        nonce = str(secrets.randbelow(10**10))
        # wechatpy builds a reply envelope; its Encrypt is what the platform sends.
        envelope = xmltodict.parse(signer.crypto.encrypt_message(plaintext, nonce, timestamp))["xml"]
        encrypt = str(envelope["Encrypt"])
        if fault == TAMPERED:
            # Flip a bit of the first ciphertext block: CBC carries it into the 4-byte
            # length field of the plaintext, so the length and the receive id no longer fit.
            raw = bytearray(base64.b64decode(encrypt))
            raw[0] ^= 0x40
            encrypt = base64.b64encode(bytes(raw)).decode("ascii")
        msg_signature = _sha1_sorted(signer.token, timestamp, nonce, encrypt)
        signature = _sha1_sorted(signer.token, timestamp, nonce)
        if fault == BAD_SIGNATURE:
            msg_signature = _sha1_sorted("forged", timestamp, nonce, encrypt)
            signature = _sha1_sorted("forged", timestamp, nonce)
        body = "<xml><AppId>" + _cdata(component.appid) + "</AppId><Encrypt>" + _cdata(encrypt) + "</Encrypt></xml>"
        query = {
            "signature": signature,
            "timestamp": timestamp,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": msg_signature,
        }
        return Push(
            component_appid=component.appid,
            info_type=str(fields.get("InfoType", "")),
            url=component.callback_url or "",
            query=query,
            body=body.encode("utf-8"),
            message={key: str(value) for key, value in fields.items()},
            plaintext=plaintext,
            fault=fault,
            signed_by=signed_by,
        )

    def _deliver(self, push: Push) -> Push:
        """POST the push outside the lock: the service may call back into the fake
        (api_query_auth on ``authorized``) before it answers."""
        push.sent_at = self.now()
        with self.lock:
            self.pushes.append(push)
        if not push.url:
            push.error = "no callback URL set for this component"
            return push
        try:
            # A fresh connection per push: pushes come from several threads at once.
            resp = requests.post(
                push.url,
                params=push.query,
                data=push.body,
                headers={"Content-Type": "text/xml; charset=utf-8"},
                timeout=self.push_timeout_s,
            )
        except requests.RequestException as exc:
            push.error = f"{type(exc).__name__}: {exc}"
            return push
        push.status = resp.status_code
        push.text = resp.text
        return push

    def _component_token(self, req: Request) -> Token | Reply:
        """The component token in the query, or the error reply."""
        token = req.query.get("component_access_token") or req.query.get("access_token")
        if not token:
            return self._err(41001)
        status = self.token_status(token, COMPONENT)
        if status:
            return self._err(status)
        info = self._tokens[token]
        body_appid = req.json_object().get("component_appid")
        if body_appid not in (None, "", info.component_appid):
            return self._err(40013)  # component_appid in the body is not the token's
        return info

    def call_fields(self, request: Request) -> dict[str, Any]:
        body = request.json_object()
        fields: dict[str, Any] = {
            "appid": body.get("component_appid") or None,
            "component_appid": body.get("component_appid") or None,
        }
        token = request.query.get("component_access_token") or request.query.get("access_token")
        if token:
            fields["token"] = token
            info = self._tokens.get(token)
            if info is not None:
                fields["component_appid"] = info.component_appid
                fields["appid"] = info.component_appid
                if info.authorizer_appid is not None:
                    fields["authorizer_appid"] = info.authorizer_appid
        if body.get("authorizer_appid"):
            fields["authorizer_appid"] = body["authorizer_appid"]
        if request.path == TICKET_PATH:
            fields["type"] = request.query.get("type")
        return fields

    # --------------------------------------------------------------- handlers

    @route("POST", COMPONENT_TOKEN_PATH)
    def _api_component_token(self, req: Request) -> Reply:
        params = req.json_object()
        appid = params.get("component_appid")
        secret = params.get("component_appsecret")
        ticket = params.get("component_verify_ticket")
        if not appid:
            return self._err(41002)
        component = self.components.get(str(appid))
        if component is None:
            return self._err(61011)
        if not secret:
            return self._err(41004)
        if secret != component.secret:
            return self._err(40125)
        now = self.now()
        known = {t.value: t for t in self._tickets.get(component.appid, [])}
        found = known.get(str(ticket)) if ticket else None
        if found is None:
            return self._err(61006)
        if found.expires_at <= now:
            return self._err(61005)
        if self.only_latest_ticket and found is not self._tickets[component.appid][-1]:
            return self._err(61006)
        token = self._issue(COMPONENT, component.appid, None)
        req.note(token=token.value, ticket=found.value)
        return 200, {"component_access_token": token.value, "expires_in": self.token_expires_in}

    @route("POST", PREAUTHCODE_PATH)
    def _api_create_preauthcode(self, req: Request) -> Reply:
        info = self._component_token(req)
        if not isinstance(info, Token):
            return info
        code = "preauthcode@@@" + secrets.token_urlsafe(32)
        self._pre_auth_codes[code] = (info.component_appid, self.now() + self.pre_auth_code_expires_in)
        return 200, {"pre_auth_code": code, "expires_in": self.pre_auth_code_expires_in}

    @route("POST", QUERY_AUTH_PATH)
    def _api_query_auth(self, req: Request) -> Reply:
        info = self._component_token(req)
        if not isinstance(info, Token):
            return info
        value = req.json_object().get("authorization_code")
        code = self._auth_codes.get(str(value)) if value else None
        if code is None or code.used or code.component_appid != info.component_appid:
            return self._err(61009)
        if code.expires_at <= self.now():
            return self._err(61010)
        auth = self._authorizations[(code.component_appid, code.authorizer_appid)]
        if not auth.active:
            return self._err(61009)
        code.used = True
        # Re-authorization hands over a new refresh token; the previous one dies now.
        now = self.now()
        if auth.refresh_token is not None:
            auth.retired_refresh[auth.refresh_token] = now
        auth.refresh_token = "refreshtoken@@@" + secrets.token_urlsafe(32)
        auth.func_info = list(code.func_info)
        token = self._issue(AUTHORIZER, code.component_appid, code.authorizer_appid)
        req.note(authorizer_appid=code.authorizer_appid, issued=token.value)
        return 200, {
            "authorization_info": {
                "authorizer_appid": code.authorizer_appid,
                "authorizer_access_token": token.value,
                "expires_in": self.token_expires_in,
                "authorizer_refresh_token": auth.refresh_token,
                "func_info": [{"funcscope_category": {"id": fid}} for fid in code.func_info],
            }
        }

    @route("POST", AUTHORIZER_TOKEN_PATH)
    def _api_authorizer_token(self, req: Request) -> Reply:
        info = self._component_token(req)
        if not isinstance(info, Token):
            return info
        params = req.json_object()
        authorizer_appid = params.get("authorizer_appid")
        refresh = params.get("authorizer_refresh_token")
        if not authorizer_appid or not refresh:
            return self._err(47001)
        auth = self._authorizations.get((info.component_appid, str(authorizer_appid)))
        now = self.now()
        if auth is None or not auth.active:
            return self._err(61023)
        if refresh != auth.refresh_token:
            retired_at = auth.retired_refresh.get(str(refresh))
            if retired_at is None or now >= retired_at:
                return self._err(61023)  # re-authorization needed
        token = self._issue(AUTHORIZER, info.component_appid, auth.authorizer_appid)
        current = auth.refresh_token
        if self.rotate_refresh_tokens and current is not None and refresh == current:
            auth.retired_refresh[current] = now + self.refresh_grace_s
            auth.refresh_token = "refreshtoken@@@" + secrets.token_urlsafe(32)
        req.note(issued=token.value)
        return 200, {
            "authorizer_access_token": token.value,
            "expires_in": self.token_expires_in,
            "authorizer_refresh_token": auth.refresh_token,
        }

    @route("POST", START_PUSH_TICKET_PATH)
    def _api_start_push_ticket(self, req: Request) -> Reply:
        params = req.json_object()
        appid = params.get("component_appid")
        secret = params.get("component_secret")
        if not appid:
            return self._err(41002)
        component = self.components.get(str(appid))
        if component is None:
            return self._err(40013)
        if not secret:
            return self._err(41004)
        if secret != component.secret:
            return self._err(40125)

        def push_soon() -> None:
            if not self._stopping.wait(self.start_push_delay_s):
                self.push_ticket(component.appid)

        worker = threading.Thread(target=push_soon, name="FakeWeChatOpen-start-push", daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()
        return 200, {"errcode": 0, "errmsg": "ok"}

    def _authorizer_token_or_error(self, req: Request) -> Token | Reply:
        token = req.query.get("access_token")
        if not token:
            return self._err(41001)
        status = self.token_status(token, AUTHORIZER)
        if status:
            return self._err(status)
        return self._tokens[token]

    @route("GET", TICKET_PATH)
    def _getticket(self, req: Request) -> Reply:
        info = self._authorizer_token_or_error(req)
        if not isinstance(info, Token):
            return info
        ticket_type = req.query.get("type", "")
        if ticket_type not in TICKET_TYPES:
            return self._err(40097)
        key = (str(info.authorizer_appid), ticket_type)
        now = self.now()
        cached = self._jsapi_tickets.get(key)
        if cached is None or cached[1] <= now:
            cached = (secrets.token_urlsafe(64), now + self.jsapi_ticket_expires_in)
            self._jsapi_tickets[key] = cached
        req.note(ticket=cached[0])
        return 200, {"errcode": 0, "errmsg": "ok", "ticket": cached[0], "expires_in": self.jsapi_ticket_expires_in}

    @route("GET", API_PATH)
    def _api_domain_ip(self, req: Request) -> Reply:
        info = self._authorizer_token_or_error(req)
        if not isinstance(info, Token):
            return info
        return 200, {"errcode": 0, "errmsg": "ok", "ip_list": list(self.ip_list)}


# ------------------------------------------------------------------ standalone


def _parse_component(spec: str) -> tuple[str, str, str, str, str | None]:
    appid, sep1, rest = spec.partition(":")
    secret, sep2, rest = rest.partition(":")
    token, sep3, rest = rest.partition(":")
    aes_key, _, url = rest.partition(":")
    if not (sep1 and sep2 and sep3 and appid and secret and token and len(aes_key) == 43):
        raise argparse.ArgumentTypeError(f"expected APPID:SECRET:TOKEN:AESKEY[:CALLBACK_URL], got {spec!r}")
    return appid, secret, token, aes_key, url or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake WeChat Open Platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--component",
        type=_parse_component,
        action="append",
        default=[],
        metavar="APPID:SECRET:TOKEN:AESKEY[:CALLBACK_URL]",
    )
    parser.add_argument("--push-every", type=float, default=0.0, help="seconds between ticket pushes; 0: off")
    args = parser.parse_args(argv)

    fake = FakeWeChatOpen(port=args.port)
    for appid, secret, token, aes_key, url in args.component:
        fake.add_component(appid, secret, token, aes_key, url)
    if args.push_every > 0:
        fake.start_pushing(args.push_every)
    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
