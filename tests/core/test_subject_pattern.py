"""Subject patterns: the `*`/`**` grammar, platform subjects, attacks, and bounded work."""

from __future__ import annotations

import os
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.subject_pattern import (
    MAX_SUBJECT_LENGTH,
    SubjectPattern,
    compile_subject_pattern,
)

# A fixed budget in CI; `make fuzz` raises it (FUZZ_EXAMPLES=5000).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

GH = "repo:octo-org/octo-repo"
GL = "project_path:group/sub/project"


def matches(pattern: str, subject: str) -> bool:
    return compile_subject_pattern(pattern).matches(subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        # GitHub Actions.
        pytest.param(f"{GH}:ref:refs/heads/main", f"{GH}:ref:refs/heads/main", True,
                     id="github-exact-branch"),
        pytest.param(f"{GH}:ref:refs/heads/main", f"{GH}:ref:refs/heads/main2", False,
                     id="github-exact-is-not-prefix"),
        pytest.param(f"{GH}:ref:refs/heads/*", f"{GH}:ref:refs/heads/main", True,
                     id="github-any-flat-branch"),
        pytest.param(f"{GH}:ref:refs/heads/*", f"{GH}:ref:refs/heads/feature/x", False,
                     id="github-star-does-not-cross-slash"),
        pytest.param(f"{GH}:ref:refs/heads/*", f"{GH}:ref:refs/heads/main:x", False,
                     id="github-star-does-not-cross-colon"),
        pytest.param(f"{GH}:ref:refs/heads/*", f"{GH}:ref:refs/heads/", False,
                     id="github-star-needs-one-character"),
        pytest.param(f"{GH}:ref:refs/heads/*", f"{GH}:ref:refs/tags/v1", False,
                     id="github-branch-pattern-refuses-tag"),
        pytest.param(f"{GH}:ref:refs/heads/**", f"{GH}:ref:refs/heads/feature/x", True,
                     id="github-double-star-crosses-slash"),
        pytest.param(f"{GH}:ref:refs/heads/**", f"{GH}:ref:refs/heads/main", True,
                     id="github-double-star-one-segment"),
        pytest.param(f"{GH}:ref:refs/heads/**",
                     f"{GH}:ref:refs/heads/main:job_workflow_ref:x", False,
                     id="github-double-star-does-not-swallow-fields"),
        pytest.param("repo:acme@1234/api@5678:environment:production",
                     "repo:acme@1234/api@5678:environment:production", True,
                     id="github-immutable-ids-exact"),
        pytest.param("repo:acme@1234/*:environment:production",
                     "repo:acme@1234/web@9012:environment:production", True,
                     id="github-any-repo-of-owner-id"),
        pytest.param("repo:acme@1234/*:environment:production",
                     "repo:acme@9999/api@5678:environment:production", False,
                     id="github-reregistered-owner-name"),
        pytest.param("repo:acme/app:environment:*", "repo:acme/app:environment:prod%3Aeu", True,
                     id="github-escaped-colon-stays-in-value"),
        pytest.param("repo:acme/app:environment:prod%3Aeu",
                     "repo:acme/app:environment:prod%3Aeu", True,
                     id="github-percent-is-literal"),
        pytest.param("repo:acme/app:environment:prod%3Aeu", "repo:acme/app:environment:prod:eu",
                     False, id="github-escaped-colon-is-not-a-colon"),
        # GitLab CI.
        pytest.param(f"{GL}:ref_type:branch:ref:main", f"{GL}:ref_type:branch:ref:main", True,
                     id="gitlab-exact"),
        pytest.param("project_path:group/**:ref_type:branch:ref:main",
                     f"{GL}:ref_type:branch:ref:main", True, id="gitlab-any-project-in-group"),
        pytest.param("project_path:group/*:ref_type:branch:ref:main",
                     f"{GL}:ref_type:branch:ref:main", False, id="gitlab-star-one-level-only"),
        pytest.param("project_path:group/**:ref_type:branch:ref:main",
                     "project_path:group-evil/x:ref_type:branch:ref:main", False,
                     id="gitlab-sibling-group"),
        pytest.param("project_path:group/**:ref_type:branch:ref:main",
                     f"{GL}:ref_type:tag:ref:main", False, id="gitlab-tag-not-branch"),
        pytest.param(f"{GL}:ref_type:branch:ref:*", f"{GL}:ref_type:branch:ref:feature/x", False,
                     id="gitlab-nested-branch-needs-double-star"),
        # Kubernetes.
        pytest.param("system:serviceaccount:ns:name", "system:serviceaccount:ns:name", True,
                     id="k8s-exact"),
        pytest.param("system:serviceaccount:ns:*", "system:serviceaccount:ns:builder", True,
                     id="k8s-any-account-in-namespace"),
        pytest.param("system:serviceaccount:ns:*", "system:serviceaccount:ns-other:builder",
                     False, id="k8s-other-namespace"),
        pytest.param("system:serviceaccount:prod-*:api", "system:serviceaccount:prod-eu:api",
                     True, id="k8s-namespace-prefix"),
        pytest.param("system:serviceaccount:**:api", "system:serviceaccount:a:b:api", False,
                     id="k8s-double-star-does-not-cross-colon"),
        # SPIFFE.
        pytest.param("spiffe://example.org/ns/prod/sa/api", "spiffe://example.org/ns/prod/sa/api",
                     True, id="spiffe-exact"),
        pytest.param("spiffe://example.org/ns/prod/sa/*", "spiffe://example.org/ns/prod/sa/api",
                     True, id="spiffe-any-account"),
        pytest.param("spiffe://example.org/ns/prod/sa/*",
                     "spiffe://example.org/ns/prod/sa/api/extra", False,
                     id="spiffe-star-one-level"),
        pytest.param("spiffe://example.org/ns/*/sa/api", "spiffe://example.org/ns/dev/sa/api",
                     True, id="spiffe-any-namespace"),
        pytest.param("spiffe://example.org/**", "spiffe://example.org/ns/prod/sa/api", True,
                     id="spiffe-whole-trust-domain"),
        pytest.param("spiffe://example.org/**", "spiffe://example.org.evil/ns/prod/sa/api", False,
                     id="spiffe-lookalike-trust-domain"),
        pytest.param("spiffe://example.org/**", "spiffe://example.org/", False,
                     id="spiffe-double-star-needs-one-character"),
        # Attacks the grammar refuses.
        pytest.param("repo:acme/app:*", "repo:acme/app-evil:ref:refs/heads/main", False,
                     id="attack-longer-repo-name"),
        pytest.param("repo:acme/app:ref:refs/heads/main", "repo:acme/app2:ref:refs/heads/main",
                     False, id="attack-sibling-repo"),
        pytest.param("repo:acme/*:ref:refs/heads/main", "repo:acme-evil/app:ref:refs/heads/main",
                     False, id="attack-sibling-owner"),
        pytest.param("repo:acme/app:ref:refs/heads/*", "repo:acme/app:pull_request", False,
                     id="attack-fork-pull-request"),
        pytest.param("repo:acme/app:*", "repo:acme/app:ref:refs/heads/main", False,
                     id="trailing-star-is-one-field"),
        # What the grammar admits by design (the configuration lints warn of these).
        pytest.param("repo:acme/app*:ref:refs/heads/main", "repo:acme/app-evil:ref:refs/heads/main",
                     True, id="pitfall-prefix-star-admits-app-evil"),
        pytest.param("repo:acme/app:*", "repo:acme/app:pull_request", True,
                     id="pitfall-trailing-star-admits-pull-request"),
    ],
)
def test_platform_subjects(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        pytest.param("a.b", "axb", id="dot"),
        pytest.param("a+", "aa", id="plus"),
        pytest.param("(a)", "a", id="group"),
        pytest.param("[ab]", "a", id="class"),
        pytest.param(r"a\d", "a1", id="backslash"),
        pytest.param("a$", "a", id="dollar"),
        pytest.param("^a", "a", id="caret"),
        pytest.param("ab?", "a", id="question-mark"),
        pytest.param("a|b", "a", id="alternation"),
        pytest.param("a{2}", "aa", id="brace"),
        pytest.param("a.*", "axb", id="dot-then-star"),
    ],
)
def test_regex_metacharacters_are_literal(pattern: str, subject: str) -> None:
    compiled = compile_subject_pattern(pattern)
    assert not compiled.matches(subject)
    if "*" not in pattern:
        assert compiled.matches(pattern)


