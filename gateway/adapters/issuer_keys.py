"""The key sources of federation issuers: static sets imported at load, remote ones per issuer."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver

from gateway.adapters.discovery import discover_jwks_uri, discovery_url
from gateway.adapters.jwks_cache import clamp_lifetime
from gateway.adapters.jwks_fetch import (
    FetchResult,
    JwksFetchError,
    fetch_jwks,
    loggable_uri,
    new_jwks_session,
)
from gateway.adapters.remote_keys import CachingKeySource, FetchCallback, KeysCallback
from gateway.adapters.spiffe_bundle import parse_bundle, select_jwt_svid_keys
from gateway.config.errors import ConfigError
from gateway.config.federation import FederationIssuerSettings
from gateway.config.settings import JwksFetchSettings
from gateway.config.yaml_dialect import join_path
from gateway.core.keyset import import_jwks
from gateway.core.keysource import KeySource, StaticKeySource

MAX_TOKEN_BYTES = 16 * 1024  # a service-account token is a few kilobytes
# RFC 6750 §2.1 b64token: anything else could not travel in the header, or would split it.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def build_issuer_source(
    name: str, issuer: FederationIssuerSettings, fetch: JwksFetchSettings, *,
    resolver: AbstractResolver | None = None, on_fetch: FetchCallback | None = None,
    on_keys: KeysCallback | None = None, clock: Callable[[], float] = time.time,
) -> KeySource:
    """The key source of the issuer `name`: a static set imported now, or a remote source.

    A remote source fetches nothing before start(); callbacks get `name`. Raises
    ConfigError listing the problems of a static set (``federation.issuers.<name>.jwks``
    or ``.jwks_file``, keys at ``...keys[<i>]``) or a ca_file without usable certificates.
    """
    where = join_path(join_path("federation", "issuers"), name)
    kind = issuer.key_source
    if kind in ("jwks", "jwks_file"):
        return _static_source(issuer, kind, join_path(where, kind))
    return IssuerKeySource(name, issuer, issuer_fetch_settings(issuer, fetch),
                           _trust(issuer, join_path(where, "ca_file")), resolver=resolver,
                           clock=clock, on_fetch=on_fetch, on_keys=on_keys)


def issuer_fetch_settings(
    issuer: FederationIssuerSettings, fetch: JwksFetchSettings
) -> JwksFetchSettings:
    """The fetch rules of one issuer: the global ones, but its own trust anchors only (on
    top of the system store) and private networks if either the global rules or it allow
    them."""
    return fetch.model_copy(update={
        "ca_file": issuer.ca_file,
        "allow_private_networks": fetch.allow_private_networks or issuer.allow_private_networks,
    })


def _static_source(issuer: FederationIssuerSettings, kind: str, path: str) -> StaticKeySource:
    document = issuer.jwks_file.document if issuer.jwks_file is not None else issuer.jwks
    # A SPIFFE trust domain's keys, given statically, are still a bundle.
    select = select_jwt_svid_keys if issuer.preset == "spiffe" else import_jwks
    imported = select(document, path)
    if imported.problems:
        raise ConfigError(list(imported.problems))
    return StaticKeySource(imported.keyset, kind)


def _trust(issuer: FederationIssuerSettings, path: str) -> ssl.SSLContext:
    # Loaded now, so that a broken ca_file stops the configuration rather than each fetch.
    context = ssl.create_default_context()
    if issuer.ca_file is not None:
        try:
            context.load_verify_locations(cafile=issuer.ca_file)
        except (OSError, ssl.SSLError) as exc:
            problem = f"holds no usable CA certificate ({type(exc).__name__})"
            raise ConfigError([(path, problem)]) from None
    return context


def read_bearer_token(path: str) -> str:
    """The token in `path`, trailing line break removed (a file that Kubernetes rotates).

    Raises JwksFetchError token_unreadable; its detail never holds the file's contents.
    """
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise JwksFetchError("token_unreadable", f"{path}: {type(exc).__name__}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise JwksFetchError("token_unreadable", f"{path}: more than {MAX_TOKEN_BYTES} bytes")
    token = data.rstrip(b"\r\n").decode("ascii", errors="replace")
    if _BEARER_TOKEN.fullmatch(token) is None:
        raise JwksFetchError("token_unreadable", f"{path}: empty or not a bearer token")
    return token


class IssuerKeySource(CachingKeySource):
    """A federation issuer's keys from discovery, its jwks_uri or a SPIFFE bundle endpoint.

    Owns its HTTP session (this issuer's trust anchors and address guard), opened by
    start() or the first fetch inside the running loop and closed by close(). A
    bearer_token_file is read for every fetch; its token goes on each request to the
    discovery and key endpoints, never on the session.
    """

    owner = "issuer"

    def __init__(
        self, name: str, issuer: FederationIssuerSettings, settings: JwksFetchSettings,
        tls: ssl.SSLContext, *, resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time, on_fetch: FetchCallback | None = None,
        on_keys: KeysCallback | None = None,
    ) -> None:
        self.kind = issuer.key_source
        self._issuer_id = issuer.issuer or ""
        address = (discovery_url(self._issuer_id) if self.kind == "discovery"
                   else issuer.jwks_uri or issuer.bundle_endpoint or "")
        super().__init__(name, address, settings, clock=clock, on_fetch=on_fetch,
                         on_keys=on_keys)
        self.issuer = issuer
        # Everything fetching depends on: a reload may keep this source (and its warm keys)
        # for a new configuration whose key equals it.
        self.settings_key: Hashable = (name, issuer, settings)
        self._tls = tls
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._keys_uri: str | None = None  # the discovered jwks_uri that sent the held etag
        self._hint: float | None = None    # the held bundle's spiffe_refresh_hint

    async def start(self) -> None:
        if not self.closed:
            self._open_session()
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_jwks_session(self.settings, resolver=self._resolver,
                                             ssl_context=self._tls)
        return self._session

    async def _fetch(self, etag: str | None) -> FetchResult:
        session = self._open_session()
        headers = await self._authorization()
        if self.kind == "discovery":
            return await self._fetch_discovered(session, etag, headers)
        if self.kind == "bundle_endpoint":
            return await self._fetch_bundle(session, etag, headers)
        return await fetch_jwks(session, self.uri, self.settings, etag, clock=self._clock,
                                headers=headers)

    async def _authorization(self) -> dict[str, str]:
        path = self.issuer.bearer_token_file
        if path is None:
            return {}
        token = await asyncio.to_thread(read_bearer_token, path)
        return {"Authorization": f"Bearer {token}"}

    async def _fetch_discovered(
        self, session: aiohttp.ClientSession, etag: str | None, headers: dict[str, str]
    ) -> FetchResult:
        # The document is fetched again before every key fetch rather than cached: it is
        # small, key fetches are rare (a lifetime of min_ttl at least, unknown-kid refetches
        # rate-limited), and a moved jwks_uri is then followed at once.
        jwks_uri = await discover_jwks_uri(session, self._issuer_id, self.settings,
                                           headers=headers, jwks_hosts=self.issuer.jwks_hosts)
        if jwks_uri != self._keys_uri:
            etag = None  # an entity tag belongs to the URI that sent it
        try:
            result = await fetch_jwks(session, jwks_uri, self.settings, etag,
                                      clock=self._clock, headers=headers)
        except JwksFetchError as exc:
            raise JwksFetchError(exc.reason, f"keys at {loggable_uri(jwks_uri)}: "
                                             f"{exc.detail}") from exc
        self._keys_uri = jwks_uri
        return result

    async def _fetch_bundle(
        self, session: aiohttp.ClientSession, etag: str | None, headers: dict[str, str]
    ) -> FetchResult:
        result = await fetch_jwks(session, self.uri, self.settings, etag, clock=self._clock,
                                  headers=headers, parse=parse_bundle)
        if not result.not_modified:
            self._hint = result.document_lifetime
        elif self._hint is not None:
            # A 304 has no body: the hint of the bundle it confirms still holds.
            result = dataclasses.replace(result, lifetime=clamp_lifetime(self._hint,
                                                                         self.settings))
        return result
