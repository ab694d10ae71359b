"""Fake Alipay open-platform gateway (platform-facts §3), for app_auth_token.

One endpoint, ``POST /gateway.do``, answering ``alipay.open.auth.token.app``:

- every request is checked like the gateway does: common parameters present
  (40001 isv.missing-*), app_id known, method, format, charset, sign_type,
  version and a timestamp within ``timestamp_tolerance_s`` of the fake's clock
  read as China time (40002 isv.invalid-*), and the RSA2 signature over the
  sorted ``key=value`` text (sign_type included) with the app's public key
  (40002 isv.invalid-signature);
- ``grant_type=authorization_code``: a code from :meth:`authorize`, single
  use and valid ``code_ttl_s`` (a day), issues the merchant's pair;
- ``grant_type=refresh_token``: the current refresh token issues a new pair.
  The replaced refresh token is dead at once and the replaced app_auth_token
  after ``grace_s`` (Alipay lets the old ones lapse "after some time"; the fake
  is stricter so that any reuse shows up). A dead, unknown or expired refresh
  token gets 40002 ``isv.invalid-refresh-token``, a bad code 40002
  ``isv.invalid-app-auth-code`` (the fake's own sub_codes: Alipay does not
  publish these);
- every answer is ``{"alipay_open_auth_token_app_response": {...}, "sign": ...}``
  with ``sign`` over the exact text of the response object, made with the
  gateway's own key (``bad_signature`` signs with another key, ``unsigned``
  leaves ``sign`` out). The object is written with ``ensure_ascii=False`` and
  keys in Alipay's order, so a client that re-serializes it before verifying
  fails.

``fail_with_errcode_next(n, code)`` answers with a signed gateway error, e.g.
20000 (isp.unknow-error).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .server import FakePlatform, Reply, Request, route

__all__ = ["GATEWAY_PATH", "METHOD", "FakeAlipay", "Issued", "make_key", "private_pem", "public_pem",
           "signed_params"]

GATEWAY_PATH = "/gateway.do"
METHOD = "alipay.open.auth.token.app"
RESPONSE_KEY = "alipay_open_auth_token_app_response"
CHINA = timezone(timedelta(hours=8))

MSG = {
    "10000": "Success",
    "20000": "Service Currently Unavailable",
    "20001": "Insufficient Token Permissions",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
    "40006": "Insufficient Permissions",
}
SUB_MSG = {
    "isp.unknow-error": "服务暂不可用（业务系统不可用）",
    "isv.invalid-signature": "验签出错",
    "isv.invalid-app-id": "无效的AppID参数",
    "isv.invalid-timestamp": "非法的时间戳参数",
    "isv.invalid-method": "不存在的方法名",
    "isv.invalid-format": "无效的数据格式",
    "isv.invalid-charset": "字符集错误",
    "isv.invalid-signature-type": "无效的签名类型",
    "isv.invalid-version": "无效的版本号",
    "isv.invalid-parameter": "参数无效",
    "isv.invalid-refresh-token": "刷新令牌无效或已过期",
    "isv.invalid-app-auth-code": "授权码无效、已使用或已过期",
}


def make_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: rsa.RSAPrivateKey, *, pkcs1: bool = False) -> str:
    """PKCS#8 (``BEGIN PRIVATE KEY``) or PKCS#1 (``BEGIN RSA PRIVATE KEY``),
    the two forms Alipay's key tool writes."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if pkcs1 else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode("ascii")


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _sign_text(params: dict[str, str]) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")


