"""One exception tree for every layer.

Each class carries the HTTP status it maps to, so the HTTP edge needs no
table of its own and a caller can catch a whole family with one ``except``.
Messages are shown to API callers: they never contain a secret.
"""

from __future__ import annotations

import math


class PighandError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    headers: dict[str, str]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers = {}


class SettingsError(PighandError):
    """A setting has a value the service cannot run with."""


class BadRequest(PighandError):
    status = 400


class Unauthorized(PighandError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = 'Bearer realm="pighand-token"'


class Forbidden(PighandError):
    status = 403


class RateLimited(PighandError):
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))


class NotFound(PighandError):
    status = 404


class UnknownPlatform(NotFound):
    def __init__(self, platform: str, supported: list[str]) -> None:
        super().__init__(
            f"unknown platform {platform!r}; supported platforms: {', '.join(sorted(supported))}"
        )
        self.platform = platform
        self.supported = sorted(supported)


class UnknownApp(NotFound):
    def __init__(self, platform: str, appid: str) -> None:
        super().__init__(
            f"no credential for {platform} appid {appid!r}; add it with "
            f"'pighand-token platform add {platform} {appid}'"
        )


class MethodRefused(PighandError):
    """405: this resource takes other methods (listed in ``Allow``)."""

    status = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.headers["Allow"] = ", ".join(allowed)


class Conflict(PighandError):
    status = 409


class Unavailable(PighandError):
    """A store (SQL, Redis) or a lock could not be reached in time."""

    status = 503

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))


class AwaitingTicket(Unavailable):
    """No valid pushed ticket yet (pushed-credential platforms): the app's
    token cannot be made until the platform's next push. A state the app
    leaves by itself, not a failure of the service."""


class UpstreamError(PighandError):
    """The platform refused or failed the call.

    ``errcode`` is the platform's own code (WeChat errcode, Feishu code, ...)
    or ``None`` for transport failures. ``retryable`` says whether asking
    again soon can help (system busy, 5xx) or not (wrong secret, IP not
    whitelisted, quota exhausted).
    """

    status = 502

    def __init__(self, platform: str, message: str, *, errcode: int | str | None = None,
                 retryable: bool = False, pause_s: float | None = None) -> None:
        detail = f"{platform} platform error"
        if errcode is not None:
            detail += f" {errcode}"
        super().__init__(f"{detail}: {message}")
        self.platform = platform
        self.errcode = errcode
        self.retryable = retryable
        self.platform_message = message
        # How long the platform wants to be left alone (quota, rate limit).
        self.pause_s = pause_s


class UpstreamTimeout(UpstreamError):
    status = 504

    def __init__(self, platform: str, message: str) -> None:
        super().__init__(platform, message, retryable=True)
