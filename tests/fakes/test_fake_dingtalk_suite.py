"""The fake DingTalk suite platform on its own, against a receiver written
with dingtalk-sdk's ``ISVClient`` crypto (not the service's): what it pushes
decrypts with the SDK, only a signed encrypted ``success`` counts as an
acknowledgement, tokens keep their value while valid, and only the latest
ticket is accepted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from dingtalk.crypto import DingTalkCrypto

from tests.fakes.dingtalk_suite import CORP, CORP_TOKEN_PATH, SUITE_TOKEN_PATH, FakeDingTalkSuite

KEY, SECRET, TOKEN = "suitekey0000000009", "fake-suite-secret", "fakeCbToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


class Receiver:
    """A callback that decrypts with dingtalk-sdk and answers as told."""

    def __init__(self, answer: str = "encrypted") -> None:
        self.answer = answer  # encrypted | plain
        self.events: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                crypto = DingTalkCrypto(TOKEN, AES_KEY, KEY)
                signature = query.get("msg_signature") or query.get("signature", "")
                receiver.events.append(json.loads(crypto.decrypt_message(body, signature, query["timestamp"],
                                                                         query["nonce"])))
                text = (json.dumps(crypto.encrypt_message("success")) if receiver.answer == "encrypted"
                        else "success")
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback"


@pytest.fixture
def fake() -> Iterator[FakeDingTalkSuite]:
    with FakeDingTalkSuite() as platform:
        platform.add_suite(KEY, SECRET, token=TOKEN, aes_key=AES_KEY)
        yield platform


@pytest.fixture
def receiver(fake: FakeDingTalkSuite) -> Iterator[Receiver]:
    receiver = Receiver()
    fake.set_callback_url(KEY, receiver.url)
    yield receiver
    receiver.server.shutdown()


def token(fake: FakeDingTalkSuite, path: str, **fields: str) -> requests.Response:
    return requests.post(fake.url(path), json={"suiteKey": KEY, "suiteSecret": SECRET, **fields}, timeout=5)


def test_pushes_decrypt_with_dingtalk_sdk_and_only_an_encrypted_success_acknowledges(
        fake: FakeDingTalkSuite, receiver: Receiver) -> None:
    delivery = fake.push_ticket(KEY)
    assert delivery.ok and receiver.events[-1]["SuiteTicket"] == fake.current_ticket(KEY)
    assert receiver.events[-1]["EventType"] == "suite_ticket" and receiver.events[-1]["TimeStamp"].isdigit()
    sync = fake.push_ticket(KEY, sync=True)
    [row] = receiver.events[-1]["bizData"]
    assert sync.ok and row["biz_type"] == 2 and json.loads(row["biz_data"])["suiteTicket"] == fake.current_ticket(KEY)
    receiver.answer = "plain"
    plain = fake.authorize(KEY, "dingcorp0000000009")
    assert plain.status == 200 and not plain.ok and plain.reply_error
    assert receiver.events[-1]["AuthCorpId"] == "dingcorp0000000009"


def test_only_the_latest_ticket_is_accepted_and_tokens_are_extended_while_valid(
        fake: FakeDingTalkSuite, receiver: Receiver) -> None:
    first = fake.push_ticket(KEY).message["SuiteTicket"]
    second = fake.push_ticket(KEY).message["SuiteTicket"]
    refused = token(fake, SUITE_TOKEN_PATH, suiteTicket=first)
    assert refused.status_code == 400 and refused.json()["code"] == "853005"
    answer = token(fake, SUITE_TOKEN_PATH, suiteTicket=second)
    assert answer.status_code == 200 and answer.json()["expireIn"] == 7200
    value = answer.json()["accessToken"]
    info = fake.token_info(value)
    assert info is not None
    fake.freeze()
    fake.advance(3600)
    again = token(fake, SUITE_TOKEN_PATH, suiteTicket=second)
    assert again.json()["accessToken"] == value and info.expires_at == fake.now() + 7200
    fake.unfreeze()
    unknown = token(fake, CORP_TOKEN_PATH, suiteTicket=second, authCorpId="dingnobody")
    assert unknown.status_code == 400 and unknown.json()["code"] == "InvalidAuthCorpId"
    fake.authorize(KEY, "dingcorp0000000009")
    corp = token(fake, CORP_TOKEN_PATH, suiteTicket=second, authCorpId="dingcorp0000000009")
    assert corp.status_code == 200 and fake.current_token(CORP, f"{KEY}:dingcorp0000000009") == corp.json()[
        "accessToken"]
    fake.relieve(KEY, "dingcorp0000000009")
    assert not fake.is_valid(corp.json()["accessToken"])
    form = requests.post(fake.url(SUITE_TOKEN_PATH), data={"suiteKey": KEY}, timeout=5)
    assert form.status_code == 400 and form.json()["code"] == "Missingbody"
