"""DingTalk third-party enterprise apps ("suites") and the corps that
authorize them (platform-facts §7.1, §7.5).

- ``dingtalk_suite`` (credential: the suiteKey; suiteSecret, callback Token
  and aes_key): the suite's own token, ``POST /v1.0/oauth2/suiteAccessToken``
  ``{suiteKey, suiteSecret, suiteTicket}`` -> ``{accessToken, expireIn}``
  (what DingTalk's SDKs call the isvAccessToken), made from the latest
  ``suite_ticket`` DingTalk pushes to the callback.
- ``dingtalk_corp`` (token appid ``<suiteKey>:<corpId>``, served by the
  suite's credential): an authorized corp's token,
  ``POST /v1.0/oauth2/corpAccessToken`` ``{suiteKey, suiteSecret, authCorpId,
  suiteTicket}`` -> ``{accessToken, expireIn}``. It needs nothing of the
  corp but its id, so a corp's grant holds no secret: DingTalk's
  ``tmp_auth_code`` is a one-time code for the old
  ``/service/get_permanent_code``, whose permanent code only the old
  ``/service/get_corp_token`` takes. Keeping either would store a secret
  nothing here uses; the corp is recorded by id (and name, where the push
  gives it) and forgotten when it removes the app.

DingTalk has no API to ask for a ticket push (the developer console has a
button that pushes one), so with no valid ticket stored the answer is 503
until the next push. A newer ticket invalidates the older ones: the latest
pushed is the one used, and one DingTalk refuses (853005) is retired for
every worker at once, so nothing calls DingTalk with it again.

Event names, as DingTalk's SDKs spell them (checked in dingtalk-sdk 1.3.8
``dingtalk/core/constants.py`` ``SuitePushType`` and
``dingtalk/client/isv.py`` ``ISVClient.proc_message``; the sync HTTP push in
APITable's DingTalk starter, ``DingTalkEventTag`` / ``SyncHttpPushHighEvent``
/ ``BaseSyncHttpBizData``, and a PHP EasyDingTalk port's
``OpenDev/Endpoint/DingCallback/BizData/SyncAction.php``; the token calls in
Alibaba Cloud's generated DingTalk SDKs, ``oauth2_1_0`` ``GetSuiteAccessToken``
and ``GetCorpAccessToken``):

- HTTP push, ``EventType``: ``check_url``, ``check_create_suite_url``,
  ``check_update_suite_url`` (URL checks: answered with the encrypted
  ``success``), ``suite_ticket`` (``SuiteTicket``, ``TimeStamp`` in ms),
  ``tmp_auth_code`` (``AuthCode``, ``AuthCorpId``), ``change_auth``
  (``AuthCorpId``), ``suite_relieve`` (``AuthCorpId``); others
  (``check_suite_license_code``, ``market_buy``, ``org_micro_app_*``) are
  acknowledged.
- Sync HTTP push (the newer mode), ``EventType`` ``SYNC_HTTP_PUSH_HIGH`` /
  ``SYNC_HTTP_PUSH_MEDIUM`` with ``bizData``: rows of ``biz_type``,
  ``corp_id``, ``gmt_modified`` (ms) and ``biz_data`` (a JSON text whose
  ``syncAction`` names the event): ``biz_type`` 2 ``suite_ticket``
  (``suiteTicket``), 4 ``org_suite_auth`` / ``org_suite_change`` /
  ``org_suite_relieve`` (the corp is ``corp_id``). Those are handled like
  their HTTP-push twins; every other row (contacts, micro-app states) is
  acknowledged.

Every answer, URL checks included, is the encrypted JSON
``{"msg_signature", "timeStamp", "nonce", "encrypt"}`` of ``success``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..core.callbacks import (
    AccountRemoved,
    AccountSeen,
    Batch,
    CallbackMessage,
    CallbackReply,
    CallbackRequest,
    Ignored,
    TicketPushed,
    UrlCheck,
)
from ..core.domain import AccountGrant, Credential, PushedTicket, Token
from ..core.errors import BadRequest, MethodRefused, UpstreamError
from ..core.ports import AccountGrants
from .base import HttpProvider, ProviderContext
from .callback_crypto import (
    CallbackRejected,
    MalformedCallback,
    MessageCrypto,
    SignedQuery,
    dingtalk_reply,
    json_object,
    parse_dingtalk_body,
)
from .dingtalk import HINTS as APP_HINTS
from .dingtalk import DingTalkProvider, dingtalk_error, is_dingtalk_error
from .third_party import PUSH_REQUEST_WINDOW_S, AccountTokens, AppSecrets, AwaitingTicket, TicketWait

log = logging.getLogger(__name__)

SUITE = "dingtalk_suite"
CORP = "dingtalk_corp"
SUITE_TOKEN_PATH = "/v1.0/oauth2/suiteAccessToken"
CORP_TOKEN_PATH = "/v1.0/oauth2/corpAccessToken"
# DingTalk states no life for a suite_ticket; it pushes one about every 20
# minutes (HTTP push) or 5 hours (sync HTTP push). Twelve hours outlasts two
# missed sync pushes; a ticket DingTalk no longer takes is refused with
# 853005, which retires it at once, so a long life costs no wrong call.
TICKET_LIFE_S = 12 * 3600.0
# "签名中套件ticket参数无效": the suite ticket is not (or no longer) valid.
TICKET_REFUSED = "853005"
URL_CHECKS = frozenset({"check_url", "check_create_suite_url", "check_update_suite_url"})
SYNC_PUSHES = frozenset({"SYNC_HTTP_PUSH_HIGH", "SYNC_HTTP_PUSH_MEDIUM"})
# Sync HTTP push rows: biz_type 2 the suite ticket, 4 a corp's authorization.
_BIZ_TICKET, _BIZ_AUTH = 2, 4
HINTS = {
    **APP_HINTS,
    "invalidClientIdOrSecret": "suiteKey or suiteSecret is wrong",
    TICKET_REFUSED: "DingTalk refused the suite_ticket (expired, replaced by a newer push, or another suite's)",
}
NO_PUSH_API = ("DingTalk has no API to ask for one: it pushes suite_tickets to the callback on its own, and the "
               "app's page in the DingTalk developer console has a button that pushes one now")
_KEY_OPTION, _KEY_NAME = "aes-key", "aes_key"
_SUITE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CORP_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _ConsolePush(TicketWait):
    """DingTalk cannot be asked to push a ticket: the message says where one comes from."""

    def ask(self, appid: str, ask: Callable[[], None], now: float) -> str:
        return NO_PUSH_API


class TicketRefused(AwaitingTicket):
    """DingTalk refused the stored ticket (853005): it is retired, and the
    app waits for the next push as with no ticket at all (503). The retired
    ticket is the rest: no worker calls DingTalk for the suite or any of its
    corps until a push arrives, and the push ends it for all of them at once
    (a cooldown would outlast the push for the corps, and answer 502)."""


def suite_secrets(stored: str) -> AppSecrets:
    """The suiteSecret, callback Token and aes_key of a stored suite credential."""
    return AppSecrets.parse(stored, SUITE, key_option=_KEY_OPTION, key_name=_KEY_NAME)


class _DingTalkIsv(HttpProvider):
    """Calls made with the suite's secret and its latest pushed ticket."""

    # Suite and corp tokens are used on the v1.0 API as an app's is.
    token_placement = DingTalkProvider.token_placement
    invalid_token_codes = DingTalkProvider.invalid_token_codes
    grants: AccountGrants | None = None
    wait: TicketWait

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        provider = cls(session=ctx.session, base_url=ctx.settings.dingtalk_api_base,
                       timeout_s=ctx.settings.upstream_timeout, clock=ctx.clock)
        provider.grants = ctx.account_grants
        provider.wait = _ConsolePush(SUITE, "suite_ticket", ctx.tickets, ctx.locks, ctx.clock, TICKET_LIFE_S)
        return provider

    def _with_ticket(self, suite_key: str, stored: str, path: str, payload: dict[str, str]) -> Token:
        """POST ``path`` with the suite's key, secret and current ticket.
        A refused ticket (853005) is retired; if a newer push arrived
        meanwhile it is tried once, else the answer says a push is awaited."""
        secrets = suite_secrets(stored)
        for attempt in (1, 2):
            ticket = self.wait.current(suite_key, lambda: None)
            started = self.clock()
            hidden = [secrets.secret, ticket.value]
            status, body = self.request_json(
                "POST", path, secrets=hidden, accept_status=True,
                json={"suiteKey": suite_key, "suiteSecret": secrets.secret, **payload, "suiteTicket": ticket.value})
            errcode = body.get("errcode")
            if errcode not in (None, 0, "0") and "code" not in body:
                # The old API's shape ({"errcode": 853005, "errmsg"}), should the gateway answer so.
                body = {"code": str(errcode), "message": body.get("errmsg"), "requestid": body.get("request_id")}
            if not is_dingtalk_error(status, body):
                return _token(self.platform, body, started)
            error = dingtalk_error(self.platform, status, body, hidden, hints=HINTS)
            if error.errcode != TICKET_REFUSED:
                raise error
            self.wait.retire(ticket)
            if attempt == 1 and self.wait.newer(ticket) is not None:
                log.info("%s %s: DingTalk refused the suite_ticket pushed at %.0f; trying the newer one",
                         self.platform, suite_key, ticket.created_at)
                continue
            log.warning("%s %s: %s", self.platform, suite_key, error.message)
            raise TicketRefused(
                f"{error.message}; waiting for DingTalk to push a new suite_ticket to /callback/{SUITE}/{suite_key}; "
                f"{NO_PUSH_API}", retry_after_s=PUSH_REQUEST_WINDOW_S)
        raise AssertionError("unreachable")


