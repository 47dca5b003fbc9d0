"""Benchmark signing keys and pools of pre-minted request bodies (one unique jti each).

A body carries either the client's own assertion (iss = sub = client_id; with its
certificate chain in x5c for a CA-anchored client) or a platform's workload token (a CI
run's identity, client_id beside it in the form).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

SUPPORTED_ALGS = ("ES256", "RS256")
ASSERTION_FIELDS = (
    "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    "&client_assertion="
)
CHUNK = 5_000
POOL_MARGIN = 1.5  # bodies minted per expected request
MIN_POOL = 1_000


@dataclass(frozen=True, slots=True)
class SigningKey:
    alg: str
    kid: str
    private_jwk: dict[str, Any]
    public_jwk: dict[str, Any]


def generate_key(alg: str, owner: str = "bench") -> SigningKey:
    """A fresh key pair for `alg` (P-256 for ES256, 2048-bit RSA for RS256), kid `owner-alg`.

    Raises ValueError for an algorithm the benchmark does not cover.
    """
    kid = f"{owner}-{alg.lower()}"
    key: ECKey | RSAKey
    if alg == "ES256":
        key = ECKey.generate_key("P-256", parameters={"kid": kid})
    elif alg == "RS256":
        key = RSAKey.generate_key(2048, parameters={"kid": kid})
    else:
        raise ValueError(f"unsupported algorithm {alg!r}; choose from {SUPPORTED_ALGS}")
    public = {**key.as_dict(private=False), "alg": alg, "use": "sig"}
    return SigningKey(alg, kid, key.as_dict(private=True), public)


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who the assertions of a pool speak for, and what else each one says."""

    key: SigningKey
    issuer: str  # iss
    subject: str  # sub
    audience: str  # aud
    form_client_id: str | None = None  # sent beside the assertion when sub is not the client
    header: Mapping[str, Any] = field(default_factory=dict)  # beyond alg and kid
    claims: Mapping[str, Any] = field(default_factory=dict)  # beyond the registered ones
    not_before: bool = False  # nbf = iat, as platforms send

    @property
    def body_prefix(self) -> str:
        """The form up to the assertion, which ends every body."""
        prefix = "grant_type=client_credentials"
        if self.form_client_id is not None:
            prefix += "&client_id=" + quote(self.form_client_id, safe="")
        return prefix + ASSERTION_FIELDS


def own_key(key: SigningKey, client_id: str, audience: str) -> Claimant:
    """The client's own assertions: iss = sub = client_id, signed with its key."""
    return Claimant(key, client_id, client_id, audience)


def _mint_chunk(claimant: Claimant, iat: int, exp: int, count: int) -> list[str]:
    key = claimant.key
    signer = (ECKey if key.alg == "ES256" else RSAKey).import_key(key.private_jwk)
    header = {"alg": key.alg, "kid": key.kid, **claimant.header}
    times = {"iat": iat, "nbf": iat, "exp": exp} if claimant.not_before else \
        {"iat": iat, "exp": exp}
    prefix = claimant.body_prefix
    bodies = []
    for _ in range(count):
        claims = {
            "iss": claimant.issuer,
            "sub": claimant.subject,
            "aud": claimant.audience,
            **times,
            "jti": uuid.uuid4().hex,
            **claimant.claims,
        }
        bodies.append(prefix + jwt.encode(header, claims, signer))
    return bodies


@dataclass(slots=True)
class TokenPool:
    """A file of request bodies, one a line, each with its own assertion."""

    path: Path
    claimant: Claimant
    lifetime: int
    count: int = 0
    expires_at: float = field(default=float("inf"))  # of the oldest body

    def ensure(self, count: int, cpus: Collection[int]) -> float:
        """Mint bodies on `cpus` until the pool holds at least `count`; returns seconds spent."""
        missing = count - self.count
        if missing <= 0:
            return 0.0
        started = time.monotonic()
        iat = int(time.time())
        exp = iat + self.lifetime
        sizes = [min(CHUNK, missing - start) for start in range(0, missing, CHUNK)]
        with ProcessPoolExecutor(
            max_workers=len(cpus),
            mp_context=multiprocessing.get_context("fork"),
            # The harness pins itself to the load core; the minting workers use every core.
            initializer=os.sched_setaffinity,
            initargs=(0, cpus),
        ) as pool:
            futures = [
                pool.submit(_mint_chunk, self.claimant, iat, exp, size)
                for size in sizes
            ]
            with self.path.open("a", encoding="ascii") as out:
                for future in futures:
                    out.write("\n".join(future.result()) + "\n")
        self.count += missing
        self.expires_at = min(self.expires_at, exp)
        return time.monotonic() - started

    def top_up(self, count: int, cpus: Collection[int], *, must_last: float) -> float:
        """Hold `count` bodies that stay valid `must_last` more seconds; returns seconds minting.

        Starts over with a fresh pool when the oldest body would expire sooner.
        """
        if self.seconds_left() < must_last:
            self.reset()
        return self.ensure(count, cpus)

    def reset(self) -> None:
        """Forget every body (before minting a fresh pool)."""
        self.path.write_bytes(b"")
        self.count = 0
        self.expires_at = float("inf")

    def seconds_left(self) -> float:
        """How long until the oldest assertion in the pool expires."""
        return self.expires_at - time.time()


def pool_size(rate: float, seconds: float) -> int:
    """Bodies for `seconds` of load at `rate` req/s, with a margin."""
    return max(MIN_POOL, math.ceil(rate * max(seconds, 1.0) * POOL_MARGIN))


@dataclass(frozen=True, slots=True)
class Bodies:
    """The warm-up and the measurement pool of a run, minted on `cpus`."""

    warm: TokenPool
    measure: TokenPool
    cpus: frozenset[int]
    warmup: float
    duration: float
    slack: float  # seconds a run may spend outside wrk (start-up, minting, scrapes)

    def provide(self, rate: float) -> float:
        """Mint what a run at `rate` req/s needs, none to expire before it ends; seconds spent."""
        span = self.warmup + self.duration + self.slack
        spent = self.warm.top_up(pool_size(rate, self.warmup), self.cpus, must_last=span)
        return spent + self.measure.top_up(
            pool_size(rate, self.duration), self.cpus, must_last=span
        )

    def top_up_measure(self, rate: float) -> float:
        """After the warm-up: enough measurement bodies for `rate` req/s; seconds spent."""
        return self.measure.top_up(
            pool_size(rate, self.duration), self.cpus, must_last=self.duration + 10
        )

    def renew(self) -> None:
        """Forget both pools, so that the next run sends jtis no ledger has seen."""
        self.warm.reset()
        self.measure.reset()
