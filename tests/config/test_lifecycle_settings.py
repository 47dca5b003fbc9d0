"""The key lifecycle settings: key_expiry and retire per client, the policy's four rules
(off unless set, overridable per client), every problem at its path."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.assemble import build_runtime
from gateway.adapters.key_lifecycle import key_deadlines, lifecycle_policy
from gateway.core.credentials import RegisteredKeys
from gateway.core.lifecycle import KeyDeadline, LifecyclePolicy
from tests.config.test_settings import DELETE, changed, load, problems

DAY = 86400.0


def test_the_rules_are_off_by_default(tmp_path: Path) -> None:
    settings = load(tmp_path, changed({}))
    assert lifecycle_policy(settings, "ci") == LifecyclePolicy(expiry_warning=14 * DAY)
    client = settings.clients["ci"]
    assert (client.key_expiry, client.retire, key_deadlines(client)) == ({}, {}, None)
    [credential] = build_runtime(settings).clients["ci"].credentials
    assert isinstance(credential, RegisteredKeys) and credential.deadlines is None


def test_policy_durations_take_days_and_a_client_overrides_them(tmp_path: Path) -> None:
    settings = load(tmp_path, changed({
        "policy.key_max_age": "365d", "policy.key_unused_after": "30d",
        "policy.client_dormant_after": "90d", "policy.max_keys_per_client": 3,
        "clients.ci.key_unused_after": "400d", "clients.ci.max_keys_per_client": 5,
    }))
    assert lifecycle_policy(settings, "ci") == LifecyclePolicy(
        key_max_age=365 * DAY, key_unused_after=400 * DAY, client_dormant_after=90 * DAY,
        max_keys_per_client=5, expiry_warning=14 * DAY)


def test_dates_become_deadlines_in_the_runtime(tmp_path: Path) -> None:
    settings = load(tmp_path, changed({"clients.ci.key_expiry": {"k1": date(2027, 6, 30)},
                                       "clients.ci.retire": {"tp-1": date(2026, 12, 31)}}))
    [credential] = build_runtime(settings).clients["ci"].credentials
    assert isinstance(credential, RegisteredKeys) and credential.deadlines is not None
    assert credential.deadlines.of("k1", "x") == KeyDeadline.on(date(2027, 6, 30),
                                                                retired=False)
    assert credential.deadlines.of(None, "tp-1") == KeyDeadline.on(date(2026, 12, 31),
                                                                   retired=True)


PROBLEMS: dict[str, tuple[dict[str, Any], str, str]] = {
    "duration-without-unit": ({"policy.key_max_age": 90}, "policy.key_max_age",
                              "a duration needs a unit"),
    "zero-duration": ({"clients.ci.client_dormant_after": "0s"},
                      "clients.ci.client_dormant_after", "greater than 0"),
    "zero-keys": ({"policy.max_keys_per_client": 0}, "policy.max_keys_per_client",
                  "greater than or equal to 1"),
    "date-as-a-string": ({"clients.ci.retire": {"k1": "soon"}}, "clients.ci.retire.k1",
                         "valid date"),
    "empty-name": ({"clients.ci.key_expiry": {"": date(2027, 1, 1)}},
                   "clients.ci.key_expiry.''", "at least 1 character"),
    "both-settings": ({"clients.ci.key_expiry": {"k1": date(2027, 1, 1)},
                       "clients.ci.retire": {"k1": date(2026, 1, 1)}},
                      "clients.ci", "'k1' is in both key_expiry and retire"),
    "no-registered-keys": ({"clients.ci.jwks": DELETE,
                            "clients.ci.federated": [{"name": "t", "issuer": "gh",
                                                      "audience": "https://a.example",
                                                      "subject": "s"}],
                            "clients.ci.retire": {"k1": date(2026, 1, 1)}},
                           "clients.ci", "key_expiry and retire name registered keys"),
}


@pytest.mark.parametrize(("changes", "where", "words"), PROBLEMS.values(), ids=PROBLEMS.keys())
def test_bad_lifecycle_settings_are_reported_at_their_path(
    tmp_path: Path, changes: dict[str, Any], where: str, words: str
) -> None:
    found = problems(tmp_path, changed(changes))
    assert any(path == where and words in message for path, message in found), found
