"""Fake Feishu / Lark open platform for store (marketplace) apps (platform-facts §2.2, §7.4).

Endpoints:
  POST /open-apis/auth/v3/app_access_token     {app_id, app_secret, app_ticket}
  POST /open-apis/auth/v3/tenant_access_token  {app_access_token, tenant_key}
  POST /open-apis/auth/v3/app_ticket/resend    {app_id, app_secret}: a new ticket, pushed at once
  GET  /open-apis/contact/v3/users             business-API stand-in checking a tenant token

Pushes to the app's event URL, as Feishu sends them:
  - With an Encrypt Key: body ``{"encrypt": base64(iv + AES-256-CBC(json))}``,
    key ``sha256(encrypt_key)``, PKCS#7 (sealed here with pycryptodome, as
    lark-oapi opens it, independent of the service's own code), and the
    headers ``X-Lark-Request-Timestamp`` (wall-clock seconds at sending),
    ``X-Lark-Request-Nonce`` and ``X-Lark-Signature = sha256(timestamp +
    nonce + encrypt_key + body)``. Without one: the plain JSON, unsigned.
  - v1 events keep their ``uuid`` (lark-oapi recognises a v1 event by it),
    ``ts`` (seconds, the fake's clock), ``token`` and ``type":"event_callback``;
    v2 events ``schema":"2.0"`` with ``header.event_id/token/create_time (ms)/
    event_type/tenant_key/app_id``.
  - app_ticket (v1), app_open (v1), app_uninstalled (v1),
    application.application.visibility.added_v6 (v2), a user's message event
    (v2 im.message.receive_v1), url_verification; variants: bad signature, wrong
    verification token, no verification token, a replay (``redeliver``, byte for
    byte).

Token rule, as the custom apps' tokens (tests/fakes/feishu.py): while 30
minutes or more remain, a call returns the current token; in its last 30
minutes it issues a new one and the old one stays valid until its own
expiry; ``expire`` is the remaining life. Tickets are accepted for
``ticket_life_s`` (12 h) after their push.

Codes: 10003 invalid param, 10014 app id not exists / app secret invalid,
10012 app_ticket invalid, 99991664 invalid app_access_token, 99991663 invalid
tenant token (business API). Simplified: a tenant_key that never installed
the app (or uninstalled it) is answered 10003 (Feishu's code for that is
not documented).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
from Crypto.Cipher import AES

from .feishu import APP, TENANT, FakeFeishu, Token
from .server import Reply, Request, route

__all__ = ["APP_TOKEN_PATH", "Delivery", "FakeFeishuStore", "RESEND_PATH", "StoreApp", "TENANT_TOKEN_PATH"]

APP_TOKEN_PATH = "/open-apis/auth/v3/app_access_token"
TENANT_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token"
RESEND_PATH = "/open-apis/auth/v3/app_ticket/resend"

INVALID_APP_TOKEN = 99991664
TICKET_INVALID = 10012


@dataclass
class StoreApp:
    app_id: str
    secret: str
    encrypt_key: str  # "" : events are pushed plain
    verification_token: str
    callback_url: str | None = None
    tenants: set[str] = field(default_factory=set)
    tickets: list[tuple[str, float]] = field(default_factory=list)  # (value, issued_at)


@dataclass
class Delivery:
    """One push as sent and what the service answered."""

    kind: str  # app_ticket, app_open, ...
    app_id: str
    event: dict[str, Any]  # the plaintext event
    url: str | None
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    answer: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Feishu takes HTTP 200 within its timeout as delivered."""
        return self.status == 200


