"""What a newcomer meets first: the README's links and contents, its two commands, what
`make demo` installs, and the license."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
# [text](target): an image's "!" in front is fine; a target has no spaces.
_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks (a '# comment' in a block is no heading)."""
    inside = False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    return [(len(m[1]), m[2]) for m in map(_HEADING.match, prose(text)) if m]


def anchors(text: str) -> set[str]:
    """Every anchor of the document; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for _, heading in headings(text):
        base = anchor(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(text: str) -> list[str]:
    return [m["target"] for line in prose(text) for m in _LINK.finditer(line)]


def test_the_anchor_rule_matches_github() -> None:
    assert anchor("Keys: sources, caching, rotation and reload") == (
        "keys-sources-caching-rotation-and-reload")
    assert anchor("Issuers: `federation.issuers.<name>`") == "issuers-federationissuersname"
    assert anchor("Why is a client refused? `explain`") == "why-is-a-client-refused-explain"
    assert anchors("## A\n```\n## Not a heading\n```\n## A\n") == {"a", "a-1"}


def test_every_link_in_the_readme_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    known = anchors(text)
    targets = links(text)
    assert len(targets) >= 20
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not fetched here
            continue
        path, _, fragment = target.partition("#")
        if not path:
            if fragment not in known:
                broken.append(target)
        elif not (ROOT / path).exists():
            broken.append(target)
        elif fragment and path.endswith(".md"):
            if fragment not in anchors((ROOT / path).read_text(encoding="utf-8")):
                broken.append(target)
    assert not broken, broken


def test_the_contents_name_every_section() -> None:
    text = README.read_text(encoding="utf-8")
    sections = [heading for level, heading in headings(text)
                if level == 2 and heading != "Contents"]
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = [target[1:] for target in links(contents) if target.startswith("#")]
    assert [anchor(section) for section in sections] == [
        name for name in listed if name in {anchor(section) for section in sections}]


def test_the_quick_start_is_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.DOTALL)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block[1].splitlines()]
    assert [command for command in commands if command] == ["make demo", "make test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # a fresh one: every install step shows in the dry run

    def dry_run(target: str) -> str:
        return subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=30).stdout

    demo = dry_run("demo")
    assert "pip install --quiet -e ." in demo and "[dev]" not in demo
    assert f"{venv}/bin/pkjwt-gateway demo" in demo
    assert "pip install --quiet -e '.[dev]'" in dry_run("pytest")


def test_the_license_is_the_apache_license_the_package_declares() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    assert len(text.split()) > 1500  # the whole text, not a pointer to it
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "Dockerfile").read_text()
