"""Callback crypto for WeChat Open Platform, WeCom and DingTalk, checked
against the platforms' published sample vectors and against two reference
implementations: wechatpy 1.8.18 (WeChat Open Platform, and WeCom through
``wechatpy.enterprise.crypto``) and dingtalk-sdk 1.3.8 (DingTalk)."""

from __future__ import annotations

import base64
import hashlib
import json
import string
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dingtalk.crypto import DingTalkCrypto
from hypothesis import given
from hypothesis import strategies as st
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto

from pighand_token.core.errors import BadRequest, SettingsError
from pighand_token.providers.callback_crypto import (
    CallbackRejected,
    MalformedCallback,
    MessageCrypto,
    SignedQuery,
    dingtalk_reply,
    open_dingtalk_callback,
    open_xml_callback,
    parse_dingtalk_body,
    parse_xml,
    parse_xml_envelope,
)

TOKEN = "pighandCallbackToken42"
AES_KEY = "kT9xQ2mV7bN4cR8sL1pW6yH3jF5gD0aZ2eU7iO9qX4t"
COMPONENT_APPID = "wx3a7c0f5e9b1d2c4e"
SUITE_ID = "ww5b2e8d1c7a4f9e03"
PROVIDER_CORPID = "ww0f1e2d3c4b5a6978"
SUITE_KEY = "suiteqz8k1m2n3b4v5c6"
TICKET = "ticket@@@工单-Zx81"
COMPONENT_TICKET_XML = (
    f"<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><CreateTime>1413192605</CreateTime>"
    "<InfoType><![CDATA[component_verify_ticket]]></InfoType>"
    f"<ComponentVerifyTicket><![CDATA[{TICKET}]]></ComponentVerifyTicket></xml>"
)


def component() -> MessageCrypto:
    return MessageCrypto(TOKEN, AES_KEY, COMPONENT_APPID)


def raw_key() -> bytes:
    return base64.b64decode(AES_KEY + "=")


def forge(body: bytes) -> str:
    """Encrypt ``body`` as it is (no padding added) the way the scheme does:
    for messages no platform would send."""
    key = raw_key()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(body) + encryptor.finalize()).decode()


def sha1_signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def assert_keeps_secrets(error: Exception, *extra: str) -> None:
    text = " ".join([str(error), repr(error), getattr(error, "message", "")])
    for secret in (TOKEN, AES_KEY, TICKET, COMPONENT_APPID, *extra):
        assert secret not in text
    assert error.__cause__ is None


# -- the platforms' own sample vectors ---------------------------------------------
# Tencent's WXBizMsgCrypt sample (WeCom callback/Sample.py).
WECOM_SAMPLE = MessageCrypto("hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo", "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
                             "ww1436e0e65a779aee")


def test_wecom_sample_url_verification_answers_the_echostr_plaintext() -> None:
    echo = WECOM_SAMPLE.verify_and_decrypt(
        "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb", "1476416373", "47744683",
        "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==")
    assert echo == b"1288432023552776189"


def test_wecom_sample_push_decrypts_to_its_chinese_message() -> None:
    body = (
        b"<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\n<Encrypt><![CDATA["
        b"Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBhzTtRLNshw2"
        b"AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8"
        b"KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQ"
        b"DCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+]]></Encrypt>\n"
        b"<AgentID><![CDATA[1000002]]></AgentID>\n</xml>"
    )
    query = SignedQuery.from_wechat(
        {"msg_signature": "0c3914025cb4b4d68103f6bfc8db550f79dcf48e", "timestamp": "1476422779",
         "nonce": "1597212914"})
    assert parse_xml_envelope(body).recipient == "ww1436e0e65a779aee"
    message = open_xml_callback(WECOM_SAMPLE, query, body)
    assert message == {"ToUserName": "ww1436e0e65a779aee", "FromUserName": "ChenJiaShun",
                       "CreateTime": "1476422779", "MsgType": "text", "Content": "你好",
                       "MsgId": "1456453720", "AgentID": "1000002"}


