"""The config file as read: its YAML dialect (`!env`, no duplicate keys), dotted paths into it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

ENV_TAG = "!env"
# Alias expansion can multiply a small file into a huge tree ("billion laughs");
# a real config has a few hundred nodes.
MAX_NODES = 100_000

_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"
_ALLOWED_SCALAR_TAGS = frozenset(
    # timestamp: a date such as legacy_auth.until (2027-06-30).
    _STANDARD_TAG_PREFIX + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_MERGE_TAG = _STANDARD_TAG_PREFIX + "merge"
_MAP_TAG = _STANDARD_TAG_PREFIX + "map"
_SEQ_TAG = _STANDARD_TAG_PREFIX + "seq"

Problems = list[tuple[str, str]]


class EnvStr(str):
    """A string that came from the environment through `!env`, never from the file's text."""

    __slots__ = ()


class EnvReference(EnvStr):
    """An `!env NAME` left unresolved (a secret, when loading without secrets): the value
    is a placeholder, never read from the environment."""

    name: str

    def __new__(cls, name: str) -> EnvReference:
        reference = super().__new__(cls, f"!env {name}")
        reference.name = name
        return reference


def join_path(parent: str, key: object) -> str:
    """The dotted path of `key` under `parent`; list indices render as `[i]`."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    text = str(key)
    if not text or not text.isprintable():
        text = repr(text)
    return f"{parent}.{text}" if parent else text


def parse_yaml(
    text: str, env: Mapping[str, str], *, unresolved: Callable[[str], bool] | None = None
) -> tuple[object, Problems]:
    """Parse one YAML document into plain dicts, lists and scalars.

    Never raises for bad input: returns the data it could build (None when the
    text is not YAML at all) and every problem found, each as (dotted path, message).
    An `!env NAME` at a dotted path for which ``unresolved`` is true is not looked up:
    it becomes an EnvReference, set or not.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return None, [("", f"not valid YAML: {_describe_yaml_error(exc)}")]
    if node is None:
        return None, [("", "the file is empty; it must be a mapping of settings")]
    converter = _Converter(env, unresolved)
    data = converter.convert(node, "")
    if not isinstance(data, dict):
        converter.problems.append(("", "the top level must be a mapping of settings"))
    return data, converter.problems


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc)


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


class _Converter:
    """Turns a composed node graph into data, tracking the dotted path of every node."""

    def __init__(self, env: Mapping[str, str],
                 unresolved: Callable[[str], bool] | None = None) -> None:
        self.env = env
        self.unresolved = unresolved
        self.problems: Problems = []
        self._scalars = yaml.SafeLoader("")  # only its scalar constructors are used
        self._active: set[int] = set()
        self._count = 0

    def convert(self, node: yaml.Node, path: str) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            if self._count == MAX_NODES + 1:
                self.problems.append((path, f"more than {MAX_NODES} values after aliases"))
            return None
        if id(node) in self._active:
            self.problems.append((path, "a recursive alias is not allowed"))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                return [self.convert(item, join_path(path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.problems.append((path, "merge keys ('<<') are not supported"))
                continue
            key = self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or isinstance(key, EnvStr):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self.problems.append(
                    (join_path(path, shown), "keys must be plain strings (quote it)")
                )
                continue
            child = join_path(path, key)
            if key in first_seen:
                self.problems.append(
                    (child, f"duplicate key (first at {_where(first_seen[key])})")
                )
                continue
            first_seen[key] = key_node
            result[key] = self.convert(value_node, child)
        return result

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        if node.tag == ENV_TAG:
            return self._env(node, path)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _ALLOWED_SCALAR_TAGS:
            kind = node.tag.removeprefix(_STANDARD_TAG_PREFIX)
            message = f"unsupported YAML tag or type {kind!r} (quote it if it is text)"
            self.problems.append((path, message))
            return None
        return self._scalars.construct_object(node)

    def _env(self, node: yaml.Node, path: str) -> EnvStr:
        # A failed lookup still yields a string, so later checks see the key as
        # present; their problems at this same path are dropped as echoes.
        name = node.value.strip() if isinstance(node, yaml.ScalarNode) else ""
        if not name:
            self.problems.append((path, "!env needs a variable name, e.g. !env CLIENT_SECRET"))
            return EnvStr()
        if self.unresolved is not None and self.unresolved(path):
            return EnvReference(name)
        value = self.env.get(name)
        if value is None:
            self.problems.append((path, f"environment variable {name} is not set"))
            return EnvStr()
        return EnvStr(value)


def client_entries(data: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(client id, dotted path, mapping) for each client that is a mapping in raw config data."""
    clients = data.get("clients")
    if not isinstance(clients, dict):
        return []
    return [
        (cid, join_path("clients", cid), client)
        for cid, client in clients.items()
        if isinstance(client, dict)
    ]
