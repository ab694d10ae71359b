"""The caller's address behind reverse proxies: ``trusted_proxies``.

A proxy's ``X-Forwarded-For`` is believed only when the connection comes
from one of the trusted addresses, and then only up to the first hop that is
not trusted: everything left of that hop was written by whoever connected to
the outermost trusted proxy, and is what a caller would forge.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_KEPT_HEADERS_MAX = 256


def split_entries(value: object) -> list[str] | None:
    """The entries of a ``trusted_proxies`` value: a list of strings (a TOML
    list), or text separated by commas or spaces, optionally as a JSON list
    (``["10.0.0.0/8", "::1"]``, the form a list takes in an environment
    variable). None when the value is none of these."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                return None
        else:
            return [entry for entry in text.replace(",", " ").split()]
    if isinstance(value, list | tuple) and all(isinstance(entry, str) for entry in value):
        return [entry.strip() for entry in value if entry.strip()]
    return None


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """IP addresses and CIDR networks, IPv4 or IPv6; ValueError naming the
    first entry that is neither (a host name, host bits set, ...)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network ({exc})") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):  # [2001:db8::1], as some proxies write IPv6
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 callers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Which peers may say who the caller is, and what they say."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        # The peers of a server are its few proxies, and its callers a few
        # services: answers are kept (parsing the addresses cost about 3 us
        # of a cached GET's 5). Only for trusted peers and short headers, so
        # what is kept stays small whatever callers send.
        self._peer_trusted = lru_cache(maxsize=1024)(self._trusted_text)
        self._answers = lru_cache(maxsize=4096)(self._resolve)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def _trusted_text(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and self.trusts(address)

    def client_address(self, peer: str | None, forwarded_for: str | None, real_ip: str | None) -> str | None:
        """The caller's address: ``peer`` (the connection's) unless it is a
        trusted proxy; then the right-most ``X-Forwarded-For`` hop that is
        not a trusted proxy (the left-most hop if all are), else
        ``X-Real-IP``. A malformed value leaves ``peer`` as the answer."""
        if not peer or not self._peer_trusted(peer):
            return peer
        if len(forwarded_for or "") + len(real_ip or "") > _KEPT_HEADERS_MAX:
            return self._resolve(peer, forwarded_for, real_ip)
        return self._answers(peer, forwarded_for, real_ip)

    def _resolve(self, peer: str, forwarded_for: str | None, real_ip: str | None) -> str:
        if forwarded_for and forwarded_for.strip():
            found: Address | None = None
            for hop in reversed(forwarded_for.split(",")):
                address = _address(hop)
                if address is None:
                    return peer
                found = address
                if not self.trusts(address):
                    break
            return str(found) if found is not None else peer
        if real_ip:
            address = _address(real_ip)
            return peer if address is None else str(address)
        return peer
