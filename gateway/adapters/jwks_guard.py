"""The SSRF guard of JWKS fetching: which addresses a jwks_uri may reach, enforced at connect."""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenAddress(OSError):
    """A jwks_uri host that is, or resolves to, an address the guard refuses."""


def is_forbidden_address(address: IPAddress) -> bool:
    """Whether a key server at `address` could be an internal service rather than the internet."""
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:a.b.c.d reaches the IPv4 host a.b.c.d: judge that host.
        mapped = address.ipv4_mapped
        if mapped is not None:
            return is_forbidden_address(mapped)
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        # Catches what the flags above miss, such as shared address space (100.64.0.0/10)
        # where some clouds put their metadata services.
        or not address.is_global
    )


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally (``[::1]`` included), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_literal_host(host: str, *, allow_private_networks: bool) -> None:
    """Refuse a URL whose host is a forbidden literal address.

    aiohttp connects to a literal address without asking the resolver, so this check
    is the only one such a URL meets; names are checked by GuardedResolver.
    Raises ForbiddenAddress.
    """
    address = literal_address(host)
    if address is not None and not allow_private_networks and is_forbidden_address(address):
        raise ForbiddenAddress(f"{address} is not a public address")


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses the host if any of its addresses is forbidden.

    The connector connects only to the addresses returned here, so the check covers the
    address actually connected to: a name that resolves differently a second time (DNS
    rebinding) is checked again on that second resolution.
    """

    def __init__(self, inner: AbstractResolver, *, allow_private_networks: bool) -> None:
        self._inner = inner
        self._allow_private_networks = allow_private_networks

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The vetted addresses of `host`; raises ForbiddenAddress or the inner OSError."""
        results = await self._inner.resolve(host, port, family)
        if self._allow_private_networks:
            return results
        for result in results:
            address = literal_address(result["host"].partition("%")[0])
            # Anything that is not an address we can judge is refused, not waved through.
            if address is None or is_forbidden_address(address):
                raise ForbiddenAddress(f"{host[:64]!r} resolves to a non-public address")
        if not results:
            raise ForbiddenAddress(f"{host[:64]!r} resolves to no address")
        return results

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()