def test_metacharacter_then_wildcard() -> None:
    assert matches("a.*", "a.b")
    assert matches("v1.*.x", "v1.2.x")
    assert not matches("v1.*.x", "v1.2/3.x")


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("", id="empty"),
        pytest.param("***", id="three-stars"),
        pytest.param("repo:acme/***", id="three-stars-trailing"),
        pytest.param("a****b", id="four-stars"),
    ],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"empty|'\*\*\*"):
        compile_subject_pattern(pattern)


def test_error_names_the_offset() -> None:
    with pytest.raises(ValueError, match="at offset 5"):
        compile_subject_pattern("repo:***")


def test_keeps_the_configured_text() -> None:
    pattern = compile_subject_pattern("repo:acme/*")
    assert isinstance(pattern, SubjectPattern)
    assert pattern.text == "repo:acme/*"
    assert pattern == compile_subject_pattern("repo:acme/*")


def test_subject_length_is_bounded() -> None:
    pattern = compile_subject_pattern("x**")
    assert pattern.matches("x" * MAX_SUBJECT_LENGTH)
    assert not pattern.matches("x" * (MAX_SUBJECT_LENGTH + 1))


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("x" + "*a" * 12 + "*b", id="single-stars"),
        pytest.param("x" + "**a" * 12 + "**b", id="double-stars"),
        pytest.param("x" + "**a*a" * 6 + "b", id="mixed"),
        pytest.param("x" + "*/**/" * 6 + "b", id="slashes"),
    ],
)
def test_crafted_subject_costs_little(pattern: str) -> None:
    # A backtracking regular expression takes minutes on these with only three wildcards.
    compiled = compile_subject_pattern(pattern)
    hostile = ["x" + "a" * (MAX_SUBJECT_LENGTH - 1), "x" + "a/" * (MAX_SUBJECT_LENGTH // 2 - 1)]
    started = time.perf_counter()
    for subject in hostile:
        assert not compiled.matches(subject)
    assert time.perf_counter() - started < 1.0


# --- Properties -------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="*"), max_size=40)
SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="*/:"), min_size=1,
                  max_size=12)