# DingTalk's callback documentation sample (query names signature/timestamp)
# and the sample in DingTalk's DingTalk-Callback-Crypto repository.
def test_dingtalk_documented_suite_check_decrypts_with_the_old_query_names() -> None:
    crypto = MessageCrypto("123456", "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", "suite4xxxxxxxxxxxxxxx")
    query = SignedQuery.from_dingtalk(
        {"signature": "5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0", "timestamp": "1445827045067", "nonce": "nEXhMP4r"})
    body = json.dumps({"encrypt": (
        "1a3NBxmCFwkCJvfoQ7WhJHB+iX3qHPsc9JbaDznE1i03peOk1LaOQoRz3+nlyGNhwmwJ3vDMG+OzrHMeiZI7gTRWVdUBmfxjZ8Ej23JVYa9V"
        "rYeJ5as7XM/ZpulX8NEQis44w53h1qAgnC3PRzM7Zc/D6Ibr0rgUathB6zRHP8PYrfgnNOS9PhSBdHlegK+AGGanfwjXuQ9+0pZcy0w9lQ==")})
    assert open_dingtalk_callback(crypto, query, body) == {
        "EventType": "check_create_suite_url", "Random": "LPIdSnlF", "TestSuiteKey": "suite4xxxxxxxxxxxxxxx"}


def test_dingtalk_sdk_sample_check_url_decrypts_with_the_new_query_names() -> None:
    crypto = MessageCrypto("mryue", "Yue0EfdN5900c1ce5cf6A152c63DDe1808a60c5ecd7", "ding6ccabc44d2c8d38b")
    query = SignedQuery.from_dingtalk(
        {"msg_signature": "03044561471240d4a14bb09372dfcfd4fd0e40cb", "timeStamp": "1608001896814",
         "nonce": "WL4PK6yA"})
    body = (b'{"encrypt": "0vJiX6vliEpwG3U45CtXqi+m8PXbQRARJ8p8BbDuD1EMTDf0jKpQ79QS93qEk7XHpP6u+oTTrd15NRPvNvmB'
            b'KyDCYxxOK+HZeKju4yhELOFchzNukR+t8SB/qk4ROMu3"}')
    assert open_dingtalk_callback(crypto, query, body) == {"EventType": "check_url"}


# -- wechatpy: WeChat Open Platform ---------------------------------------------------
def test_a_ticket_push_wechatpy_encrypts_and_signs_is_verified_and_read() -> None:
    reply = WeChatCrypto(TOKEN, AES_KEY, COMPONENT_APPID).encrypt_message(COMPONENT_TICKET_XML, "1320562132",
                                                                          "1413192605")
    signed = parse_xml(reply)
    # What WeChat POSTs to the authorization-event URL: AppId beside Encrypt.
    body = f"<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><Encrypt><![CDATA[{signed['Encrypt']}]]></Encrypt></xml>"
    query = SignedQuery.from_wechat({"signature": "ignored", "timestamp": "1413192605", "nonce": "1320562132",
                                     "encrypt_type": "aes", "msg_signature": signed["MsgSignature"]})
    assert component().signature("1413192605", "1320562132", signed["Encrypt"]) == signed["MsgSignature"]
    assert parse_xml_envelope(body.encode()).recipient == COMPONENT_APPID
    assert open_xml_callback(component(), query, body.encode()) == {
        "AppId": COMPONENT_APPID, "CreateTime": "1413192605", "InfoType": "component_verify_ticket",
        "ComponentVerifyTicket": TICKET}


def test_what_we_encrypt_and_sign_wechatpy_verifies_and_decrypts() -> None:
    ours = component()
    encrypt = ours.encrypt(COMPONENT_TICKET_XML)
    signature = ours.signature("1700000000", "nonce77", encrypt)
    body = f"<xml><AppId>{COMPONENT_APPID}</AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    plain = WeChatCrypto(TOKEN, AES_KEY, COMPONENT_APPID).decrypt_message(body, signature, "1700000000", "nonce77")
    assert plain == COMPONENT_TICKET_XML


