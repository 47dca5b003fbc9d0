"""Fetching key documents over HTTP: the guarded session, limits, redirects, JWKS parsing."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from gateway.adapters.jwks_cache import (
    cache_lifetime as cache_lifetime,  # part of this module's API
)
from gateway.adapters.jwks_cache import clamp_lifetime
from gateway.adapters.jwks_guard import ForbiddenAddress, GuardedResolver, check_literal_host
from gateway.config.settings import JwksFetchSettings
from gateway.core.keyset import KeySet, KeySetImport, import_jwks

# Every value a fetch reports (the `result` metric label): "ok", "not_modified", or a reason.
FETCH_RESULTS = frozenset({
    "ok", "not_modified", "timeout", "connect_error", "forbidden_address", "bad_status",
    "bad_content_type", "too_large", "bad_document", "no_usable_key", "redirect_refused",
    "tls_error", "http_refused", "secret_key_material", "bad_discovery", "token_unreadable",
})
MAX_REDIRECTS = 3
MAX_ETAG_LENGTH = 256  # an entity tag is echoed back in If-None-Match: keep it short
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_JSON_TYPES = frozenset({"application/json", "application/jwk-set+json"})
_REQUEST_HEADERS = {"Accept": "application/jwk-set+json, application/json;q=0.9",
                    "User-Agent": "pkjwt-gateway"}


class JwksFetchError(Exception):
    """A failed fetch: `reason` is one of FETCH_RESULTS, `detail` is for logs only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One successful answer: a new key set (200) or confirmation of the held one (304)."""

    not_modified: bool
    keys: tuple[dict[str, Any], ...]  # the usable public JWKs; empty when not_modified
    etag: str | None
    lifetime: float                   # seconds, already clamped to [min_ttl, max_ttl]
    keyset: KeySet | None = None      # `keys` imported once; None when not_modified
    problems: tuple[str, ...] = ()    # why keys of the document were skipped (no key material)
    document_lifetime: float | None = None  # what the document itself asked for, unclamped


@dataclass(frozen=True, slots=True)
class ParsedJwks:
    """A key document's usable keys, imported once; `lifetime` is one the document sets."""

    keys: tuple[dict[str, Any], ...]
    keyset: KeySet
    problems: tuple[str, ...] = ()
    lifetime: float | None = None  # seconds, preferred over the cache headers


# A key document's parser: raises JwksFetchError (bad_document, secret_key_material, ...).
DocumentParser = Callable[[bytes], ParsedJwks]
T = TypeVar("T")


def loggable_uri(uri: str) -> str:
    """Scheme, host, port and path of `uri`: query strings and user info can carry secrets."""
    try:
        url = URL(uri)
        return str(url.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid uri>"


def new_jwks_session(
    settings: JwksFetchSettings, *, resolver: AbstractResolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """The one session for all JWKS fetches: guarded resolver, trust store plus ca_file.

    `resolver` replaces the threaded system resolver under the guard (tests use it to
    point a name at loopback); `ssl_context` replaces the trust store plus ca_file.
    Call it inside the running loop; the caller closes it.
    Raises OSError or ssl.SSLError when ca_file cannot be loaded.
    """
    context = ssl_context
    if context is None:
        context = ssl.create_default_context()
        if settings.ca_file is not None:
            context.load_verify_locations(cafile=settings.ca_file)
    guarded = GuardedResolver(resolver if resolver is not None else aiohttp.ThreadedResolver(),
                              allow_private_networks=settings.allow_private_networks)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=guarded, ssl=context),
        timeout=aiohttp.ClientTimeout(total=settings.timeout, connect=settings.timeout),
        headers=_REQUEST_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),  # one client's key server must not see another's
        trust_env=False,  # a proxy from the environment would connect for us, past the guard
    )


