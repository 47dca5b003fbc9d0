"""Discovery documents served through the gateway: the IdP's metadata rewritten to name it.

A passthrough of ``/.well-known/openid-configuration`` (or RFC 8414's
``oauth-authorization-server``) would hand clients the IdP's own endpoint URLs and its
secret methods, and a client that discovers its endpoints would then go around the
gateway. ``DiscoveryRewrite.rewrite`` points every URL of the backend whose path the
gateway serves at ``public_url`` instead, and states the client authentication the
gateway's endpoints accept. ``issuer`` is never changed: it is what assertions name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.core.attempt import PRIVATE_KEY_JWT
from gateway.core.clients import LegacyPolicy

WELL_KNOWN = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
# Real documents are a few KiB (Keycloak's ~7 KiB): anything near this is not metadata.
MAX_DOCUMENT_BYTES = 512 * 1024
# An endpoint's URL member, and the metadata naming how a client authenticates there.
AUTH_METADATA = {
    "token_endpoint": ("token_endpoint_auth_methods_supported",
                       "token_endpoint_auth_signing_alg_values_supported"),
    "introspection_endpoint": ("introspection_endpoint_auth_methods_supported",
                               "introspection_endpoint_auth_signing_alg_values_supported"),
    "revocation_endpoint": ("revocation_endpoint_auth_methods_supported",
                            "revocation_endpoint_auth_signing_alg_values_supported"),
}
SECRET_METHODS = ("client_secret_basic", "client_secret_post")  # migration mode, in this order
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnusableDocument(ValueError):
    """The backend's answer cannot be rewritten (its text says why; it holds no secret)."""


def discovery_paths(issuer: str) -> frozenset[str]:
    """Where a client looks for the issuer's metadata: the bare well-known paths and, for an
    issuer with a path, RFC 8414's path-inserted and OIDC's appended forms (both names)."""
    path = urlsplit(issuer).path.rstrip("/")
    paths = set(WELL_KNOWN)
    if path:
        paths.update(well_known + path for well_known in WELL_KNOWN)
        paths.update(path + well_known for well_known in WELL_KNOWN)
    return frozenset(paths)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` lower-cased without a default port; None unless http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    return f"{scheme}://{authority}"


def check_representation(content_type: str | None, content_encoding: str | None,
                         size: int) -> None:
    """Raises UnusableDocument unless the answer is unencoded JSON of a sane size."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/")
                                            and media.endswith("+json")):
        raise UnusableDocument(f"content type {media or 'missing'}")
    if (content_encoding or "identity").strip().lower() != "identity":
        raise UnusableDocument("content encoding")  # asked for identity, got something else
    if size > MAX_DOCUMENT_BYTES:
        raise UnusableDocument(f"{size} bytes, over {MAX_DOCUMENT_BYTES}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_document(body: bytes) -> dict[str, Any]:
    """The JSON object; raises UnusableDocument for anything else."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise UnusableDocument(f"{len(body)} bytes, over {MAX_DOCUMENT_BYTES}")
    try:
        document = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UnusableDocument(f"not JSON: {type(exc).__name__}") from exc
    if not isinstance(document, dict):
        raise UnusableDocument(f"a JSON {type(document).__name__}, not an object")
    return document


@dataclass(frozen=True, slots=True)
class DiscoveryRewrite:
    """How one configuration rewrites discovery documents (built once per runtime)."""

    paths: frozenset[str]  # the passthrough paths that are discovery documents
    public_base: str  # public_url, no trailing slash
    origins: frozenset[str]  # a URL on one of these points at the backend (see origin_of)
    endpoints: frozenset[str]  # paths that require private_key_jwt
    routes: frozenset[str]  # every path the gateway serves: endpoints and passthrough
    algorithms: tuple[str, ...]  # the default policy's
    legacy: tuple[LegacyPolicy, ...] = ()  # clients in migration mode, with their deadline

    def auth_methods(self, now: float) -> list[str]:
        """private_key_jwt, then each secret method some client may still use at ``now``."""
        allowed = {method for policy in self.legacy
                   if policy.deadline is None or now < policy.deadline
                   for method in policy.methods}
        return [PRIVATE_KEY_JWT, *(m for m in SECRET_METHODS if m in allowed)]

    def rewrite(self, body: bytes, now: float) -> bytes:
        """The document naming the gateway, as compact ASCII JSON; raises UnusableDocument."""
        document = parse_document(body)
        issuer = document.get("issuer")
        if "issuer" in document:  # what assertions name: never changed, kept in its place
            document["issuer"] = None
        _rewrite_urls(document, self._gateway_url)
        if "issuer" in document:
            document["issuer"] = issuer
        methods = self.auth_methods(now)
        for endpoint, (methods_key, algorithms_key) in AUTH_METADATA.items():
            if self._is_endpoint(document.get(endpoint)):
                document[methods_key] = methods
                document[algorithms_key] = list(self.algorithms)
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")

    def _gateway_url(self, url: str) -> str | None:
        """The gateway's URL for a backend URL whose path it serves; None to leave it."""
        if origin_of(url) not in self.origins:
            return None
        parts = urlsplit(url)
        if parts.path not in self.routes:
            return None
        query = f"?{parts.query}" if parts.query else ""
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return self.public_base + parts.path + query + fragment

    def _is_endpoint(self, url: object) -> bool:
        """Whether the URL is one of the gateway's endpoints (rewritten or named so already)."""
        if not isinstance(url, str) or not url.startswith(self.public_base + "/"):
            return False
        rest = url[len(self.public_base):]
        return urlsplit(rest).path in self.endpoints


def _rewrite_urls(document: dict[str, Any], gateway_url: Callable[[str], str | None]) -> None:
    """Replace, in place, every string anywhere in the document that ``gateway_url`` maps.

    Iterative: the parser accepts nesting deeper than a recursive walk could go.
    """
    pending: list[dict[str, Any] | list[Any]] = [document]
    while pending:
        node = pending.pop()
        items: Iterable[tuple[Any, Any]] = (
            node.items() if isinstance(node, dict) else enumerate(node))
        for key, value in list(items):
            if isinstance(value, str):
                if value[:4].lower() == "http" and (new := gateway_url(value)) is not None:
                    node[key] = new
            elif isinstance(value, dict | list):
                pending.append(value)


def entity_tag(body: bytes) -> str:
    """A strong entity tag for exactly these bytes (the backend's named another body)."""
    digest = hashlib.sha256(body).digest()[:18]
    return '"' + base64.urlsafe_b64encode(digest).decode("ascii") + '"'


_ENTITY_TAG = re.compile(r'\s*(?:W/)?("[^"]*")\s*(?:,|$)')


def none_match(if_none_match: Iterable[str], tag: str) -> bool:
    """Whether If-None-Match fails for ``tag``: the answer is then 304 (RFC 9110 §13.1.2,
    weak comparison; ``*`` matches any current representation)."""
    for value in if_none_match:
        if value.strip() == "*":
            return True
        if any(match.group(1) == tag for match in _ENTITY_TAG.finditer(value)):
            return True
    return False


# No discovery path: nothing is rewritten.
NO_DISCOVERY = DiscoveryRewrite(frozenset(), "", frozenset(), frozenset(), frozenset(), ())
