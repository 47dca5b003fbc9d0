"""A workload platform's token issuer on https://127.0.0.1: discovery, keys, rotation, tokens.

Stands in for GitHub Actions, GitLab CI, a Kubernetes API server or a SPIFFE bundle
endpoint, with each platform's header shapes; it signs the claims of
tests/support/platform_claims.py. The token methods take that module's claim overrides
by name (OMIT drops a claim), ``header=`` (members such as ``jku``, ``x5u``, ``jwk``,
``x5c``; OMIT drops one) and ``key=`` (a kid of this issuer, published or not, or any
Signer such as ``outsider()``).

Key material is cached per process by slot (see tokens.py). Each kind starts at its own
slot, so two issuers of the same kind in one test share keys unless one gets ``first_slot``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import hashlib
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from tests.support.jwks_server import Asked
from tests.support.platform_claims import (
    github_claims,
    gitlab_claims,
    kubernetes_claims,
    spiffe_claims,
)
from tests.support.tokens import OMIT, Signer, b64url, make_signer, merge

__all__ = [
    "DEFAULT_ALGS", "DISCOVERY_PATH", "JWKS_PATHS", "KINDS", "OMIT", "IssuerKey", "Kind",
    "PlatformIssuer", "platform_issuer", "x509_authority_jwk"]

Kind = Literal["github", "gitlab", "kubernetes", "spiffe"]
KINDS: Final[tuple[Kind, ...]] = ("github", "gitlab", "kubernetes", "spiffe")
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATHS: Final[Mapping[Kind, str]] = {
    "github": "/.well-known/jwks", "gitlab": "/oauth/discovery/keys",
    "kubernetes": "/openid/v1/jwks", "spiffe": "/"}
DEFAULT_ALGS: Final[Mapping[Kind, str]] = {  # SPIRE signs JWT-SVIDs with P-256 by default
    "github": "RS256", "gitlab": "RS256", "kubernetes": "RS256", "spiffe": "ES256"}
_FIRST_SLOTS: Final[Mapping[Kind, int]] = {
    "github": 100, "gitlab": 200, "kubernetes": 300, "spiffe": 400}
_OUTSIDER_SLOT: Final = 990
_X509_AUTHORITY_SLOT: Final = 991
_CERT_START: Final = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_CERT_END: Final = datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)
_SHUTDOWN_SECONDS: Final = 1.0
_GITHUB_CLAIMS: Final = [
    "sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "sha", "repository",
    "repository_id", "repository_owner", "repository_owner_id", "enterprise", "enterprise_id",
    "run_id", "run_number", "run_attempt", "actor", "actor_id", "workflow", "workflow_ref",
    "workflow_sha", "head_ref", "base_ref", "event_name", "ref_type", "ref_protected",
    "environment", "job_workflow_ref", "job_workflow_sha", "repository_visibility",
    "runner_environment"]
_GITLAB_CLAIMS: Final = [
    "iss", "sub", "aud", "exp", "iat", "sub_legacy", "name", "nickname", "preferred_username",
    "email", "email_verified", "website", "profile", "picture", "groups", "groups_direct"]


@functools.cache
def _certificate_der(alg: str, slot: int, uri: str | None = None) -> bytes:
    """A self-signed CA certificate for the cached key in ``slot``."""
    private = make_signer(alg, kid=None, slot=slot).private_key.raw_value
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test issuer {slot}")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(private.public_key()).serial_number(slot + 1)
               .not_valid_before(_CERT_START).not_valid_after(_CERT_END)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return builder.sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _issuer_signer(kind: Kind, alg: str, slot: int) -> Signer:
    """The key in ``slot`` with the kid and JWK members the platform publishes."""
    plain = make_signer(alg, kid=None, slot=slot)
    spki = plain.private_key.raw_value.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if kind == "github":
        der = _certificate_der(alg, slot)
        thumbprint = hashlib.sha1(der).digest()  # x5t is SHA-1 by definition (RFC 7517)
        return plain.with_jwk(kid=str(uuid.uuid5(uuid.NAMESPACE_OID, thumbprint.hex())),
                              alg=alg, x5c=[base64.b64encode(der).decode()],
                              x5t=b64url(thumbprint))
    if kind == "gitlab":
        return plain.with_jwk(kid=plain.private_key.thumbprint(), alg=alg)
    kid = b64url(hashlib.sha256(spki).digest())
    if kind == "kubernetes":
        return plain.with_jwk(kid=kid, alg=alg)
    return plain.with_jwk(kid=kid[:32], use="jwt-svid")  # bundle keys carry no alg


def x509_authority_jwk(trust_domain: str) -> dict[str, Any]:
    """An ``x509-svid`` bundle entry: a CA key with its certificate in ``x5c``, no kid."""
    signer = make_signer("ES256", kid=None, slot=_X509_AUTHORITY_SLOT)
    der = _certificate_der("ES256", _X509_AUTHORITY_SLOT, f"spiffe://{trust_domain}")
    return merge(signer.public_jwk, {"use": "x509-svid",
                                     "x5c": [base64.b64encode(der).decode()]})


@dataclass
class IssuerKey:
    """One of an issuer's signing keys and whether its JWKS lists it."""

    signer: Signer
    published: bool


