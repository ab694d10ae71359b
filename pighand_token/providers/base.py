"""What every platform provider shares: one HTTP call that turns transport
failures into UpstreamError and keeps secrets out of every message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import requests

from ..domain import Credential, Token
from ..errors import UpstreamError, UpstreamTimeout
from ..ports import Clock


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class HttpProvider:
    """Base for providers that speak JSON over HTTPS."""

    platform = "?"

    def __init__(self, *, session: requests.Session, base_url: str, timeout_s: float, clock: Clock,
                 options: Mapping[str, Any] | None = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock
        self.options = dict(options or {})

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        raise NotImplementedError

    def request_json(self, method: str, path: str, *, secrets: Iterable[str], accept_status: bool = False,
                     **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Send one request; return (HTTP status, JSON object).

        Transport failures, 5xx answers and non-JSON bodies raise a retryable
        UpstreamError; a timeout raises UpstreamTimeout. A 4xx with a JSON
        body is returned when ``accept_status`` (platforms that report errors
        that way), else raised. Messages never contain ``secrets``: requests
        puts the full URL, query string included, into its exception texts.
        """
        secrets = [s for s in secrets if s]
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise UpstreamTimeout(self.platform, f"no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", secrets)
            raise UpstreamError(self.platform, f"cannot reach the platform ({reason})", retryable=True) from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status >= 500:
            raise UpstreamError(self.platform, f"HTTP {status} from the platform", retryable=True)
        if not isinstance(body, dict):
            raise UpstreamError(self.platform, f"unexpected answer (HTTP {status}, not a JSON object)",
                                retryable=status >= 500)
        if status >= 400 and not accept_status:
            raise UpstreamError(self.platform, f"HTTP {status} from the platform")
        return status, body