def test_cdata_markup_and_chinese_survive_the_round_trip_through_wechatpy() -> None:
    inner = "<xml><Content><![CDATA[a<b>&c 授权成功 \U0001f600]]></Content><Plain>纯文本 &amp; more</Plain></xml>"
    reply = parse_xml(WeChatCrypto(TOKEN, AES_KEY, COMPONENT_APPID).encrypt_message(inner, "n1", "1"))
    plain = component().verify_and_decrypt(reply["MsgSignature"], "1", "n1", reply["Encrypt"])
    assert parse_xml(plain) == {"Content": "a<b>&c 授权成功 \U0001f600", "Plain": "纯文本 & more"}
    back = component().encrypt(plain)
    assert WeChatCrypto(TOKEN, AES_KEY, COMPONENT_APPID).decrypt_message(
        {"Encrypt": back}, component().signature("2", "n2", back), "2", "n2") == inner


# -- wechatpy: WeCom URL verification ---------------------------------------------------
def wecom_echostr(receive_id: str, echo: str) -> tuple[str, str]:
    """An echostr and its msg_signature as wechatpy's WeCom crypto makes them
    (the echostr is the ciphertext of a random number)."""
    signed = parse_xml(WeComCrypto(TOKEN, AES_KEY, receive_id).encrypt_message(echo, "1372623149", "1409659589"))
    return signed["Encrypt"], signed["MsgSignature"]


def test_wecom_url_verification_accepts_the_suite_id_or_the_provider_corpid() -> None:
    suite = MessageCrypto(TOKEN, AES_KEY, SUITE_ID)
    for receive_id in (SUITE_ID, PROVIDER_CORPID):
        echostr, signature = wecom_echostr(receive_id, "5927782489442352469")
        assert suite.verify_and_decrypt(signature, "1409659589", "1372623149", echostr,
                                        receive_ids={SUITE_ID, PROVIDER_CORPID}) == b"5927782489442352469"


def test_a_suite_refuses_an_echostr_for_the_provider_unless_told_to_accept_it() -> None:
    echostr, signature = wecom_echostr(PROVIDER_CORPID, "5927782489442352469")
    with pytest.raises(CallbackRejected, match="receive id") as caught:
        MessageCrypto(TOKEN, AES_KEY, SUITE_ID).verify_and_decrypt(signature, "1409659589", "1372623149", echostr)
    assert_keeps_secrets(caught.value, SUITE_ID, PROVIDER_CORPID, "5927782489442352469")


def test_an_echostr_we_encrypt_passes_wechatpys_wecom_url_check() -> None:
    suite = MessageCrypto(TOKEN, AES_KEY, SUITE_ID)
    echostr = suite.encrypt("8812342")
    signature = suite.signature("1409659589", "263014780", echostr)
    assert WeComCrypto(TOKEN, AES_KEY, SUITE_ID).check_signature(signature, "1409659589", "263014780",
                                                                  echostr) == "8812342"


# -- dingtalk-sdk ---------------------------------------------------------------------
def dingtalk() -> MessageCrypto:
    return MessageCrypto(TOKEN, AES_KEY, SUITE_KEY)


def test_a_suite_ticket_dingtalk_sdk_encrypts_is_verified_and_read() -> None:
    event = {"EventType": "suite_ticket", "SuiteKey": SUITE_KEY, "SuiteTicket": TICKET, "TimeStamp": "1700000000000"}
    signed = DingTalkCrypto(TOKEN, AES_KEY, SUITE_KEY).encrypt_message(json.dumps(event, ensure_ascii=False),
                                                                       "vG8wJ2kLq1Xz4nPb", "1700000000000")
    body = json.dumps({"encrypt": signed["encrypt"]}).encode()
    new = {"msg_signature": signed["msg_signature"], "timeStamp": signed["timeStamp"], "nonce": signed["nonce"]}
    old = {"signature": signed["msg_signature"], "timestamp": signed["timeStamp"], "nonce": signed["nonce"]}
    for query in (new, old):
        assert open_dingtalk_callback(dingtalk(), SignedQuery.from_dingtalk(query), body) == event