async def fetch_jwks(
    session: aiohttp.ClientSession, uri: str, settings: JwksFetchSettings, etag: str | None,
    *, clock: Callable[[], float] = time.time, headers: Mapping[str, str] | None = None,
    parse: DocumentParser | None = None,
) -> FetchResult:
    """Fetch and validate the JWKS at `uri`, conditionally when `etag` is given.

    `headers` go with this exchange's requests only; `parse` replaces parse_jwks_document
    for key documents with rules of their own. The whole exchange gets settings.timeout.
    Raises JwksFetchError whose reason is in FETCH_RESULTS (never "ok"/"not_modified").
    """
    sent = {**(headers or {}), **({"If-None-Match": etag} if etag is not None else {})}

    async def read(response: aiohttp.ClientResponse) -> FetchResult:
        return await _read_answer(response, settings, etag, clock, parse or parse_jwks_document)

    return await fetch_document(session, uri, settings, read, headers=sent)


async def fetch_document(
    session: aiohttp.ClientSession, uri: str, settings: JwksFetchSettings,
    read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
    *, headers: Mapping[str, str] | None = None,
) -> T:
    """GET `uri` under the fetch rules and return what `read` makes of the final answer.

    The rules: https unless allow_http, the address guard, same-origin redirects only, and
    settings.timeout for the whole exchange (`read` included). `headers` go with each
    request of the exchange, so only to the origin of `uri`.
    Raises JwksFetchError: what `read` raises, or the reason of a failure on the way.
    """
    try:
        async with asyncio.timeout(settings.timeout):
            return await _follow(session, URL(uri), settings, headers or {}, read)
    except JwksFetchError:
        raise
    except FETCH_FAILURES as exc:
        error = fetch_error_for(exc, settings.timeout)
        if error is None:  # not reached: fetch_error_for maps all of FETCH_FAILURES
            raise
        raise error from exc


# What a fetch meets besides its own refusals: aiohttp's ClientError tree, the OS (with
# ssl.SSLError, the guard's ForbiddenAddress and every TimeoutError) and yarl's ValueError.
FETCH_FAILURES: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, ValueError)


def fetch_error_for(exc: BaseException, budget: float) -> JwksFetchError | None:
    """The JwksFetchError for a failure met while fetching within `budget` seconds; None for
    an exception outside FETCH_FAILURES. Most specific first: every class matched before the
    last check is an OSError too."""
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts derive from it too
        return JwksFetchError("timeout", f"no complete answer within {budget}s")
    if isinstance(exc, ForbiddenAddress):
        return JwksFetchError("forbidden_address", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, ForbiddenAddress):
            return JwksFetchError("forbidden_address", str(exc.os_error))
        return JwksFetchError("connect_error", f"name resolution failed ({exc.os_error})")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return JwksFetchError("tls_error", type(exc).__name__)
    if isinstance(exc, FETCH_FAILURES):
        return JwksFetchError("connect_error", type(exc).__name__)
    return None


async def _follow(
    session: aiohttp.ClientSession, url: URL, settings: JwksFetchSettings,
    headers: Mapping[str, str], read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
) -> T:
    origin = (url.scheme, url.host, url.port)
    for _ in range(MAX_REDIRECTS + 1):
        _check_target(url, settings)
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status not in _REDIRECT_STATUSES:
                return await read(response)
            location = response.headers.get("Location")
            if location is None:
                raise JwksFetchError("bad_status", f"HTTP {response.status} without Location")
            try:
                url = url.join(URL(location))
            except ValueError as exc:
                raise JwksFetchError("redirect_refused", "unparsable Location") from exc
            # Another host could be anything, including an internal one: same origin only.
            if (url.scheme, url.host, url.port) != origin:
                raise JwksFetchError("redirect_refused", f"to another origin {url.origin()}")
    raise JwksFetchError("redirect_refused", f"more than {MAX_REDIRECTS} redirects")


def _check_target(url: URL, settings: JwksFetchSettings) -> None:
    if url.scheme != "https" and not (url.scheme == "http" and settings.allow_http):
        raise JwksFetchError("http_refused", f"scheme {url.scheme[:10]!r} is not allowed")
    check_literal_host(url.raw_host or "", allow_private_networks=settings.allow_private_networks)


