"""The client's address behind trusted proxies: only what trusted hops vouch for is believed."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.client_address import (
    MAX_FORWARDED_HOPS,
    MAX_REMEMBERED,
    ClientOrigin,
    TrustedProxies,
    parse_hop,
)

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
PEER = "10.0.0.1"  # an ingress pod
CLIENT = "203.0.113.7"


def resolve(xff: list[str], *, peer: str = PEER, proto: tuple[str, ...] = (),
            proxies: TrustedProxies = PROXIES, scheme: str = "http") -> ClientOrigin:
    return proxies.resolve(peer, xff, proto, scheme)


# --- who the client is -----------------------------------------------------------------------

@pytest.mark.parametrize(("peer", "xff", "address", "chain"), [
    pytest.param(PEER, [], PEER, PEER, id="trusted-peer-without-header-is-the-client"),
    pytest.param(PEER, [CLIENT], CLIENT, f"{CLIENT}, {PEER}", id="one-proxy"),
    pytest.param(PEER, [f"{CLIENT}, 10.0.0.2"], CLIENT, f"{CLIENT}, 10.0.0.2, {PEER}",
                 id="two-proxies"),
    pytest.param(PEER, [f"198.51.100.66, {CLIENT}"], CLIENT, f"{CLIENT}, {PEER}",
                 id="client-spoofed-left-entry-is-ignored"),
    pytest.param(PEER, [f"10.0.0.99, {CLIENT}"], CLIENT, f"{CLIENT}, {PEER}",
                 id="client-spoofed-trusted-entry-is-ignored"),
    pytest.param(PEER, ["10.0.0.3, 10.0.0.2"], "10.0.0.3", f"10.0.0.3, 10.0.0.2, {PEER}",
                 id="every-entry-trusted-gives-the-left-most"),
    pytest.param(PEER, ["198.51.100.66", f"{CLIENT}, 10.0.0.2"], CLIENT,
                 f"{CLIENT}, 10.0.0.2, {PEER}", id="several-field-lines-in-order"),
    pytest.param(PEER, [f"{CLIENT},,  , 10.0.0.2,"], CLIENT, f"{CLIENT}, 10.0.0.2, {PEER}",
                 id="empty-list-elements-skipped"),
    pytest.param(PEER, [f"{CLIENT}, unknown"], PEER, PEER, id="malformed-right-most-entry"),
    pytest.param(PEER, ["_hidden, 10.0.0.2"], "10.0.0.2", f"10.0.0.2, {PEER}",
                 id="malformed-behind-a-trusted-hop"),
    pytest.param(PEER, [f"{CLIENT} 10.0.0.2"], PEER, PEER, id="space-separated-is-malformed"),
    pytest.param(PEER, ["fe80::1%eth0"], PEER, PEER, id="zone-id-is-malformed"),
    pytest.param(PEER, [f"{CLIENT}:4711"], CLIENT, f"{CLIENT}, {PEER}", id="ipv4-with-port"),
    pytest.param(PEER, ["[2001:db8::7]:443"], "2001:db8::7", f"2001:db8::7, {PEER}",
                 id="bracketed-ipv6-with-port"),
    pytest.param(PEER, ["2001:DB8:0:0::7"], "2001:db8::7", f"2001:db8::7, {PEER}",
                 id="ipv6-in-canonical-form"),
    pytest.param(PEER, ["::ffff:203.0.113.7"], CLIENT, f"{CLIENT}, {PEER}",
                 id="ipv4-mapped-entry-is-ipv4"),
    pytest.param("fd00::1", [CLIENT], CLIENT, f"{CLIENT}, fd00::1", id="ipv6-peer"),
    pytest.param("::ffff:10.0.0.1", [CLIENT], CLIENT, f"{CLIENT}, {PEER}",
                 id="ipv4-mapped-peer"),
    pytest.param("fd00::1", ["fd00::2, 2001:db8::7"], "2001:db8::7",
                 "2001:db8::7, fd00::1", id="ipv6-chain"),
])
def test_a_trusted_peer_vouches_for_the_chain(
    peer: str, xff: list[str], address: str, chain: str
) -> None:
    origin = resolve(xff, peer=peer)
    assert (origin.address, origin.chain) == (address, chain)


@pytest.mark.parametrize("peer", ["198.51.100.1", "2001:db8::1", "", "not-an-address",
                                  "fe80::1%eth0", "10.0.0.1:80"])
def test_an_untrusted_peer_is_the_client_whatever_it_sends(peer: str) -> None:
    origin = resolve([f"{CLIENT}, 10.0.0.2"], peer=peer, proto=("https",))
    assert origin == ClientOrigin(peer, "http", peer)


def test_without_trusted_proxies_nothing_is_believed() -> None:
    none = TrustedProxies()
    assert not none and PROXIES
    assert resolve([CLIENT], proto=("https",), proxies=none) == ClientOrigin(PEER, "http", PEER)


@given(st.lists(st.text(max_size=80), max_size=4), st.lists(st.text(max_size=12), max_size=3))
def test_headers_from_an_untrusted_peer_change_nothing(xff: list[str], proto: list[str]) -> None:
    assert resolve(xff, peer="198.51.100.1", proto=tuple(proto)) == ClientOrigin(
        "198.51.100.1", "http", "198.51.100.1")


@given(st.lists(st.text(max_size=80), max_size=4))
def test_any_header_gives_an_address_and_a_chain_of_addresses(xff: list[str]) -> None:
    origin = resolve(xff)
    hops = origin.chain.split(", ")
    assert hops[0] == origin.address and hops[-1] == PEER
    assert all(str(ip_address(hop)) == hop for hop in hops)


# --- oversized headers -----------------------------------------------------------------------

def test_a_long_chain_of_trusted_hops_stops_at_the_bound() -> None:
    hops = [f"10.1.{i // 256}.{i % 256}" for i in range(1000)]
    origin = resolve([", ".join(hops)])
    assert origin.address == hops[-MAX_FORWARDED_HOPS]
    assert len(origin.chain.split(", ")) == MAX_FORWARDED_HOPS + 1


def test_a_huge_left_part_is_never_read() -> None:
    junk = "x" * 200_000 + "," * 50_000
    assert resolve([junk + f", {CLIENT}"]).address == CLIENT
    assert resolve([junk, CLIENT]).address == CLIENT


def test_an_oversized_entry_is_malformed() -> None:
    assert resolve(["1" * 10_000 + f", {'9' * 70}"]).address == PEER
    assert parse_hop("[" + "0:" * 40 + "1]") is None


def test_what_is_remembered_stays_bounded() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(MAX_REMEMBERED + 100):
        client = f"198.{i // 65536}.{i // 256 % 256}.{i % 256}"
        assert proxies.resolve(PEER, [client], (), "http").address == client
    assert len(proxies._hops) <= MAX_REMEMBERED
    assert proxies.resolve(PEER, [CLIENT], (), "http").address == CLIENT


# --- the scheme ------------------------------------------------------------------------------

@pytest.mark.parametrize(("proto", "scheme"), [
    pytest.param((), "http", id="absent-keeps-the-connection's"),
    pytest.param(("https",), "https", id="https"),
    pytest.param((" HTTPS ",), "https", id="case-and-space"),
    pytest.param(("https, http",), "http", id="right-most-entry"),
    pytest.param(("http", "https"), "https", id="last-field-line"),
    pytest.param(("ftp",), "http", id="unknown-scheme-ignored"),
    pytest.param(("https\r\nX-Injected: 1",), "http", id="garbage-ignored"),
])
def test_the_scheme_comes_from_the_nearest_trusted_proxy(
    proto: tuple[str, ...], scheme: str
) -> None:
    assert resolve([CLIENT], proto=proto).scheme == scheme


def test_the_connection_scheme_stays_when_the_proxy_says_nothing_usable() -> None:
    assert resolve([CLIENT], proto=("gopher",), scheme="https").scheme == "https"


# --- the trusted networks --------------------------------------------------------------------

@pytest.mark.parametrize(("address", "trusted"), [
    ("10.255.255.255", True), ("11.0.0.0", False), ("127.0.0.1", True), ("127.0.0.2", False),
    ("fd12::1", True), ("fe00::1", False), ("::ffff:10.0.0.1", False),
])
def test_trusts_matches_the_networks(address: str, trusted: bool) -> None:
    assert PROXIES.trusts(ip_address(address)) is trusted


def test_single_addresses_and_host_bits_are_networks() -> None:
    proxies = TrustedProxies(["192.0.2.5", "2001:db8::1"])
    assert proxies.trusts(ip_address("192.0.2.5"))
    assert not proxies.trusts(ip_address("192.0.2.6"))
    assert proxies.trusts(ip_address("2001:db8::1"))


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "ten", "", "10.0.0.0/8, 11.0.0.0/8"])
def test_a_bad_network_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        TrustedProxies([bad])
