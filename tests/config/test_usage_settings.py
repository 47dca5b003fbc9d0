"""The usage section: on by default, flushed every 5 s, flush_interval bounded to 1s..5m."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.test_settings import changed, load, problems


def test_usage_is_on_and_flushed_every_five_seconds_by_default(tmp_path: Path) -> None:
    usage = load(tmp_path, changed({})).usage
    assert (usage.enabled, usage.flush_interval) == (True, 5.0)


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("30s", 30.0), ("5m", 300.0)])
def test_flush_interval_within_bounds(tmp_path: Path, value: str, seconds: float) -> None:
    settings = load(tmp_path, changed({"usage.flush_interval": value, "usage.enabled": False}))
    assert (settings.usage.enabled, settings.usage.flush_interval) == (False, seconds)


@pytest.mark.parametrize("value", ["500ms", "0s", "6m", "5", "yes"])
def test_flush_interval_out_of_bounds_is_refused_at_its_path(tmp_path: Path, value: str) -> None:
    found = problems(tmp_path, changed({"usage.flush_interval": value}))
    assert [path for path, _ in found] == ["usage.flush_interval"]


def test_unknown_usage_keys_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, changed({"usage.flush": "5s", "usage.enabled": "yes"}))
    assert sorted(path for path, _ in found) == ["usage.enabled", "usage.flush"]
