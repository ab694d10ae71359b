"""Fake DingTalk third-party enterprise apps ("suites") (platform-facts §7.1, §7.5).

The platform side of DingTalk's push model: it POSTs encrypted events to each
suite's callback URL, and makes the suite's and each authorized corp's token
from the latest suite_ticket it pushed.

Endpoints (api.dingtalk.com, JSON bodies only):
  POST /v1.0/oauth2/suiteAccessToken  {suiteKey, suiteSecret, suiteTicket} -> {accessToken, expireIn}
  POST /v1.0/oauth2/corpAccessToken   {suiteKey, suiteSecret, authCorpId, suiteTicket} -> {accessToken, expireIn}
  GET  /v1.0/contact/orgAccountVisibleScopes  business-API stand-in (x-acs-dingtalk-access-token)

Pushes (``?signature=|msg_signature=&timestamp=&nonce=``, body ``{"encrypt": ...}``),
sealed with dingtalk-sdk's own crypto (``dingtalk.crypto.DingTalkCrypto``, receive
id = suiteKey), so this fake is independent of the service's crypto:
  HTTP push: check_url / check_create_suite_url / check_update_suite_url,
  suite_ticket, tmp_auth_code, change_auth, suite_relieve; sync HTTP push:
  SYNC_HTTP_PUSH_HIGH rows (biz_type 2 suite_ticket, 4 org_suite_auth /
  org_suite_change / org_suite_relieve) and SYNC_HTTP_PUSH_MEDIUM rows. Variants
  for tests: bad signature, tampered ciphertext, another suite's key, a wrong
  receive id, the old or new query names, redelivery byte for byte.
  Every answer is checked as DingTalk does: the JSON ``{msg_signature, timeStamp,
  nonce, encrypt}`` must verify and decrypt (dingtalk-sdk) to ``success``.

Faithful:
  - Tokens live ``token_life_s`` (7200 s); asked again while valid, the same token
    comes back with its life extended to a full ``expireIn`` (platform-facts §5).
  - A newer suite ticket invalidates the older ones: only the latest pushed (or
    issued) is accepted; any other is 853005 ("签名中套件ticket参数无效", the code
    DingTalk gives an invalid suite ticket; opendingtalk/eapp-isv-quick-start-java#7).
  - Errors are non-2xx ``{"code": "<string>", "message", "requestid"}`` (§5):
    400 Missingbody for a non-JSON body, 400 Missing<field>, 400
    invalidClientIdOrSecret for an unknown suiteKey or a wrong suiteSecret.
  - suite_relieve kills the corp's tokens at once.

Unverified (no source found): the code corpAccessToken gives a corp that has not
authorized the suite (here 400 ``InvalidAuthCorpId``), and the life of a suite
ticket, if any (here tickets live until a newer one is issued).

Run standalone: ``python -m tests.fakes.dingtalk_suite --suite KEY:SECRET:TOKEN:AESKEY[:URL]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from dingtalk.core.utils import DingTalkSigner
from dingtalk.crypto import DingTalkCrypto

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = ["Authorization", "Delivery", "FakeDingTalkSuite", "Suite", "Token", "main"]

SUITE_TOKEN_PATH = "/v1.0/oauth2/suiteAccessToken"
CORP_TOKEN_PATH = "/v1.0/oauth2/corpAccessToken"
API_PATH = "/v1.0/contact/orgAccountVisibleScopes"
TOKEN_HEADER = "x-acs-dingtalk-access-token"
TICKET_REFUSED = "853005"

SUITE = "suite"
CORP = "corp"


@dataclass
class Suite:
    suite_key: str
    secret: str
    token: str  # callback Token
    aes_key: str  # 43 characters
    callback_url: str | None = None
    suite_id: str = ""  # the numeric id sync pushes name (subscribe_id, biz_id)

    def crypto(self, receive_id: str | None = None) -> DingTalkCrypto:
        return DingTalkCrypto(self.token, self.aes_key, receive_id or self.suite_key)


@dataclass
class Token:
    value: str
    kind: str  # suite | corp
    owner: str  # suiteKey; "suiteKey:corpId"
    issued_at: float
    expires_at: float  # moved forward by every call while valid
    invalidated: bool = False


@dataclass
class Authorization:
    suite_key: str
    corp_id: str
    corp_name: str
    relieved: bool = False


@dataclass
class Delivery:
    """One push as sent to the service and what it answered."""

    event_type: str
    suite_key: str
    message: dict[str, Any]  # the plaintext event
    url: str | None
    params: dict[str, str] = field(default_factory=dict)
    body: str = ""
    variant: str | None = None
    status: int | None = None
    answer: str = ""
    reply: str | None = None  # the decrypted answer, when it verified
    reply_error: str | None = None
    error: str | None = None
    reply_receive_id: str | None = None  # whom the answer must be encrypted for (default: the suiteKey)

    @property
    def ok(self) -> bool:
        """Acknowledged as DingTalk expects: HTTP 200, a signed encrypted ``success``."""
        return self.status == 200 and self.reply == "success"


def _tamper(encrypt: str) -> str:
    raw = bytearray(base64.b64decode(encrypt))
    raw[0] ^= 0x5A
    return base64.b64encode(bytes(raw)).decode("ascii")


def _requestid() -> str:
    return str(uuid.uuid4()).upper()


class FakeDingTalkSuite(FakePlatform):
    """DingTalk's suite and corp token APIs and its suite pushes, over loopback HTTP."""

    appid_keys = ("suiteKey",)
    errcode_key = "code"
    errmsg_key = "message"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.suites: dict[str, Suite] = {}
        self.token_life_s: int = 7200
        self.push_timeout_s: float = 5.0
        self._tickets: dict[str, list[str]] = {}
        self._tokens: dict[str, Token] = {}
        self._current: dict[tuple[str, str], Token] = {}
        self._authorizations: dict[tuple[str, str], Authorization] = {}
        self._deliveries: list[Delivery] = []
        self._row_id = 1000

    # ------------------------------------------------------------------ setup

    def add_suite(self, suite_key: str, secret: str, *, token: str, aes_key: str,
                  callback_url: str | None = None) -> Suite:
        if len(base64.b64decode(aes_key + "=")) != 32:
            raise ValueError("aes_key must be 43 base64 characters (32 bytes)")
        suite = Suite(suite_key, secret, token, aes_key, callback_url, str(20000000 + len(self.suites)))
        with self.lock:
            self.suites[suite_key] = suite
            self._tickets.setdefault(suite_key, [])
        return suite

    def set_callback_url(self, suite_key: str, url: str | None) -> None:
        with self.lock:
            self.suites[suite_key].callback_url = url

    # ---------------------------------------------------------------- tickets

    def issue_ticket(self, suite_key: str) -> str:
        """A new suite_ticket, the only one accepted from now on, without pushing it."""
        with self.lock:
            value = secrets.token_urlsafe(48)
            self._tickets.setdefault(suite_key, []).append(value)
            return value

    def tickets(self, suite_key: str) -> list[str]:
        """Every ticket issued for the suite, oldest first."""
        with self.lock:
            return list(self._tickets.get(suite_key) or [])

    def current_ticket(self, suite_key: str) -> str | None:
        with self.lock:
            tickets = self._tickets.get(suite_key) or []
            return tickets[-1] if tickets else None

    def ticket_accepted(self, suite_key: str, value: str) -> bool:
        return bool(value) and value == self.current_ticket(suite_key)

    def push_ticket(self, suite_key: str, *, sync: bool = False, **variant: Any) -> Delivery:
        """Issue a ticket and push it (``suite_ticket``, or a sync push row of biz_type 2)."""
        ticket = self.issue_ticket(suite_key)
        if sync:
            return self.push_sync(suite_key, [self.sync_row(suite_key, 2, {"syncAction": "suite_ticket",
                                                                            "suiteTicket": ticket})], **variant)
        return self.push(suite_key, {"EventType": "suite_ticket", "SuiteKey": suite_key, "SuiteTicket": ticket,
                                     "TimeStamp": self._ms()}, **variant)

    # ---------------------------------------------------------- authorization

    def add_authorization(self, suite_key: str, corp_id: str, corp_name: str | None = None) -> Authorization:
        """The corp authorized the suite on DingTalk's side (nothing pushed)."""
        with self.lock:
            auth = Authorization(suite_key, corp_id, corp_name or f"Corp {corp_id}")
            self._authorizations[(suite_key, corp_id)] = auth
            return auth

    def authorize(self, suite_key: str, corp_id: str, *, corp_name: str | None = None, sync: bool = False,
                  **variant: Any) -> Delivery:
        """A corp authorizes the suite: ``tmp_auth_code`` (or a sync ``org_suite_auth`` row) is pushed."""
        auth = self.add_authorization(suite_key, corp_id, corp_name)
        if sync:
            return self.push_sync(suite_key, [self.sync_row(suite_key, 4, {
                "syncAction": "org_suite_auth", "auth_corp_info": {"corpid": corp_id, "corp_name": auth.corp_name},
                "auth_info": {"agent": [{"agentid": 3000001, "appid": 100001}]},
                "permanent_code": secrets.token_urlsafe(24)}, corp_id=corp_id)], **variant)
        return self.push(suite_key, {"EventType": "tmp_auth_code", "SuiteKey": suite_key,
                                     "AuthCode": secrets.token_hex(16), "AuthCorpId": corp_id,
                                     "TimeStamp": self._ms()}, **variant)

    def change_auth(self, suite_key: str, corp_id: str, **variant: Any) -> Delivery:
        return self.push(suite_key, {"EventType": "change_auth", "SuiteKey": suite_key, "AuthCorpId": corp_id,
                                     "TimeStamp": self._ms()}, **variant)

    def relieve(self, suite_key: str, corp_id: str, *, sync: bool = False, **variant: Any) -> Delivery:
        """The corp removes the app: its tokens die at once, then ``suite_relieve`` is pushed."""
        with self.lock:
            auth = self._authorizations.get((suite_key, corp_id))
            if auth is not None:
                auth.relieved = True
            for token in self._tokens.values():
                if token.kind == CORP and token.owner == f"{suite_key}:{corp_id}":
                    token.invalidated = True
        if sync:
            return self.push_sync(suite_key, [self.sync_row(suite_key, 4, {"syncAction": "org_suite_relieve"},
                                                            corp_id=corp_id)], **variant)
        return self.push(suite_key, {"EventType": "suite_relieve", "SuiteKey": suite_key, "AuthCorpId": corp_id,
                                     "TimeStamp": self._ms()}, **variant)

    def check_url(self, suite_key: str, event_type: str = "check_url", *, test_suite_key: str | None = None,
                  **variant: Any) -> Delivery:
        """A URL check; ``check_create_suite_url`` names (and is encrypted for) a TestSuiteKey."""
        event: dict[str, Any] = {"EventType": event_type}
        if test_suite_key is not None:
            event.update(Random=secrets.token_hex(4), TestSuiteKey=test_suite_key)
            variant.setdefault("receive_id", test_suite_key)
        return self.push(suite_key, event, **variant)

    def authorization(self, suite_key: str, corp_id: str) -> Authorization | None:
        with self.lock:
            return self._authorizations.get((suite_key, corp_id))

    # ------------------------------------------------------------------ pushing

    def sync_row(self, suite_key: str, biz_type: int, biz_data: Mapping[str, Any], *, corp_id: str | None = None
                 ) -> dict[str, Any]:
        """One ``bizData`` row of a sync HTTP push; ``biz_data`` is sent as JSON text, as DingTalk does."""
        with self.lock:
            suite = self.suites[suite_key]
            self._row_id += 1
            now = self._ms_int()
            return {"gmt_create": now, "biz_type": biz_type, "open_cursor": 0, "subscribe_id": f"{suite.suite_id}_0",
                    "id": self._row_id, "gmt_modified": now, "biz_id": suite.suite_id,
                    "corp_id": corp_id or "dingisvcorp0000000001", "status": 0,
                    "biz_data": json.dumps(dict(biz_data), ensure_ascii=False)}

    def push_sync(self, suite_key: str, rows: list[dict[str, Any]], *, event_type: str = "SYNC_HTTP_PUSH_HIGH",
                  **variant: Any) -> Delivery:
        return self.push(suite_key, {"EventType": event_type, "bizData": rows}, **variant)

    def push(self, suite_key: str, event: Mapping[str, Any], *, bad_signature: bool = False, tamper: bool = False,
             as_suite: str | None = None, receive_id: str | None = None, old_names: bool = False,
             send: bool = True) -> Delivery:
        """Push any event to the suite's callback URL. ``as_suite``: sealed with
        that other suite's Token and key (a misrouted push); ``receive_id``:
        encrypted for another id; ``old_names``: ``signature``/``timestamp``
        in the query instead of ``msg_signature``/``timeStamp``... (DingTalk
        sends ``signature``, ``timestamp``, ``nonce``; its SDK samples read
        ``msg_signature`` too)."""
        with self.lock:
            target = self.suites[suite_key]
            sealer = self.suites[as_suite] if as_suite else target
            plaintext = json.dumps(dict(event), ensure_ascii=False)
            signed = sealer.crypto(receive_id).encrypt_message(plaintext, timestamp=self._ms())
            encrypt, variant = signed["encrypt"], None
            if tamper:
                encrypt, variant = _tamper(encrypt), "tampered"
                signed = dict(signed, msg_signature=_sign(sealer.token, signed["timeStamp"], signed["nonce"],
                                                          encrypt))
            signature = signed["msg_signature"]
            if bad_signature:
                signature, variant = _sign(sealer.token + "x", signed["timeStamp"], signed["nonce"], encrypt), \
                    "bad_signature"
            if as_suite:
                variant = f"as_suite:{as_suite}"
            elif receive_id is not None and receive_id != suite_key and "TestSuiteKey" not in event:
                variant = "receive_id"
            names = ("signature", "timestamp") if old_names else ("msg_signature", "timestamp")
            params = {names[0]: signature, names[1]: str(signed["timeStamp"]), "nonce": signed["nonce"]}
            delivery = Delivery(str(event.get("EventType", "")), suite_key, dict(event),
                                target.callback_url if send else None, params, json.dumps({"encrypt": encrypt}),
                                variant, reply_receive_id=event.get("TestSuiteKey"))
        if not send:
            with self.lock:
                self._deliveries.append(delivery)
            return delivery
        if delivery.url is None:
            raise ValueError(f"suite {suite_key} has no callback URL")
        return self._send(delivery)

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send a past push again, byte for byte (same nonce, timestamp, signature)."""
        again = Delivery(delivery.event_type, delivery.suite_key, dict(delivery.message), delivery.url,
                         dict(delivery.params), delivery.body, "redelivery",
                         reply_receive_id=delivery.reply_receive_id)
        return self._send(again)

    @property
    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    def _send(self, delivery: Delivery) -> Delivery:
        # Outside the lock: the service may call this fake while it handles the push.
        assert delivery.url is not None
        try:
            resp = requests.post(delivery.url, params=delivery.params, data=delivery.body.encode("utf-8"),
                                 headers={"Content-Type": "application/json"}, timeout=self.push_timeout_s)
            delivery.status, delivery.answer = resp.status_code, resp.text
        except requests.RequestException as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        if delivery.status == 200:
            self._check_reply(delivery)
        with self.lock:
            self._deliveries.append(delivery)
        return delivery

    def _check_reply(self, delivery: Delivery) -> None:
        """Read the answer as DingTalk does: verify its signature and decrypt it."""
        suite = self.suites[delivery.suite_key]
        try:
            answer = json.loads(delivery.answer)
            delivery.reply = suite.crypto(delivery.reply_receive_id).decrypt_encrypt_str(
                answer["msg_signature"], answer["timeStamp"], answer["nonce"], answer["encrypt"])
        except Exception as exc:  # noqa: BLE001 - any failure means DingTalk would not take the answer
            delivery.reply_error = f"{type(exc).__name__}: {exc}"

    # ---------------------------------------------------------- token helpers

    def is_valid(self, token: str, at: float | None = None) -> bool:
        with self.lock:
            info = self._tokens.get(token)
            if info is None or info.invalidated:
                return False
            return (self.now() if at is None else at) < info.expires_at

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def issued(self, kind: str | None = None, owner: str | None = None) -> list[str]:
        with self.lock:
            return [t.value for t in self._tokens.values()
                    if (kind is None or t.kind == kind) and (owner is None or t.owner == owner)]

    def current_token(self, kind: str, owner: str) -> str | None:
        with self.lock:
            token = self._current.get((kind, owner))
            return token.value if token else None

    def invalidate(self, token: str) -> None:
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.invalidated = True

    def error_body(self, errcode: int | str, errmsg: str) -> dict[str, Any]:
        return {"code": str(errcode), "message": errmsg, "requestid": _requestid()}

    def fail_with_code_next(self, n: int, code: str, message: str = "", *, status: int = 400,
                            path: str | None = None) -> None:
        self.fail_next(n, status, self.error_body(code, message or code), path=path)

    # --------------------------------------------------------------- internals

    def _ms(self) -> str:
        return str(self._ms_int())

    def _ms_int(self) -> int:
        return int(self.now() * 1000)

    @staticmethod
    def _err(status: int, code: str, message: str) -> Reply:
        return status, {"code": code, "requestid": _requestid(), "message": message}

    def call_fields(self, request: Request) -> dict[str, Any]:
        body = request.json_object()
        if request.path == API_PATH:
            info = self._tokens.get(request.headers.get(TOKEN_HEADER, ""))
            return {"appid": info.owner if info else None}
        return {"appid": body.get("suiteKey") or None, "suite_ticket": body.get("suiteTicket") or None,
                "auth_corp_id": body.get("authCorpId") or None}

    def _token_for(self, kind: str, owner: str) -> Token:
        now = self.now()
        current = self._current.get((kind, owner))
        if current is None or current.invalidated or current.expires_at <= now:
            current = Token(secrets.token_hex(16), kind, owner, now, now + self.token_life_s)
            self._tokens[current.value] = current
            self._current[(kind, owner)] = current
        else:
            current.expires_at = now + self.token_life_s  # same token, life extended
        return current

    def _checked(self, req: Request, *fields: str) -> tuple[Suite | None, dict[str, str], Reply | None]:
        body = req.json() if req.content_type == "application/json" else None
        if not isinstance(body, dict):
            return None, {}, self._err(400, "Missingbody", "body is mandatory for this action.")
        values: dict[str, str] = {}
        for name in ("suiteKey", "suiteSecret", *fields, "suiteTicket"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                return None, {}, self._err(400, f"Missing{name}", f"{name} is mandatory for this action.")
            values[name] = value
        suite = self.suites.get(values["suiteKey"])
        if suite is None or suite.secret != values["suiteSecret"]:
            return None, {}, self._err(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")
        if not self.ticket_accepted(suite.suite_key, values["suiteTicket"]):
            req.note(code=TICKET_REFUSED)
            return None, {}, self._err(400, TICKET_REFUSED, "签名中套件ticket参数无效")
        return suite, values, None

    # ---------------------------------------------------------------- handlers

    @route("POST", SUITE_TOKEN_PATH)
    def _suite_token(self, req: Request) -> Reply:
        suite, _, error = self._checked(req)
        if error is not None or suite is None:
            return error or self._err(500, "unreachable", "")
        token = self._token_for(SUITE, suite.suite_key)
        req.note(token=token.value)
        return 200, {"accessToken": token.value, "expireIn": self.token_life_s}

    @route("POST", CORP_TOKEN_PATH)
    def _corp_token(self, req: Request) -> Reply:
        suite, values, error = self._checked(req, "authCorpId")
        if error is not None or suite is None:
            return error or self._err(500, "unreachable", "")
        auth = self._authorizations.get((suite.suite_key, values["authCorpId"]))
        if auth is None or auth.relieved:
            req.note(code="InvalidAuthCorpId")
            return self._err(400, "InvalidAuthCorpId", "企业未授权该应用")
        token = self._token_for(CORP, f"{suite.suite_key}:{auth.corp_id}")
        req.note(token=token.value)
        return 200, {"accessToken": token.value, "expireIn": self.token_life_s}

    @route("GET", API_PATH)
    def _business_api(self, req: Request) -> Reply:
        if not self.is_valid(req.headers.get(TOKEN_HEADER, "")):
            return self._err(400, "InvalidAuthentication", "不合法的access_token")
        return 200, {"isVisible": True}


def _sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    signer = DingTalkSigner()
    signer.add_data(token, str(timestamp), nonce, encrypt)
    return str(signer.signature)


# ------------------------------------------------------------------ standalone


def _parse_suite(spec: str) -> tuple[str, str, str, str, str | None]:
    parts = spec.split(":", 4)
    if len(parts) < 4 or not all(parts[:4]) or len(parts[3]) != 43:
        raise argparse.ArgumentTypeError(f"expected KEY:SECRET:TOKEN:AESKEY43[:CALLBACK_URL], got {spec!r}")
    return parts[0], parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake DingTalk third-party suites on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--suite", type=_parse_suite, action="append", default=[],
                        metavar="KEY:SECRET:TOKEN:AESKEY[:CALLBACK_URL]")
    args = parser.parse_args(argv)
    fake = FakeDingTalkSuite(port=args.port)
    for suite_key, secret, token, aes_key, url in args.suite:
        fake.add_suite(suite_key, secret, token=token, aes_key=aes_key, callback_url=url)
    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
