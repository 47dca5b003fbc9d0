"""Offboarded clients in the authenticator: every way of naming one is refused as
``client_disabled`` under its id, with the public answer of an unknown client."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from gateway.core.authenticator import Authenticator, Brakes, TokenRequest
from gateway.core.brakes import FailureLimiter
from gateway.core.errors import GatewayError, InvalidClient, UnsupportedAuthMethod
from gateway.core.form import ASSERTION_TYPE
from gateway.core.reasons import Reason
from gateway.core.replay import MemoryReplayLedger
from tests.core.test_authenticator import ENDPOINT, FORM, FakeClock
from tests.core.test_federation import World, github_claims, platform, trust
from tests.support.tokens import AUDIENCE, make_signer

OFFBOARDED = "deploy-api"
DISABLED = frozenset({OFFBOARDED})


def _form(**fields: str) -> bytes:
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in fields.items()).encode()


async def _refusal(body: bytes, world: World, authorization: str | None = None,
                   disabled: frozenset[str] = DISABLED) -> GatewayError:
    authenticator = Authenticator(
        MemoryReplayLedger(100),
        Brakes(FailureLimiter(1.0, 100, 100), FailureLimiter(1.0, 100, 100)),
        max_body=65536, clock=FakeClock())
    request = TokenRequest(ENDPOINT, body, FORM, authorization, "", "192.0.2.1")
    with pytest.raises(GatewayError) as caught:
        await authenticator.authenticate(request, world.clients, world.federation, disabled)
    return caught.value


def _offboarded_world() -> tuple[World, str]:
    """A world whose only client was served, then offboarded: its platform token still
    verifies, but nothing serves the client any more."""
    github = platform()
    world = World()
    world.add(OFFBOARDED, github.issuer, trust())
    token = github.token(github_claims())
    world.clients.clear()
    return world, token


async def test_a_platform_token_naming_an_offboarded_client() -> None:
    world, token = _offboarded_world()
    body = _form(grant_type="client_credentials", client_assertion_type=ASSERTION_TYPE,
                 client_assertion=token, client_id=OFFBOARDED)
    refusal = await _refusal(body, world)
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.CLIENT_DISABLED)
    assert refusal.attempt is not None and refusal.attempt.client == OFFBOARDED
    # Once removed from the configuration too, it is a stranger.
    removed = await _refusal(body, world, disabled=frozenset())
    assert (removed.reason, removed.attempt and removed.attempt.client) == (
        Reason.UNKNOWN_CLIENT, None)
    assert (removed.code, removed.description) == (refusal.code, refusal.description)


async def test_an_own_assertion_and_a_secret_naming_an_offboarded_client() -> None:
    world, _ = _offboarded_world()
    signer = make_signer("ES256")
    body = _form(grant_type="client_credentials", client_assertion_type=ASSERTION_TYPE,
                 client_assertion=signer.assertion(OFFBOARDED, AUDIENCE))
    refusal = await _refusal(body, world)
    assert (type(refusal), refusal.reason) == (InvalidClient, Reason.CLIENT_DISABLED)
    basic = "Basic " + base64.b64encode(f"{OFFBOARDED}:old".encode()).decode()
    secret = await _refusal(_form(grant_type="client_credentials"), world, basic)
    # A shared secret keeps its class: the same answer (and challenge) as a stranger's.
    assert (type(secret), secret.reason) == (UnsupportedAuthMethod, Reason.CLIENT_DISABLED)
    assert secret.attempt is not None and secret.attempt.method == "client_secret_basic"
    stranger = basic.replace(basic.split()[1],
                             base64.b64encode(b"stranger:old").decode())
    unknown = await _refusal(_form(grant_type="client_credentials"), world, stranger)
    assert (type(unknown), unknown.reason) == (UnsupportedAuthMethod,
                                               Reason.UNSUPPORTED_AUTH_METHOD)
