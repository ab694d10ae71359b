"""Alipay: the ISV ``app_auth_token`` of each authorizing merchant.

Alipay has no app-level token (platform-facts §3.1): every gateway call is
signed with the app's RSA2 private key. What an ISV keeps is, per merchant
that authorized its app, an ``app_auth_token`` and the refresh token that
replaces it (``alipay.open.auth.token.app``, §3.5). So here:

- the credential row is the ISV app: appid = its app_id, secret = the app
  private key PEM followed by the Alipay public key PEM (to verify answers);
- a token appid is ``<app_id>:<auth_app_id>``; the merchant's grant lives in
  the ``alipay_grant`` table (written by ``flask alipay grant``);
- ``fetch`` serves the stored grant while it is good, and otherwise refreshes
  it with the stored refresh token, installing the new pair by compare-and-set
  on the old refresh token. The service calls ``fetch`` under the per-token
  lock, so one worker of one instance refreshes a merchant at a time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from ..core.domain import Credential, Grant, Token
from ..core.errors import BadRequest, NotFound, PighandError, UpstreamError, UpstreamTimeout
from ..core.ports import Clock, GrantStore
from .base import HttpProvider, ProviderContext, proxy_refusal, redact, transport_error

METHOD = "alipay.open.auth.token.app"
RESPONSE_KEY = METHOD.replace(".", "_") + "_response"
SUCCESS = "10000"
# 20000: service unavailable (isp.unknow-error): asking again soon can help.
RETRYABLE_CODES = {"20000"}
MIN_KEY_BITS = 2048
# The gateway reads `timestamp` as China Standard Time.
CHINA = timezone(timedelta(hours=8), "CST")
# Alipay now describes app_auth_token as valid until the merchant re-authorizes
# or the ISV refreshes; an answer without expires_in is given a year, so the
# scheduler still rotates it eventually instead of treating it as expired.
DEFAULT_LIFE_S = 365 * 86400.0

# What an operator can do about the sub_codes this call is known to return.
HINTS = {
    "isv.invalid-signature": "the gateway could not verify the request signature: the private key in the "
                             "credential does not match the app public key set for this app_id in the Alipay console",
    "isv.invalid-app-id": "the gateway does not know this app_id (production app against the sandbox gateway, "
                          "or the other way round?)",
    "isv.invalid-timestamp": "the gateway refused the request time; check this server's clock",
    "isv.invalid-refresh-token": "the stored refresh token is no longer accepted; the merchant must authorize "
                                 "the app again, then run 'pighand-token alipay grant'",
    "isv.invalid-app-auth-code": "the app_auth_code is wrong, already used or older than a day; "
                                 "ask the merchant to authorize again for a new one",
}
CODE_HINTS = {
    "20001": "the merchant's authorization is no longer valid; the merchant must authorize the app again",
    "40006": "the app lacks the permission for alipay.open.auth.token.app (is it a third-party app?)",
}

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_PRIVATE_LABELS = {"PRIVATE KEY", "RSA PRIVATE KEY"}
_PUBLIC_LABELS = {"PUBLIC KEY", "RSA PUBLIC KEY"}
_BUNDLE_FORM = ("the alipay secret must be the app's RSA2 private key in PEM (-----BEGIN PRIVATE KEY----- or "
                "-----BEGIN RSA PRIVATE KEY-----) followed by the Alipay public key in PEM "
                "(-----BEGIN PUBLIC KEY-----)")


@dataclass(frozen=True)
class KeyBundle:
    private_key: rsa.RSAPrivateKey
    alipay_public_key: rsa.RSAPublicKey


def parse_key_bundle(secret: str) -> KeyBundle:
    """The two keys of an Alipay credential secret, or BadRequest saying what
    is wrong. Messages name PEM labels and sizes only, never key material."""
    blocks = [(m.group(1).strip(), m.group(0)) for m in _PEM.finditer(secret)]
    if _PEM.sub("", secret).strip():
        raise BadRequest(f"{_BUNDLE_FORM}; found text that is not in a PEM block (keys copied from the Alipay "
                         "console as bare base64 need their -----BEGIN ...----- and -----END ...----- lines)")
    privates = [pem for label, pem in blocks if label in _PRIVATE_LABELS]
    publics = [pem for label, pem in blocks if label in _PUBLIC_LABELS]
    for label, _ in blocks:
        if label == "ENCRYPTED PRIVATE KEY":
            raise BadRequest("the app private key is encrypted; store it unencrypted "
                             "(openssl pkcs8 -topk8 -nocrypt), the secret is kept in the database only")
        if label == "CERTIFICATE":
            raise BadRequest(f"certificate mode is not supported; {_BUNDLE_FORM}")
        if label not in _PRIVATE_LABELS | _PUBLIC_LABELS:
            raise BadRequest(f"a {label} block is not an RSA key; {_BUNDLE_FORM}")
    if len(privates) != 1:
        raise BadRequest(f"{_BUNDLE_FORM}; found {len(privates)} private keys")
    if len(publics) != 1:
        missing = "the Alipay public key is missing" if not publics else f"found {len(publics)} public keys"
        raise BadRequest(f"{_BUNDLE_FORM}; {missing}")

    try:
        private = serialization.load_pem_private_key(privates[0].encode("ascii"), password=None)
    except TypeError:
        raise BadRequest("the app private key is encrypted; store it unencrypted") from None
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise BadRequest("the app private key is not a valid PEM key") from None
    try:
        public = serialization.load_pem_public_key(publics[0].encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise BadRequest("the Alipay public key is not a valid PEM key") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise BadRequest(f"the app private key is a {_kind(private)} key; Alipay RSA2 needs an RSA key")
    if not isinstance(public, rsa.RSAPublicKey):
        raise BadRequest(f"the Alipay public key is a {_kind(public)} key; Alipay RSA2 needs an RSA key")
    if private.key_size < MIN_KEY_BITS:
        raise BadRequest(f"the app private key has {private.key_size} bits; RSA2 needs at least {MIN_KEY_BITS}")
    if public.key_size < MIN_KEY_BITS:
        raise BadRequest(f"the Alipay public key has {public.key_size} bits; RSA2 needs at least {MIN_KEY_BITS}")
    if public.public_numbers() == private.public_key().public_numbers():
        # The usual mix-up: the app's own public key pasted where the Alipay
        # public key (shown next to it in the console) belongs.
        raise BadRequest("the public key is the app's own public key; the secret needs the Alipay public key "
                         "(支付宝公钥) from the Alipay console")
    return KeyBundle(private, public)


def _kind(key: object) -> str:
    kinds: tuple[tuple[str, tuple[type, ...]], ...] = (
        ("EC", (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)),
        ("DSA", (dsa.DSAPrivateKey, dsa.DSAPublicKey)),
        ("Ed25519", (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)),
        ("Ed448", (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)),
    )
    for name, types in kinds:
        if isinstance(key, types):
            return name
    return "non-RSA"


def sign_content(params: Mapping[str, str]) -> str:
    """The text an Alipay request signature covers (platform-facts §3.3):
    every parameter but ``sign`` with a non-empty value, sorted by key, as
    raw ``key=value`` joined by ``&``; ``sign_type`` is included."""
    return "&".join(f"{key}={params[key]}" for key in sorted(params) if key != "sign" and params[key] != "")


def rsa2_sign(content: str, key: rsa.RSAPrivateKey) -> str:
    signature = key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def rsa2_verify(content: bytes, signature: str, key: rsa.RSAPublicKey) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, content, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """Where each top-level member's value lies in a JSON object's text.

    Alipay signs the exact bytes of the ``*_response`` object, so it is cut
    out of the body rather than re-serialized (key order, spacing and escapes
    would differ). Raises ValueError if ``text`` is not one JSON object.
    """
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if i >= n or text[i] != "{":
        raise ValueError("not a JSON object")
    i = skip(i + 1)
    if i < n and text[i] == "}":
        if skip(i + 1) != n:
            raise ValueError("text after the JSON object")
        return spans
    while True:
        key, i = decoder.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError("member name is not a string")
        i = skip(i)
        if i >= n or text[i] != ":":
            raise ValueError("':' expected")
        start = skip(i + 1)
        _, end = decoder.raw_decode(text, start)
        spans[key] = (start, end)
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < n and text[i] == "}":
            if skip(i + 1) != n:
                raise ValueError("text after the JSON object")
            return spans
        raise ValueError("',' or '}' expected")


def split_token_appid(appid: str) -> tuple[str, str]:
    app_id, _, auth_app_id = appid.partition(":")
    return app_id, auth_app_id


class AlipayProvider(HttpProvider):
    platform = "alipay"
    appid_pattern = "[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+"
    appid_example = "2021000000000001:2021000000000002"

    def __init__(self, *, grants: GrantStore, margin_s: float, session: requests.Session, base_url: str,
                 timeout_s: float, clock: Clock) -> None:
        super().__init__(session=session, base_url=base_url, timeout_s=timeout_s, clock=clock, platform="alipay")
        self.grants = grants
        self.margin_s = float(margin_s)
        self._keys: dict[str, KeyBundle] = {}
        self._keys_mutex = threading.Lock()

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        if ctx.grants is None:
            raise ValueError("the alipay provider needs a grant store")
        return cls(grants=ctx.grants, margin_s=ctx.settings.corn_interval, session=ctx.session,
                   base_url=ctx.settings.alipay_gateway, timeout_s=ctx.settings.upstream_timeout, clock=ctx.clock)

    # -- appids and credentials ---------------------------------------------
    def appid_error(self, appid: str) -> str | None:
        app_id, auth_app_id = split_token_appid(appid)
        if not app_id or not auth_app_id or ":" in auth_app_id:
            return ("alipay appid must be <app_id>:<auth_app_id>: the ISV app_id and the app id of the merchant "
                    "that authorized it, e.g. 2021000000000001:2021000000000002")
        return None

    def credential_appid(self, appid: str) -> str:
        return split_token_appid(appid)[0]

    def check_credential(self, appid: str, secret: str) -> None:
        if ":" in appid:
            raise BadRequest("the alipay credential appid is the ISV app_id alone; merchants are added with "
                             "'pighand-token alipay grant APPID' (it asks for the APP_AUTH_CODE)")
        parse_key_bundle(secret)

    def token_appids(self, appid: str) -> list[str]:
        return [grant.token_appid for grant in self.grants.list(appid)]

    def key_bundle(self, credential: Credential) -> KeyBundle:
        """The credential's parsed keys, parsed once per secret."""
        digest = hashlib.sha256(credential.secret.encode("utf-8")).hexdigest()
        bundle = self._keys.get(digest)
        if bundle is not None:
            return bundle
        app_id = split_token_appid(credential.appid)[0]
        try:
            bundle = parse_key_bundle(credential.secret)
        except BadRequest as exc:
            # Not the caller's fault: the stored credential is unusable.
            raise PighandError(f"the alipay credential of app {app_id} is unusable: {exc.message}; replace it "
                               f"with 'pighand-token platform add alipay {app_id} --secret-file - --update'"
                               ) from None
        with self._keys_mutex:
            self._keys[digest] = bundle
        return bundle

    # -- tokens ----------------------------------------------------------------
    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        app_id, auth_app_id = split_token_appid(credential.appid)
        grant = self.grants.get(app_id, auth_app_id)
        if grant is None:
            raise NotFound(f"no grant for merchant {auth_app_id} of alipay app {app_id}; once the merchant has "
                           f"authorized the app, run 'pighand-token alipay grant {app_id}' "
                           "(it asks for the APP_AUTH_CODE)")
        now = self.clock()
        stored = Token(value=grant.app_auth_token, expires_at=grant.expires_at, fetched_at=grant.updated_at)
        # The grant table is the truth and the token tiers its cache: a grant
        # that will not be due before the next scheduler tick is served as it
        # is (no gateway call), unless it is the very token being replaced.
        if grant.app_auth_token != replacing and not stored.due(now, self.margin_s, self.margin_s):
            return stored
        return self._refresh(credential, grant, now, replacing)

    def _refresh(self, credential: Credential, grant: Grant, now: float, replacing: str | None) -> Token:
        if grant.refresh_expires_at is not None and grant.refresh_expires_at <= now:
            raise UpstreamError(
                self.platform,
                f"the refresh token of merchant {grant.auth_app_id} expired; the merchant must authorize the app "
                f"again, then run 'pighand-token alipay grant {grant.app_id}' (it asks for the APP_AUTH_CODE)")
        started = self.clock()
        try:
            fields = self._call(credential, {"grant_type": "refresh_token",
                                             "refresh_token": grant.app_refresh_token},
                                secrets=[grant.app_refresh_token, grant.app_auth_token])
        except UpstreamError:
            # The gateway refuses a refresh token that was just used. If the
            # row has moved on meanwhile (a new authorization stored by the
            # CLI), its pair is the answer, not "authorize again".
            latest = self.grants.get(grant.app_id, grant.auth_app_id)
            if (latest is not None and latest.app_refresh_token != grant.app_refresh_token
                    and latest.app_auth_token != replacing and latest.expires_at > self.clock()):
                return Token(value=latest.app_auth_token, expires_at=latest.expires_at,
                             fetched_at=latest.updated_at)
            raise
        new = self._grant(fields, grant.app_id, started, expected_auth_app_id=grant.auth_app_id,
                          user_id=grant.user_id)
        if not self.grants.rotate(grant, new):
            # Someone stored a new authorization for this merchant while this
            # refresh was under way; that pair is newer than ours. Asking again
            # reads it (and serves it if it is good) instead of overwriting it.
            raise UpstreamError(self.platform, f"the grant of merchant {grant.auth_app_id} changed while it was "
                                "being refreshed", retryable=True)
        return Token(value=new.app_auth_token, expires_at=new.expires_at, fetched_at=new.updated_at)

    def authorize(self, credential: Credential, code: str) -> Grant:
        """Exchange a merchant's app_auth_code for its grant and store it
        (replacing any earlier grant of that merchant)."""
        started = self.clock()
        fields = self._call(credential, {"grant_type": "authorization_code", "code": code}, secrets=[code])
        grant = self._grant(fields, credential.appid, started)
        self.grants.save(grant)
        return grant

    def _grant(self, fields: Mapping[str, Any], app_id: str, started: float, *,
               expected_auth_app_id: str | None = None, user_id: str | None = None) -> Grant:
        token = fields.get("app_auth_token")
        refresh = fields.get("app_refresh_token")
        auth_app_id = str(fields.get("auth_app_id") or expected_auth_app_id or "")
        if not isinstance(token, str) or not token or not isinstance(refresh, str) or not refresh:
            raise UpstreamError(self.platform, "answer has no app_auth_token/app_refresh_token")
        if not auth_app_id or ":" in auth_app_id:
            raise UpstreamError(self.platform, "answer has no usable auth_app_id")
        if expected_auth_app_id is not None and auth_app_id != expected_auth_app_id:
            raise UpstreamError(self.platform, f"refresh for merchant {expected_auth_app_id} was answered for "
                                f"merchant {auth_app_id}")
        life = _seconds(fields.get("expires_in"))
        refresh_life = _seconds(fields.get("re_expires_in"))
        answered_user = fields.get("user_id")
        return Grant(
            app_id=app_id, auth_app_id=auth_app_id, app_auth_token=token, app_refresh_token=refresh,
            # Counted from before the call: the token cannot outlive that.
            expires_at=started + (life if life is not None else DEFAULT_LIFE_S),
            refresh_expires_at=None if refresh_life is None else started + refresh_life,
            user_id=str(answered_user) if answered_user else user_id,
            # Stamped when the answer arrived: a PUT that came in while this
            # refresh was under way sees a token at least as new as its request
            # and takes it instead of rotating the pair again.
            updated_at=max(started, self.clock()),
        )

    # -- the gateway ------------------------------------------------------------
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.clock(), CHINA).strftime("%Y-%m-%d %H:%M:%S")

    def _call(self, credential: Credential, biz: Mapping[str, str], *, secrets: Iterable[str]) -> dict[str, Any]:
        """One signed call of alipay.open.auth.token.app; the verified
        response object of a successful answer, else UpstreamError."""
        secrets = [s for s in secrets if s]
        keys = self.key_bundle(credential)
        params = {
            "app_id": split_token_appid(credential.appid)[0],
            "method": METHOD,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": self.timestamp(),
            "version": "1.0",
            "biz_content": json.dumps(dict(biz), ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = rsa2_sign(sign_content(params), keys.private_key)
        text = self._post(params, secrets)
        try:
            spans = top_level_spans(text)
        except ValueError:
            raise UpstreamError(self.platform, "unexpected answer (not a JSON object)", retryable=True) from None
        key = RESPONSE_KEY if RESPONSE_KEY in spans else "error_response" if "error_response" in spans else None
        if key is None:
            raise UpstreamError(self.platform, f"answer has no {RESPONSE_KEY}", retryable=True)
        start, end = spans[key]
        raw = text[start:end]
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise UpstreamError(self.platform, f"{key} is not a JSON object")
        signature = json.loads(text[slice(*spans["sign"])]) if "sign" in spans else None
        code = str(body.get("code", ""))
        if signature or code == SUCCESS:
            # Errors may come unsigned; a signature that is there must verify,
            # and a success is never believed without one.
            if not isinstance(signature, str) or not signature:
                raise UpstreamError(self.platform, "answer is not signed; refusing an unverified answer")
            if not rsa2_verify(raw.encode("utf-8"), signature, keys.alipay_public_key):
                raise UpstreamError(self.platform, "answer signature does not verify with the Alipay public key in "
                                    "the credential (wrong public key, or the answer was altered)")
        if code != SUCCESS:
            raise self._error(body, secrets)
        return body if body.get("app_auth_token") else _first_token(body)

    def _post(self, params: Mapping[str, str], secrets: list[str]) -> str:
        try:
            response = self.session.post(
                self.base_url, data=dict(params), timeout=self.timeout_s,
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
            )
        except requests.Timeout:
            raise UpstreamTimeout(self.platform, f"no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise transport_error(self.platform, exc, secrets, self.session, what="the gateway") from None
        status = response.status_code
        refusal = proxy_refusal(self.platform, status, self.session)
        if refusal is not None:
            raise refusal
        if status >= 500:
            raise UpstreamError(self.platform, f"HTTP {status} from the gateway", retryable=True)
        if status >= 400:
            raise UpstreamError(self.platform, f"HTTP {status} from the gateway")
        try:
            return response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise UpstreamError(self.platform, "unexpected answer (not UTF-8 text)") from None

    def _error(self, body: Mapping[str, Any], secrets: list[str]) -> UpstreamError:
        code = str(body.get("code", "")) or "?"
        sub_code = str(body.get("sub_code") or "")
        detail = "; ".join(str(body[k]) for k in ("msg", "sub_msg") if body.get(k))
        detail = redact(detail, secrets) or "no msg"
        hint = HINTS.get(sub_code) or CODE_HINTS.get(code)
        errcode: int | str = sub_code or (int(code) if code.isdigit() else code)
        message = f"{hint} ({detail})" if hint else detail
        if sub_code and code:
            message += f" [code {code}]"
        return UpstreamError(self.platform, message, errcode=errcode, retryable=code in RETRYABLE_CODES)


def _seconds(value: Any) -> float | None:
    """A positive lifetime from the answer (the gateway sends numbers or
    digit strings), else None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def _first_token(body: Mapping[str, Any]) -> dict[str, Any]:
    # Newer answers may carry the grant only in `tokens` (one per authorized app).
    tokens = body.get("tokens")
    if isinstance(tokens, list):
        for item in tokens:
            if isinstance(item, dict) and item.get("app_auth_token"):
                return item
    return dict(body)