@functools.cache
def _tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return ca, context


class PlatformIssuer:
    """The issuer's https server and signing keys; tests change its fields while it runs.

    ``bearer_token`` (when set, 401 without ``Authorization: Bearer <it>``), ``max_age``
    (Cache-Control of every answer; None sends none), ``refresh_hint`` and
    ``discovery_overrides`` (merged into the discovery document) are read per request.
    """

    def __init__(
        self, ca_dir: Path, kind: Kind = "github", *, alg: str | None = None,
        path_prefix: str = "", jwks_path: str | None = None, max_age: int | None = 300,
        bearer_token: str | None = None, trust_domain: str = "example.org",
        refresh_hint: int = 300, x509_authority: bool = False, first_slot: int | None = None,
    ) -> None:
        self.kind: Kind = kind
        self.alg = alg or DEFAULT_ALGS[kind]
        self.path_prefix = path_prefix.rstrip("/")
        self.jwks_path = jwks_path or JWKS_PATHS[kind]
        self.max_age, self.bearer_token = max_age, bearer_token
        self.trust_domain, self.refresh_hint = trust_domain, refresh_hint
        self.sequence = 1  # spiffe_sequence: moves on every change of the published set
        self.discovery_overrides: dict[str, Any] = {}
        self.asked: list[Asked] = []
        self.keys: dict[str, IssuerKey] = {}
        self.current_kid = ""
        self.port: int | None = None
        self.ca_pem_path = ca_dir / "platform-issuer-ca.pem"
        _tls()[0].cert_pem.write_to_path(str(self.ca_pem_path))
        self._x509_authority = x509_authority
        self._next_slot = _FIRST_SLOTS[kind] if first_slot is None else first_slot
        self._runner: web.AppRunner | None = None
        self.rotate()

    # -- addresses --------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        """The CA certificate to trust (PEM), as a ``ca_file`` setting takes it."""
        return str(self.ca_pem_path)

    @property
    def origin(self) -> str:
        assert self.port is not None, "the issuer is not running"
        return f"https://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.origin + self.path_prefix

    @property
    def jwks_uri(self) -> str:
        return self.issuer + self.jwks_path

    @property
    def discovery_url(self) -> str:
        return self.issuer + DISCOVERY_PATH

    @property
    def jwks_fetches(self) -> int:
        return sum(1 for asked in self.asked if asked.path == self.path_prefix + self.jwks_path)

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    # -- keys -------------------------------------------------------------------------

    @property
    def current(self) -> Signer:
        return self.keys[self.current_kid].signer

    def rotate(self, *, published: bool = True) -> str:
        """Add a key (a new kid) and sign with it from now on; the older keys stay published."""
        signer = _issuer_signer(self.kind, self.alg, self._next_slot)
        self._next_slot += 1
        assert signer.kid is not None
        self.keys[signer.kid] = IssuerKey(signer, published)
        self.current_kid = signer.kid
        self.sequence += 1
        return signer.kid

    def retire(self, kid: str) -> None:
        """Stop publishing ``kid`` (it can still sign via ``key=kid``); if it was current,
        the newest published key becomes current. Raises KeyError for a kid never held,
        ValueError when retiring the current key would leave no published key."""
        remaining = [other for other, held in self.keys.items()
                     if held.published and other != kid]
        if kid == self.current_kid and not remaining:
            raise ValueError("no published key would remain; rotate() first")
        self.keys[kid].published = False
        self.sequence += 1
        if kid == self.current_kid:
            self.current_kid = remaining[-1]

    def publish(self, published: bool = True, kid: str | None = None) -> None:
        """Publish or hide ``kid`` (default: the current key), which keeps signing."""
        self.keys[kid or self.current_kid].published = published
        self.sequence += 1

    def outsider(self, kid: str | None = "outsider") -> Signer:
        """A key of the issuer's algorithm that it never held nor published."""
        return make_signer(self.alg, kid=kid, slot=_OUTSIDER_SLOT)

    def published_jwks(self) -> dict[str, Any]:
        """The JWK Set served now (a SPIFFE bundle for the spiffe kind)."""
        keys = [dict(held.signer.public_jwk) for held in self.keys.values() if held.published]
        if self.kind != "spiffe":
            return {"keys": keys}
        if self._x509_authority:
            keys.insert(0, x509_authority_jwk(self.trust_domain))
        return {"keys": keys, "spiffe_sequence": self.sequence,
                "spiffe_refresh_hint": self.refresh_hint}

    # -- tokens -----------------------------------------------------------------------

    def header(self, signer: Signer) -> dict[str, Any]:
        """The header this platform puts on a token signed by ``signer``."""
        base: dict[str, Any] = {"alg": signer.alg}
        if signer.kid is not None:
            base["kid"] = signer.kid
        if self.kind != "kubernetes":
            base["typ"] = "JWT"
        if self.kind == "github" and "x5t" in signer.public_jwk:
            base["x5t"] = signer.public_jwk["x5t"]
        return base

    def mint(self, claims: Mapping[str, Any] | bytes,
             header: Mapping[str, Any] | bytes | None = None, *,
             key: str | Signer | None = None) -> str:
        """Sign ``claims`` exactly; ``header`` is merged into the platform's (OMIT drops a
        member) unless given as bytes. ``key``: a kid of this issuer, a Signer, or current."""
        signer = key if isinstance(key, Signer) else self.keys[key or self.current_kid].signer
        if not isinstance(header, bytes):
            header = merge(self.header(signer), header or {})
        return signer.sign(header, claims)

    def github_token(self, aud: str | list[str] | None = None, *,
                     header: Mapping[str, Any] | None = None, key: str | Signer | None = None,
                     **shape: Any) -> str:
        """A signed ``github_claims(self.issuer, aud, **shape)``."""
        return self.mint(github_claims(self.issuer, aud, **shape), header, key=key)

    def gitlab_token(self, aud: str | list[str], *, header: Mapping[str, Any] | None = None,
                     key: str | Signer | None = None, **shape: Any) -> str:
        """A signed ``gitlab_claims(self.issuer, aud, **shape)``."""
        return self.mint(gitlab_claims(self.issuer, aud, **shape), header, key=key)

    def kubernetes_token(self, aud: str | list[str], *, header: Mapping[str, Any] | None = None,
                         key: str | Signer | None = None, **shape: Any) -> str:
        """A signed ``kubernetes_claims(self.issuer, aud, **shape)``."""
        return self.mint(kubernetes_claims(self.issuer, aud, **shape), header, key=key)

    def spiffe_token(self, aud: str | list[str], *, header: Mapping[str, Any] | None = None,
                     key: str | Signer | None = None, **shape: Any) -> str:
        """A signed ``spiffe_claims``; the trust domain defaults to the issuer's."""
        shape.setdefault("trust_domain", self.trust_domain)
        iss = self.issuer if self.port is not None else ""
        return self.mint(spiffe_claims(iss, aud, **shape), header, key=key)

    # -- serving ----------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "issuer": self.issuer, "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code" if self.kind == "gitlab" else "id_token"],
            "subject_types_supported": ["public", "pairwise"] if self.kind == "github"
            else ["public"],
            "id_token_signing_alg_values_supported": [self.alg]}
        claims = {"github": _GITHUB_CLAIMS, "gitlab": _GITLAB_CLAIMS}.get(self.kind)
        if claims is not None:  # the Kubernetes API server lists none
            document["claims_supported"] = list(claims)
        return merge(document, self.discovery_overrides)

    async def _answer(self, request: web.Request) -> web.Response:
        self.asked.append(Asked(request.path_qs, CIMultiDict(request.headers),
                                asyncio.get_running_loop().time()))
        if (self.bearer_token is not None
                and request.headers.get("Authorization") != f"Bearer {self.bearer_token}"):
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        if request.path == self.path_prefix + self.jwks_path:
            document = self.published_jwks()
        elif self.kind != "spiffe" and request.path == self.path_prefix + DISCOVERY_PATH:
            document = self.discovery()
        else:
            return web.json_response({"error": "not found"}, status=404)
        headers = {} if self.max_age is None else {"Cache-Control": f"max-age={self.max_age}"}
        return web.json_response(document, headers=headers)

    async def start(self) -> None:
        """Listen on a free loopback port (https, the CA in ``ca_pem_path``)."""
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_tls()[1]).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self.port = runner, int(runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PlatformIssuer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()


def platform_issuer(ca_dir: Path, kind: Kind = "github", **options: Any) -> PlatformIssuer:
    """An issuer to run as ``async with platform_issuer(tmp_path, "gitlab") as issuer:``;
    ``options`` are PlatformIssuer's keywords. The block's end stops the server."""
    return PlatformIssuer(ca_dir, kind, **options)
