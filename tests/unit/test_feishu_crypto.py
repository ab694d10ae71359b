"""Feishu/Lark event crypto (platform-facts §7.4) against the official
lark-oapi SDK's own functions: what one seals the other opens, and the
signature is the one its dispatcher checks."""

from __future__ import annotations

import json

import lark_oapi
import pytest
from lark_oapi.core.model import RawRequest
from lark_oapi.core.utils import AESCipher

from pighand_token.providers.callback_crypto import CallbackRejected, FeishuCrypto

KEY = "encrypt-K3y-0001"


def test_what_we_seal_lark_oapi_opens_and_the_other_way_round() -> None:
    crypto = FeishuCrypto(KEY)
    message = json.dumps({"challenge": "c-1", "type": "url_verification", "token": "t"})
    assert AESCipher(KEY).decrypt_str(crypto.encrypt(message)) == message
    for size in (0, 15, 16, 17, 1000):
        assert crypto.decrypt(crypto.encrypt("x" * size)) == b"x" * size


def test_the_signature_is_the_one_lark_oapi_checks() -> None:
    crypto = FeishuCrypto(KEY)
    body = json.dumps({"encrypt": crypto.encrypt(json.dumps({
        "uuid": "u-1", "ts": "1700000000.1", "token": "t", "type": "event_callback",
        "event": {"type": "app_ticket", "app_id": "cli_a", "app_ticket": "tk"}}))}).encode()
    seen: list[object] = []
    handler = lark_oapi.EventDispatcherHandler.builder(KEY, "t").register_p1_customized_event(
        "app_ticket", seen.append).build()
    request = RawRequest()
    request.uri, request.body = "/", body
    request.headers = {"X-Lark-Request-Timestamp": "1700000000", "X-Lark-Request-Nonce": "n-1",
                       "X-Lark-Signature": crypto.signature("1700000000", "n-1", body)}
    assert handler.do(request).status_code == 200 and seen
    crypto.verify("1700000000", "n-1", body, request.headers["X-Lark-Signature"])
    with pytest.raises(CallbackRejected):
        crypto.verify("1700000001", "n-1", body, request.headers["X-Lark-Signature"])


@pytest.mark.parametrize("bad", ["not base64!", "", "QUJD", "A" * 44])
def test_what_does_not_decrypt_is_rejected_without_echoing_it(bad: str) -> None:
    with pytest.raises(CallbackRejected) as caught:
        FeishuCrypto(KEY).decrypt(bad)
    assert KEY not in caught.value.message and (not bad or bad not in caught.value.message)


def test_another_key_does_not_open_it() -> None:
    # A fixed IV: the outcome (bad padding) is the same on every run.
    sealed = FeishuCrypto("other-key").encrypt('{"a": 1}', iv=bytes(16))
    with pytest.raises(CallbackRejected):
        FeishuCrypto(KEY).decrypt(sealed)
