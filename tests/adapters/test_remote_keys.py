"""RemoteKeySource against a live loopback key server: caching, refresh, staleness, failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.adapters.jwks_fetch import FETCH_RESULTS, new_jwks_session
from gateway.adapters.remote_keys import RemoteKeySource
from gateway.core.keyset import prepare_keyset
from gateway.core.keysource import KeySource, StaticKeySource
from tests.support.jwks_server import (
    FakeClock,
    JwksServer,
    ServerFactory,
    Watched,
    fetch_settings,
    start_jwks_server,
)
from tests.support.tokens import make_signer


def es_key(slot: int) -> dict[str, Any]:
    return dict(make_signer("ES256", slot=slot).public_jwk)  # kid "es256-<slot>"


KEY_A, KEY_B, KEY_C = "es256-0", "es256-1", "es256-2"


SourceFactory = Callable[..., Watched]


@pytest.fixture
async def make_source() -> AsyncIterator[SourceFactory]:
    sessions: list[aiohttp.ClientSession] = []
    made: list[Watched] = []

    def make(url: str, *, clock: Callable[[], float] = time.time, **settings: Any) -> Watched:
        chosen = fetch_settings(**settings)
        sessions.append(new_jwks_session(chosen))
        watched: Watched

        def on_fetch(client_id: str, result: str) -> None:
            assert client_id == "acme" and result in FETCH_RESULTS
            watched.results.append(result)

        def on_keys(client_id: str, count: int) -> None:
            watched.counts.append(count)

        watched = Watched(RemoteKeySource("acme", url, chosen, sessions[-1], clock=clock,
                                          on_fetch=on_fetch, on_keys=on_keys))
        made.append(watched)
        return watched

    yield make
    for watched in made:
        await watched.source.close()
    for session in sessions:
        await session.close()


@pytest.fixture
async def jwks(aiohttp_server: ServerFactory) -> JwksServer:
    return await start_jwks_server(aiohttp_server, [es_key(0)])


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_first_fetch_makes_the_source_ready(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    clock = FakeClock()
    watched = make_source(jwks.url("/jwks?token=s3cret"), clock=clock, min_ttl=60.0)
    assert (watched.source.current(), watched.source.settled(), watched.source.ready()) == (
        None, False, False)
    await watched.settle()
    assert watched.source.ready() and watched.kids() == {KEY_A}
    assert (watched.results, watched.counts, jwks.fetches) == (["ok"], [1], 1)
    status = watched.source.status()
    assert (status.kind, status.key_count, status.last_error, status.stale) == (
        "jwks_uri", 1, None, False)
    assert status.uri == jwks.url("/jwks")  # no query string: it may carry a token
    assert status.last_fetch == status.last_success == clock.now
    assert status.expires_at == clock.now + 60.0


async def test_max_age_is_honoured_without_refetching(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    jwks.headers["Cache-Control"] = "max-age=3000"
    watched = make_source(jwks.url(), min_ttl=0.1)
    await watched.settle()
    await asyncio.sleep(0.4)  # min_ttl would have refreshed ~4 times by now
    assert jwks.fetches == 1
    expires_at = watched.source.status().expires_at
    assert expires_at is not None and 2990 < expires_at - time.time() <= 3000


async def test_background_refresh_comes_before_expiry_and_picks_up_changes(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    watched = make_source(jwks.url(), min_ttl=0.3)  # no cache headers: min_ttl
    await watched.settle()
    jwks.keys.append(es_key(1))
    samples: list[bool] = []

    def refreshed() -> bool:
        samples.append(watched.source.ready())
        return jwks.fetches >= 2

    await until(refreshed)
    assert jwks.asked[1].at - jwks.asked[0].at < 0.3  # before the set expired
    await until(lambda: watched.kids() == {KEY_A, KEY_B})
    assert all(samples) and watched.results[:2] == ["ok", "ok"]


async def test_unchanged_set_costs_a_304_and_renews_the_lifetime(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    jwks.etag = '"v1"'
    jwks.headers["Cache-Control"] = "max-age=0"
    watched = make_source(jwks.url(), min_ttl=0.2)
    await watched.settle()
    first = watched.source.current()
    jwks.headers["Cache-Control"] = "max-age=3000"  # what the 304 says
    await until(lambda: jwks.fetches >= 2)
    await until(lambda: len(watched.results) >= 2)
    assert jwks.asked[1].headers["If-None-Match"] == '"v1"'
    assert watched.results == ["ok", "not_modified"] and watched.counts == [1]
    assert watched.source.current() is first
    status = watched.source.status()
    assert status.has_etag and status.expires_at is not None
    assert status.expires_at - time.time() > 2990
    await asyncio.sleep(0.3)
    assert jwks.fetches == 2


async def test_unknown_kid_refetches_once_then_finds_the_new_key(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    clock = FakeClock()
    watched = make_source(jwks.url(), clock=clock, unknown_kid_refresh=30.0)
    await watched.settle()
    jwks.keys.append(es_key(1))
    keys = await watched.source.refresh_for_unknown_kid()
    assert keys is not None and set(keys.by_kid) == {KEY_A, KEY_B}
    assert jwks.fetches == 2 and watched.counts == [1, 2]


async def test_unknown_kid_refetch_is_rate_limited_per_interval(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    clock = FakeClock()
    watched = make_source(jwks.url(), clock=clock, unknown_kid_refresh=30.0)
    await watched.settle()
    await watched.source.refresh_for_unknown_kid()
    jwks.keys.append(es_key(2))
    clock.advance(29.0)
    keys = await watched.source.refresh_for_unknown_kid()
    assert keys is not None and set(keys.by_kid) == {KEY_A}  # current keys, nothing fetched
    assert jwks.fetches == 2
    clock.advance(1.0)
    keys = await watched.source.refresh_for_unknown_kid()
    assert keys is not None and set(keys.by_kid) == {KEY_A, KEY_C}
    assert jwks.fetches == 3


async def test_a_refresh_storm_costs_one_fetch(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    watched = make_source(jwks.url(), clock=FakeClock())
    await watched.settle()
    jwks.keys.append(es_key(1))
    jwks.delay = 0.2
    answers = await asyncio.gather(*(watched.source.refresh_for_unknown_kid()
                                     for _ in range(100)))
    assert jwks.fetches == 2
    assert all(answer is answers[0] for answer in answers)
    assert answers[0] is not None and set(answers[0].by_kid) == {KEY_A, KEY_B}


async def test_a_removed_key_disappears_after_a_refresh(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    jwks.keys.append(es_key(1))
    watched = make_source(jwks.url(), clock=FakeClock())
    await watched.settle()
    assert watched.kids() == {KEY_A, KEY_B}
    del jwks.keys[0]
    await watched.source.refresh_for_unknown_kid()
    assert watched.kids() == {KEY_B} and watched.counts == [2, 1]


async def test_host_down_serves_the_last_keys_until_max_stale(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    clock = FakeClock()
    watched = make_source(jwks.url(), clock=clock, min_ttl=60.0, max_stale=300.0)
    await watched.settle()
    assert jwks.server is not None
    await jwks.server.close()
    clock.advance(61.0)  # expired, and past the unknown-kid interval
    assert await watched.source.refresh_for_unknown_kid() is not None
    assert watched.results == ["ok", "connect_error"]
    status = watched.source.status()
    assert (status.stale, status.ready, status.last_error, status.key_count) == (
        True, True, "connect_error", 1)
    clock.advance(299.0)  # 360 s after the fetch: 60 s lifetime + 300 s max_stale
    assert watched.source.ready()
    clock.advance(1.1)
    assert watched.source.current() is None and not watched.source.ready()
    assert watched.counts == [1, 0]
    status = watched.source.status()
    assert (status.ready, status.stale, status.key_count) == (False, False, 0)


async def test_a_failed_first_fetch_settles_unready_then_retries_with_backoff(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    jwks.status = 503
    watched = make_source(jwks.url(), min_ttl=0.2)  # backoff capped at min_ttl
    await watched.settle()
    assert watched.source.settled() and not watched.source.ready()
    assert watched.source.current() is None and watched.results == ["bad_status"]
    assert watched.source.status().last_error == "bad_status"
    await asyncio.sleep(0.5)
    assert 2 <= jwks.fetches <= 4  # retried, but never in a tight loop
    jwks.status = 200
    await until(watched.source.ready)
    assert watched.results[-1] == "ok" and watched.source.status().last_error is None


@pytest.mark.parametrize(("changes", "reason"), [
    pytest.param({"status": 500}, "bad_status", id="non-200"),
    pytest.param({"content_type": "text/plain"}, "bad_content_type", id="content-type"),
    pytest.param({"body": b'{"keys": "x"}'}, "bad_document", id="keys-not-a-list"),
    pytest.param({"body": b" " * 2048}, "too_large", id="content-length"),
    pytest.param({"body": b" " * 20_000, "chunked": True}, "too_large", id="chunked"),
    pytest.param({"delay": 1.0}, "timeout", id="slow"),
    pytest.param({"keys": [{**es_key(0), "use": "enc"}]}, "no_usable_key", id="no-usable-key"),
    pytest.param({"keys": [{**es_key(0), "d": "AAAA"}]}, "secret_key_material", id="private-key"),
    pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "secret_key_material",
                 id="oct-key"),
])
async def test_failed_fetches_are_counted_by_reason(
    jwks: JwksServer, make_source: SourceFactory, changes: dict[str, Any], reason: str
) -> None:
    for name, value in changes.items():
        setattr(jwks, name, value)
    watched = make_source(jwks.url(), max_bytes=1024, timeout=0.3)
    await watched.settle()
    assert watched.results == [reason] and not watched.source.ready()
    assert watched.source.status().last_error == reason


async def test_a_leaked_secret_keeps_the_last_good_set_and_raises_an_error(
    jwks: JwksServer, make_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    watched = make_source(jwks.url(), clock=clock, min_ttl=60.0, max_stale=300.0)
    await watched.settle()
    leaked = "c2VjcmV0LWxlYWtlZA"
    # The attacker's set: the good key, a key of their own, and a shared secret beside them.
    jwks.keys = [es_key(0), es_key(1), {"kty": "oct", "kid": "hs", "k": leaked}]
    clock.advance(61.0)
    caplog.set_level(logging.DEBUG, logger="gateway.keys")
    held = await watched.source.refresh_for_unknown_kid()
    assert held is not None and set(held.by_kid) == {KEY_A}  # not KEY_B: nothing of it is used
    assert watched.results == ["ok", "secret_key_material"] and watched.counts == [1]
    status = watched.source.status()
    assert (status.last_error, status.stale, status.ready) == ("secret_key_material", True, True)
    [record] = [r for r in caplog.records if "secret_key_material" in r.getMessage()]
    assert record.levelno == logging.ERROR and "jwks.keys[2]" in record.getMessage()
    assert leaked not in caplog.text
    clock.advance(300.0)  # the usual max_stale rule still ends the last good set
    assert watched.source.current() is None and watched.counts == [1, 0]


async def test_refusals_fetch_nothing(jwks: JwksServer, make_source: SourceFactory) -> None:
    plain = make_source(jwks.url(), allow_http=False)
    loopback = make_source(jwks.url(host="localhost"), allow_private_networks=False)
    await plain.settle()
    await loopback.settle()
    assert (plain.results, loopback.results) == (["http_refused"], ["forbidden_address"])
    assert jwks.fetches == 0


async def test_logs_name_the_uri_without_its_query(
    jwks: JwksServer, make_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.status = 500
    caplog.set_level(logging.DEBUG, logger="gateway.keys")
    watched = make_source(jwks.url("/jwks?access_token=s3cret"))
    await watched.settle()
    assert "bad_status" in caplog.text and jwks.url("/jwks") in caplog.text
    assert "s3cret" not in caplog.text


async def test_close_stops_background_work_mid_fetch(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    jwks.delay = 1.0
    watched = make_source(jwks.url(), min_ttl=0.1)
    await watched.source.start()
    await until(lambda: jwks.fetches == 1)
    started = time.monotonic()
    await watched.source.close()
    assert time.monotonic() - started < 0.5
    assert await watched.source.refresh_for_unknown_kid() is None  # closed: no new fetch
    await asyncio.sleep(0.2)
    assert jwks.fetches == 1 and not watched.source.settled()


async def test_a_cancelled_waiter_leaves_the_shared_fetch_running(
    jwks: JwksServer, make_source: SourceFactory
) -> None:
    watched = make_source(jwks.url(), clock=FakeClock())
    await watched.settle()
    jwks.keys.append(es_key(1))
    jwks.delay = 0.2
    impatient = asyncio.create_task(watched.source.refresh_for_unknown_kid())
    await asyncio.sleep(0.05)
    impatient.cancel()
    patient = await watched.source.refresh_for_unknown_kid()  # joins the same fetch
    assert patient is not None and set(patient.by_kid) == {KEY_A, KEY_B}
    assert jwks.fetches == 2 and impatient.cancelled()


# The KeySource contract, run against every implementation.
SourceMaker = Callable[[], Awaitable[KeySource]]


@pytest.fixture(params=["static", "remote"])
async def any_source(
    request: pytest.FixtureRequest, jwks: JwksServer, make_source: SourceFactory
) -> KeySource:
    if request.param == "static":
        return StaticKeySource(prepare_keyset([es_key(0)]), "jwks")
    watched = make_source(jwks.url())
    await watched.settle()
    return watched.source


async def test_key_source_contract(any_source: KeySource) -> None:
    await any_source.start()  # a second start is harmless
    assert any_source.settled() and any_source.ready()
    current = any_source.current()
    assert current is not None and set(current.by_kid) == {KEY_A}
    refreshed = await any_source.refresh_for_unknown_kid()
    assert refreshed is not None and set(refreshed.by_kid) == {KEY_A}
    status = any_source.status()
    assert (status.kind, status.key_count, status.ready) == (any_source.kind, 1, True)
    await any_source.close()
    await any_source.close()
    assert any_source.current() is not None  # closing stops fetching, not serving
