"""CA-anchored certificate clients: the credential whose key comes from a validated x5c chain.

The assertion's ``x5c`` header carries the client's certificate (leaf first, then
intermediates). The leaf's key must have signed the assertion, the chain must validate to
the client's anchors and not be revoked (``certificate_chain``), and the leaf must name
the client (``certificate_identity``); then every claim rule of a registered key holds
(iss = sub = client_id, audience, lifetime, replay). The client rotates its key by getting
a new certificate from the same CA: nothing changes on the gateway.

Validating a chain costs far more than a signature, so the outcome of a chain that passed
every certificate check is kept, per client, anchors and CRL, and chain bytes, until the
earliest notAfter on its path: a client re-sending one certificate pays it once.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gateway.core.assertion import (
    AssertionPolicy,
    ParsedAssertion,
    VerifiedAssertion,
    check_algorithm,
    check_claims,
    check_typ,
    verify_signature,
)
from gateway.core.attempt import Attempt
from gateway.core.certificate_chain import CertificateTrust, ValidatedChain, decode_x5c
from gateway.core.certificate_identity import LeafIdentity, leaf_key
from gateway.core.credentials import ReplayEntry, client_replay_entry
from gateway.core.errors import GatewayError, InvalidClient
from gateway.core.keyset import VerificationKey
from gateway.core.keysource import KeySource
from gateway.core.reasons import Reason

CERTIFICATE = "certificate"  # the credential kind, and the audit's and metrics' method word
MAX_CACHED_CHAINS = 64  # per client: the certificates of its instances, old and new


@dataclass(frozen=True, slots=True)
class CertifiedLeaf:
    """A chain that passed every certificate check for one client, and its leaf's key."""

    chain: ValidatedChain
    key: VerificationKey


class ChainCache:
    """Outcomes of chain validation for one client, each until its path's earliest notAfter.

    Bounded: past ``max_entries`` the oldest goes (a client with many certificates pays
    some validations again, never memory).
    """

    def __init__(self, max_entries: int = MAX_CACHED_CHAINS) -> None:
        self.max_entries = max_entries
        self._entries: dict[Hashable, CertifiedLeaf] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> CertifiedLeaf | None:
        found = self._entries.get(key)
        if found is not None and now >= found.chain.expires_at:
            del self._entries[key]
            return None
        return found

    def leaves(self, now: float) -> tuple[CertifiedLeaf, ...]:
        """The outcomes held and still valid at ``now`` (for the inventory), oldest first."""
        return tuple(held for held in self._entries.values() if now < held.chain.expires_at)

    def put(self, key: Hashable, certified: CertifiedLeaf) -> None:
        if key not in self._entries and len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = certified


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """A client identified by a certificate its configured CA issued: iss = sub = client_id.

    Replay mode: a registered key's (each jti once per client until exp + clock_skew; with
    ``allow_reuse`` the byte-identical assertion may come again).
    """

    kind: ClassVar[str] = CERTIFICATE

    client_id: str
    trust: CertificateTrust
    identity: LeafIdentity
    policies: Mapping[str, AssertionPolicy]  # per endpoint path
    allow_reuse: bool = False
    chains: ChainCache = field(default_factory=ChainCache, compare=False)

    @property
    def name(self) -> str:
        return CERTIFICATE

    def key_sources(self) -> tuple[KeySource, ...]:
        return ()

    def matches(self, parsed: ParsedAssertion) -> bool:
        return parsed.claims.get("iss") == self.client_id

    def verify(self, parsed: ParsedAssertion, endpoint: str, now: float,
               attempt: Attempt) -> VerifiedAssertion:
        """The leaf's signature, the chain and the leaf's identity, then the claims.

        Raises KeyMiss bad_signature; InvalidClient alg_not_allowed, bad_typ, missing_typ,
        certificate_untrusted (no x5c, no path to an anchor, an unusable key),
        bad_header (x5c not base64 DER), no_matching_key (the leaf's key does not verify
        alg), certificate_expired, certificate_revoked, certificate_subject_mismatch, then
        the claim reasons of a registered key.
        """
        attempt.method = CERTIFICATE
        policy = self.policies[endpoint]
        try:
            alg = parsed.header["alg"]
            check_algorithm(alg, policy.algorithms)
            check_typ(parsed.header.get("typ"), policy.require_typ)
            x5c = parsed.header.get("x5c")
            if x5c is None:
                raise InvalidClient(Reason.CERTIFICATE_UNTRUSTED, "no x5c header")
            certified = self._certified(parsed, alg, x5c, now, policy.clock_skew, attempt)
            jti, exp, iat = check_claims(parsed.claims, policy, now)
        except GatewayError:
            raise
        except Exception as exc:  # nothing foreign may escape
            raise InvalidClient(Reason.MALFORMED, f"unexpected {type(exc).__name__}") from exc
        return VerifiedAssertion(client_id=self.client_id, jti=jti, exp=exp, alg=alg,
                                 kid=None, key_thumbprint=certified.key.thumbprint, iat=iat)

    async def verify_after_refresh(self, parsed: ParsedAssertion, endpoint: str, now: float,
                                   attempt: Attempt) -> VerifiedAssertion | None:
        return None  # the key comes with the assertion: there is nothing to refetch

    def replay_entry(self, verified: VerifiedAssertion, assertion: str,
                     endpoint: str) -> ReplayEntry:
        return client_replay_entry(verified, assertion, self.policies[endpoint],
                                   self.allow_reuse)

    def _certified(self, parsed: ParsedAssertion, alg: str, x5c: Sequence[str], now: float,
                   clock_skew: float, attempt: Attempt) -> CertifiedLeaf:
        """The leaf that signed, from the cache or validated now (signature first: cheap)."""
        key = (self.client_id, self.trust.identity, tuple(x5c))
        certified = self.chains.get(key, now)
        if certified is not None:
            _verify_with(parsed, alg, certified.key)
            certified.chain.record(attempt)
        else:
            chain = decode_x5c(x5c)
            signer = leaf_key(chain[0])
            _verify_with(parsed, alg, signer)
            validated = self.trust.validate(chain, now, clock_skew, attempt)
            if not self.identity.matches(validated.leaf):
                raise InvalidClient(Reason.CERTIFICATE_SUBJECT_MISMATCH,
                                    f"{validated.subject!r}, wanted {self.identity.describe()}")
            certified = CertifiedLeaf(validated, signer)
            self.chains.put(key, certified)
        attempt.certificate_not_after = certified.chain.not_after
        return certified


def _verify_with(parsed: ParsedAssertion, alg: str, key: VerificationKey) -> None:
    if alg not in key.algorithms:
        raise InvalidClient(Reason.NO_MATCHING_KEY, f"the certificate's key does not verify {alg}")
    verify_signature(parsed, alg, (key,))

