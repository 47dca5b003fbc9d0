"""Migration mode: which not-yet-migrated client a shared-secret request claims to be (pure)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from gateway.core.errors import InvalidClient, InvalidRequest, UnsupportedAuthMethod
from gateway.core.form import parse_urlencoded
from gateway.core.reasons import Reason

SecretMethod = Literal["client_secret_basic", "client_secret_post"]


@dataclass(frozen=True, slots=True)
class SecretClaim:
    """A request authenticating with a shared secret; the backend, not us, checks the secret."""

    client_id: str
    method: SecretMethod


def identify_secret_client(body: bytes, authorization: str | None) -> SecretClaim:
    """The client a client_secret_basic or client_secret_post request names.

    Raises InvalidClient (unsupported_auth_method for another Authorization scheme,
    unknown_client when no client id can be read) or InvalidRequest (client_id_mismatch
    when the body names another client than the Basic credential).
    """
    fields = parse_urlencoded(body)
    if authorization is None:
        client_id = fields.get("client_id")
        if not client_id:
            raise InvalidClient(Reason.UNKNOWN_CLIENT, "client_secret without client_id")
        return SecretClaim(client_id, "client_secret_post")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise UnsupportedAuthMethod(Reason.UNSUPPORTED_AUTH_METHOD, "authorization scheme")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClient(Reason.UNKNOWN_CLIENT, "unreadable Basic credentials") from exc
    raw_id, colon, _ = decoded.partition(":")
    if not colon or not raw_id:
        raise InvalidClient(Reason.UNKNOWN_CLIENT, "Basic credentials without a client id")
    # RFC 6749 §2.3.1: the id was form-urlencoded before base64.
    client_id = unquote_plus(raw_id)
    if fields.get("client_id", client_id) != client_id:
        raise InvalidRequest(Reason.CLIENT_ID_MISMATCH)
    return SecretClaim(client_id, "client_secret_basic")
