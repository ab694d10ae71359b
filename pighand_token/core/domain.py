"""Values that cross layers, and the expiry arithmetic.

Times are float seconds since the epoch. Nothing here reads the clock: the
caller passes ``now``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

APPID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
FINAL_MARGIN_S = 2.0


@dataclass(frozen=True)
class TokenKey:
    platform: str
    appid: str

    @property
    def redis_key(self) -> str:
        # The original service's key; existing clients read it directly.
        return f"{self.platform}_{self.appid}"

    def __str__(self) -> str:
        return f"{self.platform}/{self.appid}"


@dataclass(frozen=True)
class Credential:
    platform: str
    appid: str
    # repr=False: a Credential in a log line or traceback must not show it.
    secret: str = field(repr=False)

    @property
    def key(self) -> TokenKey:
        return TokenKey(self.platform, self.appid)


@dataclass(frozen=True)
class Token:
    """A platform token and when it dies.

    ``fetched_at`` orders tokens: a write never replaces a token with one
    fetched earlier. ``expires_at - fetched_at`` is the life the platform
    reported (WeChat stable tokens report their *remaining* life).
    """

    value: str = field(repr=False)
    expires_at: float
    fetched_at: float
    # The platform handed this token back again inside its margin and will
    # not issue another before it expires (WeCom): serve it to the end.
    final: bool = False

    @property
    def reported_life(self) -> float:
        return max(0.0, self.expires_at - self.fetched_at)

    def margin(self, margin_s: float) -> float:
        """How early the token counts as expired: ``margin_s`` but never more
        than half of the life the platform reported, so a short-lived token is
        still served for a while instead of being re-fetched in a loop; for a
        final token only a few seconds of clock skew."""
        cap = min(float(margin_s), FINAL_MARGIN_S) if self.final else float(margin_s)
        return min(cap, self.reported_life / 2)

    def serve_until(self, margin_s: float) -> float:
        return self.expires_at - self.margin(margin_s)

    def expires_in(self, now: float, margin_s: float) -> int:
        """Whole seconds from ``now`` this token will still be served (until
        ``serve_until``), never negative: what callers may cache it for."""
        return max(0, math.floor(self.serve_until(margin_s) - now))

    def servable(self, now: float, margin_s: float) -> bool:
        return now < self.serve_until(margin_s)

    def due(self, now: float, margin_s: float, horizon_s: float) -> bool:
        """True when the token enters its margin within ``horizon_s``."""
        return self.serve_until(margin_s) <= now + horizon_s

    def newer_than(self, other: Token | None) -> bool:
        return other is None or self.fetched_at > other.fetched_at


@dataclass(frozen=True)
class Cooldown:
    """After a failed platform call, no new call for this app until ``until``.

    ``failures`` counts consecutive failures; each doubles the pause.
    ``message`` and ``errcode`` are the last platform error, for callers.
    """

    failures: int
    until: float
    message: str
    errcode: int | str | None = None

    def active(self, now: float) -> bool:
        return now < self.until


def valid_appid(appid: str) -> bool:
    return APPID_PATTERN.fullmatch(appid) is not None


@dataclass(frozen=True)
class Client:
    """A caller of the API, known by the hash of its key."""

    name: str
    key_hash: str = field(repr=False)
    scopes: tuple[str, ...]
    created_at: float
    last_used_at: float | None = None

    @property
    def all_apps(self) -> bool:
        return "*" in self.scopes

    def allows(self, platform: str, appid: str) -> bool:
        return self.all_apps or f"{platform}:{appid}" in self.scopes or f"{platform}:*" in self.scopes

    @property
    def reads_metrics(self) -> bool:
        """The ``metrics`` scope: /metrics (which lists every app and its
        state) and nothing else; app scopes, ``*`` included, do not give it."""
        return METRICS_SCOPE in self.scopes


METRICS_SCOPE = "metrics"


@dataclass(frozen=True)
class AuditEntry:
    at: float
    action: str
    outcome: str
    client: str | None = None
    platform: str | None = None
    appid: str | None = None
    request_id: str | None = None
    remote_addr: str | None = None


@dataclass(frozen=True)
class Grant:
    """A merchant's authorization of an ISV app (Alipay): the merchant's token
    and the refresh token that replaces it, kept durably in SQL."""

    app_id: str
    auth_app_id: str
    app_auth_token: str = field(repr=False)
    app_refresh_token: str = field(repr=False)
    expires_at: float
    # None: the gateway did not say; the refresh token is then tried when needed.
    refresh_expires_at: float | None
    user_id: str | None
    # When this pair was obtained; orders tokens like Token.fetched_at.
    updated_at: float
    # The refresh token as the row holds it (ciphertext with a cipher), for
    # the compare-and-set; empty for a grant not read from the table.
    stored_refresh: str = field(default="", repr=False, compare=False)

    @property
    def token_appid(self) -> str:
        return f"{self.app_id}:{self.auth_app_id}"


@dataclass(frozen=True)
class PushedTicket:
    """A ticket a platform pushed to this service's callback (WeChat's
    ``component_verify_ticket``, WeCom's ``suite_ticket``): what the app's
    token is made from. Kept durably in SQL; the one with the latest
    ``created_at`` (the platform's own time of the message) wins."""

    platform: str
    appid: str
    value: str = field(repr=False)
    created_at: float
    expires_at: float
    received_at: float

    def valid(self, now: float) -> bool:
        return now < self.expires_at


@dataclass(frozen=True)
class AccountGrant:
    """An account's authorization of a third-party app: the long-lived
    secret the platform hands over once for it (WeChat's
    ``authorizer_refresh_token``, WeCom's ``permanent_code``), from which
    the account's tokens are made. Kept durably in SQL: losing it means the
    account must authorize again."""

    platform: str  # the token platform: wechat_authorizer, wecom_corp
    owner: str  # the third-party app: component appid, suite id
    account: str  # the authorizing account: authorizer appid, corp id
    secret: str = field(repr=False)
    # What the platform said was granted (JSON text: func_info, auth_corp_info).
    info: str
    authorized_at: float
    updated_at: float
    # The secret as the row holds it (ciphertext with a cipher), for the
    # compare-and-set; empty for a grant not read from the store.
    stored_secret: str = field(default="", repr=False, compare=False)

    @property
    def token_appid(self) -> str:
        return f"{self.owner}:{self.account}"
