"""The reason words: one enumeration, the README's table, and the errors that carry them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.core.errors import InvalidClient
from gateway.core.reasons import Reason

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `([a-z_]+)` \| [^|]+ \| [^|]+ \|$", re.MULTILINE)


def readme_reasons() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("| reason | status | what happened |")
    end = text.index("\n\n", start)
    return ROW.findall(text[start:end])


def test_the_readme_lists_every_reason_once_and_nothing_else() -> None:
    listed = readme_reasons()
    assert len(listed) == len(set(listed)), "a reason is listed twice"
    assert set(listed) == {reason.value for reason in Reason}


def test_reasons_are_machine_words() -> None:
    for reason in Reason:
        assert re.fullmatch(r"[a-z][a-z_]*[a-z]", reason.value), reason


def test_an_error_takes_only_a_known_reason() -> None:
    assert InvalidClient(Reason.REPLAYED).reason == "replayed"
    assert InvalidClient("replayed").reason is Reason.REPLAYED
    with pytest.raises(ValueError, match="not_a_reason"):
        InvalidClient("not_a_reason")
