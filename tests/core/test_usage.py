"""The usage book: counts, first and last times, and the hand-over a shared store merges."""

from __future__ import annotations

import base64

import pytest

from gateway.core.attempt import Attempt
from gateway.core.usage import (
    Usage,
    UsageBook,
    UsageDelta,
    certificate_ref,
    certificate_ref_of_x5t,
    credential_ref,
    key_ref,
    secret_ref,
    trust_ref,
)


@pytest.mark.parametrize(("make", "value", "ref"), [
    pytest.param(key_ref, "NzbLsXh8", "key:NzbLsXh8", id="key"),
    pytest.param(certificate_ref, "ab" * 32, "certificate:" + "ab" * 32, id="certificate"),
    pytest.param(trust_ref, "ci-deploy", "trust:ci-deploy", id="trust"),
    pytest.param(secret_ref, "client_secret_basic", "secret:client_secret_basic", id="secret"),
])
def test_references_name_their_kind(make: object, value: str, ref: str) -> None:
    assert callable(make) and make(value) == ref


def test_a_certificate_known_by_its_x5t_gets_the_hex_reference() -> None:
    digest = bytes(range(32))
    x5t = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert certificate_ref_of_x5t(x5t) == certificate_ref(digest.hex())


X5T = base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("=")


@pytest.mark.parametrize(("attempt", "ref"), [
    pytest.param(Attempt(key_thumbprint="kt"), "key:kt", id="own-key"),
    # A CA-anchored client's leaf key has a thumbprint too: the certificate is the credential.
    pytest.param(Attempt(method="certificate", key_thumbprint="kt", certificate_thumbprint=X5T),
                 "certificate:" + "01" * 32, id="certificate"),
    # A federated token was verified with the platform's key: the trust is the credential.
    pytest.param(Attempt(method="federated", key_thumbprint="platform", trust="gha"),
                 "trust:gha", id="federated"),
    pytest.param(Attempt(method="client_secret_post"), "secret:client_secret_post",
                 id="secret"),
    pytest.param(Attempt(), None, id="nothing-known"),
])
def test_credential_ref_names_what_authenticated(attempt: Attempt, ref: str | None) -> None:
    assert credential_ref(attempt) == ref


def test_record_counts_and_keeps_first_and_last_times() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    book.record("c", "key:a", 130.0)
    book.record("c", "key:a", 120.0)  # a clock that stepped back never moves last_used back
    assert book.usage("c", "key:a") == Usage(first_seen=100.0, last_used=130.0, uses=3)
    assert book.last_success("c") == 130.0


def test_unknown_client_or_credential_has_no_usage() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    assert book.usage("c", "key:b") is None
    assert book.usage("other", "key:a") is None
    assert book.of_client("other") == {}
    assert book.last_success("other") is None


def test_clients_and_credentials_are_kept_apart() -> None:
    book = UsageBook()
    book.record("c1", "key:a", 100.0)
    book.record("c1", "key:b", 110.0)
    book.record("c2", "key:a", 120.0)
    assert book.of_client("c1") == {"key:a": Usage(100.0, 100.0, 1),
                                    "key:b": Usage(110.0, 110.0, 1)}
    assert book.of_client("c2") == {"key:a": Usage(120.0, 120.0, 1)}
    assert sorted(book.clients()) == ["c1", "c2"]
    assert book.last_success("c1") == 110.0


def test_observe_sets_first_seen_only_for_unknown_credentials() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    book.observe("c", ["key:a", "key:b"], 200.0)
    book.observe("c", ["key:b"], 300.0)
    assert book.usage("c", "key:a") == Usage(100.0, 100.0, 1)
    assert book.usage("c", "key:b") == Usage(200.0, None, 0)
    assert book.last_success("c") == 100.0


def test_observed_but_unused_client_has_no_last_success() -> None:
    book = UsageBook()
    book.observe("c", ["key:a"], 100.0)
    assert book.last_success("c") is None


def test_of_client_is_a_copy() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    book.of_client("c")["key:a"].uses = 99
    assert book.usage("c", "key:a") == Usage(100.0, 100.0, 1)


def test_take_pending_hands_over_each_change_once() -> None:
    book = UsageBook()
    book.observe("c", ["key:b"], 90.0)
    book.record("c", "key:a", 100.0)
    book.record("c", "key:a", 110.0)
    assert sorted(book.take_pending(), key=lambda d: d.ref) == [
        UsageDelta("c", "key:a", 100.0, 110.0, 2), UsageDelta("c", "key:b", 90.0, None, 0)]
    assert book.take_pending() == []
    book.record("c", "key:a", 120.0)
    assert book.take_pending() == [UsageDelta("c", "key:a", None, 120.0, 1)]
    assert book.usage("c", "key:a") == Usage(100.0, 120.0, 3)


def test_restored_changes_go_out_again_with_the_next_ones() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    failed = book.take_pending()
    book.record("c", "key:a", 110.0)
    book.restore(failed)
    assert book.take_pending() == [UsageDelta("c", "key:a", 100.0, 110.0, 2)]
    assert book.usage("c", "key:a") == Usage(100.0, 110.0, 2)


def test_absorb_adopts_the_merged_view_on_top_of_what_is_pending() -> None:
    book = UsageBook()
    book.record("c", "key:a", 100.0)
    book.take_pending()  # written to the store, which also holds another process's uses
    book.record("c", "key:a", 150.0)  # made while the store was being read
    book.absorb("c", {"key:a": Usage(50.0, 140.0, 5), "key:z": Usage(60.0, 70.0, 2)})
    assert book.usage("c", "key:a") == Usage(50.0, 150.0, 6)
    assert book.usage("c", "key:z") == Usage(60.0, 70.0, 2)
    assert book.last_success("c") == 150.0
    # Only the local use made after the hand-over is still to go out.
    assert book.take_pending() == [UsageDelta("c", "key:a", None, 150.0, 1)]


def test_absorbing_another_process_s_credential_hands_nothing_back() -> None:
    book = UsageBook()
    book.absorb("c", {"key:z": Usage(60.0, 70.0, 2)})
    assert book.take_pending() == []
    assert book.last_success("c") == 70.0


def test_credentials_per_client_are_bounded_dropping_the_stalest() -> None:
    book = UsageBook(max_refs_per_client=3)
    for n, ref in enumerate(["key:a", "key:b", "key:c"]):
        book.record("c", ref, 100.0 + n)
    book.record("c", "key:a", 200.0)  # key:b is now the stalest
    book.record("c", "key:d", 210.0)
    assert sorted(book.of_client("c")) == ["key:a", "key:c", "key:d"]
    book.restore([UsageDelta("c", "key:b", 101.0, 101.0, 1)])  # a dropped one is not revived
    assert book.usage("c", "key:b") is None
