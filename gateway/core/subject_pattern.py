"""Subject patterns of federated trusts: the `*` and `**` grammar and its anchored matcher."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias

# A longer `sub` comes from no platform the notes describe; refusing it keeps the work of one
# match small whatever the token carries.
MAX_SUBJECT_LENGTH: Final = 1024

_STARS = re.compile(r"\*+")


@dataclass(frozen=True, slots=True)
class _Wildcard:
    """One or more characters, none of them a stop (a match of `[^stops]+`)."""

    stops: re.Pattern[str]


# `*` stays inside one path segment of one `:` field; `**` may cross `/` but never `:`.
_ONE_SEGMENT: Final = _Wildcard(re.compile("[/:]"))
_ONE_FIELD: Final = _Wildcard(re.compile(":"))

_Token: TypeAlias = str | _Wildcard


@dataclass(frozen=True, slots=True)
class SubjectPattern:
    """A compiled subject pattern; `text` is the pattern as configured."""

    text: str
    _tokens: tuple[_Token, ...]

    def matches(self, subject: str) -> bool:
        """Whether the whole of `subject` matches the pattern."""
        if len(subject) > MAX_SUBJECT_LENGTH:
            return False
        return _fullmatch(self._tokens, subject)


def compile_subject_pattern(pattern: str) -> SubjectPattern:
    """Parse `pattern`: `*` and `**` are wildcards, every other character is literal.

    Raises ValueError for an empty pattern or a run of three or more `*`.
    """
    if not pattern:
        raise ValueError("a subject pattern must not be empty")
    tokens: list[_Token] = []
    position = 0
    for run in _STARS.finditer(pattern):
        if len(run.group()) > 2:
            raise ValueError(
                f"'{run.group()}' at offset {run.start()}: only '*' (within one path segment)"
                " and '**' (across '/') are wildcards"
            )
        if run.start() > position:
            tokens.append(pattern[position : run.start()])
        tokens.append(_ONE_SEGMENT if len(run.group()) == 1 else _ONE_FIELD)
        position = run.end()
    if position < len(pattern):
        tokens.append(pattern[position:])
    return SubjectPattern(pattern, tuple(tokens))


# The candidates are sets of offsets where the rest of the pattern may start, kept as sorted,
# disjoint, inclusive ranges. A regular expression would backtrack instead: three wildcards
# against a crafted 1 KiB branch name already take minutes, and the subject is chosen by
# whoever mints the token. Each token here costs at most one pass over the subject.
_Ranges: TypeAlias = list[tuple[int, int]]


def _fullmatch(tokens: tuple[_Token, ...], subject: str) -> bool:
    ranges: _Ranges = [(0, 0)]
    for token in tokens:
        if isinstance(token, str):
            ranges = _after_literal(ranges, token, subject)
        else:
            ranges = _after_wildcard(ranges, token, subject)
        if not ranges:
            return False
    end = len(subject)
    return any(low <= end <= high for low, high in ranges)


def _after_literal(ranges: _Ranges, literal: str, subject: str) -> _Ranges:
    ends: _Ranges = []
    for low, high in ranges:
        limit = high + len(literal)
        found = subject.find(literal, low, limit)
        while found != -1:
            _add_range(ends, found + len(literal), found + len(literal))
            found = subject.find(literal, found + 1, limit)
    return ends


def _after_wildcard(ranges: _Ranges, wildcard: _Wildcard, subject: str) -> _Ranges:
    ends: _Ranges = []
    stop = -1  # the first stop at or after the current start, once looked up
    for low, high in ranges:
        start = low
        while start <= high:
            if stop < start:
                found = wildcard.stops.search(subject, start)
                stop = len(subject) if found is None else found.start()
            if stop > start:
                # Every start up to `stop` reaches the same end: one range covers them all.
                _add_range(ends, start + 1, stop)
            start = stop + 1
    return ends


def _add_range(ranges: _Ranges, low: int, high: int) -> None:
    if ranges and low <= ranges[-1][1] + 1:
        ranges[-1] = (ranges[-1][0], max(ranges[-1][1], high))
    else:
        ranges.append((low, high))
