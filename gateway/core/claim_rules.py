"""Required claims of federated trusts: claim keys, JSON Pointers, and how values compare."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final


class _Missing(Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


# What `resolve_claim` returns for an absent claim: a JSON null is a present value (None).
MISSING: Final = _Missing.MISSING

# RFC 6901 §3 allows only `~0` and `~1`; any other `~` is a typo the operator must hear about.
_BAD_ESCAPE = re.compile(r"~(?![01])")
# RFC 6901 §4: an array index is decimal without leading zeros; "-" (past the end) never resolves.
_INDEX = re.compile(r"0|[1-9][0-9]*")


def validate_pointer(key: str) -> None:
    """Check a claim key; only a key starting with "/" (a JSON Pointer) can be malformed.

    Raises ValueError for a pointer holding a `~` not followed by `0` or `1`.
    """
    if key.startswith("/") and _BAD_ESCAPE.search(key):
        raise ValueError(f"claim key {key!r}: in a JSON Pointer '~' must be followed by 0 or 1")


def _pointer_path(key: str) -> tuple[str, ...] | None:
    """The reference tokens of the pointer `key`, or None for a plain top-level claim name.

    Raises ValueError for a malformed pointer (see `validate_pointer`).
    """
    if not key.startswith("/"):
        return None
    validate_pointer(key)
    # RFC 6901 §4: "~1" first, so that "~01" becomes "~1" and not "/".
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in key[1:].split("/"))


def resolve_claim(claims: Mapping[str, Any], key: str) -> object:
    """The value `key` names in `claims`, or MISSING.

    A key starting with "/" is a JSON Pointer (so `/kubernetes.io/namespace` reaches a nested
    claim under a name holding a dot); any other key is a top-level claim name, taken literally.
    Raises ValueError for a malformed pointer.
    """
    return _resolve(claims, key, _pointer_path(key))


def claim_text(value: object) -> str | None:
    """The text a claim value compares as, or None when it never equals a configured value.

    Numbers compare by their decimal form, so an ID sent as 1234 or 1234.0 matches "1234";
    lists, objects, null and fractional numbers match nothing.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # past the interpreter's digit limit: no configured value is that long
            return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


@dataclass(frozen=True, slots=True)
class ClaimRequirement:
    """The claim at `key` must compare equal to one of `values`.

    Raises ValueError for an empty key, no values, or a malformed pointer.
    """

    key: str
    values: frozenset[str]
    # Split once here, since requirements are checked on every request.
    path: tuple[str, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a claim key must not be empty")
        if not self.values:
            raise ValueError(f"claim {self.key!r}: a requirement needs at least one value")
        object.__setattr__(self, "path", _pointer_path(self.key))


def claim_requirement(key: str, values: Iterable[str]) -> ClaimRequirement:
    """A requirement that the claim at `key` equals one of `values`.

    Raises ValueError for an empty key, no values, or a malformed pointer.
    """
    return ClaimRequirement(key, frozenset(values))


def first_unmet(claims: Mapping[str, Any], requirements: Sequence[ClaimRequirement]) -> str | None:
    """The key of the first requirement `claims` fails (absent, not comparable, or another
    value), or None when every requirement holds."""
    for requirement in requirements:
        text = claim_text(_resolve(claims, requirement.key, requirement.path))
        if text is None or text not in requirement.values:
            return requirement.key
    return None


def _resolve(claims: Mapping[str, Any], key: str, path: tuple[str, ...] | None) -> object:
    if path is None:
        return claims.get(key, MISSING)
    node: object = claims
    for token in path:
        if isinstance(node, Mapping):
            node = node.get(token, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list | tuple):
            index = _array_index(token, len(node))
            if index is None:
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def _array_index(token: str, length: int) -> int | None:
    # Compared by length first: a long run of digits is out of range without parsing it.
    if len(token) > len(str(length)) or not _INDEX.fullmatch(token):
        return None
    index = int(token)
    return index if index < length else None
