"""Configured clients as the authenticator sees them: credentials, backend credential, legacy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.core.assertion import ParsedAssertion
from gateway.core.backend_auth import BackendCredential
from gateway.core.credentials import AssertionCredential
from gateway.core.errors import InvalidClient
from gateway.core.federation import IssuerTrusts
from gateway.core.keysource import KeySource
from gateway.core.reasons import Reason


@dataclass(frozen=True, slots=True)
class LegacyPolicy:
    """Shared-secret methods a client may still use, and until when (epoch seconds)."""

    methods: frozenset[str]
    deadline: float | None  # the first moment refused: the day after `until`, 00:00 UTC
    sunset: str | None  # that moment as an HTTP-date, for the Sunset header (RFC 8594)
    # RFC 9745 Deprecation date (`@<epoch>` of legacy_auth.since); None: no header.
    deprecation: str | None = None


@dataclass(frozen=True, slots=True)
class ClientRuntime:
    """One configured client, ready to authenticate and to be forwarded for."""

    client_id: str
    # What the client may prove itself with (iss = sub = client_id); the first is used when
    # an assertion claims none of them, so its checks name what is wrong.
    credentials: tuple[AssertionCredential, ...]
    backend: BackendCredential
    legacy: LegacyPolicy | None = None  # migration mode: shared secrets still accepted
    # Federated trusts, by the name of the issuer they trust.
    federated: Mapping[str, IssuerTrusts] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.credentials and not self.federated:
            raise ValueError(f"client {self.client_id!r} has no credential")

    def key_sources(self) -> tuple[KeySource, ...]:
        every = (*self.credentials, *self.federated.values())
        return tuple(source for credential in every for source in credential.key_sources())

    def credential_for(self, parsed: ParsedAssertion) -> AssertionCredential:
        """The credential the assertion claims to be made for, else the first one.

        Raises InvalidClient ``unknown_issuer`` for a client with federated trusts only:
        an assertion of its own, or from an issuer nobody declared, has nothing to meet.
        """
        for credential in self.credentials:
            if credential.matches(parsed):
                return credential
        if not self.credentials:
            raise InvalidClient(Reason.UNKNOWN_ISSUER, "the client has federated trusts only")
        return self.credentials[0]
