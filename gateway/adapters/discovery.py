"""OpenID discovery of a federation issuer's jwks_uri: the fetch, and the document's checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import aiohttp
from yarl import URL

from gateway.adapters.jwks_fetch import (
    JwksFetchError,
    fetch_document,
    is_json_media_type,
    loggable_uri,
    read_json_body,
)
from gateway.config.settings import JwksFetchSettings

WELL_KNOWN = "/.well-known/openid-configuration"
_ACCEPT = {"Accept": "application/json"}


def discovery_url(issuer: str) -> str:
    """Where `issuer` publishes its configuration (OpenID Connect Discovery 1.0 §4)."""
    return issuer.rstrip("/") + WELL_KNOWN


async def discover_jwks_uri(
    session: aiohttp.ClientSession, issuer: str, settings: JwksFetchSettings, *,
    headers: Mapping[str, str] | None = None, jwks_hosts: Iterable[str] = (),
) -> str:
    """The jwks_uri that `issuer`'s discovery document names, once checked.

    The document is fetched under the rules of a JWKS fetch; `headers` go with its requests.
    Raises JwksFetchError: bad_discovery for an answer that is not an acceptable document
    for `issuer` (status, content type, JSON, `issuer`, `jwks_uri`), else the reason of
    the failed fetch (timeout, too_large, ...); the detail names the discovery step.
    """

    async def read(response: aiohttp.ClientResponse) -> bytes:
        if response.status != 200:
            raise JwksFetchError("bad_discovery", f"HTTP {response.status}")
        content_type = response.headers.get("Content-Type")
        if not is_json_media_type(content_type):
            raise JwksFetchError("bad_discovery", f"content type {(content_type or '')[:60]!r}")
        return await read_json_body(response, settings)

    where = discovery_url(issuer)
    try:
        body = await fetch_document(session, where, settings, read,
                                    headers={**(headers or {}), **_ACCEPT})
        return parse_discovery(body, issuer, allow_http=settings.allow_http,
                               jwks_hosts=jwks_hosts)
    except JwksFetchError as exc:
        raise JwksFetchError(exc.reason, f"discovery document: {exc.detail}") from exc


def parse_discovery(
    body: bytes, issuer: str, *, allow_http: bool, jwks_hosts: Iterable[str] = ()
) -> str:
    """The jwks_uri of a discovery document, which must be `issuer`'s own.

    Its `issuer` must equal `issuer` exactly (OpenID Connect Discovery 1.0 §4.3: no
    normalisation, so no trailing slash or case change); its `jwks_uri` must be https (or
    http when `allow_http`), without credentials, on the issuer's host or one of
    `jwks_hosts`: a document that could name any host would make us fetch anywhere.
    Raises JwksFetchError bad_discovery.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JwksFetchError("bad_discovery", "not JSON") from exc
    if not isinstance(document, dict):
        raise JwksFetchError("bad_discovery", "not a JSON object")
    named = document.get("issuer")
    if named != issuer:
        shown = repr(named[:100]) if isinstance(named, str) else "missing"
        raise JwksFetchError("bad_discovery", f"issuer {shown} is not {issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise JwksFetchError("bad_discovery", "jwks_uri is missing or not a string")
    _check_jwks_uri(jwks_uri, issuer, allow_http=allow_http, jwks_hosts=jwks_hosts)
    return jwks_uri


def _check_jwks_uri(
    jwks_uri: str, issuer: str, *, allow_http: bool, jwks_hosts: Iterable[str]
) -> None:
    try:
        url = URL(jwks_uri)
    except (ValueError, TypeError) as exc:
        raise JwksFetchError("bad_discovery", "jwks_uri is not a URL") from exc
    schemes = ("https", "http") if allow_http else ("https",)
    if not url.absolute or url.scheme not in schemes or not url.host:
        raise JwksFetchError("bad_discovery", f"jwks_uri {loggable_uri(jwks_uri)} is not "
                                              f"an absolute {' or '.join(schemes)} URL")
    if url.user is not None or url.password is not None:
        raise JwksFetchError("bad_discovery", "jwks_uri holds credentials")
    host = url.host.lower()
    allowed = {_host(URL(issuer).host)} | {_host(name) for name in jwks_hosts}
    if host not in allowed:
        raise JwksFetchError("bad_discovery", f"jwks_uri is on host {host[:100]!r}, neither "
                                              "the issuer's nor one of jwks_hosts")


def _host(name: str | None) -> str:
    return (name or "").lower().strip("[]")