def test_the_success_reply_is_what_dingtalk_sdk_reads_back() -> None:
    reply = dingtalk_reply(dingtalk())
    assert set(reply) == {"msg_signature", "timeStamp", "nonce", "encrypt"}
    assert reply["timeStamp"].isdigit() and abs(int(reply["timeStamp"]) - time.time() * 1000) < 60_000
    assert len(reply["nonce"]) == 16 and set(reply["nonce"]) <= set(string.ascii_letters + string.digits)
    assert DingTalkCrypto(TOKEN, AES_KEY, SUITE_KEY).decrypt_encrypt_str(
        reply["msg_signature"], reply["timeStamp"], reply["nonce"], reply["encrypt"]) == "success"
    fixed = dingtalk_reply(dingtalk(), timestamp="1445827045067", nonce="nEXhMP4rAbCdEfGh")
    assert fixed["timeStamp"] == "1445827045067" and fixed["nonce"] == "nEXhMP4rAbCdEfGh"
    assert fixed["msg_signature"] == sha1_signature(TOKEN, "1445827045067", "nEXhMP4rAbCdEfGh", fixed["encrypt"])


def test_dingtalk_query_and_body_must_carry_what_the_platform_sends() -> None:
    with pytest.raises(MalformedCallback, match="nonce"):
        SignedQuery.from_dingtalk({"signature": "x", "timestamp": "1"})
    with pytest.raises(MalformedCallback, match="msg_signature or signature"):
        SignedQuery.from_dingtalk({"timestamp": "1", "nonce": "n"})
    with pytest.raises(MalformedCallback, match="msg_signature"):
        SignedQuery.from_wechat({"signature": "x", "timestamp": "1", "nonce": "n"})
    for body in (b"", b"[]", b'{"encrypt": 5}', b'{"Encrypt": "x"}', b"\xff\xfe"):
        with pytest.raises(MalformedCallback):
            parse_dingtalk_body(body)


# -- round trip -------------------------------------------------------------------------
@given(st.binary(max_size=300), st.text(min_size=1, max_size=40))
def test_anything_encrypted_decrypts_to_itself_padded_to_32_bytes(message: bytes, receive_id: str) -> None:
    crypto = MessageCrypto(TOKEN, AES_KEY, receive_id)
    encrypt = crypto.encrypt(message)
    assert len(base64.b64decode(encrypt)) % 32 == 0
    assert crypto.decrypt(encrypt) == message


def test_an_aligned_message_gets_a_whole_block_of_padding() -> None:
    message = b"x" * (64 - 16 - 4 - len(COMPONENT_APPID))
    encrypt = component().encrypt(message, nonce16=b"0123456789abcdef")
    assert len(base64.b64decode(encrypt)) == 96
    assert component().decrypt(encrypt) == message
    assert encrypt == component().encrypt(message, nonce16=b"0123456789abcdef")


# -- refusals ------------------------------------------------------------------------
def signed_body(crypto: MessageCrypto, encrypt: str) -> bytes:
    return crypto.verify_and_decrypt(crypto.signature("1", "n", encrypt), "1", "n", encrypt)


def test_a_tampered_signature_is_refused_before_anything_is_decrypted() -> None:
    encrypt = component().encrypt(COMPONENT_TICKET_XML)
    good = component().signature("1", "n", encrypt)
    for bad in (good[:-1] + ("0" if good[-1] != "0" else "1"), good.upper(), "", "签名", good + "0"):
        with pytest.raises(CallbackRejected, match="signature") as caught:
            component().verify_and_decrypt(bad, "1", "n", encrypt)
        assert_keeps_secrets(caught.value)
    with pytest.raises(CallbackRejected, match="signature"):
        component().verify_and_decrypt(good, "2", "n", encrypt)
    with pytest.raises(CallbackRejected, match="signature"):
        MessageCrypto("another-token", AES_KEY, COMPONENT_APPID).verify_and_decrypt(good, "1", "n", encrypt)
    # Unsigned garbage never reaches the cipher: the signature error comes first.
    with pytest.raises(CallbackRejected, match="signature"):
        component().verify_and_decrypt(good, "1", "n", "!!not base64!!")


