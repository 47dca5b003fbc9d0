"""The backend credential: RFC 6749 §2.3.1 encoding and exactly one credential per request."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl, unquote_plus

import pytest

from gateway.core.backend_auth import BackendCredential


def _decode_basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


@pytest.mark.parametrize(
    "secret",
    ["plain", "with space", "plus+sign", "co:lon", "per%cent", "sl/ash", "ünïcödé", "a&b=c"],
)
def test_basic_credentials_are_form_urlencoded_before_base64(secret: str) -> None:
    credential = BackendCredential("client:one", "client_secret_basic", secret)
    assert credential.authorization is not None
    user, password = _decode_basic(credential.authorization)
    # Exactly one colon survives: the separator. Decoding gives the originals back.
    assert ":" not in user and ":" not in password
    assert (unquote_plus(user), unquote_plus(password)) == ("client:one", secret)


def test_basic_puts_no_credential_in_the_body() -> None:
    credential = BackendCredential("c", "client_secret_basic", "s3cret")
    body = credential.body([("grant_type", "client_credentials"), ("scope", "a b")])
    assert parse_qsl(body.decode()) == [("grant_type", "client_credentials"), ("scope", "a b")]


def test_post_adds_id_and_secret_to_the_body_only() -> None:
    credential = BackendCredential("c", "client_secret_post", "s 3&c=ret")
    assert credential.authorization is None
    body = parse_qsl(credential.body([("grant_type", "client_credentials")]).decode())
    assert body == [("grant_type", "client_credentials"), ("client_id", "c"),
                    ("client_secret", "s 3&c=ret")]


def test_none_adds_the_client_id_only() -> None:
    credential = BackendCredential("c", "none")
    assert credential.authorization is None
    assert parse_qsl(credential.body([]).decode()) == [("client_id", "c")]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_secret_methods_need_a_secret(method: str) -> None:
    with pytest.raises(ValueError):
        BackendCredential("c", method, None)  # type: ignore[arg-type]


def test_repr_never_shows_the_secret() -> None:
    credential = BackendCredential("c", "client_secret_post", "hunter2-very-secret")
    assert "hunter2" not in repr(credential)
    assert "hunter2" not in str(credential)