def signed_params(app_id: str, private_key: rsa.RSAPrivateKey, biz: dict[str, Any], *, timestamp: str,
                  method: str = METHOD) -> dict[str, str]:
    """A signed request, made the way the SDKs make it (for tests that call
    the fake directly)."""
    params = {"app_id": app_id, "method": method, "format": "JSON", "charset": "utf-8", "sign_type": "RSA2",
              "timestamp": timestamp, "version": "1.0", "biz_content": json.dumps(biz)}
    signature = private_key.sign(_sign_text(params).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    params["sign"] = base64.b64encode(signature).decode("ascii")
    return params


@dataclass
class IsvApp:
    app_id: str
    public_key: rsa.RSAPublicKey


@dataclass
class Code:
    value: str
    app_id: str
    auth_app_id: str
    user_id: str
    issued_at: float
    used: bool = False


@dataclass
class Issued:
    """One app_auth_token / app_refresh_token pair handed out."""

    app_id: str
    auth_app_id: str
    user_id: str
    app_auth_token: str
    app_refresh_token: str
    expires_at: float
    refresh_expires_at: float
    token_valid_until: float  # lowered when the pair is replaced
    refresh_usable: bool = True  # False once the refresh token was used or the pair replaced


class FakeAlipay(FakePlatform):
    appid_keys = ("app_id",)

    def __init__(self, *, private_key: rsa.RSAPrivateKey, port: int = 0) -> None:
        super().__init__(port=port)
        self.private_key = private_key
        self.apps: dict[str, IsvApp] = {}
        # Knobs, per instance so tests can change them.
        self.expires_in: int = 31536000
        self.re_expires_in: int = 32140800
        self.grace_s: float = 0.0
        self.code_ttl_s: float = 86400.0
        self.timestamp_tolerance_s: float = 900.0
        self.bad_signature = False
        self.unsigned = False
        # Called (under the fake's lock) with each signed, well-formed request
        # before it is answered: lets a test act "while the call is in flight".
        self.on_request: Callable[[Request], None] | None = None
        self._other_key: rsa.RSAPrivateKey | None = None
        self._codes: dict[str, Code] = {}
        self._tokens: dict[str, Issued] = {}
        self._refresh: dict[str, Issued] = {}
        self._current: dict[tuple[str, str], Issued] = {}

    # ------------------------------------------------------------------ setup

    @property
    def gateway_url(self) -> str:
        return self.url(GATEWAY_PATH)

    @property
    def public_key_pem(self) -> str:
        return public_pem(self.private_key)

    def add_app(self, app_id: str, app_public_key_pem: str) -> IsvApp:
        key = serialization.load_pem_public_key(app_public_key_pem.encode("ascii"))
        assert isinstance(key, rsa.RSAPublicKey)
        app = IsvApp(app_id, key)
        with self.lock:
            self.apps[app_id] = app
        return app

    def authorize(self, app_id: str, auth_app_id: str, *, user_id: str | None = None) -> str:
        """The merchant ``auth_app_id`` authorizes ISV app ``app_id``: the
        app_auth_code its redirect would carry."""
        value = "P" + secrets.token_hex(16)
        with self.lock:
            self._codes[value] = Code(value, app_id, auth_app_id, user_id or "2088" + secrets.token_hex(6)[:12],
                                      self.now())
        return value

    # ---------------------------------------------------------- test helpers

    def is_valid(self, app_auth_token: str) -> bool:
        with self.lock:
            issued = self._tokens.get(app_auth_token)
            now = self.now()
            return issued is not None and now < min(issued.expires_at, issued.token_valid_until)

    def refresh_token_valid(self, app_refresh_token: str) -> bool:
        with self.lock:
            issued = self._refresh.get(app_refresh_token)
            return issued is not None and issued.refresh_usable and self.now() < issued.refresh_expires_at

    def retire(self, app_id: str, auth_app_id: str) -> None:
        """The merchant's current refresh token stops working (as after a use
        this fake did not see answered)."""
        with self.lock:
            issued = self._current.get((app_id, auth_app_id))
            if issued is not None:
                issued.refresh_usable = False

    def current(self, app_id: str, auth_app_id: str) -> Issued | None:
        with self.lock:
            return self._current.get((app_id, auth_app_id))

    def issued_values(self) -> list[str]:
        """Every token and refresh token handed out (to check none leaks)."""
        with self.lock:
            return [v for i in self._tokens.values() for v in (i.app_auth_token, i.app_refresh_token)]

    def china_time(self, offset_s: float = 0.0) -> str:
        return datetime.fromtimestamp(self.now() + offset_s, CHINA).strftime("%Y-%m-%d %H:%M:%S")

    # --------------------------------------------------------------- answers

    def _answer(self, fields: dict[str, Any]) -> Reply:
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        if self.unsigned:
            return 200, '{"' + RESPONSE_KEY + '":' + text + "}"
        key = self.private_key
        if self.bad_signature:
            if self._other_key is None:
                self._other_key = make_key()
            key = self._other_key
        signature = base64.b64encode(key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()))
        return 200, '{"' + RESPONSE_KEY + '":' + text + ',"sign":"' + signature.decode("ascii") + '"}'

    def _error(self, req: Request, code: str, sub_code: str | None = None) -> Reply:
        fields: dict[str, Any] = {"code": code, "msg": MSG.get(code, "Business Failed")}
        if sub_code:
            fields["sub_code"] = sub_code
            fields["sub_msg"] = SUB_MSG.get(sub_code, sub_code)
        req.note(code=code, sub_code=sub_code)
        return self._answer(fields)

    def error_body(self, errcode: int, errmsg: str) -> Any:
        """Body of an injected failure: a signed gateway error (the reply
        text, since the signature covers its exact bytes)."""
        code = str(errcode)
        sub_code = {"20000": "isp.unknow-error"}.get(code)
        fields: dict[str, Any] = {"code": code, "msg": errmsg or MSG.get(code, "Business Failed")}
        if sub_code:
            fields.update(sub_code=sub_code, sub_msg=SUB_MSG[sub_code])
        return self._answer(fields)[1]

    def call_fields(self, request: Request) -> dict[str, Any]:
        params = self._params(request)
        biz = _json_object(params.get("biz_content", ""))
        return {"appid": params.get("app_id"), "method": params.get("method"), "grant_type": biz.get("grant_type"),
                "refresh_token": biz.get("refresh_token"), "auth_code": biz.get("code")}

    @staticmethod
    def _params(request: Request) -> dict[str, str]:
        # The SDKs put the common parameters in the query string and
        # biz_content in the body; this service sends all in the body.
        params = dict(request.query)
        if request.content_type == "application/x-www-form-urlencoded":
            params.update(request.form())
        return params

    # --------------------------------------------------------------- gateway

    @route("POST", GATEWAY_PATH)
    def _gateway(self, req: Request) -> Reply:
        params = self._params(req)
        for name in ("app_id", "method", "sign_type", "sign", "timestamp", "version"):
            if not params.get(name):
                suffix = {"sign": "signature", "sign_type": "signature-type"}.get(name, name.replace("_", "-"))
                return self._error(req, "40001", f"isv.missing-{suffix}")
        app = self.apps.get(params["app_id"])
        if app is None:
            return self._error(req, "40002", "isv.invalid-app-id")
        if params["method"] != METHOD:
            return self._error(req, "40002", "isv.invalid-method")
        if params.get("format", "JSON").upper() != "JSON":
            return self._error(req, "40002", "isv.invalid-format")
        if params.get("charset", "utf-8").lower() != "utf-8":
            return self._error(req, "40002", "isv.invalid-charset")
        if params["sign_type"] != "RSA2":
            return self._error(req, "40002", "isv.invalid-signature-type")
        if params["version"] != "1.0":
            return self._error(req, "40002", "isv.invalid-version")
        try:
            sent = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).timestamp()
        except ValueError:
            return self._error(req, "40002", "isv.invalid-timestamp")
        if abs(sent - self.now()) > self.timestamp_tolerance_s:
            return self._error(req, "40002", "isv.invalid-timestamp")
        try:
            signature = base64.b64decode(params["sign"], validate=True)
            app.public_key.verify(signature, _sign_text(params).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return self._error(req, "40002", "isv.invalid-signature")
        if self.on_request is not None:
            self.on_request(req)
        biz = _json_object(params.get("biz_content", ""))
        grant_type = biz.get("grant_type")
        if grant_type == "authorization_code":
            return self._by_code(req, app, str(biz.get("code") or ""))
        if grant_type == "refresh_token":
            return self._by_refresh(req, app, str(biz.get("refresh_token") or ""))
        return self._error(req, "40002", "isv.invalid-parameter")

    def _by_code(self, req: Request, app: IsvApp, value: str) -> Reply:
        code = self._codes.get(value)
        if code is None or code.app_id != app.app_id or code.used or self.now() - code.issued_at > self.code_ttl_s:
            return self._error(req, "40002", "isv.invalid-app-auth-code")
        code.used = True
        return self._issue(req, app, code.auth_app_id, code.user_id)

    def _by_refresh(self, req: Request, app: IsvApp, value: str) -> Reply:
        issued = self._refresh.get(value)
        if (issued is None or issued.app_id != app.app_id or not issued.refresh_usable
                or self.now() >= issued.refresh_expires_at):
            return self._error(req, "40002", "isv.invalid-refresh-token")
        return self._issue(req, app, issued.auth_app_id, issued.user_id)

    def _issue(self, req: Request, app: IsvApp, auth_app_id: str, user_id: str) -> Reply:
        now = self.now()
        previous = self._current.get((app.app_id, auth_app_id))
        if previous is not None:
            # A new pair (refresh or re-authorization) retires the old one.
            previous.refresh_usable = False
            previous.token_valid_until = min(previous.token_valid_until, now + self.grace_s)
        issued = Issued(
            app_id=app.app_id, auth_app_id=auth_app_id, user_id=user_id,
            app_auth_token="202501BB" + secrets.token_hex(16), app_refresh_token="202501BR" + secrets.token_hex(16),
            expires_at=now + self.expires_in, refresh_expires_at=now + self.re_expires_in,
            token_valid_until=now + self.expires_in,
        )
        self._current[(app.app_id, auth_app_id)] = issued
        self._tokens[issued.app_auth_token] = issued
        self._refresh[issued.app_refresh_token] = issued
        req.note(code="10000", issued_token=issued.app_auth_token, issued_refresh=issued.app_refresh_token,
                 auth_app_id=auth_app_id)
        # Alipay's field order; numbers as numbers, ids as strings.
        return self._answer({
            "code": "10000", "msg": "Success",
            "app_auth_token": issued.app_auth_token, "app_refresh_token": issued.app_refresh_token,
            "auth_app_id": auth_app_id, "user_id": user_id,
            "expires_in": self.expires_in, "re_expires_in": self.re_expires_in, "tokens": [],
        })


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
