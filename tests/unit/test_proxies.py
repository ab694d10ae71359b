"""trusted_proxies: whose X-Forwarded-For / X-Real-IP is believed, and which
hop is the caller."""

from __future__ import annotations

import pytest

from pighand_token.core.proxies import TrustedProxies, parse_networks, split_entries

PROXIES = TrustedProxies(parse_networks(["10.0.0.0/8", "192.0.2.1", "2001:db8:1::/48"]))


def caller(peer: str | None, forwarded_for: str | None = None, real_ip: str | None = None) -> str | None:
    return PROXIES.client_address(peer, forwarded_for, real_ip)


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert caller("198.51.100.7", "203.0.113.5", "203.0.113.6") == "198.51.100.7"
    assert caller("127.0.0.1", "203.0.113.5") == "127.0.0.1"  # loopback is trusted only when listed


def test_a_trusted_peer_names_the_caller_in_x_forwarded_for() -> None:
    assert caller("10.1.2.3", "203.0.113.5") == "203.0.113.5"
    assert caller("192.0.2.1", " 203.0.113.5 ") == "203.0.113.5"


def test_trusted_hops_are_skipped_from_the_right() -> None:
    # The caller, an outer balancer (10.9.9.9), then the proxy that connected.
    assert caller("10.1.2.3", "203.0.113.5, 10.9.9.9") == "203.0.113.5"
    assert caller("10.1.2.3", "203.0.113.5,10.9.9.9,192.0.2.1") == "203.0.113.5"


def test_a_forged_left_most_x_forwarded_for_is_not_believed() -> None:
    # The caller sent "X-Forwarded-For: 127.0.0.1, 10.0.0.1"; the proxy appended the caller's real address.
    assert caller("10.1.2.3", "127.0.0.1, 10.0.0.1, 198.51.100.7") == "198.51.100.7"


def test_when_every_hop_is_trusted_the_left_most_is_the_caller() -> None:
    assert caller("10.1.2.3", "10.4.4.4, 10.5.5.5") == "10.4.4.4"


def test_x_real_ip_is_used_when_x_forwarded_for_is_absent() -> None:
    assert caller("10.1.2.3", None, "203.0.113.9") == "203.0.113.9"
    assert caller("10.1.2.3", "  ", "203.0.113.9") == "203.0.113.9"
    assert caller("10.1.2.3", "203.0.113.5", "203.0.113.9") == "203.0.113.5"  # X-Forwarded-For wins
    assert caller("10.1.2.3") == "10.1.2.3"


def test_ipv6_peers_hops_and_networks() -> None:
    assert caller("2001:db8:1::10", "2001:db8:ffff::1") == "2001:db8:ffff::1"
    assert caller("2001:db8:2::10", "203.0.113.5") == "2001:db8:2::10"  # outside the /48
    assert caller("10.1.2.3", "[2001:DB8:ffff::1]") == "2001:db8:ffff::1"  # bracketed, normalised
    assert caller("10.1.2.3", "2001:db8:ffff::1, 2001:db8:1::5") == "2001:db8:ffff::1"


def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address() -> None:
    # What a dual-stack socket reports for an IPv4 proxy.
    assert caller("::ffff:10.1.2.3", "203.0.113.5") == "203.0.113.5"
    assert caller("10.1.2.3", "::ffff:203.0.113.5") == "203.0.113.5"


@pytest.mark.parametrize("forwarded_for", ["not-an-address", "203.0.113.5, junk", "203.0.113.5,,", "1.2.3.4:80",
                                           "\x00", "203.0.113.5 10.0.0.1", "999.1.1.1", "2001:db8::zz"])
def test_a_malformed_x_forwarded_for_leaves_the_peer(forwarded_for: str) -> None:
    assert caller("10.1.2.3", forwarded_for) == "10.1.2.3"


def test_a_malformed_hop_left_of_the_caller_does_not_matter() -> None:
    assert caller("10.1.2.3", "junk, 203.0.113.5") == "203.0.113.5"


@pytest.mark.parametrize("real_ip", ["junk", "", "203.0.113.5, 203.0.113.6"])
def test_a_malformed_x_real_ip_leaves_the_peer(real_ip: str) -> None:
    assert caller("10.1.2.3", None, real_ip) == "10.1.2.3"


@pytest.mark.parametrize("peer", [None, "", "not-an-address", "unix:/run/sock"])
def test_a_peer_that_is_no_address_is_left_as_it_is(peer: str | None) -> None:
    assert caller(peer, "203.0.113.5") == peer


def test_settings_text_and_lists_give_the_same_entries() -> None:
    assert split_entries("10.0.0.0/8, ::1 192.0.2.1") == ["10.0.0.0/8", "::1", "192.0.2.1"]
    assert split_entries('["10.0.0.0/8", "::1"]') == ["10.0.0.0/8", "::1"]
    assert split_entries(["10.0.0.0/8", " ::1 "]) == ["10.0.0.0/8", "::1"]
    assert split_entries("") == []
    assert split_entries("[1, 2]") is None and split_entries(5) is None and split_entries("[broken") is None


@pytest.mark.parametrize("entry", ["proxy.internal", "10.0.0.1/8", "10.0.0.0/33", "::1/129", "*"])
def test_an_entry_that_is_no_address_or_network_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match=repr(entry).replace("*", r"\*")):
        parse_networks(["10.0.0.0/8", entry])


def test_a_long_chain_of_trusted_hops_is_walked_like_a_short_one() -> None:
    hops = ", ".join(["junk", "198.51.100.1", *(f"10.0.0.{n}" for n in range(1, 80))])
    assert len(hops) > 256
    assert caller("10.1.2.3", hops) == "198.51.100.1"
    assert caller("10.1.2.3", hops) == "198.51.100.1"
