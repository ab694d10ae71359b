"""The message crypto that WeChat Open Platform, WeCom and DingTalk use for the
callbacks they push to third-party (ISV) apps (platform-facts §7.1).

All three share one scheme (Tencent's "WXBizMsgCrypt"):

- ``key = base64decode(EncodingAESKey + "=")``: 43 characters, 32 bytes.
  AES-256-CBC with ``IV = key[:16]``.
- plaintext = 16 random bytes + 4-byte big-endian length of the message +
  the message + the receive id, PKCS#7-padded to a multiple of **32** bytes.
  The receive id names whom the message is for: the component appid (WeChat
  Open Platform), the suite id or the provider corpid (WeCom), the suiteKey
  (DingTalk).
- ``msg_signature = sha1("".join(sorted([token, timestamp, nonce, encrypt])))``
  in lowercase hex. The signature covers the ciphertext and needs the token,
  so it is checked before anything is decrypted
  (:meth:`MessageCrypto.verify_and_decrypt`).

WeChat and WeCom wrap the ciphertext in XML and encrypt XML; DingTalk wraps it
in JSON, encrypts JSON and wants its ``success`` reply encrypted as well.

The platforms' own samples accept any padding byte (one out of range counts
as no padding) and never look at the padding bytes themselves. A message they
produce always pads with 1 to 32 equal bytes, so anything else here is a
message that was not made with this key and is refused.

Feishu and Lark seal their event pushes another way (platform-facts §7.4),
in :class:`FeishuCrypto` at the end of this module.

Two errors leave this module: :class:`CallbackRejected` (not authentic, or
does not decrypt: 401) and :class:`MalformedCallback` (the body is not the
shape the platform sends, or is XML with a DTD: 400). Neither text ever
contains the token, the key or decrypted content. Body size is the caller's
to limit, before parsing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import ParseError

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

from ..core.errors import BadRequest, PighandError, SettingsError

BLOCK = 32  # the scheme's PKCS#7 block, twice AES's
_RANDOM_LEN = 16
_LEN_FIELD = 4
_NONCE_ALPHABET = string.ascii_letters + string.digits
_KEY_CHARS = re.compile(r"[A-Za-z0-9+/]{43}")


class CallbackRejected(PighandError):
    """The callback is not authentic, or does not decrypt with this app's key:
    401 (the platform signs, it sends no credential we could ask for, so no
    ``WWW-Authenticate``)."""

    status = 401


class MalformedCallback(BadRequest):
    """The callback body or query is not the shape the platform sends."""


class EncodingAESKeyError(SettingsError, ValueError):
    """An EncodingAESKey (or the token beside it) cannot be used."""


def _random_text(n: int) -> str:
    # The platforms' SDKs use letters and digits for the random prefix and
    # the nonce; staying in that alphabet keeps every receiver happy.
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(n))


@dataclass(frozen=True, init=False)
class MessageCrypto:
    """Sign, verify, encrypt and decrypt for one app's callbacks.

    ``receive_id`` is the id this app's messages carry and that
    :meth:`encrypt` writes; ``setting`` names where the key came from, for
    the error a bad key raises.
    """

    receive_id: str
    _token: str = field(repr=False)
    _key: bytes = field(repr=False)

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str, *,
                 setting: str = "EncodingAESKey") -> None:
        if not isinstance(token, str) or not token:
            raise EncodingAESKeyError(f"the token that goes with {setting} must not be empty")
        object.__setattr__(self, "receive_id", receive_id)
        object.__setattr__(self, "_token", token)
        object.__setattr__(self, "_key", decode_encoding_aes_key(encoding_aes_key, setting=setting))

    # -- signatures -------------------------------------------------------------
    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        parts = sorted([self._token, timestamp, nonce, encrypt])
        return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """Raise :class:`CallbackRejected` unless ``msg_signature`` signs these values."""
        expected = self.signature(timestamp, nonce, encrypt).encode("ascii")
        given = (msg_signature or "").encode("utf-8", "replace")
        if not hmac.compare_digest(expected, given):
            raise CallbackRejected("callback signature does not match (wrong token, or the message was altered)")

    # -- encryption -------------------------------------------------------------
    def encrypt(self, plaintext: bytes | str, *, nonce16: bytes | None = None) -> str:
        """The base64 ciphertext of ``plaintext`` for ``receive_id``.

        ``nonce16`` is the 16-byte random prefix (fresh when not given).
        """
        message = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
        if nonce16 is None:
            nonce16 = _random_text(_RANDOM_LEN).encode("ascii")
        if len(nonce16) != _RANDOM_LEN:
            raise ValueError("nonce16 must be 16 bytes")
        body = nonce16 + len(message).to_bytes(_LEN_FIELD, "big") + message + self.receive_id.encode("utf-8")
        pad = BLOCK - len(body) % BLOCK  # 1..32: a whole block when already aligned
        encryptor = self._cipher().encryptor()
        raw = encryptor.update(body + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(raw).decode("ascii")

    def decrypt(self, encrypt_b64: str, *, receive_ids: Iterable[str] | None = None,
                any_receive_id: bool = False) -> bytes:
        """The message inside ``encrypt_b64``.

        The receive id found inside must be one of ``receive_ids`` (default:
        this app's ``receive_id``): WeCom's URL verification for a suite may
        carry the suite id or the provider's corpid. ``any_receive_id``
        skips that check, for a caller that has verified the signature and
        only echoes what it decrypts (WeCom's URL check).
        """
        accepted = {self.receive_id} if receive_ids is None else set(receive_ids)
        try:
            raw = base64.b64decode(encrypt_b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise CallbackRejected("callback ciphertext is not valid base64") from None
        if not raw or len(raw) % BLOCK:
            raise CallbackRejected("callback ciphertext has a length no platform produces")
        decryptor = self._cipher().decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise CallbackRejected("callback does not decrypt with this EncodingAESKey (bad padding)")
        body = padded[:-pad]
        if len(body) < _RANDOM_LEN + _LEN_FIELD:
            raise CallbackRejected("callback does not decrypt with this EncodingAESKey (too short)")
        start = _RANDOM_LEN + _LEN_FIELD
        length = int.from_bytes(body[_RANDOM_LEN:start], "big")
        if start + length > len(body):
            raise CallbackRejected("callback does not decrypt with this EncodingAESKey (length field)")
        message, found_id = body[start:start + length], body[start + length:]
        if not any_receive_id and not any(hmac.compare_digest(found_id, rid.encode("utf-8")) for rid in accepted):
            raise CallbackRejected("callback was encrypted for another app (receive id does not match)")
        return message

    def verify_and_decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str, *,
                           receive_ids: Iterable[str] | None = None, any_receive_id: bool = False) -> bytes:
        """Check the signature, then decrypt: nothing unsigned reaches the cipher."""
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt, receive_ids=receive_ids, any_receive_id=any_receive_id)

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))


def decode_encoding_aes_key(encoding_aes_key: str, *, setting: str = "EncodingAESKey") -> bytes:
    """The 32 AES key bytes of a 43-character EncodingAESKey."""
    if not isinstance(encoding_aes_key, str) or not _KEY_CHARS.fullmatch(encoding_aes_key):
        size = len(encoding_aes_key) if isinstance(encoding_aes_key, str) else 0
        raise EncodingAESKeyError(
            f"{setting} must be the 43 characters (letters, digits, + or /) the platform's console shows; "
            f"the value given has {size} characters or others"
        )
    return base64.b64decode(encoding_aes_key + "=")


# -- query strings ---------------------------------------------------------------
@dataclass(frozen=True)
class SignedQuery:
    """The signature parameters a callback's query string carries."""

    msg_signature: str
    timestamp: str
    nonce: str

    @classmethod
    def from_wechat(cls, args: Mapping[str, str]) -> SignedQuery:
        """WeChat Open Platform and WeCom: ``msg_signature``, ``timestamp``, ``nonce``.

        (WeChat also sends ``signature``, which covers no ciphertext, and
        ``encrypt_type=aes``.)
        """
        return cls(_arg(args, "msg_signature"), _arg(args, "timestamp"), _arg(args, "nonce"))

    @classmethod
    def from_dingtalk(cls, args: Mapping[str, str]) -> SignedQuery:
        """DingTalk: ``msg_signature`` or ``signature``, ``timestamp`` or ``timeStamp``, ``nonce``.

        DingTalk's own callback samples read both spellings: older pushes say
        ``signature``/``timestamp``, newer ones ``msg_signature``/``timeStamp``.
        """
        return cls(_arg(args, "msg_signature", "signature"), _arg(args, "timestamp", "timeStamp"),
                   _arg(args, "nonce"))


def _arg(args: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = args.get(name)
        if value:
            return value
    raise MalformedCallback(f"callback query parameter {' or '.join(names)} is missing")


# -- XML (WeChat Open Platform, WeCom) ---------------------------------------------
@dataclass(frozen=True)
class XmlEnvelope:
    """The outer XML of a pushed callback."""

    encrypt: str
    # ToUserName (WeCom: the suite id or corpid; WeChat messages) or AppId
    # (WeChat Open Platform authorization events); None when absent.
    recipient: str | None


def parse_xml(data: bytes | str) -> dict[str, str]:
    """The leaf children of an ``<xml>`` document as a flat dict of str.

    CDATA sections read as their text. A DTD, entity declaration or external
    reference is refused (no platform sends one; they are how XML bombs and
    file reads get in). Elements with children are left out: the ticket and
    authorization messages are flat. A tag given twice is refused, since
    picking one of its values would be a guess.
    """
    try:
        root = _defused_fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise MalformedCallback("callback XML with a DTD or entity declarations is refused") from None
    except (ParseError, ValueError, TypeError):
        raise MalformedCallback("callback body is not well-formed XML") from None
    if root.tag != "xml":
        raise MalformedCallback("callback XML must have <xml> as its root element")
    fields: dict[str, str] = {}
    for child in root:
        if len(child) or not isinstance(child.tag, str):
            continue
        if child.tag in fields:
            raise MalformedCallback(f"callback XML has <{child.tag}> more than once")
        fields[child.tag] = child.text or ""
    return fields


def parse_xml_envelope(data: bytes | str) -> XmlEnvelope:
    """``<xml><ToUserName|AppId>…</…><Encrypt>…</Encrypt></xml>``."""
    fields = parse_xml(data)
    encrypt = fields.get("Encrypt")
    if not encrypt:
        raise MalformedCallback("callback XML has no <Encrypt> element")
    recipient = fields.get("ToUserName") or fields.get("AppId")
    return XmlEnvelope(encrypt=encrypt, recipient=recipient)


def open_xml_callback(crypto: MessageCrypto, query: SignedQuery, body: bytes | str, *,
                      receive_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Verify and decrypt a WeChat/WeCom push; its inner message as a flat dict."""
    envelope = parse_xml_envelope(body)
    plain = crypto.verify_and_decrypt(query.msg_signature, query.timestamp, query.nonce, envelope.encrypt,
                                      receive_ids=receive_ids)
    return parse_xml(plain)


# -- JSON (DingTalk) ----------------------------------------------------------------
def parse_dingtalk_body(data: bytes | str) -> str:
    """The ``encrypt`` value of DingTalk's ``{"encrypt": "..."}`` body."""
    document = json_object(data, "callback body")
    encrypt = document.get("encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        raise MalformedCallback('callback body has no "encrypt" string')
    return encrypt


def open_dingtalk_callback(crypto: MessageCrypto, query: SignedQuery, body: bytes | str) -> dict[str, Any]:
    """Verify and decrypt a DingTalk push; its event (``EventType`` …) as a dict."""
    plain = crypto.verify_and_decrypt(query.msg_signature, query.timestamp, query.nonce, parse_dingtalk_body(body))
    return json_object(plain, "decrypted callback")


def dingtalk_reply(crypto: MessageCrypto, text: str = "success", *, timestamp: str | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    """The encrypted answer DingTalk waits for: ``{"msg_signature", "timeStamp", "nonce", "encrypt"}``.

    DingTalk's SDK stamps it in milliseconds and uses a 16-character nonce;
    its samples answer every push, ``check_url`` included, with this rather
    than a plain ``success``.
    """
    timestamp = timestamp if timestamp is not None else str(int(time.time() * 1000))
    nonce = nonce if nonce is not None else _random_text(16)
    encrypt = crypto.encrypt(text)
    return {
        "msg_signature": crypto.signature(timestamp, nonce, encrypt),
        "timeStamp": timestamp,
        "nonce": nonce,
        "encrypt": encrypt,
    }


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, TypeError):
        raise MalformedCallback(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedCallback(f"{what} is not a JSON object")
    return document


# -- Feishu / Lark (event subscriptions) -------------------------------------------
_AES_BLOCK = 16


@dataclass(frozen=True, init=False)
class FeishuCrypto:
    """The Encrypt Key of a Feishu/Lark app's event subscription.

    - ``key = sha256(encrypt_key)``; the body is ``{"encrypt": base64(iv +
      AES-256-CBC(json))}``: the first 16 bytes of the decoded data are the
      IV, and the plaintext is PKCS#7-padded to 16 bytes.
    - ``X-Lark-Signature = sha256(X-Lark-Request-Timestamp +
      X-Lark-Request-Nonce + encrypt_key + raw body)`` in lowercase hex,
      over the body's bytes as sent.

    (Checked against lark-oapi's ``AESCipher`` and
    ``EventDispatcherHandler._verify_sign``.)
    """

    _encrypt_key: str = field(repr=False)
    _key: bytes = field(repr=False)

    def __init__(self, encrypt_key: str) -> None:
        if not isinstance(encrypt_key, str) or not encrypt_key:
            raise EncodingAESKeyError("the Encrypt Key must not be empty here (an app without one gets plain events)")
        object.__setattr__(self, "_encrypt_key", encrypt_key)
        object.__setattr__(self, "_key", hashlib.sha256(encrypt_key.encode("utf-8")).digest())

    def signature(self, timestamp: str, nonce: str, body: bytes) -> str:
        return hashlib.sha256((timestamp + nonce + self._encrypt_key).encode("utf-8") + body).hexdigest()

    def verify(self, timestamp: str, nonce: str, body: bytes, signature: str) -> None:
        """Raise :class:`CallbackRejected` unless ``signature`` signs ``body``."""
        expected = self.signature(timestamp, nonce, body).encode("ascii")
        if not hmac.compare_digest(expected, (signature or "").encode("utf-8", "replace")):
            raise CallbackRejected("callback signature does not match (wrong Encrypt Key, or the message was "
                                   "altered)")

    def encrypt(self, plaintext: bytes | str, *, iv: bytes | None = None) -> str:
        message = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
        iv = secrets.token_bytes(_AES_BLOCK) if iv is None else iv
        if len(iv) != _AES_BLOCK:
            raise ValueError("iv must be 16 bytes")
        pad = _AES_BLOCK - len(message) % _AES_BLOCK
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        raw = encryptor.update(message + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(iv + raw).decode("ascii")

    def decrypt(self, encrypt_b64: str) -> bytes:
        try:
            raw = base64.b64decode(encrypt_b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise CallbackRejected("callback ciphertext is not valid base64") from None
        if len(raw) < 2 * _AES_BLOCK or len(raw) % _AES_BLOCK:
            raise CallbackRejected("callback ciphertext has a length no platform produces")
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(raw[:_AES_BLOCK])).decryptor()
        padded = decryptor.update(raw[_AES_BLOCK:]) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= _AES_BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise CallbackRejected("callback does not decrypt with this Encrypt Key (bad padding)")
        return padded[:-pad]