class DingTalkSuiteProvider(_DingTalkIsv):
    platform = SUITE
    account_platform = CORP
    appid_pattern = _SUITE_KEY.pattern
    appid_example = "suiteabcdefgh12345678"
    callback_secrets: tuple[str, ...] = ("callback-token", _KEY_OPTION)
    optional_callback_secrets: tuple[str, ...] = ()

    def appid_error(self, appid: str) -> str | None:
        if not _SUITE_KEY.fullmatch(appid):
            return f"dingtalk_suite appid must be the suite's suiteKey (e.g. {self.appid_example}), not {appid!r}"
        return None

    def seal_secrets(self, secret: str, callback: Mapping[str, str]) -> str:
        return AppSecrets(secret, callback["callback-token"], callback[_KEY_OPTION]).encode()

    def check_credential(self, appid: str, secret: str) -> None:
        problem = self.appid_error(appid)
        if problem:
            raise BadRequest(problem)
        secrets = suite_secrets(secret)
        try:
            secrets.crypto(appid, setting=_KEY_NAME)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        return self._with_ticket(credential.appid, credential.secret, SUITE_TOKEN_PATH, {})

    # -- the callback ------------------------------------------------------------
    def _crypto(self, credential: Credential, receive_id: str | None = None) -> MessageCrypto:
        return suite_secrets(credential.secret).crypto(receive_id or credential.appid, setting=_KEY_NAME)

    def open_callback(self, credential: Credential, request: CallbackRequest) -> CallbackMessage:
        if request.method != "POST":
            raise MethodRefused("DingTalk posts its events; this URL takes POST only", ("POST",))
        crypto = self._crypto(credential)
        signed = SignedQuery.from_dingtalk(request.query)
        encrypt = parse_dingtalk_body(request.body)
        # The signature first: nothing unsigned is decrypted.
        crypto.verify(signed.msg_signature, signed.timestamp, signed.nonce, encrypt)
        try:
            event = json_object(crypto.decrypt(encrypt), "decrypted callback")
        except CallbackRejected:
            # check_create_suite_url comes before the suite has its key:
            # DingTalk encrypts it for the TestSuiteKey it names.
            return self._test_suite_check(credential, crypto, encrypt)
        event_type = _text(event.get("EventType"))
        suite_key = event.get("SuiteKey")
        if isinstance(suite_key, str) and suite_key and suite_key != credential.appid:
            raise CallbackRejected("callback names another suite")
        if event_type in URL_CHECKS:
            return UrlCheck(json.dumps(dingtalk_reply(crypto)), "application/json")
        if event_type == "suite_ticket":
            value, created_at = _text(event.get("SuiteTicket")), _epoch(event.get("TimeStamp"))
            if not value or created_at is None:
                raise MalformedCallback("suite_ticket event without SuiteTicket or TimeStamp")
            return TicketPushed(self._ticket(credential.appid, value, created_at))
        if event_type in ("tmp_auth_code", "change_auth"):
            # The corp token takes the suite's ticket, not the code: the corp
            # is recorded by id (re-recorded on change_auth, in case its
            # tmp_auth_code push was lost).
            return AccountSeen(event_type, _corp(event, event_type), created_at=_epoch(event.get("TimeStamp")))
        if event_type == "suite_relieve":
            return AccountRemoved(event_type, _corp(event, event_type), _epoch(event.get("TimeStamp")))
        if event_type in SYNC_PUSHES:
            return Batch(tuple(self._sync_row(credential.appid, event_type, row) for row in _rows(event)))
        return Ignored(event_type or "(no EventType)")

    def _test_suite_check(self, credential: Credential, crypto: MessageCrypto, encrypt: str) -> CallbackMessage:
        """A URL check encrypted for the TestSuiteKey it names (signed with
        this suite's Token, which is what authenticates it); anything else
        encrypted for another receive id is refused."""
        event = json_object(crypto.decrypt(encrypt, any_receive_id=True), "decrypted callback")
        test_key = event.get("TestSuiteKey")
        if event.get("EventType") not in URL_CHECKS or not isinstance(test_key, str) or not test_key:
            raise CallbackRejected("callback was encrypted for another app (receive id does not match)")
        # Decrypted again to be sure it was encrypted for the key it names.
        crypto.decrypt(encrypt, receive_ids=[test_key])
        return UrlCheck(json.dumps(dingtalk_reply(self._crypto(credential, test_key))), "application/json")

    def _sync_row(self, suite_key: str, event_type: str, row: Mapping[str, Any]
                  ) -> TicketPushed | AccountSeen | AccountRemoved | Ignored:
        biz_type = row.get("biz_type")
        data = row.get("biz_data")
        if isinstance(data, str):
            data = json_object(data.encode("utf-8"), "bizData biz_data")
        action = _text(data.get("syncAction")) if isinstance(data, dict) else ""
        created_at = _epoch(row.get("gmt_modified")) or _epoch(row.get("gmt_create"))
        if biz_type == _BIZ_TICKET and action == "suite_ticket" and isinstance(data, dict):
            value = _text(data.get("suiteTicket"))
            if not value or created_at is None:
                raise MalformedCallback("sync push suite_ticket row without suiteTicket or gmt_modified")
            return TicketPushed(self._ticket(suite_key, value, created_at))
        if biz_type == _BIZ_AUTH and action in ("org_suite_auth", "org_suite_change", "org_suite_relieve"):
            corp_id = _text(row.get("corp_id"))
            if not _CORP_ID.fullmatch(corp_id):
                raise MalformedCallback(f"sync push {action} row without a corp_id")
            if action == "org_suite_relieve":
                return AccountRemoved(action, corp_id, created_at)
            info: dict[str, object] = {}
            corp_info = data.get("auth_corp_info") if isinstance(data, dict) else None
            if isinstance(corp_info, dict) and isinstance(corp_info.get("corp_name"), str):
                info["corp_name"] = corp_info["corp_name"]
            return AccountSeen(action, corp_id, info=info, created_at=created_at)
        return Ignored(f"{event_type} biz_type {biz_type} {action or '(no syncAction)'}")

    def _ticket(self, suite_key: str, value: str, created_at: float) -> PushedTicket:
        return PushedTicket(SUITE, suite_key, value, created_at, created_at + TICKET_LIFE_S, self.clock())

    def reply(self, credential: Credential, text: str) -> CallbackReply:
        return CallbackReply(json.dumps(dingtalk_reply(self._crypto(credential), text)), "application/json")

    def exchange(self, credential: Credential, code: str) -> tuple[AccountGrant, Token]:
        raise BadRequest("a DingTalk corp needs no code exchanged: it is recorded when DingTalk pushes its "
                         f"authorization (tmp_auth_code, org_suite_auth) to /callback/{SUITE}/{credential.appid}, "
                         "and its token is made from the suite's ticket")

    def authorization_url(self, credential: Credential, redirect_uri: str, options: Mapping[str, str]) -> str:
        raise BadRequest("DingTalk has no authorization page made with a pre-auth code: corps authorize a "
                         "third-party enterprise app from DingTalk's app market, or through the trial link of "
                         "the developer console")