def test_a_tampered_ciphertext_is_refused() -> None:
    encrypt = component().encrypt(COMPONENT_TICKET_XML, nonce16=b"fixedfixedfixed!")
    raw = bytearray(base64.b64decode(encrypt))
    raw[-20] ^= 0x01  # garbles the last block: padding and receive id
    tampered = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(CallbackRejected, match="signature"):
        component().verify_and_decrypt(component().signature("1", "n", encrypt), "1", "n", tampered)
    with pytest.raises(CallbackRejected) as caught:
        signed_body(component(), tampered)
    assert_keeps_secrets(caught.value)


def test_a_message_for_another_receive_id_is_refused() -> None:
    other = MessageCrypto(TOKEN, AES_KEY, "wx00000000000000ff")
    with pytest.raises(CallbackRejected, match="receive id") as caught:
        signed_body(component(), other.encrypt(COMPONENT_TICKET_XML))
    assert_keeps_secrets(caught.value, "wx00000000000000ff")


def test_a_message_with_another_key_is_refused() -> None:
    other = MessageCrypto(TOKEN, "A" * 43, COMPONENT_APPID)
    with pytest.raises(CallbackRejected) as caught:
        signed_body(component(), other.encrypt(COMPONENT_TICKET_XML, nonce16=b"fixedfixedfixed!"))
    assert_keeps_secrets(caught.value, "A" * 43)


def plaintext(message: bytes, receive_id: str = COMPONENT_APPID, *, length: int | None = None) -> bytes:
    size = len(message) if length is None else length
    return b"R" * 16 + size.to_bytes(4, "big") + message + receive_id.encode()


@pytest.mark.parametrize("tail", [
    pytest.param(lambda n: b"\x00" * n, id="pad-byte-0"),
    pytest.param(lambda n: bytes([33]) * n, id="pad-byte-33"),
    pytest.param(lambda n: bytes([200]) * n, id="pad-byte-200"),
    pytest.param(lambda n: b"\x07" * (n - 1) + b"\x04", id="pad-bytes-differ"),
])
def test_padding_no_platform_produces_is_refused(tail: object) -> None:
    body = plaintext(TICKET.encode())
    n = 32 - len(body) % 32
    assert n >= 4
    with pytest.raises(CallbackRejected, match="padding") as caught:
        signed_body(component(), forge(body + tail(n)))  # type: ignore[operator]
    assert_keeps_secrets(caught.value)


@pytest.mark.parametrize("length", [len(TICKET.encode()) + len(COMPONENT_APPID) + 1, 0xFFFFFFFF])
def test_a_length_field_past_the_end_is_refused(length: int) -> None:
    body = plaintext(TICKET.encode(), length=length)
    pad = 32 - len(body) % 32
    with pytest.raises(CallbackRejected, match="length field") as caught:
        signed_body(component(), forge(body + bytes([pad]) * pad))
    assert_keeps_secrets(caught.value)


def test_a_length_field_that_shifts_the_receive_id_is_refused() -> None:
    body = plaintext(TICKET.encode(), length=len(TICKET.encode()) - 1)
    pad = 32 - len(body) % 32
    with pytest.raises(CallbackRejected, match="receive id"):
        signed_body(component(), forge(body + bytes([pad]) * pad))


def test_truncated_odd_sized_and_non_base64_ciphertexts_are_refused() -> None:
    encrypt = component().encrypt(COMPONENT_TICKET_XML)
    for bad in (encrypt[:-4], encrypt[:-1], encrypt[:-8] + "====", forge(b"\x10" * 16), forge(b"\x10" * 48),
                "", "%%%%", encrypt.replace("+", "-").replace("/", "_") + "-_",
                encrypt[:10] + " " + encrypt[10:], encrypt[:10] + "\n" + encrypt[10:], "工单工单"):
        with pytest.raises(CallbackRejected) as caught:
            signed_body(component(), bad)
        assert_keeps_secrets(caught.value)


