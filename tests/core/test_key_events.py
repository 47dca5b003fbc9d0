"""Key-change events: the diff of an owner's usable keys between two looks, and its causes."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway.core.key_events import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_EXPIRING,
    CHECK,
    CLIENT,
    DISABLED,
    EXPIRED,
    FETCH,
    RELOAD,
    RETIRED,
    START,
    UNAVAILABLE,
    HeldKeys,
    KeyEvent,
    KeyLimits,
    KeyRecord,
    key_events,
)
from gateway.core.keyset import VerificationKey, prepare_keyset
from gateway.core.lifecycle import KeyDeadlines
from tests.support.key_certificates import DAY, with_certificate
from tests.support.tokens import NOW, Signer, make_signer

A, B, C = (make_signer("ES256", kid=kid, slot=slot) for slot, kid in enumerate("abc"))
YESTERDAY = date(2025, 6, 14)  # NOW is 2025-06-15T15:06:40Z
MIDNIGHT = datetime(2025, 6, 15, tzinfo=UTC).timestamp()  # the first moment refused


def keys(*signers: Signer) -> tuple[VerificationKey, ...]:
    return prepare_keyset([signer.public_jwk for signer in signers]).keys


def thumbprint(signer: Signer) -> str:
    return keys(signer)[0].thumbprint


def held(*signers: Signer, limits: KeyLimits | None = None, source: str = "jwks") -> HeldKeys:
    return HeldKeys(source, keys(*signers), limits or KeyLimits())


def record(*signers: Signer, expiring: tuple[Signer, ...] = ()) -> KeyRecord:
    return KeyRecord("jwks", frozenset(map(thumbprint, signers)),
                     frozenset(map(thumbprint, expiring)))


def look(before: KeyRecord | None, now_held: HeldKeys | None, cause: str = FETCH,
         now: float = NOW) -> tuple[KeyRecord | None, list[KeyEvent]]:
    return key_events(CLIENT, "acme", before, now_held, now, cause)


def sorted_thumbprints(*signers: Signer) -> tuple[str, ...]:
    return tuple(sorted(map(thumbprint, signers)))


def test_the_first_look_adds_every_usable_key_under_its_cause() -> None:
    after, events = look(None, held(A, B), START)
    assert events == [KeyEvent(CLIENT, "acme", "jwks", START, added=sorted_thumbprints(A, B))]
    assert after == record(A, B)


def test_a_fetch_that_adds_and_drops_is_one_event() -> None:
    after, events = look(record(A, B), held(B, C, source="jwks_uri"))
    assert events == [KeyEvent(CLIENT, "acme", "jwks_uri", FETCH, added=(thumbprint(C),),
                               removed=(thumbprint(A),))]
    assert after is not None and after.usable == {thumbprint(B), thumbprint(C)}


def test_nothing_changed_gives_no_event() -> None:
    assert look(record(A, B), held(B, A), RELOAD) == (record(A, B), [])


def test_a_key_listed_twice_counts_once() -> None:
    renewed = A.with_jwk(kid="a-renewed")
    assert look(None, held(A, renewed), START)[1][0].added == (thumbprint(A),)


@pytest.mark.parametrize("cause", [DISABLED, RELOAD])
def test_an_owner_gone_has_every_key_removed(cause: str) -> None:
    after, events = look(record(A, B), None, cause)
    assert after is None
    assert events == [KeyEvent(CLIENT, "acme", "jwks", cause, removed=sorted_thumbprints(A, B))]
    assert look(None, None, cause) == (None, [])


def test_a_set_with_nothing_to_serve_removes_every_key_as_unavailable() -> None:
    after, events = look(record(A), HeldKeys("jwks_uri", None))
    assert events == [KeyEvent(CLIENT, "acme", "jwks_uri", UNAVAILABLE,
                               removed=(thumbprint(A),))]
    assert after == KeyRecord("jwks_uri", frozenset(), frozenset())
    assert look(after, HeldKeys("jwks_uri", None)) == (after, [])


def dated(expiry: dict[str, date] | None = None,
          retire: dict[str, date] | None = None) -> KeyLimits:
    """Limits with these key_expiry and retire dates ("THUMB" names A by its thumbprint)."""
    def named(dates: dict[str, date] | None) -> dict[str, date]:
        return {thumbprint(A) if name == "THUMB" else name: day
                for name, day in (dates or {}).items()}

    return KeyLimits(deadlines=KeyDeadlines.of_settings(named(expiry), named(retire)))


@pytest.mark.parametrize(
    ("limits", "cause"),
    [
        pytest.param(dated(expiry={"a": YESTERDAY}), EXPIRED, id="key_expiry-by-kid"),
        pytest.param(dated(expiry={"THUMB": YESTERDAY}), EXPIRED, id="key_expiry-by-thumbprint"),
        pytest.param(dated(retire={"a": YESTERDAY}), RETIRED, id="retire-by-kid"),
        pytest.param(dated(retire={"THUMB": YESTERDAY}, expiry={"a": date(2025, 7, 1)}),
                     RETIRED, id="the-sooner-date-says-why"),
        pytest.param(dated(retire={"THUMB": date(2025, 7, 1)}, expiry={"a": YESTERDAY}),
                     EXPIRED, id="the-sooner-date-says-why-again"),
    ],
)
def test_a_key_past_its_date_is_removed_with_what_it_ran_into(
    limits: KeyLimits, cause: str
) -> None:
    after, events = look(record(A, B), held(A, B, limits=limits), CHECK)
    assert events == [KeyEvent(CLIENT, "acme", "jwks", cause, removed=(thumbprint(A),))]
    assert after == record(B)
    # Through its last day (UTC) the key is still usable; from midnight it is not.
    assert look(record(A, B), held(A, B, limits=limits), CHECK, now=MIDNIGHT - 0.001)[1] == []
    assert look(record(A, B), held(A, B, limits=limits), CHECK, now=MIDNIGHT)[1] == events


def test_a_look_with_two_causes_writes_one_event_per_cause() -> None:
    limits = dated(retire={"a": YESTERDAY})
    _, events = look(record(A, B), held(A, C, limits=limits))
    assert events == [
        KeyEvent(CLIENT, "acme", "jwks", FETCH, added=(thumbprint(C),), removed=(thumbprint(B),)),
        KeyEvent(CLIENT, "acme", "jwks", RETIRED, removed=(thumbprint(A),)),
    ]


def test_a_key_already_expired_at_start_is_never_added() -> None:
    after, events = look(None, held(A, B, limits=dated(expiry={"a": YESTERDAY})), START)
    assert events == [KeyEvent(CLIENT, "acme", "jwks", START, added=(thumbprint(B),))]
    assert after == record(B)


def test_an_expired_certificate_removes_its_key_only_when_refused() -> None:
    dated = with_certificate(A, not_after=NOW - 20)
    refusing = KeyLimits(refuse_expired_certificates=True, clock_skew=15)
    _, events = look(record(A), held(dated, limits=refusing), CHECK)
    assert events == [KeyEvent(CLIENT, "acme", "jwks", CERTIFICATE_EXPIRED,
                               removed=(thumbprint(A),))]
    # Within clock_skew of notAfter, or without refuse_expired_certificates, it stays.
    assert look(record(A), held(dated, limits=refusing), CHECK, now=NOW - 6)[1] == []
    assert look(record(A), held(dated, limits=KeyLimits()), CHECK)[1] == []


def test_a_renewed_listing_keeps_a_key_whose_old_certificate_expired() -> None:
    old = with_certificate(A, not_after=NOW - DAY)
    new = with_certificate(A, not_after=NOW + 90 * DAY, serial=2)
    limits = KeyLimits(refuse_expired_certificates=True, certificate_warning=14 * DAY)
    after, events = look(record(A), held(old, new, limits=limits), CHECK)
    assert events == [] and after == record(A)


def test_a_certificate_crossing_the_warning_is_one_event_once() -> None:
    not_after = NOW + 10 * DAY
    dated = with_certificate(A, not_after=not_after)
    limits = KeyLimits(certificate_warning=14 * DAY)
    before, events = look(record(A, B), held(dated, B, limits=limits), CHECK,
                          now=NOW - 5 * DAY)
    assert events == []
    after, events = look(before, held(dated, B, limits=limits), CHECK)
    assert events == [KeyEvent(CLIENT, "acme", "jwks", CERTIFICATE_EXPIRING,
                               expiring=(thumbprint(A),), not_after=not_after)]
    assert after == record(A, B, expiring=(A,))
    assert look(after, held(dated, B, limits=limits), CHECK, now=NOW + DAY)[1] == []


def test_a_key_added_inside_the_warning_is_added_then_expiring() -> None:
    dated = with_certificate(C, not_after=NOW + DAY)
    _, events = look(record(B), held(B, dated, limits=KeyLimits(certificate_warning=14 * DAY)))
    assert [event.cause for event in events] == [FETCH, CERTIFICATE_EXPIRING]
    assert events[0].added == events[1].expiring == (thumbprint(C),)


def test_an_unwatched_certificate_is_never_expiring() -> None:
    dated = with_certificate(A, not_after=NOW + DAY)
    assert look(None, held(dated), START)[1] == [
        KeyEvent(CLIENT, "acme", "jwks", START, added=(thumbprint(A),))]