def seal(encrypt_key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    iv = iv or secrets.token_bytes(16)
    pad = 16 - len(plaintext) % 16
    return base64.b64encode(iv + AES.new(key, AES.MODE_CBC, iv).encrypt(plaintext + bytes([pad]) * pad)).decode()


def sign(encrypt_key: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


class FakeFeishuStore(FakeFeishu):
    """Store apps' tokens and event pushes, over loopback HTTP."""

    appid_keys = ("app_id",)

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.store_apps: dict[str, StoreApp] = {}
        self.ticket_life_s: float = 12 * 3600
        self.token_life_s: int = 7200
        self.push_timeout_s: float = 5.0
        self.resend_pushes: bool = True  # False: a resend is answered but its push is lost
        self._deliveries: list[Delivery] = []
        self._owners: dict[str, str] = {}  # token -> app_id or app_id:tenant_key

    # ------------------------------------------------------------------ setup

    def add_store_app(self, app_id: str, secret: str, *, encrypt_key: str, verification_token: str,
                      callback_url: str | None = None) -> StoreApp:
        app = StoreApp(app_id, secret, encrypt_key, verification_token, callback_url)
        with self.lock:
            self.store_apps[app_id] = app
        return app

    def set_callback_url(self, app_id: str, url: str | None) -> None:
        with self.lock:
            self.store_apps[app_id].callback_url = url

    # ---------------------------------------------------------- test helpers

    def issue_ticket(self, app_id: str) -> str:
        """A new app_ticket valid from now on, not pushed (as if the push were lost)."""
        with self.lock:
            value = secrets.token_urlsafe(32)
            self.store_apps[app_id].tickets.append((value, self.now()))
            return value

    def current_token(self, kind: str, owner: str) -> str | None:
        """The token handed out last for ``owner`` (app_id, or app_id:tenant_key for tenants)."""
        with self.lock:
            token = self._current.get((owner, kind))
            return token.value if token else None

    def tenants(self, app_id: str) -> set[str]:
        with self.lock:
            return set(self.store_apps[app_id].tenants)

    @property
    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    # ----------------------------------------------------------------- pushes

    def push_ticket(self, app_id: str, **variant: Any) -> Delivery:
        value = self.issue_ticket(app_id)
        return self.push_v1(app_id, {"app_id": app_id, "app_ticket": value, "type": "app_ticket"}, **variant)

    def install(self, app_id: str, tenant_key: str, *, version: int = 1, **variant: Any) -> Delivery:
        """A tenant enables the app: v1 ``app_open`` or v2 ``visibility.added_v6``."""
        with self.lock:
            self.store_apps[app_id].tenants.add(tenant_key)
        if version == 1:
            return self.push_v1(app_id, {"app_id": app_id, "tenant_key": tenant_key, "type": "app_open",
                                         "applicants": [{"open_id": "ou_" + secrets.token_hex(8)}],
                                         "installer": {"open_id": "ou_" + secrets.token_hex(8)}}, **variant)
        return self.push_v2(app_id, "application.application.visibility.added_v6", tenant_key,
                            {"users": [{"user_id": {"open_id": "ou_" + secrets.token_hex(8)}}], "source": 1},
                            **variant)

    def uninstall(self, app_id: str, tenant_key: str, **variant: Any) -> Delivery:
        with self.lock:
            self.store_apps[app_id].tenants.discard(tenant_key)
            for (owner, _), token in self._current.items():
                if owner == f"{app_id}:{tenant_key}":
                    token.revoked = True
        return self.push_v1(app_id, {"app_id": app_id, "tenant_key": tenant_key, "type": "app_uninstalled"},
                            **variant)

    def user_message(self, app_id: str, tenant_key: str, **variant: Any) -> Delivery:
        """A user of the tenant writes to the app's bot (v2 ``im.message.receive_v1``)."""
        return self.push_v2(app_id, "im.message.receive_v1", tenant_key,
                            {"message": {"message_id": "om_" + secrets.token_hex(8), "message_type": "text",
                                         "content": json.dumps({"text": "hello"})}}, **variant)

    def verify_url(self, app_id: str, **variant: Any) -> tuple[str, Delivery]:
        """Feishu's URL check; (the challenge to be answered, the delivery)."""
        with self.lock:
            app = self.store_apps[app_id]
        challenge = str(uuid.uuid4())
        event = {"challenge": challenge, "token": app.verification_token, "type": "url_verification"}
        return challenge, self._push(app_id, "url_verification", event, signed=False, **variant)

    def push_v1(self, app_id: str, event: dict[str, Any], **variant: Any) -> Delivery:
        with self.lock:
            app = self.store_apps[app_id]
            message = {"uuid": uuid.uuid4().hex, "ts": f"{self.now():.7f}", "token": app.verification_token,
                       "type": "event_callback", "event": event}
        return self._push(app_id, str(event["type"]), message, **variant)

    def push_v2(self, app_id: str, event_type: str, tenant_key: str, event: dict[str, Any],
                **variant: Any) -> Delivery:
        with self.lock:
            app = self.store_apps[app_id]
            message = {"schema": "2.0",
                       "header": {"event_id": secrets.token_hex(16), "token": app.verification_token,
                                  "create_time": str(int(self.now() * 1000)), "event_type": event_type,
                                  "tenant_key": tenant_key, "app_id": app_id},
                       "event": event}
        return self._push(app_id, event_type, message, **variant)

    def _push(self, app_id: str, kind: str, event: dict[str, Any], *, signed: bool = True,
              bad_signature: bool = False, wrong_token: bool = False, no_token: bool = False,
              sent_at: float | None = None) -> Delivery:
        with self.lock:
            app = self.store_apps[app_id]
            url = app.callback_url
        if wrong_token:
            event = json.loads(json.dumps(event))
            holder = event["header"] if "header" in event else event
            holder["token"] = app.verification_token + "x"
        if no_token:
            event = json.loads(json.dumps(event))
            (event["header"] if "header" in event else event).pop("token")
        plaintext = json.dumps(event, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if app.encrypt_key:
            body = json.dumps({"encrypt": seal(app.encrypt_key, plaintext)}).encode()
            timestamp = str(int(time.time() if sent_at is None else sent_at))
            nonce = secrets.token_hex(8)
            signature = sign(app.encrypt_key + ("x" if bad_signature else ""), timestamp, nonce, body)
            headers.update({"X-Lark-Request-Timestamp": timestamp, "X-Lark-Request-Nonce": nonce,
                            "X-Lark-Signature": signature})
        else:
            body = plaintext
        return self._send(Delivery(kind, app_id, event, url, body, headers))

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send a past push again, byte for byte (same headers and signature)."""
        return self._send(Delivery(delivery.kind, delivery.app_id, delivery.event, delivery.url, delivery.body,
                                   dict(delivery.headers)))

    def _send(self, delivery: Delivery) -> Delivery:
        if delivery.url is not None:
            try:
                answer = requests.post(delivery.url, data=delivery.body, headers=delivery.headers,
                                       timeout=self.push_timeout_s)
                delivery.status, delivery.answer = answer.status_code, answer.text
            except requests.RequestException as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self._deliveries.append(delivery)
        return delivery

    # --------------------------------------------------------------- internals

    def _issue(self, owner: str, kind: str) -> Token:
        """The 2 h / 30 min rule, per owner (app_id, or app_id:tenant_key)."""
        now = self.now()
        current = self._current.get((owner, kind))
        if current is None or current.revoked or current.expires_at - now < self.rotate_before_s:
            current = Token(self._new_value(), owner, kind, now, now + self.token_life_s)
            self._tokens[current.value] = current
            self._current[(owner, kind)] = current
        return current

    def _store_app(self, params: dict[str, Any]) -> StoreApp | Reply:
        app_id, secret = params.get("app_id"), params.get("app_secret")
        if not isinstance(app_id, str) or not app_id or not isinstance(secret, str) or not secret:
            return self._err(10003, "invalid param")
        app = self.store_apps.get(app_id)
        if app is None:
            return self._err(10014, "app id not exists")
        if secret != app.secret:
            return self._err(10014, "app secret invalid")
        return app

    def call_fields(self, request: Request) -> dict[str, Any]:
        if request.path == TENANT_TOKEN_PATH:
            body = request.json_object()
            info = self._tokens.get(str(body.get("app_access_token")))
            return {"kind": TENANT, "appid": f"{info.app_id}:{body.get('tenant_key')}" if info else None}
        if request.path in (APP_TOKEN_PATH, RESEND_PATH):
            return {"kind": APP if request.path == APP_TOKEN_PATH else "resend",
                    "appid": request.json_object().get("app_id")}
        return super().call_fields(request)

    # ---------------------------------------------------------------- handlers

    @route("POST", APP_TOKEN_PATH)
    def _store_app_token(self, req: Request) -> Reply:
        params = req.json_object()
        app = self._store_app(params)
        if not isinstance(app, StoreApp):
            return app
        ticket = params.get("app_ticket")
        if not isinstance(ticket, str) or not ticket:
            return self._err(10003, "invalid param")
        now = self.now()
        if not any(value == ticket and now < issued + self.ticket_life_s for value, issued in app.tickets):
            return self._err(TICKET_INVALID, "app_ticket is invalid")
        token = self._issue(app.app_id, APP)
        req.note(token=token.value)
        return 200, {"code": 0, "msg": "ok", "app_access_token": token.value, "expire": self._remaining(token)}

    @route("POST", TENANT_TOKEN_PATH)
    def _store_tenant_token(self, req: Request) -> Reply:
        params = req.json_object()
        app_token, tenant_key = params.get("app_access_token"), params.get("tenant_key")
        if not isinstance(app_token, str) or not app_token or not isinstance(tenant_key, str) or not tenant_key:
            return self._err(10003, "invalid param")
        if self.token_status(app_token, APP):
            return self._err(INVALID_APP_TOKEN, "Invalid access token for authorization. Please make a request "
                                                "with token attached.")
        app = self.store_apps[self._tokens[app_token].app_id]
        if tenant_key not in app.tenants:
            return self._err(10003, "invalid param: tenant_key")
        token = self._issue(f"{app.app_id}:{tenant_key}", TENANT)
        req.note(token=token.value)
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token.value, "expire": self._remaining(token)}

    @route("POST", RESEND_PATH)
    def _resend(self, req: Request) -> Reply:
        app = self._store_app(req.json_object())
        if not isinstance(app, StoreApp):
            return app
        if self.resend_pushes:
            # Feishu pushes the ticket after answering, on its own connection.
            threading.Thread(target=self.push_ticket, args=(app.app_id,), daemon=True).start()
        return 200, {"code": 0, "msg": "ok"}
