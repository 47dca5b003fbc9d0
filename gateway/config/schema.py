"""The JSON Schema's extras: a description for every key, closed value sets, env-only secrets."""

from __future__ import annotations

from typing import Any

from gateway.config.descriptions import DESCRIPTIONS
from gateway.config.types import SUPPORTED_ALGORITHMS

# Keys whose value the loader takes only through `!env NAME`: in the YAML an editor sees the
# variable's name, so the schema admits a name and nothing that looks like a secret.
ENV_ONLY = {("BackendAuthSettings", "secret"), ("ReplaySettings", "redis_password")}
ENV_NAME = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$",
            "description": "the name of an environment variable, written with the !env tag"}
ALGORITHM_KEYS = {"algorithms"}


def describe_schema(schema: dict[str, Any]) -> None:
    """Fill in, in place, each key's description, the algorithm enumeration and the env-only
    secrets of a schema pydantic made for Settings (its models under ``$defs``)."""
    models = {"Settings": schema, **schema.get("$defs", {})}
    for model, definition in models.items():
        for key, prop in definition.get("properties", {}).items():
            text = DESCRIPTIONS.get(f"{model}.{key}")
            if text is not None:
                prop.setdefault("description", text)
            if key in ALGORITHM_KEYS:
                _enumerate_algorithms(prop)
            if (model, key) in ENV_ONLY:
                _env_only(prop)


def _enumerate_algorithms(prop: dict[str, Any]) -> None:
    for branch in [prop, *prop.get("anyOf", [])]:
        items = branch.get("items")
        if isinstance(items, dict) and items.get("type") == "string":
            items["enum"] = sorted(SUPPORTED_ALGORITHMS)


def _env_only(prop: dict[str, Any]) -> None:
    branches = prop.get("anyOf")
    if isinstance(branches, list):
        prop["anyOf"] = [dict(ENV_NAME) if b.get("type") == "string" else b for b in branches]
    else:
        prop.update(ENV_NAME)