async def _read_answer(
    response: aiohttp.ClientResponse, settings: JwksFetchSettings, etag: str | None,
    clock: Callable[[], float], parse: DocumentParser,
) -> FetchResult:
    if response.status == 304 and etag is not None:
        return FetchResult(not_modified=True, keys=(),
                           etag=_entity_tag(response.headers.get("ETag")) or etag,
                           lifetime=cache_lifetime(response.headers, clock(), settings))
    if response.status != 200:
        raise JwksFetchError("bad_status", f"HTTP {response.status}")
    parsed = parse(await read_json_body(response, settings))
    lifetime = (cache_lifetime(response.headers, clock(), settings) if parsed.lifetime is None
                else clamp_lifetime(parsed.lifetime, settings))
    return FetchResult(not_modified=False, keys=parsed.keys,
                       etag=_entity_tag(response.headers.get("ETag")), lifetime=lifetime,
                       keyset=parsed.keyset, problems=parsed.problems,
                       document_lifetime=parsed.lifetime)


async def read_json_body(response: aiohttp.ClientResponse, settings: JwksFetchSettings) -> bytes:
    """The body of a JSON answer, read up to settings.max_bytes.

    Raises JwksFetchError bad_content_type or too_large.
    """
    content_type = response.headers.get("Content-Type")
    if not is_json_media_type(content_type):
        raise JwksFetchError("bad_content_type", f"{(content_type or '')[:60]!r}")
    if response.content_length is not None and response.content_length > settings.max_bytes:
        raise JwksFetchError("too_large", f"Content-Length {response.content_length}")
    return await _read_limited(response.content, settings.max_bytes)


def is_json_media_type(content_type: str | None) -> bool:
    """application/json, application/jwk-set+json or any application/...+json (parameters ok)."""
    if content_type is None:
        return False
    mime = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return mime in _JSON_TYPES or (kind == "application" and subtype.endswith("+json")
                                   and len(subtype) > len("+json"))


def _entity_tag(value: str | None) -> str | None:
    return value if value and len(value) <= MAX_ETAG_LENGTH else None


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    # Read past the limit by one byte at most, so a chunked or lying body never fills memory.
    body = bytearray()
    while chunk := await stream.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise JwksFetchError("too_large", f"body exceeds {limit} bytes")
    return bytes(body)


def parse_jwks_document(body: bytes) -> ParsedJwks:
    """The usable keys of a JWKS body, imported once, and why the others were skipped.

    Keys follow the rules of configured ones (keyset.import_jwks). Raises JwksFetchError
    bad_document (not a JSON JWK Set), secret_key_material (a private member or an 'oct'
    key anywhere in the set) or no_usable_key.
    """
    return usable_keys(import_jwks(load_jwk_set(body), "jwks"))


def load_jwk_set(body: bytes) -> dict[str, Any]:
    """The JSON object of a JWK Set body. Raises JwksFetchError bad_document."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # deep nesting fits in max_bytes
        raise JwksFetchError("bad_document", "not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("bad_document", "not a JWK Set (an object with a 'keys' list)")
    return document


def usable_keys(imported: KeySetImport) -> ParsedJwks:
    """The usable keys of an imported JWK Set, and why the others were skipped.

    Raises JwksFetchError secret_key_material (the set holds a secret anywhere) or
    no_usable_key.
    """
    # A key server publishing secrets is compromised or broken: trust none of its keys.
    if imported.secret:
        found = "; ".join(f"{path}: {message}" for path, message in imported.secret[:3])
        raise JwksFetchError("secret_key_material", found)
    problems = tuple(f"{path}: {message}" for path, message in imported.problems)
    if not imported.keys:
        raise JwksFetchError("no_usable_key", "; ".join(problems[:3]))
    return ParsedJwks(imported.keys, imported.keyset, problems)
