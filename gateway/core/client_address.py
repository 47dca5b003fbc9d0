"""Who the client is: the peer, or behind trusted proxies the address X-Forwarded-For vouches for.

A proxy appends the address it received a request from to ``X-Forwarded-For``. Walking the
list from the right, each entry is believed only while the hop that wrote it is trusted: the
first entry that is not a trusted proxy is the client. Everything to its left was written by
the client or by hops nobody vouches for, so it is never read, and a peer that is not trusted
changes nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

Address = IPv4Address | IPv6Address

# Entries read from the right before giving up: a longer chain of trusted hops is not a
# deployment, and the walk must stay cheap whatever a header holds.
MAX_FORWARDED_HOPS = 32
# Longer than any address with brackets and port ("[ffff:...:ffff]:65535" is 47 characters).
MAX_HOP_CHARS = 64
# Address texts whose verdict is remembered; past it the memory starts afresh.
MAX_REMEMBERED = 4096
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, slots=True)
class ClientOrigin:
    """Where a request came from, as the audit log, the brakes and the backend see it."""

    address: str  # the client's address, "" when unknown
    scheme: str  # "http" or "https", as the client reached the first trusted hop
    chain: str  # the X-Forwarded-For value for the backend: client, verified hops, peer


def direct_origin(peer: str, scheme: str) -> ClientOrigin:
    """The origin of a request from a peer that is not a trusted proxy: the peer itself."""
    return ClientOrigin(peer, scheme, peer)


def parse_hop(text: str) -> Address | None:
    """The address in one X-Forwarded-For entry (``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]:443``); None for anything else (``unknown``, ``_hidden``, a zone id)."""
    text = text.strip()
    if not text or len(text) > MAX_HOP_CHARS or "%" in text:
        return None
    bracketed = text[0] == "["
    if bracketed:  # an IPv6 address, perhaps with a port
        text, closed, port = text[1:].partition("]")
        if not closed or (port and (port[0] != ":" or not _is_port(port[1:]))):
            return None
    elif text.count(":") == 1:  # an IPv4 address with a port
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if bracketed and address.version != 6:
        return None
    return _unmapped(address)


def _parse_peer(text: str) -> Address | None:
    """A socket's peer address: a bare address (a zone id, fe80::1%eth0, is never trusted)."""
    if "%" in text:
        return None
    try:
        return _unmapped(ip_address(text))
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


def _unmapped(address: Address) -> Address:
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; they are IPv4 addresses.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _entries_from_right(values: Sequence[str]) -> Iterator[str]:
    """X-Forwarded-For entries, right-most first, over every field line in order; empty list
    elements are skipped (RFC 9110 §5.6.1). Only the tail a walk can use is ever split."""
    for value in reversed(values):
        for entry in reversed(value.rsplit(",", MAX_FORWARDED_HOPS)):
            if entry and not entry.isspace():
                yield entry


def _forwarded_scheme(values: Sequence[str], fallback: str) -> str:
    """The scheme the nearest trusted proxy reports: the right-most X-Forwarded-Proto entry,
    when it is http or https; else the connection's own."""
    if not values:
        return fallback
    last = values[-1].rpartition(",")[2].strip().lower()
    return last if last in _SCHEMES else fallback


class TrustedProxies:
    """The networks whose hops may say who the client is; parsed once per configuration.

    False when empty, so the caller can skip reading any header at all. What it learnt about
    an address text (its canonical form, whether it is trusted) is remembered, up to
    MAX_REMEMBERED texts: the same few proxies and clients come back request after request.
    """

    __slots__ = ("_hops", "_peers", "_v4", "_v6")

    def __init__(self, networks: Iterable[str] = ()) -> None:
        """Raises ValueError for an entry that is not an address or a network (CIDR)."""
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for text in networks:
            network = ip_network(text, strict=False)
            rows = v4 if network.version == 4 else v6
            rows.append((int(network.network_address), int(network.netmask)))
        self._v4, self._v6 = tuple(v4), tuple(v6)
        self._peers: dict[str, tuple[str, bool] | None] = {}
        self._hops: dict[str, tuple[str, bool] | None] = {}

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def trusts(self, address: Address) -> bool:
        """Whether ``address`` is in one of the trusted networks."""
        rows = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any(value & mask == network for network, mask in rows)

    def _judge(self, text: str, seen: dict[str, tuple[str, bool] | None],
               parse: Callable[[str], Address | None]) -> tuple[str, bool] | None:
        """``text``'s canonical address and whether it is trusted; None when not an address."""
        try:
            return seen[text]
        except KeyError:
            pass
        address = parse(text)
        verdict = None if address is None else (str(address), self.trusts(address))
        if len(seen) >= MAX_REMEMBERED:
            seen.clear()  # texts arrive from anyone: the memory stays bounded
        seen[text] = verdict
        return verdict

    def resolve(self, peer: str, forwarded_for: Sequence[str],
                forwarded_proto: Sequence[str], scheme: str) -> ClientOrigin:
        """The origin of a request from ``peer`` (the socket's address) carrying these
        X-Forwarded-For and X-Forwarded-Proto field lines, reached over ``scheme``.

        From an untrusted peer the headers are not read. From a trusted one the client is the
        right-most entry that is not itself trusted; when every entry is trusted, the left-most;
        when an entry is malformed or the walk passes MAX_FORWARDED_HOPS, the last trusted hop
        reached (nobody vouches for what lies beyond it).
        """
        judged = self._judge(peer, self._peers, _parse_peer)
        if judged is None or not judged[1]:
            return direct_origin(peer, scheme)
        client = judged[0]
        verified = [client]
        for count, entry in enumerate(_entries_from_right(forwarded_for)):
            if count == MAX_FORWARDED_HOPS:
                break
            judged = self._judge(entry.strip(), self._hops, parse_hop)
            if judged is None:
                break
            client, trusted = judged
            verified.append(client)
            if not trusted:
                break
        verified.reverse()
        return ClientOrigin(client, _forwarded_scheme(forwarded_proto, scheme),
                            ", ".join(verified))


NO_TRUSTED_PROXIES = TrustedProxies()