class DingTalkCorpProvider(AccountTokens, _DingTalkIsv):
    missing_account = ("corp {account} has not authorized {app} {owner} (or has removed it): it is recorded when "
                       "DingTalk pushes its authorization to the suite's callback")
    platform = CORP
    credential_platform = SUITE
    appid_pattern = f"{_SUITE_KEY.pattern}:{_CORP_ID.pattern}"
    appid_example = "suiteabcdefgh12345678:ding0123456789abcdef"

    def appid_error(self, appid: str) -> str | None:
        suite_key, _, corp_id = appid.partition(":")
        if not _SUITE_KEY.fullmatch(suite_key) or not _CORP_ID.fullmatch(corp_id):
            return f"dingtalk_corp appid must be <suiteKey>:<corpId> (e.g. {self.appid_example}), not {appid!r}"
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        raise BadRequest("dingtalk_corp tokens come from the corps that authorize a dingtalk_suite; add the suite: "
                         "'pighand-token platform add dingtalk_suite <suiteKey> ...'")

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        """``corpAccessToken`` with the suite's ticket (the service holds this
        token's lock). DingTalk hands back the same token, its life
        extended, while it is valid."""
        suite_key, _, corp_id = credential.appid.partition(":")
        return self._with_ticket(suite_key, credential.secret, CORP_TOKEN_PATH, {"authCorpId": corp_id})