FIELD = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="*:"), min_size=1,
                max_size=24)
METACHARACTERS = ".+([\\$^?|{})]"


def reference(pattern: str) -> re.Pattern[str]:
    """The grammar stated as a regular expression (fine for short subjects only)."""
    parts = re.split(r"(\*\*|\*)", pattern)
    wildcards = {"*": "[^/:]+", "**": "[^:]+"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


@settings(max_examples=EXAMPLES, deadline=None)
@given(prefix=TEXT, value=st.text(max_size=20))
def test_star_never_matches_slash_or_colon(prefix: str, value: str) -> None:
    compiled = compile_subject_pattern(prefix + "*")
    expected = value != "" and "/" not in value and ":" not in value
    assert compiled.matches(prefix + value) is expected


@settings(max_examples=EXAMPLES, deadline=None)
@given(prefix=TEXT, value=st.text(max_size=20))
def test_double_star_never_matches_colon(prefix: str, value: str) -> None:
    compiled = compile_subject_pattern(prefix + "**")
    assert compiled.matches(prefix + value) is (value != "" and ":" not in value)


@settings(max_examples=EXAMPLES, deadline=None)
@given(literal=TEXT.filter(bool), other=TEXT)
def test_literal_matches_only_itself(literal: str, other: str) -> None:
    compiled = compile_subject_pattern(literal)
    assert compiled.matches(literal)
    assert compiled.matches(other) is (other == literal)


@settings(max_examples=EXAMPLES, deadline=None)
@given(literal=st.text(alphabet=METACHARACTERS + "ab", min_size=1, max_size=12),
       other=st.text(alphabet=METACHARACTERS + "ab", max_size=12))
def test_metacharacter_literal_matches_only_itself(literal: str, other: str) -> None:
    compiled = compile_subject_pattern(literal)
    assert compiled.matches(literal)
    assert compiled.matches(other) is (other == literal)


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_filled_wildcards_match(data: st.DataObject) -> None:
    # Any pattern matches the subject made by filling each wildcard with text it admits.
    pieces = data.draw(st.lists(st.one_of(TEXT, st.just("*"), st.just("**")), min_size=1,
                                max_size=8))
    pattern = "".join(pieces)
    if not pattern or "***" in pattern:
        return
    fill = {"*": SEGMENT, "**": FIELD}
    parts = re.split(r"(\*\*|\*)", pattern)
    subject = "".join(data.draw(fill[part]) if part in fill else part for part in parts)
    assert compile_subject_pattern(pattern).matches(subject)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(pattern=st.text(alphabet="ab/:*.", min_size=1, max_size=14),
       subject=st.text(alphabet="ab/:.", max_size=18))
def test_agrees_with_the_grammar(pattern: str, subject: str) -> None:
    if "***" in pattern:
        with pytest.raises(ValueError):
            compile_subject_pattern(pattern)
        return
    expected = reference(pattern).fullmatch(subject) is not None
    assert compile_subject_pattern(pattern).matches(subject) is expected
