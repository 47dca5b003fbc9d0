"""Loading a config file: its YAML, the files it names, then validation with every problem."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from gateway.config.errors import ConfigError
from gateway.config.federation_rules import federation_problems
from gateway.config.files import (
    FILES,
    UNRESOLVED_SECRETS,
    FileContents,
    named_files,
    read_files,
    resolve_file_paths,
)
from gateway.config.settings import Settings
from gateway.config.types import FROM_FILE
from gateway.config.yaml_dialect import client_entries, join_path, parse_yaml

Problems = list[tuple[str, str]]

# Where a secret may come from `!env`: left unresolved when loading without secrets.
_SECRET_PATHS = re.compile(r"clients\..+\.backend_auth\.secret|replay\.redis_(password|url)")


def load_settings(
    path: str | Path, env: Mapping[str, str] | None = None, *, resolve_secrets: bool = True
) -> Settings:
    """Read a config file and the files it names, then validate; raises ConfigError.

    Relative `jwks_file`, `secret_file`, `redis_password_file` and `ca_file` paths resolve
    against the file's directory; `!env NAME` reads `env` (default: os.environ). A file
    that cannot be read is a problem at its setting's path. Without ``resolve_secrets``
    the secrets are only referenced: `!env` at `backend_auth.secret`,
    `replay.redis_password` and `replay.redis_url` is not looked up, `secret_file` and
    `redis_password_file` are not read, and each such setting holds a placeholder (for
    commands that never use a secret, and for checking a config without them).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ConfigError([("", f"cannot read {path}: {exc}")]) from exc
    environ = os.environ if env is None else env
    base_dir = path.resolve().parent
    data, problems = _parse_data(text, base_dir, environ, secrets=resolve_secrets)
    files = (read_files(named_files(data, secrets=resolve_secrets))
             if isinstance(data, dict) else {})
    return _validate(data, problems, files, secrets=resolve_secrets)


def parse_settings(
    text: str, *, base_dir: Path, env: Mapping[str, str], files: FileContents | None = None
) -> Settings:
    """Validate config text as load_settings does, without any I/O; raises ConfigError.

    `files` holds the contents of the files the text names, by absolute path (what
    load_settings read); a named file missing from it is a problem at its path.
    """
    data, problems = _parse_data(text, base_dir, env)
    return _validate(data, problems, files or {})


def _parse_data(text: str, base_dir: Path, env: Mapping[str, str], *,
                secrets: bool = True) -> tuple[object, Problems]:
    data, problems = parse_yaml(text, env, unresolved=None if secrets else _is_secret_path)
    if isinstance(data, dict):
        resolve_file_paths(data, base_dir)
    return data, problems


def _is_secret_path(path: str) -> bool:
    return _SECRET_PATHS.fullmatch(path) is not None


def _validate(data: object, problems: Problems, files: FileContents, *,
              secrets: bool = True) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError(problems)
    later = _document_problems(data)
    settings: Settings | None = None
    context = {FROM_FILE: True, FILES: files, UNRESOLVED_SECRETS: not secrets}
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        later = _problems_from(exc) + later
    else:
        later += federation_problems(settings)
    # A path the YAML stage already reported (an unset !env, a duplicate key)
    # would only echo here as a type error.
    reported = [path for path, _ in problems]
    problems += [p for p in later if not _under(p[0], reported)]
    if problems or settings is None:
        raise ConfigError(list(dict.fromkeys(problems)))
    return settings


def _under(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


_TYPE_MESSAGES = {
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
}


def _problems_from(exc: ValidationError) -> Problems:
    problems: Problems = []
    # Inputs are read, never echoed: they may be secrets.
    for error in exc.errors(include_url=False, include_input=True):
        path = ""
        for part in error["loc"]:
            if part != "[key]":  # a dict key's own error: the path already names the key
                path = join_path(path, part)
        message = _TYPE_MESSAGES.get(error["type"], error["msg"])
        if error["type"] == "too_short" and error.get("ctx", {}).get("min_length") == 1:
            if error["input"]:
                continue  # too short only because its items failed; they are reported
            message = "must not be empty"
        message = message.removeprefix("Value error, ").replace("Input should be", "must be", 1)
        problems.append((path, message))
    return problems


def _document_problems(data: Mapping[str, Any]) -> Problems:
    """Checks that span sections, run on the raw data so they report alongside type errors."""
    problems: Problems = []
    seen: dict[str, str] = {}
    for section in ("endpoints", "passthrough"):
        paths = data.get(section)
        for index, value in enumerate(paths if isinstance(paths, list) else []):
            where = join_path(section, index)
            if isinstance(value, str) and value in seen:
                problems.append((where, f"{value!r} is already listed at {seen[value]}"))
            elif isinstance(value, str):
                seen[value] = where
    fetch = data.get("jwks_fetch")
    if not (isinstance(fetch, dict) and fetch.get("allow_http") is True):
        problems += [(where, "must be https (jwks_fetch.allow_http is off)")
                     for where, url in _fetched_urls(data) if urlsplit(url).scheme == "http"]
    return problems


def _fetched_urls(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, URL) of every key URL in raw config data that the gateway fetches."""
    urls = [(join_path(path, "jwks_uri"), client.get("jwks_uri"))
            for _, path, client in client_entries(data)]
    federation = data.get("federation")
    issuers = federation.get("issuers") if isinstance(federation, dict) else None
    for name, issuer in issuers.items() if isinstance(issuers, dict) else ():
        if isinstance(issuer, dict):
            where = join_path("federation.issuers", name)
            urls += [(join_path(where, key), issuer.get(key))
                     for key in ("jwks_uri", "bundle_endpoint")]
    return [(where, url) for where, url in urls if isinstance(url, str)]
