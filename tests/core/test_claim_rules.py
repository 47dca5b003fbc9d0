"""Required claims: top-level names, RFC 6901 pointers, value comparison, and the first unmet."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.claim_rules import (
    MISSING,
    ClaimRequirement,
    claim_requirement,
    claim_text,
    first_unmet,
    resolve_claim,
    validate_pointer,
)

# A fixed budget in CI; `make fuzz` raises it (FUZZ_EXAMPLES=5000).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

# RFC 6901 §5.
RFC_DOCUMENT: dict[str, Any] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}

KUBERNETES: dict[str, Any] = {
    "iss": "https://kubernetes.default.svc.cluster.local",
    "sub": "system:serviceaccount:ci:builder",
    "aud": ["https://gateway.example"],
    "kubernetes.io": {
        "namespace": "ci",
        "serviceaccount": {"name": "builder", "uid": "7c5b1a8e-5f0e-4a6f-9d4b-2f3a1c9e8d71"},
        "pod": {"name": "builder-7d9f", "uid": "0b6f4c1e-8a2d-4e5f-9c3b-1d2e3f4a5b6c"},
        "node": {"name": "node-a", "uid": "9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4"},
    },
}

GITHUB: dict[str, Any] = {
    "sub": "repo:acme/app:environment:production",
    "repository": "acme/app",
    "repository_id": "5678",
    "repository_owner_id": "1234",
    "environment": "production",
    "runner_environment": "github-hosted",
    "ref": "refs/heads/main",
}


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        pytest.param("/foo", ["bar", "baz"], id="array"),
        pytest.param("/foo/0", "bar", id="array-element"),
        pytest.param("/", 0, id="empty-member-name"),
        pytest.param("/a~1b", 1, id="escaped-slash"),
        pytest.param("/c%d", 2, id="percent"),
        pytest.param("/e^f", 3, id="caret"),
        pytest.param("/g|h", 4, id="bar"),
        pytest.param("/i\\j", 5, id="backslash"),
        pytest.param('/k"l', 6, id="quote"),
        pytest.param("/ ", 7, id="space"),
        pytest.param("/m~0n", 8, id="escaped-tilde"),
    ],
)
def test_rfc6901_examples(pointer: str, expected: object) -> None:
    assert resolve_claim(RFC_DOCUMENT, pointer) == expected


@pytest.mark.parametrize(
    "pointer",
    [
        pytest.param("/foo/2", id="index-past-end"),
        pytest.param("/foo/-", id="dash-never-resolves"),
        pytest.param("/foo/01", id="leading-zero"),
        pytest.param("/foo/+1", id="sign"),
        pytest.param("/foo/ 1", id="space-before-index"),
        pytest.param("/foo/\u0661", id="non-ascii-digit"),
        pytest.param("/foo/99999999999999999999999999", id="huge-index"),
        pytest.param("/foo/0/0", id="into-a-string"),
        pytest.param("/a/b", id="unescaped-slash-is-two-tokens"),
        pytest.param("/nope", id="absent"),
        pytest.param("/foo/", id="empty-index"),
        pytest.param("//", id="empty-then-empty"),
    ],
)
def test_rfc6901_absent(pointer: str) -> None:
    assert resolve_claim(RFC_DOCUMENT, pointer) is MISSING


def test_escapes_apply_slash_first() -> None:
    document = {"~1": "tilde-one", "/0": "slash-zero"}
    assert resolve_claim(document, "/~01") == "tilde-one"
    assert resolve_claim(document, "/~10") == "slash-zero"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("a/b", 1, id="slash-inside-a-name"),
        pytest.param("m~n", 8, id="tilde-inside-a-name"),
        pytest.param("", 0, id="empty-name"),
        pytest.param("foo", ["bar", "baz"], id="plain"),
        pytest.param("foo/0", MISSING, id="no-path-without-leading-slash"),
    ],
)
def test_plain_names_are_literal(key: str, expected: object) -> None:
    assert resolve_claim(RFC_DOCUMENT, key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("/kubernetes.io/namespace", "ci", id="namespace"),
        pytest.param("/kubernetes.io/serviceaccount/name", "builder", id="service-account"),
        pytest.param("/kubernetes.io/pod/uid", "0b6f4c1e-8a2d-4e5f-9c3b-1d2e3f4a5b6c",
                     id="pod-uid"),
        pytest.param("/aud/0", "https://gateway.example", id="audience-element"),
        pytest.param("kubernetes.io.namespace", MISSING, id="dotted-path-is-a-name"),
        pytest.param("/kubernetes/io/namespace", MISSING, id="dot-is-not-a-separator"),
        pytest.param("/kubernetes.io/serviceaccount/name/0", MISSING, id="into-a-string"),
        pytest.param("/sub/0", MISSING, id="string-is-not-an-array"),
    ],
)
def test_kubernetes_claims(key: str, expected: object) -> None:
    assert resolve_claim(KUBERNETES, key) == expected


def test_null_is_present() -> None:
    assert resolve_claim({"environment": None}, "environment") is None
    assert resolve_claim({"a": {"b": None}}, "/a/b") is None
    assert resolve_claim({}, "environment") is MISSING


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("/a~2", id="tilde-two"),
        pytest.param("/a~", id="trailing-tilde"),
        pytest.param("/~x/b", id="tilde-letter"),
        pytest.param("/m~n", id="bare-tilde"),
        pytest.param("/a~1b/~/c", id="second-token"),
    ],
)
def test_invalid_pointers(key: str) -> None:
    with pytest.raises(ValueError, match="'~' must be followed by 0 or 1"):
        validate_pointer(key)
    with pytest.raises(ValueError, match="'~' must be followed by 0 or 1"):
        resolve_claim(RFC_DOCUMENT, key)
    with pytest.raises(ValueError, match="'~' must be followed by 0 or 1"):
        claim_requirement(key, ["x"])


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("m~n", id="plain-name-with-tilde"),
        pytest.param("/", id="root-member"),
        pytest.param("/m~0n/a~1b", id="escapes"),
        pytest.param("repository_owner_id", id="plain-name"),
    ],
)
def test_valid_keys(key: str) -> None:
    validate_pointer(key)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("production", "production", id="string"),
        pytest.param("", "", id="empty-string"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(0, "0", id="zero"),
        pytest.param(1234, "1234", id="int"),
        pytest.param(-5, "-5", id="negative-int"),
        pytest.param(1234.0, "1234", id="integral-float"),
        pytest.param(-0.0, "0", id="negative-zero"),
        pytest.param(1e20, "100000000000000000000", id="large-integral-float"),
        pytest.param(1.5, None, id="fractional-float"),
        pytest.param(math.nan, None, id="nan"),
        pytest.param(math.inf, None, id="infinity"),
        pytest.param(10**5000, None, id="past-digit-limit"),
        pytest.param(None, None, id="null"),
        pytest.param(["production"], None, id="list"),
        pytest.param({"name": "x"}, None, id="object"),
        pytest.param(MISSING, None, id="missing"),
    ],
)
def test_claim_text(value: object, expected: str | None) -> None:
    assert claim_text(value) == expected


def test_requirement_splits_the_pointer_once() -> None:
    requirement = claim_requirement("/kubernetes.io/a~1b~0c", ["x", "y"])
    assert requirement == ClaimRequirement("/kubernetes.io/a~1b~0c", frozenset({"x", "y"}))
    assert requirement.path == ("kubernetes.io", "a/b~c")
    assert claim_requirement("kubernetes.io", ["x"]).path is None


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        pytest.param("", ["x"], "must not be empty", id="empty-key"),
        pytest.param("environment", [], "at least one value", id="no-values"),
    ],
)
def test_requirement_refuses(key: str, values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        claim_requirement(key, values)


def requirements(*pairs: tuple[str, list[str]]) -> list[ClaimRequirement]:
    return [claim_requirement(key, values) for key, values in pairs]


@pytest.mark.parametrize(
    ("claims", "rules", "expected"),
    [
        pytest.param(GITHUB, requirements(("repository_owner_id", ["1234"]),
                                          ("environment", ["production", "staging"])),
                     None, id="github-all-hold"),
        pytest.param(GITHUB, [], None, id="no-requirements"),
        pytest.param(GITHUB, requirements(("repository_owner_id", ["1234"]),
                                          ("runner_environment", ["self-hosted"]),
                                          ("environment", ["staging"])),
                     "runner_environment", id="github-first-unmet-wins"),
        pytest.param(GITHUB, requirements(("job_workflow_ref", ["x"])), "job_workflow_ref",
                     id="absent"),
        pytest.param({**GITHUB, "repository_owner_id": 1234},
                     requirements(("repository_owner_id", ["1234"])), None, id="number-as-text"),
        pytest.param({**GITHUB, "repository_owner_id": 1234.0},
                     requirements(("repository_owner_id", ["1234"])), None,
                     id="integral-float-as-text"),
        pytest.param({"ref_protected": True}, requirements(("ref_protected", ["true"])), None,
                     id="boolean-as-text"),
        pytest.param({"ref_protected": "True"}, requirements(("ref_protected", ["true"])),
                     "ref_protected", id="case-matters"),
        pytest.param({"environment": None}, requirements(("environment", ["None", "null", ""])),
                     "environment", id="null-never-matches"),
        pytest.param(KUBERNETES, requirements(("aud", ["https://gateway.example"])), "aud",
                     id="list-never-matches"),
        pytest.param(KUBERNETES, requirements(("/kubernetes.io/namespace", ["ci"]),
                                              ("/kubernetes.io/serviceaccount/name", ["builder"])),
                     None, id="kubernetes-nested-hold"),
        pytest.param(KUBERNETES, requirements(("/kubernetes.io/serviceaccount/name", ["deployer"])),
                     "/kubernetes.io/serviceaccount/name", id="kubernetes-other-account"),
        pytest.param(KUBERNETES, requirements(("kubernetes.io", ["ci"])), "kubernetes.io",
                     id="object-never-matches"),
    ],
)
def test_first_unmet(claims: dict[str, Any], rules: list[ClaimRequirement],
                     expected: str | None) -> None:
    assert first_unmet(claims, rules) == expected


# --- Properties -------------------------------------------------------------------------------

NAMES = st.text(max_size=8)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@settings(max_examples=EXAMPLES, deadline=None)
@given(path=st.lists(NAMES, min_size=1, max_size=6), leaf=st.text())
def test_escaped_pointer_reaches_its_leaf(path: list[str], leaf: str) -> None:
    document: object = leaf
    for token in reversed(path):
        document = {token: document}
    assert isinstance(document, dict)
    pointer = "/" + "/".join(escape(token) for token in path)
    validate_pointer(pointer)
    assert resolve_claim(document, pointer) == leaf
    assert claim_requirement(pointer, [leaf]).path == tuple(path)
    assert first_unmet(document, [claim_requirement(pointer, [leaf])]) is None


@settings(max_examples=EXAMPLES, deadline=None)
@given(items=st.lists(st.text(), max_size=12), token=st.text(max_size=4))
def test_array_index_is_canonical_decimal(items: list[str], token: str) -> None:
    found = resolve_claim({"list": items}, "/list/" + escape(token))
    canonical = {str(index): item for index, item in enumerate(items)}
    assert found == canonical.get(token, MISSING)


@settings(max_examples=EXAMPLES, deadline=None)
@given(number=st.integers(min_value=-(2**53), max_value=2**53))
def test_numbers_compare_by_decimal_text(number: int) -> None:
    assert claim_text(number) == str(number)
    assert claim_text(float(number)) == str(number)


@settings(max_examples=EXAMPLES, deadline=None)
@given(claims=st.dictionaries(NAMES, JSON_SCALARS, max_size=6), name=NAMES,
       values=st.frozensets(st.text(max_size=6), min_size=1, max_size=3))
def test_a_requirement_holds_exactly_when_the_text_is_accepted(
    claims: dict[str, Any], name: str, values: frozenset[str]
) -> None:
    rules = [ClaimRequirement("/" + escape(name), values)]
    text = claim_text(claims.get(name, MISSING))
    expected = None if text is not None and text in values else "/" + escape(name)
    assert first_unmet(claims, rules) == expected
