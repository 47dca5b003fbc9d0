"""The published JSON Schema: every key described, algorithms enumerated, secrets env-only."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config.descriptions import DESCRIPTIONS
from gateway.config.settings import SUPPORTED_ALGORITHMS, settings_json_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"


def models(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"Settings": schema, **schema["$defs"]}


def test_every_key_of_every_model_is_described() -> None:
    schema = settings_json_schema()
    keys = {f"{model}.{key}" for model, definition in models(schema).items()
            for key in definition.get("properties", {})}
    undescribed = sorted(k for k in keys if k not in DESCRIPTIONS)
    assert undescribed == []
    assert sorted(set(DESCRIPTIONS) - keys) == [], "a description of a key that does not exist"
    for model, definition in models(schema).items():
        for key, prop in definition.get("properties", {}).items():
            assert prop["description"].strip(), f"{model}.{key}"


def test_algorithm_lists_are_enumerated() -> None:
    schema = settings_json_schema()
    found = 0
    for definition in models(schema).values():
        prop = definition.get("properties", {}).get("algorithms")
        if prop is None:
            continue
        branches = [prop, *prop.get("anyOf", [])]
        enums = [b["items"]["enum"] for b in branches if "items" in b]
        assert enums == [sorted(SUPPORTED_ALGORITHMS)]
        assert not {"none", "HS256"} & set(enums[0])
        found += 1
    assert found >= 3  # policy, client override, federation issuer


class _EnvAsName(yaml.SafeLoader):
    """What an editor sees: `!env NAME` is the string NAME."""


_EnvAsName.add_constructor("!env", lambda loader, node: loader.construct_scalar(node))


def _as_editors_see(value: Any) -> Any:
    # YAML 1.2 (what editors speak) has no timestamps: a date is a string.
    if isinstance(value, dict):
        return {key: _as_editors_see(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_editors_see(item) for item in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def example() -> Any:
    loaded = yaml.load(EXAMPLE.read_text(encoding="utf-8"), Loader=_EnvAsName)
    return _as_editors_see(loaded)


def test_the_example_config_validates_against_the_schema() -> None:
    jsonschema.validate(example(), settings_json_schema())


@pytest.mark.parametrize("secret", ["s3cr3t-Value!", "correct horse battery", "a/b+c=="])
def test_an_inline_secret_is_refused_by_the_schema_as_by_the_loader(secret: str) -> None:
    document = example()
    client = next(iter(document["clients"].values()))
    client["backend_auth"] = {"method": "client_secret_basic", "secret": secret}
    with pytest.raises(jsonschema.ValidationError, match=re.escape("does not match")):
        jsonschema.validate(document, settings_json_schema())
    client["backend_auth"]["secret"] = "PARTNER_SECRET"  # what `!env PARTNER_SECRET` shows
    jsonschema.validate(document, settings_json_schema())
