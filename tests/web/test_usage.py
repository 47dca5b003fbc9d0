"""Usage per credential through the running gateway: what each accepted request counts, and
that nothing an attacker sends (refused, replayed, forged) counts or creates an entry."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import aiohttp

from gateway.core.usage import certificate_ref, key_ref, secret_ref, trust_ref
from tests.conftest import ISSUER, TOKEN_PATH, Backend, GatewayFactory
from tests.support.pki import CA
from tests.support.platform_issuer import PlatformIssuer
from tests.support.tokens import make_signer
from tests.web.test_certificates import SUBJECT, assertion, cert_client
from tests.web.test_federation import PRODUCTION, Lab, Live, accepted, client, declared, refused

OWN, PARTNER, DEPLOY = "own-keys", "partner-acme", "deploy-api"
CURRENT = make_signer("ES256", kid="current", slot=3)
PREVIOUS = make_signer("ES256", kid="previous", slot=4)


async def start(lab: Lab, tmp_path: Path, github: PlatformIssuer, root: CA) -> Live:
    (tmp_path / "ca.pem").write_bytes(root.pem)
    return await lab.start({"github": declared(github)}, {
        OWN: client(jwks={"keys": [CURRENT.public_jwk, PREVIOUS.public_jwk]},
                    legacy_auth={"allow": ["client_secret_post"]}),
        PARTNER: cert_client(),
        DEPLOY: client(PRODUCTION),
    })


async def post_secret(live: Live) -> int:
    form = {"grant_type": "client_credentials", "client_id": OWN, "client_secret": "s"}
    async with aiohttp.ClientSession() as session, session.post(
            live.url + TOKEN_PATH, data=form) as response:
        return response.status


async def test_each_credential_kind_is_counted_under_its_reference(
    lab: Lab, tmp_path: Path, github: PlatformIssuer, backend: Backend,
) -> None:
    root = CA("Usage Root CA")
    live = await start(lab, tmp_path, github, root)
    before = time.time()
    current = await accepted(live, CURRENT.assertion(OWN, ISSUER, now=time.time()))
    await accepted(live, CURRENT.assertion(OWN, ISSUER, now=time.time()))
    previous = await accepted(live, PREVIOUS.assertion(OWN, ISSUER, now=time.time()))
    assert await post_secret(live) == 200
    leaf = root.issue(SUBJECT)
    await accepted(live, assertion(leaf, [leaf.x5c_entry], PARTNER))
    await accepted(live, github.github_token(ISSUER, environment="production"))
    after = time.time()

    book = live.gateway.usage
    own = book.of_client(OWN)
    assert set(own) == {key_ref(current["key_thumbprint"]), key_ref(previous["key_thumbprint"]),
                        secret_ref("client_secret_post")}
    assert own[key_ref(current["key_thumbprint"])].uses == 2
    assert own[key_ref(previous["key_thumbprint"])].uses == 1
    assert own[secret_ref("client_secret_post")].uses == 1
    # A certificate by the SHA-256 of its DER, never the key inside it.
    assert set(book.of_client(PARTNER)) == {
        certificate_ref(hashlib.sha256(leaf.der).hexdigest())}
    # A federated token by its trust, never the platform's signing key.
    assert set(book.of_client(DEPLOY)) == {trust_ref("gha-production")}
    for client_id in (OWN, PARTNER, DEPLOY):
        for usage in book.of_client(client_id).values():
            # A configured key is first seen when the configuration is put in force.
            assert usage.first_seen is not None and usage.last_used is not None
            assert usage.first_seen <= usage.last_used and before <= usage.last_used <= after
        last = book.last_success(client_id)
        assert last is not None and before <= last <= after
    assert live.gateway.usage_store is None  # memory ledger: nothing shared


async def test_refused_replayed_and_forged_attempts_count_nothing(
    lab: Lab, tmp_path: Path, github: PlatformIssuer, backend: Backend,
) -> None:
    root = CA("Usage Root CA")
    live = await start(lab, tmp_path, github, root)
    used = CURRENT.assertion(OWN, ISSUER, now=time.time())
    line = await accepted(live, used)
    ref = key_ref(line["key_thumbprint"])
    counted = live.gateway.usage.usage(OWN, ref)
    attacker = make_signer("ES256", kid="current", slot=9)  # the client's kid, another key
    await refused(live, used, "replayed")
    await refused(live, attacker.assertion(OWN, ISSUER, now=time.time()), "bad_signature")
    await refused(live, CURRENT.assertion(OWN, "https://elsewhere.test", now=time.time()),
                  "bad_audience")
    stranger = CA("Stranger CA")
    leaf = stranger.issue(SUBJECT)
    await refused(live, assertion(leaf, [leaf.x5c_entry], PARTNER), "certificate_untrusted")
    await refused(live, github.github_token(ISSUER, environment="staging"), "no_trust")
    assert live.gateway.usage.usage(OWN, ref) == counted
    # The two configured keys only (the attacker's never shows), one of them used once.
    uses = {name: usage.uses for name, usage in live.gateway.usage.of_client(OWN).items()}
    assert len(uses) == 2 and uses.pop(ref) == 1 and set(uses.values()) == {0}
    assert live.gateway.usage.of_client(PARTNER) == {}
    assert not any(u.uses for u in live.gateway.usage.of_client(DEPLOY).values())
    assert live.gateway.usage.last_success(PARTNER) is None


async def test_usage_disabled_records_nothing(
    start_gateway: GatewayFactory, backend: Backend,
) -> None:
    gw = await start_gateway(extra="usage: {enabled: false, flush_interval: 1s}")
    status, _, _ = await gw.post(gw.form(gw.signer.assertion(gw.client_id, ISSUER,
                                                            now=time.time())))
    assert status == 200 and len(backend.seen) == 1
    assert gw.gateway.usage.of_client(gw.client_id) == {}
    assert gw.gateway.usage.last_success(gw.client_id) is None


async def test_the_usage_clock_dates_each_use(
    start_gateway: GatewayFactory, backend: Backend,
) -> None:
    gw = await start_gateway()
    gw.gateway.handler.usage_clock = lambda: 1_900_000_000.0  # days ahead, as tests move it
    status, _, _ = await gw.post(gw.form(gw.signer.assertion(gw.client_id, ISSUER,
                                                            now=time.time())))
    assert status == 200
    (usage,) = gw.gateway.usage.of_client(gw.client_id).values()
    assert (usage.last_used, usage.uses) == (1_900_000_000.0, 1)
    assert gw.gateway.usage.last_success(gw.client_id) == 1_900_000_000.0