def _token(platform: str, body: Mapping[str, Any], started: float) -> Token:
    value, expire_in = body.get("accessToken"), body.get("expireIn")
    if (not isinstance(value, str) or not value or isinstance(expire_in, bool)
            or not isinstance(expire_in, int | float) or expire_in <= 0):
        raise UpstreamError(platform, "answer has no accessToken/expireIn", retryable=True)
    return Token(value=value, expires_at=started + float(expire_in), fetched_at=started)


def _corp(event: Mapping[str, Any], event_type: str) -> str:
    corp_id = _text(event.get("AuthCorpId"))
    if not _CORP_ID.fullmatch(corp_id):
        raise MalformedCallback(f"{event_type} event without AuthCorpId")
    return corp_id


def _rows(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rows = event.get("bizData")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise MalformedCallback("sync push without a bizData list of objects")
    return rows


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _epoch(value: object) -> float | None:
    """Seconds since the epoch from DingTalk's TimeStamp / gmt_modified
    (milliseconds, as text or a number); None when absent or not a number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, str | int | float) and str(value).strip() else None
    except ValueError:
        return None
    if number is None or number <= 0:
        return None
    # Milliseconds (13 digits) as DingTalk writes them; seconds taken as they are.
    return number / 1000.0 if number > 1e11 else number

