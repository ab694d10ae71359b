"""One egress for platform calls: ``platform_http_proxy`` and ``no_proxy``.

The rules only (which URL a setting accepts, which hosts skip the proxy, how a
proxy URL is shown); the requests Session that applies them is
:class:`pighand_token.adapters.egress.PlatformSession`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

PROXY_SCHEMES = ("http", "https")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``: a proxy URL
    may carry credentials, and it appears in logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


def proxy_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be ``platform_http_proxy``, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in PROXY_SCHEMES:
        return "the scheme must be http:// or https:// (an HTTP forward proxy)"
    if not parts.hostname:
        return "the URL names no host"
    if port is None:
        return "the URL names no port (e.g. http://proxy.internal:3128)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy URL has no path, query or fragment"
    return None


@dataclass(frozen=True)
class _Entry:
    """One ``no_proxy`` entry: a host name (itself and its subdomains), an
    IP address or CIDR network, ``*`` (every host); optionally one port."""

    host: str = ""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None
    everything: bool = False

    def matches(self, host: str, port: int | None) -> bool:
        if self.everything:
            return True
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        return host == self.host or host.endswith("." + self.host)


def _entry(text: str) -> _Entry:
    """ValueError naming ``text`` when it is not a no_proxy entry."""
    entry = text.strip().lower()
    if entry == "*":
        return _Entry(everything=True)
    port: int | None = None
    host = entry
    if entry.startswith("["):  # [::1]:8080
        inside, _, rest = entry[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r} is not a host, domain, IP address or CIDR network")
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{text!r} has a port that is not a number")
        port = int(port_text)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{text!r} has a port outside 1-65535")
    try:
        return _Entry(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    name = host.lstrip(".").removeprefix("*.")
    labels = name.split(".")
    if not name or not all(label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
                           for label in labels):
        raise ValueError(f"{text!r} is not a host, domain, IP address or CIDR network")
    return _Entry(host=name, port=port)


class NoProxy:
    """Hosts whose platform calls skip ``platform_http_proxy``.

    Matched here rather than by requests' ``should_bypass_proxies``: that one
    reads the process environment and, given a list, writes it into
    ``os.environ`` for the duration of the check, which other threads see.
    """

    def __init__(self, entries: tuple[str, ...] = ()) -> None:
        self.entries = tuple(entries)
        self._rules = tuple(_entry(entry) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def bypasses(self, url: str | SplitResult) -> bool:
        parts = urlsplit(url) if isinstance(url, str) else url
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
        return any(rule.matches(host, port) for rule in self._rules)


def no_proxy_problem(entries: tuple[str, ...] | list[str]) -> str | None:
    try:
        NoProxy(tuple(entries))
    except ValueError as exc:
        return str(exc)
    return None