def test_the_refusals_are_401_and_malformed_bodies_400() -> None:
    assert CallbackRejected("x").status == 401 and "WWW-Authenticate" not in CallbackRejected("x").headers
    assert issubclass(MalformedCallback, BadRequest) and MalformedCallback("x").status == 400


# -- keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [AES_KEY[:-1], AES_KEY + "A", AES_KEY[:-1] + "=", AES_KEY[:-1] + "-",
                                 AES_KEY[:-1] + "é", " " + AES_KEY[1:], ""])
def test_a_wrong_encoding_aes_key_names_the_setting_and_never_the_key(key: str) -> None:
    with pytest.raises(ValueError, match="wecom_suite_encoding_aes_key") as caught:
        MessageCrypto(TOKEN, key, SUITE_ID, setting="wecom_suite_encoding_aes_key")
    assert isinstance(caught.value, SettingsError)
    if key:
        assert key not in str(caught.value) and key[:20] not in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_an_empty_token_is_refused_and_neither_token_nor_key_shows_in_repr() -> None:
    with pytest.raises(ValueError, match="token"):
        MessageCrypto("", AES_KEY, SUITE_ID)
    shown = repr(component())
    assert TOKEN not in shown and AES_KEY not in shown and repr(raw_key()) not in shown
    assert COMPONENT_APPID in shown
    with pytest.raises(AttributeError):
        component().receive_id = "wxother"  # type: ignore[misc]


# -- XML --------------------------------------------------------------------------------
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE xml [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><Encrypt>&lol9;</Encrypt></xml>"""


@pytest.mark.parametrize("document", [
    pytest.param(BILLION_LAUGHS, id="billion-laughs"),
    pytest.param(b'<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Encrypt>&x;</Encrypt></xml>',
                 id="external-entity"),
    pytest.param(b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/x.dtd"><xml><Encrypt>e</Encrypt></xml>',
                 id="external-dtd"),
    pytest.param(b"<!DOCTYPE xml><xml><Encrypt>e</Encrypt></xml>", id="bare-dtd"),
])
def test_xml_with_a_dtd_or_entities_is_refused(document: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(MalformedCallback, match="DTD") as caught:
        parse_xml_envelope(document)
    assert time.monotonic() - started < 1
    assert "root:" not in str(caught.value) and "lol" not in str(caught.value)
    with pytest.raises(MalformedCallback):
        open_xml_callback(component(), SignedQuery("s", "1", "n"), document)


@pytest.mark.parametrize("document, reason", [
    (b"<xml><Encrypt>abc</Encrypt>", "well-formed"),
    (b"", "well-formed"),
    (b"not xml at all", "well-formed"),
    (b"<root><Encrypt>abc</Encrypt></root>", "root"),
    (b"<xml><ToUserName>ww1</ToUserName></xml>", "Encrypt"),
    (b"<xml><Encrypt></Encrypt></xml>", "Encrypt"),
    (b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>", "more than once"),
])
def test_an_envelope_that_is_not_the_platforms_shape_is_refused(document: bytes, reason: str) -> None:
    with pytest.raises(MalformedCallback, match=reason):
        parse_xml_envelope(document)


def test_the_inner_message_reads_as_a_flat_dict_of_its_leaves() -> None:
    document = ("<xml><SuiteId><![CDATA[ww5b2e]]></SuiteId><InfoType>suite_ticket</InfoType>"
                "<Nested><Item>x</Item></Nested><Empty/><SuiteTicket><![CDATA[ ]]>工单<![CDATA[ 1 ]]></SuiteTicket>"
                "</xml>").encode()
    assert parse_xml(document) == {"SuiteId": "ww5b2e", "InfoType": "suite_ticket", "Empty": "",
                                   "SuiteTicket": " 工单 1 "}
    assert parse_xml('<?xml version="1.0" encoding="UTF-8"?><xml><A>授权</A></xml>'.encode()) == {"A": "授权"}
    assert parse_xml("<xml><A>授权</A></xml>") == {"A": "授权"}
