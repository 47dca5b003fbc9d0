"""Token request bodies: strict form-urlencoded parsing and the one client authentication."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

from gateway.core.backend_auth import FORM_MEDIA_TYPE
from gateway.core.errors import (
    InvalidClient,
    InvalidRequest,
    UnsupportedAuthMethod,
    UntrustedFraming,
)
from gateway.core.reasons import Reason

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# draft-ietf-oauth-spiffe-client-auth: a JWT-SVID as the client assertion.
SPIFFE_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
ASSERTION_TYPES = frozenset({ASSERTION_TYPE, SPIFFE_ASSERTION_TYPE})
FORM_CHARSETS = frozenset({"utf-8", "us-ascii"})
MAX_PARAMETERS = 100

# Never read from the query string: credentials there end up in access logs and proxies,
# and a client_id there could be merged with the body by a lenient backend.
QUERY_FORBIDDEN = frozenset({"client_assertion", "client_assertion_type", "client_secret",
                             "client_id"})
_ENVELOPE = frozenset({"client_assertion", "client_assertion_type", "client_id"})
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Every request carries the assertion type, nearly always percent-encoded: skip unquote for it.
_KNOWN_ESCAPED = {
    escaped: kind for kind in ASSERTION_TYPES
    for escaped in (quote(kind, safe=""), quote(kind, safe="").replace("%3A", "%3a"))
}
_QUERY_SEPARATORS = re.compile(r"[&;]")


@dataclass(frozen=True, slots=True)
class TokenForm:
    params: tuple[tuple[str, str], ...]  # every parameter except the assertion pair and client_id
    client_id: str | None
    assertion: str
    assertion_type: str = ASSERTION_TYPE  # jwt-bearer, or jwt-spiffe for a JWT-SVID


def parse_form(
    body: bytes,
    *,
    content_type: str | None,
    has_authorization: bool,
    query_string: str,
    max_body: int,
) -> TokenForm:
    """Parse a token request carrying exactly one client authentication: a client assertion.

    Raises InvalidRequest (bad_content_type, body_too_large, credentials_in_query,
    bad_encoding, too_many_parameters, duplicate_parameter, multiple_auth_methods,
    empty_assertion, missing_assertion_type, bad_assertion_type) or InvalidClient
    (no_client_auth, unsupported_auth_method).
    """
    check_content_type(content_type)
    if len(body) > max_body:
        raise UntrustedFraming(Reason.BODY_TOO_LARGE, f"{len(body)} bytes")
    if query_string:
        _check_query(query_string)
    fields = parse_urlencoded(body)
    assertion = fields.get("client_assertion")
    secret = "client_secret" in fields
    mechanisms = int(has_authorization) + int(secret) + int(assertion is not None)
    if mechanisms > 1:
        raise InvalidRequest(Reason.MULTIPLE_AUTH_METHODS)
    if assertion is None:
        if has_authorization or secret:
            raise UnsupportedAuthMethod(Reason.UNSUPPORTED_AUTH_METHOD,
                                "authorization header" if has_authorization else "client_secret")
        if "client_assertion_type" in fields:
            raise InvalidRequest(Reason.EMPTY_ASSERTION)
        raise InvalidClient(Reason.NO_CLIENT_AUTH)
    assertion_type = fields.get("client_assertion_type")
    if assertion_type is None:
        raise InvalidRequest(Reason.MISSING_ASSERTION_TYPE)
    if assertion_type not in ASSERTION_TYPES:
        raise InvalidRequest(Reason.BAD_ASSERTION_TYPE, repr(assertion_type)[:120])
    return TokenForm(
        params=tuple((name, value) for name, value in fields.items() if name not in _ENVELOPE),
        client_id=fields.get("client_id"),
        assertion=assertion,
        assertion_type=assertion_type,
    )


def check_content_type(content_type: str | None) -> None:
    """Accept only application/x-www-form-urlencoded, with at most a utf-8/us-ascii charset.

    Raises InvalidRequest ``bad_content_type``.
    """
    if content_type == FORM_MEDIA_TYPE:
        return
    if content_type is None:
        raise InvalidRequest(Reason.BAD_CONTENT_TYPE, "no Content-Type")
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != FORM_MEDIA_TYPE:
        raise InvalidRequest(Reason.BAD_CONTENT_TYPE, repr(content_type)[:120])
    charsets = 0
    for parameter in parameters.split(";"):
        if not parameter.strip():
            continue
        name, _, value = parameter.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name.strip().lower() != "charset" or value.lower() not in FORM_CHARSETS:
            raise InvalidRequest(Reason.BAD_CONTENT_TYPE, repr(content_type)[:120])
        charsets += 1
    if charsets > 1:
        raise InvalidRequest(Reason.BAD_CONTENT_TYPE, "charset given twice")


def parse_urlencoded(body: bytes) -> dict[str, str]:
    """Decode a form body into its parameters with a value, in order.

    A parameter without a value counts as omitted (RFC 6749 §3.1) but still counts as sent
    when looking for duplicates (§3.2). Raises InvalidRequest ``bad_encoding`` (not UTF-8,
    a bad percent escape, an empty name), ``too_many_parameters`` or ``duplicate_parameter``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(Reason.BAD_ENCODING, "body is not UTF-8") from exc
    fields: dict[str, str] = {}
    if not text:
        return fields
    pieces = text.split("&")
    if len(pieces) > MAX_PARAMETERS:
        raise InvalidRequest(Reason.TOO_MANY_PARAMETERS, f"{len(pieces)} fields")
    seen: set[str] = set()
    for piece in pieces:
        if not piece:
            continue  # "a=1&&b=2": an empty field carries nothing
        raw_name, _, raw_value = piece.partition("=")
        name = _unescape(raw_name)
        if not name:
            raise InvalidRequest(Reason.BAD_ENCODING, "a parameter without a name")
        if name in seen:
            raise InvalidRequest(Reason.DUPLICATE_PARAMETER, repr(name)[:60])
        seen.add(name)
        value = _unescape(raw_value)
        if value:
            fields[name] = value
    return fields


def _unescape(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    known = _KNOWN_ESCAPED.get(text)
    if known is not None:
        return known
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text):
        raise InvalidRequest(Reason.BAD_ENCODING, "bad percent escape")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(Reason.BAD_ENCODING, "percent escapes are not UTF-8") from exc


def _check_query(query_string: str) -> None:
    for piece in _QUERY_SEPARATORS.split(query_string):
        name = piece.partition("=")[0]
        if "%" in name or "+" in name:
            name = unquote_plus(name, errors="replace")
        if name in QUERY_FORBIDDEN:
            raise InvalidRequest(Reason.CREDENTIALS_IN_QUERY, name)
