"""The one error of loading a configuration: every problem, each with its dotted path."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every one as (dotted path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"{path}: {message}" if path else message for path, message in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{lines}")
