"""Benchmark provenance: which build, tools and machine a summary came from."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("pkjwt-gateway", "aiohttp", "joserfc", "cryptography", "uvloop", "redis")
TOOLS = {"wrk": ["wrk", "-v"], "redis-server": ["redis-server", "--version"]}


def _git(repo: Path, *args: str) -> str | None:
    # No optional locks: reading the tree's state must not rewrite the index under anyone.
    argv = ["git", "--no-optional-locks", "-C", str(repo), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip()


def describe_build(repo: Path) -> dict[str, Any]:
    """The working tree's commit, `git describe` and whether it differs from that commit.

    Dirty counts untracked files too (a new module changes what runs), and is computed
    without `git describe --dirty`, which refreshes the index.
    """
    described = _git(repo, "describe", "--always", "--tags")
    changes = _git(repo, "status", "--porcelain", "--untracked-files=normal")
    dirty = None if changes is None else bool(changes)
    if described is not None and dirty:
        described += "-dirty"
    return {
        "tree": str(repo.resolve()),
        "describe": described,
        "commit": _git(repo, "rev-parse", "HEAD"),
        "dirty": dirty,
        "changed_files": None if not changes else changes.splitlines(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the packages on the hot path, and of the load tools."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    for name, argv in TOOLS.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            found[name] = "absent"
            continue
        lines = (done.stdout or done.stderr).splitlines()
        found[name] = lines[0].strip() if lines else "unknown"
    return found


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
