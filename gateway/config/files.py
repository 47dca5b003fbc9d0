"""The files a config names: their paths, reading them at load, their contents as settings values.

Loading reads every named file once (`read_files`); validation then only looks the
contents up in its context, so parsing and validating a config never touch the disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from gateway.config.yaml_dialect import client_entries

MAX_REFERENCED_FILE_BYTES = 1024 * 1024
# Validation context key: the contents of the named files, by absolute path.
FILES = "files"
# Validation context flag: secret files are not read; their settings hold a placeholder.
UNRESOLVED_SECRETS = "unresolved_secrets"
UNRESOLVED_SECRET = "unresolved"
SECRET_FILE_KEYS = frozenset({"secret_file", "redis_password_file"})
_READ_AT_LOAD = frozenset({"jwks_file", "ca_file", "crl_file"}) | SECRET_FILE_KEYS

# What loading read: each named file's bytes, or the OSError or ValueError reading it raised.
FileContents = Mapping[str, bytes | Exception]


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A secret_file or redis_password_file setting: its absolute path and the secret it held."""

    path: str
    secret: SecretStr  # masked in repr and str


@dataclass(frozen=True, slots=True)
class JwksFile:
    """A jwks_file setting: its absolute path and the JSON it held."""

    path: str
    document: object  # checked as a JWK Set where the keys are imported, not here


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """A file setting read as bytes at load (a CA bundle, a CRL): its absolute path and data.

    Parsed where the runtime is built, not here.
    """

    path: str
    data: bytes


def _path_settings(data: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) of every setting in raw config data whose value is a file path."""
    owners = [(client, "jwks_file") for _, _, client in client_entries(data)]
    for _, _, client in client_entries(data):
        if isinstance(client.get("certificate"), dict):
            owners += [(client["certificate"], key) for key in ("ca_file", "crl_file")]
    owners += [(client["backend_auth"], "secret_file") for _, _, client in client_entries(data)
               if isinstance(client.get("backend_auth"), dict)]
    for section, key in (("replay", "redis_password_file"), ("jwks_fetch", "ca_file")):
        if isinstance(data.get(section), dict):
            owners.append((data[section], key))
    federation = data.get("federation")
    issuers = federation.get("issuers") if isinstance(federation, dict) else None
    for issuer in issuers.values() if isinstance(issuers, dict) else ():
        if isinstance(issuer, dict):
            owners += [(issuer, key) for key in ("jwks_file", "ca_file", "bearer_token_file")]
    listen = data.get("listen")
    if isinstance(listen, dict) and isinstance(listen.get("tls"), dict):
        owners += [(listen["tls"], "cert_file"), (listen["tls"], "key_file")]
    audit = data.get("audit")
    if isinstance(audit, dict) and audit.get("output") not in (None, "stdout", "off"):
        owners.append((audit, "output"))
    return owners


def resolve_file_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make relative file paths in raw config data absolute under `base_dir`."""
    for owner, key in _path_settings(data):
        value = owner.get(key)
        if isinstance(value, str) and value:
            # Path("/base") / "/abs" is "/abs": absolute values stay as written.
            owner[key] = str(base_dir / value)


def named_files(data: Mapping[str, Any], *, secrets: bool = True) -> list[str]:
    """The paths of the files validation needs the contents of, from resolved raw data.

    TLS files and the audit output are opened where they are used, not read at load;
    without ``secrets``, neither are secret files.
    """
    wanted = _READ_AT_LOAD if secrets else _READ_AT_LOAD - SECRET_FILE_KEYS
    return [owner[key] for owner, key in _path_settings(data)
            if key in wanted and isinstance(owner.get(key), str)]


def read_files(paths: Iterable[str]) -> dict[str, bytes | Exception]:
    """Read each file (at most MAX_REFERENCED_FILE_BYTES); a failure is kept, not raised."""
    contents: dict[str, bytes | Exception] = {}
    for path in paths:
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(MAX_REFERENCED_FILE_BYTES + 1)
        except OSError as exc:
            contents[path] = exc
            continue
        too_large = len(data) > MAX_REFERENCED_FILE_BYTES
        contents[path] = (ValueError(f"is larger than {MAX_REFERENCED_FILE_BYTES} bytes")
                          if too_large else data)
    return contents


def describe_os_error(exc: Exception) -> str:
    """A short, lower-case reason for a failed read."""
    if isinstance(exc, json.JSONDecodeError):
        return f"is not JSON ({exc.msg}, line {exc.lineno})"
    if isinstance(exc, UnicodeDecodeError):
        return "is not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "is not JSON (nested too deeply)"
    if isinstance(exc, OSError):
        reason = (exc.strerror or str(exc)).lower()
        return f"cannot read {exc.filename}: {reason}" if exc.filename else f"cannot read: {reason}"
    return str(exc)


def _contents(path: str, info: ValidationInfo) -> bytes:
    files = info.context.get(FILES) if isinstance(info.context, Mapping) else None
    if not isinstance(files, Mapping):
        # Settings built in Python get the values themselves: validation never reads a file.
        raise ValueError("was not read: load the config with load_settings, or give the value")
    found = files.get(path)
    if isinstance(found, Exception):
        raise ValueError(describe_os_error(found))
    if not isinstance(found, bytes):
        raise ValueError(f"cannot read {path}: its contents were not given")
    return found


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return value


def _secret_file(value: object, info: ValidationInfo) -> SecretFile:
    if isinstance(value, SecretFile):
        return value
    path = _string(value)
    if isinstance(info.context, Mapping) and info.context.get(UNRESOLVED_SECRETS):
        return SecretFile(path, SecretStr(UNRESOLVED_SECRET))
    try:
        text = _contents(path, info).decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ValueError(describe_os_error(exc)) from None
    if not text:
        raise ValueError("is empty")
    return SecretFile(path, SecretStr(text))


def _jwks_file(value: object, info: ValidationInfo) -> JwksFile:
    if isinstance(value, JwksFile):
        return value
    path = _string(value)
    try:
        return JwksFile(path, json.loads(_contents(path, info)))
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise ValueError(describe_os_error(exc)) from None


def _loaded_file(value: object, info: ValidationInfo) -> LoadedFile:
    if isinstance(value, LoadedFile):
        return value
    path = _string(value)
    data = _contents(path, info)
    if not data.strip():
        raise ValueError("is empty")
    return LoadedFile(path, data)


def _readable(value: str, info: ValidationInfo) -> str:
    if isinstance(info.context, Mapping) and FILES in info.context:
        _contents(value, info)  # only whether loading could read it
    return value


def _path_of(value: SecretFile | JwksFile | LoadedFile) -> str:
    return value.path


# In the YAML (and the JSON Schema) each is a path; validated, it also holds what was read.
SecretFileSetting = Annotated[SecretFile, PlainValidator(_secret_file),
                              PlainSerializer(_path_of, return_type=str),
                              WithJsonSchema({"type": "string"})]
JwksFileSetting = Annotated[JwksFile, PlainValidator(_jwks_file),
                            PlainSerializer(_path_of, return_type=str),
                            WithJsonSchema({"type": "string"})]
LoadedFileSetting = Annotated[LoadedFile, PlainValidator(_loaded_file),
                              PlainSerializer(_path_of, return_type=str),
                              WithJsonSchema({"type": "string"})]
ReadableFile = Annotated[StrictStr, AfterValidator(_readable)]
