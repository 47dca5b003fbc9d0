"""What one authentication learnt, whatever its outcome: the audit line and metrics read it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Strings that come from the request before anything is verified are cut to this length.
MAX_UNTRUSTED_CHARS = 128
PRIVATE_KEY_JWT = "private_key_jwt"


def untrusted(value: object) -> str | None:
    """A bounded text form of an attacker-supplied value (JSON escaping does the rest)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_UNTRUSTED_CHARS]


def jti_digest(client_id: str, jti: str) -> str:
    """A short, non-reversible tag of a jti: enough to correlate lines, useless to replay."""
    return hashlib.sha256(f"{client_id}\x00{jti}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """One ledger check: ``result`` is fresh, replayed or error."""

    store: str
    result: str
    seconds: float


@dataclass(frozen=True, slots=True)
class FederationDecision:
    """One federated trust's verdict on a verified token: ``result`` is match or mismatch."""

    trust: str
    mode: str  # enforce or shadow
    result: str


@dataclass(slots=True)
class Attempt:
    """Filled in step by step; a refusal carries it on ``GatewayError.attempt``."""

    method: str = PRIVATE_KEY_JWT  # or the shared-secret method in migration mode
    client: str | None = None  # a configured client id, once one is found
    credential: str | None = None  # which of the client's credentials was used
    kid: str | None = None
    alg: str | None = None
    key_thumbprint: str | None = None
    jti_hash: str | None = None
    verification_seconds: float | None = None  # parsing and verifying, refusals included
    replay: ReplayCheck | None = None
    # Federated tokens: the configured issuer's name, the token's own sub (bounded), the
    # trust that accepted it, and every trust's verdict (shadow trusts included).
    issuer: str | None = None
    subject: str | None = None
    trust: str | None = None
    decisions: tuple[FederationDecision, ...] = ()
    # CA-anchored clients: the notAfter (epoch seconds) of the leaf that verified, for the
    # client's certificate expiry gauge.
    certificate_not_after: float | None = None
    # CA-anchored clients, once the x5c chain validated: the leaf's subject (RFC 4514),
    # serial (upper-case hex) and x5t#S256 certificate thumbprint, for the audit line.
    certificate_subject: str | None = None
    certificate_serial: str | None = None
    certificate_thumbprint: str | None = None
