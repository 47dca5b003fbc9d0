"""Config loading: every problem at its dotted path, at once; secrets, durations, lint, schema."""

from __future__ import annotations

import base64
import builtins
import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.assemble import build_runtime
from gateway.config.errors import ConfigError
from gateway.config.files import SecretFile
from gateway.config.lint import lint_settings
from gateway.config.loading import load_settings, parse_settings
from gateway.config.settings import (
    DEFAULT_ALGORITHMS,
    DEFAULT_BACKEND_KEEPALIVE,
    DEFAULT_BACKEND_TIMEOUT,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_MEMORY_MAX_ENTRIES,
    BackendAuthSettings,
    BackendSettings,
    ClientSettings,
    Settings,
    parse_duration,
    settings_json_schema,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"
EXAMPLE_ENV = {"CI_PIPELINE_SECRET": "ci-secret-for-tests", "PARTNER_ACME_SECRET": "acme-test"}
FILE_SECRET = "file-secret-for-tests"
SECRET_IN_YAML = "secrets never appear in the YAML itself: use !env NAME or secret_file"
DELETE = object()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@functools.cache
def ec_keypair() -> tuple[dict[str, str], dict[str, str]]:
    numbers = ec.generate_private_key(ec.SECP256R1()).private_numbers()
    point = numbers.public_numbers
    public = {"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64url(point.x.to_bytes(32, "big")),
              "y": b64url(point.y.to_bytes(32, "big"))}
    return public, {**public, "d": b64url(numbers.private_value.to_bytes(32, "big"))}


def base_config() -> dict[str, Any]:
    return {
        "issuer": "https://idp.example.com",
        "backend": {"url": "https://legacy.example.com"},
        "endpoints": ["/oauth2/token", "/oauth2/revoke"],
        "passthrough": ["/.well-known/openid-configuration"],
        "policy": {"algorithms": ["ES256", "PS256"]},
        "clients": {
            "ci": {
                "jwks": {"keys": [ec_keypair()[0]]},
                "backend_auth": {"method": "client_secret_basic", "secret_file": "ci.secret"},
            },
        },
    }


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    """The base config with dotted paths set (or removed, with DELETE)."""
    data = copy.deepcopy(base_config())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def dump(data: dict[str, Any]) -> str:
    # A value "!env NAME" becomes the tag, which safe_dump cannot write itself.
    return re.sub(r"'!env (\w+)'", r"!env \1", yaml.safe_dump(data, sort_keys=False))


def write(tmp_path: Path, config: dict[str, Any] | str) -> Path:
    (tmp_path / "ci.secret").write_text(FILE_SECRET + "\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(config if isinstance(config, str) else dump(config))
    return path


def load(tmp_path: Path, config: dict[str, Any] | str, env: dict[str, str] | None = None
         ) -> Settings:
    return load_settings(write(tmp_path, config), env=env or {})


def problems(tmp_path: Path, config: dict[str, Any] | str, env: dict[str, str] | None = None
             ) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, config, env)
    return caught.value.problems


def check_problems(tmp_path: Path, config: dict[str, Any] | str,
                   env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """What `check` reports: the settings' problems, else those of importing the keys."""
    with pytest.raises(ConfigError) as caught:
        build_runtime(load(tmp_path, config, env))
    return caught.value.problems


def test_base_config_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, base_config())
    client = settings.clients["ci"]
    assert client.configured_jwks() == ("jwks", {"keys": [ec_keypair()[0]]})
    assert client.backend_auth.secret_value() == FILE_SECRET
    assert client.backend_auth.secret_file is not None
    assert client.backend_auth.secret_file.path == str(tmp_path / "ci.secret")
    assert settings.endpoints == ("/oauth2/token", "/oauth2/revoke")
    assert settings.policy.algorithms == ("ES256", "PS256")


def test_defaults_match_the_named_constants(tmp_path: Path) -> None:
    settings = load(tmp_path, base_config())
    assert settings.backend.timeout == DEFAULT_BACKEND_TIMEOUT
    assert settings.backend.keepalive == DEFAULT_BACKEND_KEEPALIVE
    assert settings.policy.max_lifetime == DEFAULT_MAX_LIFETIME
    assert settings.policy.clock_skew == DEFAULT_CLOCK_SKEW
    assert settings.replay.max_entries == DEFAULT_MEMORY_MAX_ENTRIES
    assert settings.jwks_fetch.max_ttl == 86_400 and settings.jwks_fetch.max_stale == 6 * 3600
    assert (settings.listen.port, settings.admin.host) == (8080, "127.0.0.1")
    assert (settings.replay.store, settings.replay.on_store_error) == ("memory", "reject")
    assert load(tmp_path, changed({"policy": DELETE})).policy.algorithms == DEFAULT_ALGORITHMS


SINGLE_PROBLEMS = [
    ({"bogus": 1}, "bogus", "unknown key", "unknown-top-level-key"),
    ({"policy.bogus": 1}, "policy.bogus", "unknown key", "unknown-nested-key"),
    ({"clients.ci.jwks_url": "https://x"}, "clients.ci.jwks_url", "unknown key",
     "unknown-client-key"),
    ({"issuer": DELETE}, "issuer", "required key is missing", "issuer-missing"),
    ({"issuer": "idp.example.com"}, "issuer", "absolute http(s) URL", "issuer-relative"),
    ({"issuer": "ftp://idp.example.com"}, "issuer", "absolute http(s) URL", "issuer-ftp"),
    ({"issuer": "https://idp.example.com/?a=1"}, "issuer", "query or a fragment",
     "issuer-query"),
    ({"issuer": "https://idp.example.com/#x"}, "issuer", "query or a fragment",
     "issuer-fragment"),
    ({"issuer": "https://u:p@idp.example.com"}, "issuer", "credentials", "issuer-credentials"),
    ({"issuer": 5}, "issuer", "must be a string", "issuer-not-string"),
    ({"public_url": "https://gw.example.com/x?y"}, "public_url", "query", "public-url-query"),
    ({"public_url": "gw.example.com"}, "public_url", "absolute http(s)", "public-url-relative"),
    ({"backend.url": "legacy:8000"}, "backend.url", "absolute http(s)", "backend-url-relative"),
    ({"backend.url": "https://legacy:99999"}, "backend.url", "invalid port", "backend-port"),
    ({"backend": DELETE}, "backend", "required key is missing", "backend-missing"),
    ({"backend.timeout": 10}, "backend.timeout", "needs a unit", "duration-bare-number"),
    ({"backend.timeout": "10 seconds"}, "backend.timeout", "must be a duration",
     "duration-bad-unit"),
    ({"backend.timeout": "0s"}, "backend.timeout", "greater than 0", "duration-zero"),
    ({"endpoints": ["oauth2/token"]}, "endpoints[0]", "starting with '/'", "endpoint-relative"),
    ({"endpoints": ["/token", "/t?x=1"]}, "endpoints[1]", "bare path", "endpoint-query"),
    ({"endpoints": ["/a/../token"]}, "endpoints[0]", "'..' segments", "endpoint-dotdot"),
    ({"endpoints": []}, "endpoints", "must not be empty", "endpoints-empty"),
    ({"endpoints": "/oauth2/token"}, "endpoints", "must be a list", "endpoints-not-list"),
    ({"endpoints": ["/t", "/u", "/t"]}, "endpoints[2]", "already listed at endpoints[0]",
     "endpoint-duplicate"),
    ({"passthrough": ["/x", "/oauth2/revoke"]}, "passthrough[1]",
     "already listed at endpoints[1]", "passthrough-overlaps-endpoint"),
    ({"passthrough": ["x"]}, "passthrough[0]", "starting with '/'", "passthrough-relative"),
    ({"policy.algorithms": ["ES256", "HS256"]}, "policy.algorithms[1]", "never allowed",
     "algorithm-hs256"),
    ({"policy.algorithms": ["none"]}, "policy.algorithms[0]", "never allowed",
     "algorithm-none"),
    ({"policy.algorithms": ["ES257"]}, "policy.algorithms[0]", "unsupported algorithm",
     "algorithm-unknown"),
    ({"policy.algorithms": []}, "policy.algorithms", "must not be empty", "algorithms-empty"),
    ({"policy.clock_skew": "6m"}, "policy.clock_skew", "less than or equal to 300",
     "clock-skew-too-large"),
    ({"policy.max_lifetime": "0s"}, "policy.max_lifetime", "greater than 0",
     "max-lifetime-zero"),
    ({"policy.audience": "loose"}, "policy.audience", "must be 'strict' or 'compat'",
     "audience-unknown"),
    ({"policy.require_typ": "yes"}, "policy.require_typ", "true or false", "require-typ-text"),
    ({"listen.port": 70000}, "listen.port", "less than or equal to 65535", "port-too-large"),
    ({"listen.port": "8080"}, "listen.port", "must be an integer", "port-text"),
    ({"admin.host": ""}, "admin.host", "at least 1 character", "admin-host-empty"),
    ({"jwks_fetch.min_ttl": "2w"}, "jwks_fetch.min_ttl", "must be a duration", "duration-weeks"),
    ({"jwks_fetch.min_ttl": "2h", "jwks_fetch.max_ttl": "1h"}, "jwks_fetch",
     "min_ttl must not exceed max_ttl", "ttl-order"),
    ({"jwks_fetch.ca_file": "missing.pem"}, "jwks_fetch.ca_file", "cannot read",
     "ca-file-missing"),
    ({"jwks_fetch.max_bytes": 0}, "jwks_fetch.max_bytes", "greater than 0", "max-bytes-zero"),
    ({"replay.store": "sqlite"}, "replay.store", "'memory' or 'redis'", "store-unknown"),
    ({"replay.max_entries": 0}, "replay.max_entries", "greater than 0", "max-entries-zero"),
    ({"replay.on_store_error": "allow"}, "replay.on_store_error", "must be 'reject'",
     "on-store-error-allow"),
    ({"replay.redis_url": "http://redis:6379"}, "replay.redis_url", "redis://",
     "redis-url-scheme"),
    ({"replay.redis_url": "redis://:pw@redis:6379/0"}, "replay.redis_url", SECRET_IN_YAML,
     "redis-password-literal"),
    ({"clients": {}}, "clients", "must not be empty", "no-clients"),
    ({"clients.ci": "x"}, "clients.ci", "must be a mapping", "client-not-mapping"),
    ({"clients.ci.jwks": DELETE}, "clients.ci", "exactly one of jwks, jwks_file, jwks_uri (has 0)",
     "client-no-key-source"),
    ({"clients.ci.jwks_uri": "https://ci.example/jwks"}, "clients.ci",
     "exactly one of jwks, jwks_file, jwks_uri (has 2)", "client-two-key-sources"),
    ({"clients.ci.jwks": DELETE, "clients.ci.jwks_uri": "http://ci.example/jwks"},
     "clients.ci.jwks_uri", "must be https", "jwks-uri-http"),
    ({"clients.ci.jwks": DELETE, "clients.ci.jwks_uri": "/jwks"}, "clients.ci.jwks_uri",
     "absolute http(s)", "jwks-uri-relative"),
    ({"clients.ci.jwks": DELETE, "clients.ci.jwks_file": "nowhere.json"},
     "clients.ci.jwks_file", "cannot read", "jwks-file-missing"),
    ({"clients.ci.jwks": {"keys": [ec_keypair()[0], ec_keypair()[1]]}},
     "clients.ci.jwks.keys[1]", "private key material (d)", "jwks-private-key"),
    ({"clients.ci.jwks": {"keys": [ec_keypair()[0], {"kty": "oct", "k": "AA"}]}},
     "clients.ci.jwks.keys[1]", "symmetric ('oct')", "jwks-oct-key"),
    ({"clients.ci.jwks": {"kty": "EC"}}, "clients.ci.jwks", "must be a JWK Set",
     "jwks-not-a-set"),
    ({"clients.ci.jwks": {"keys": []}}, "clients.ci.jwks", "no usable public signing key",
     "jwks-empty"),
    ({"clients.ci.algorithms": ["HS512"]}, "clients.ci.algorithms[0]", "never allowed",
     "client-algorithm-hs512"),
    ({"clients.ci.max_lifetime": 60}, "clients.ci.max_lifetime", "needs a unit",
     "client-duration-bare"),
    ({"clients.ci.clock_skew": "1h"}, "clients.ci.clock_skew", "less than or equal to 300",
     "client-clock-skew-too-large"),
    ({"clients.ci.audience": "any"}, "clients.ci.audience", "'strict' or 'compat'",
     "client-audience-unknown"),
    ({"clients.ci.backend_auth": DELETE}, "clients.ci.backend_auth", "required key is missing",
     "backend-auth-missing"),
    ({"clients.ci.backend_auth.method": "private_key_jwt"}, "clients.ci.backend_auth.method",
     "'client_secret_basic', 'client_secret_post' or 'none'", "backend-auth-method-unknown"),
    ({"clients.ci.backend_auth.method": "none"}, "clients.ci.backend_auth",
     "method none sends no secret", "method-none-with-secret-file"),
    ({"clients.ci.backend_auth.secret_file": DELETE}, "clients.ci.backend_auth",
     "needs exactly one of secret, secret_file", "basic-without-secret"),
    ({"clients.ci.backend_auth.method": "client_secret_post",
      "clients.ci.backend_auth.secret": "!env CI_SECRET"}, "clients.ci.backend_auth",
     "needs exactly one of secret, secret_file", "post-with-both"),
    ({"clients.ci.backend_auth.secret_file": DELETE,
      "clients.ci.backend_auth.secret": "hunter2"}, "clients.ci.backend_auth.secret",
     SECRET_IN_YAML, "secret-literal"),
    ({"clients.ci.backend_auth.secret_file": "absent.secret"},
     "clients.ci.backend_auth.secret_file", "cannot read", "secret-file-missing"),
]


@pytest.mark.parametrize(
    ("changes", "path", "needle"),
    [pytest.param(c, p, n, id=i) for c, p, n, i in SINGLE_PROBLEMS],
)
def test_one_problem_at_its_dotted_path(
    tmp_path: Path, changes: dict[str, Any], path: str, needle: str
) -> None:
    found = check_problems(tmp_path, changed(changes), env={"CI_SECRET": "x"})
    assert len(found) == 1, found
    assert found[0][0] == path
    assert needle in found[0][1]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = changed({
        "issuer": "not-a-url",
        "backend.timeout": 5,
        "endpoints": ["/t", "/t"],
        "policy.algorithms": ["HS256"],
        "replay.store": "disk",
        "clients.ci.backend_auth.secret_file": "absent.secret",
        "clients.other": {"jwks_uri": "http://x.example/jwks",
                          "backend_auth": {"method": "none"}},
    })
    text = dump(data) + "listen: {port: 1, port: 2}\n"
    paths = [path for path, _ in problems(tmp_path, text)]
    assert sorted(paths) == sorted([
        "listen.port", "issuer", "backend.timeout", "endpoints[1]", "policy.algorithms[0]",
        "replay.store", "clients.ci.backend_auth.secret_file", "clients.other.jwks_uri",
    ])


def test_every_key_problem_is_reported_at_once(tmp_path: Path) -> None:
    # Keys are checked where they are imported, once the settings themselves are valid.
    public, private = ec_keypair()
    (tmp_path / "file.jwks.json").write_text(json.dumps({"keys": [private]}))
    data = changed({
        "clients.ci.jwks": {"keys": [{"kty": "oct", "k": "AA"}, public]},
        "clients.file": {"jwks_file": "file.jwks.json", "backend_auth": {"method": "none"}},
        "clients.off": {"jwks": {"keys": []}, "enabled": False,
                        "backend_auth": {"method": "none"}},
    })
    assert check_problems(tmp_path, data) == [
        ("clients.ci.jwks.keys[0]", "is a symmetric ('oct') key: only public asymmetric keys "
                                    "verify client assertions"),
        ("clients.file.jwks_file.keys[0]",
         "holds private key material (d): publish the public key only"),
        ("clients.file.jwks_file", "holds no usable public signing key"),
        ("clients.off.jwks", "holds no usable public signing key"),
    ]


def test_problems_come_as_a_readable_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, changed({"issuer": DELETE, "bogus": 1}))
    assert str(caught.value) == (
        "2 configuration problem(s):\nissuer: required key is missing\nbogus: unknown key")


@pytest.mark.parametrize(
    ("text", "path", "needle"),
    [
        pytest.param("clients:\n  ci:\n    jwks_uri: https://a\n    jwks_uri: https://b\n",
                     "clients.ci.jwks_uri", "duplicate key (first at line 3)",
                     id="duplicate-nested-key"),
        pytest.param("clients:\n  ci: {}\n  ci: {}\n", "clients.ci", "duplicate key",
                     id="duplicate-client-id"),
        pytest.param("policy:\n  algorithms: [ES256]\npolicy: {}\n", "policy", "duplicate key",
                     id="duplicate-top-level-key"),
        pytest.param("clients:\n  1234: {}\n", "clients.1234", "keys must be plain strings",
                     id="integer-client-id"),
        pytest.param("listen:\n  true: 1\n", "listen.true", "keys must be plain strings",
                     id="boolean-key"),
        pytest.param("issuer: !include other.yaml\n", "issuer", "unsupported YAML tag",
                     id="unknown-tag"),
        # A date is a value (legacy_auth.until), but not where a string is wanted.
        pytest.param("issuer: 2024-01-01\n", "issuer", "must be a string", id="timestamp"),
        pytest.param("a: &x {b: 1}\npolicy: {<<: *x}\n", "policy", "merge keys", id="merge-key"),
        pytest.param("- issuer\n", "", "the top level must be a mapping", id="top-level-list"),
        pytest.param("just text\n", "", "the top level must be a mapping", id="top-level-text"),
        pytest.param("", "", "the file is empty", id="empty-file"),
        pytest.param("issuer: [unclosed\n", "", "not valid YAML", id="invalid-yaml"),
        pytest.param("a: 1\n---\nb: 2\n", "", "not valid YAML", id="two-documents"),
    ],
)
def test_yaml_dialect_problems(tmp_path: Path, text: str, path: str, needle: str) -> None:
    found = problems(tmp_path, text)
    assert any(p == path and needle in m for p, m in found), found


def test_anchors_and_aliases_share_values(tmp_path: Path) -> None:
    data = changed({"clients.other": {"jwks": "SHARED",
                                      "backend_auth": {"method": "none"}}})
    text = dump(data).replace("    jwks:\n", "    jwks: &keys\n", 1).replace("SHARED", "*keys")
    settings = load(tmp_path, text)
    assert settings.clients["other"].configured_jwks() == settings.clients["ci"].configured_jwks()


def test_alias_expansion_is_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = problems(tmp_path, "\n".join(lines) + "\n")
    assert [m for _, m in found].count("more than 100000 values after aliases") == 1


def test_duplicate_key_deep_in_a_valid_config(tmp_path: Path) -> None:
    text = dump(base_config())
    line = text.splitlines().index("      method: client_secret_basic") + 1
    text = text.replace("      method: client_secret_basic\n",
                        "      method: client_secret_basic\n      method: client_secret_basic\n")
    assert problems(tmp_path, text) == [
        ("clients.ci.backend_auth.method", f"duplicate key (first at line {line})")]


def test_env_tag_reads_the_given_environment(tmp_path: Path) -> None:
    data = changed({"issuer": "!env ISSUER", "clients.ci.backend_auth.secret_file": DELETE,
                    "clients.ci.backend_auth.secret": "!env CI_SECRET"})
    settings = load(tmp_path, data, env={"ISSUER": "https://env.example", "CI_SECRET": "s3"})
    assert settings.issuer == "https://env.example"
    assert settings.clients["ci"].backend_auth.secret_value() == "s3"


def test_env_tag_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKJWT_TEST_SECRET", "from-os")
    data = changed({"clients.ci.backend_auth.secret_file": DELETE,
                    "clients.ci.backend_auth.secret": "!env PKJWT_TEST_SECRET"})
    settings = load_settings(write(tmp_path, data))
    assert settings.clients["ci"].backend_auth.secret_value() == "from-os"


def test_unset_env_is_one_problem_at_its_path(tmp_path: Path) -> None:
    data = changed({"clients.ci.backend_auth.secret_file": DELETE,
                    "clients.ci.backend_auth.secret": "!env CI_SECRET",
                    "backend.url": "!env BACKEND_URL"})
    assert problems(tmp_path, data) == [
        ("backend.url", "environment variable BACKEND_URL is not set"),
        ("clients.ci.backend_auth.secret", "environment variable CI_SECRET is not set"),
    ]


def test_env_without_a_name(tmp_path: Path) -> None:
    text = dump(base_config()).replace("issuer: https://idp.example.com", "issuer: !env")
    assert problems(tmp_path, text) == [("issuer", "!env needs a variable name, "
                                                   "e.g. !env CLIENT_SECRET")]


def test_empty_env_secret_is_refused(tmp_path: Path) -> None:
    data = changed({"clients.ci.backend_auth.secret_file": DELETE,
                    "clients.ci.backend_auth.secret": "!env CI_SECRET"})
    assert problems(tmp_path, data, env={"CI_SECRET": ""}) == [
        ("clients.ci.backend_auth.secret", "must not be empty")]


def test_literal_secret_never_reaches_the_error_text(tmp_path: Path) -> None:
    data = changed({"clients.ci.backend_auth.secret_file": DELETE,
                    "clients.ci.backend_auth.secret": "hunter2-literal"})
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    assert "hunter2-literal" not in str(caught.value)
    assert "hunter2-literal" not in repr(caught.value.problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("s3cret\n", "s3cret", id="trailing-newline"),
        pytest.param("s3cret\r\n\n", "s3cret", id="crlf-and-blank-line"),
        pytest.param(" spaced secret ", " spaced secret ", id="inner-spaces-kept"),
    ],
)
def test_secret_file_is_read_and_stripped(tmp_path: Path, content: str, expected: str) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "ci").write_text(content)
    settings = load(tmp_path, changed({"clients.ci.backend_auth.secret_file": "secrets/ci"}))
    assert settings.clients["ci"].backend_auth.secret_value() == expected


def test_secret_file_absolute_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "abs.secret"
    elsewhere.write_text("abs\n")
    data = changed({"clients.ci.backend_auth.secret_file": str(elsewhere)})
    assert load(tmp_path / "..", data).clients["ci"].backend_auth.secret_value() == "abs"


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.secret").write_text("\n")
    data = changed({"clients.ci.backend_auth.secret_file": "empty.secret"})
    assert problems(tmp_path, data) == [("clients.ci.backend_auth.secret_file", "is empty")]


def test_secrets_stay_out_of_repr_and_str(tmp_path: Path) -> None:
    data = changed({"clients.other": {
        "jwks": {"keys": [ec_keypair()[0]]},
        "backend_auth": {"method": "client_secret_post", "secret": "!env OTHER_SECRET"}}})
    settings = load(tmp_path, data, env={"OTHER_SECRET": "env-secret-value"})
    for text in (repr(settings), str(settings), repr(settings.clients["other"].backend_auth),
                 settings.model_dump_json()):
        assert "env-secret-value" not in text
        assert FILE_SECRET not in text
    assert settings.clients["other"].backend_auth.secret_value() == "env-secret-value"


def test_method_none_has_no_secret(tmp_path: Path) -> None:
    data = changed({"clients.ci.backend_auth": {"method": "none"}})
    assert load(tmp_path, data).clients["ci"].backend_auth.secret_value() is None


def test_jwks_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    public, private = ec_keypair()
    (tmp_path / "ci.jwks.json").write_text(json.dumps({"keys": [public, private]}))
    data = changed({"clients.ci.jwks": DELETE, "clients.ci.jwks_file": "ci.jwks.json"})
    assert check_problems(tmp_path, data) == [
        ("clients.ci.jwks_file.keys[1]",
         "holds private key material (d): publish the public key only")]
    (tmp_path / "ci.jwks.json").write_text(json.dumps({"keys": [public]}))
    client = load(tmp_path, data).clients["ci"]
    assert client.configured_jwks() == ("jwks_file", {"keys": [public]})
    assert client.jwks_file is not None
    assert client.jwks_file.path == str(tmp_path / "ci.jwks.json")


def test_jwks_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "ci.jwks.json").write_text("{nope")
    data = changed({"clients.ci.jwks": DELETE, "clients.ci.jwks_file": "ci.jwks.json"})
    [(path, message)] = problems(tmp_path, data)
    assert path == "clients.ci.jwks_file"
    assert message.startswith("is not JSON")


def test_jwks_uri_client_has_no_loaded_keys(tmp_path: Path) -> None:
    data = changed({"clients.ci.jwks": DELETE, "clients.ci.jwks_uri": "https://ci.example/j"})
    assert load(tmp_path, data).clients["ci"].configured_jwks() is None


def test_jwks_uri_over_http_needs_allow_http(tmp_path: Path) -> None:
    data = changed({"clients.ci.jwks": DELETE, "clients.ci.jwks_uri": "http://127.0.0.1:1/j",
                    "jwks_fetch.allow_http": True})
    assert load(tmp_path, data).clients["ci"].jwks_uri == "http://127.0.0.1:1/j"


@pytest.mark.parametrize(
    ("client_id", "path", "needle"),
    [
        pytest.param("", "clients.''", "must not be empty", id="empty"),
        pytest.param("bad\x01id", "clients.'bad\\x01id'", "control characters", id="control"),
    ],
)
def test_client_id_rules(tmp_path: Path, client_id: str, path: str, needle: str) -> None:
    data = base_config()
    data["clients"][client_id] = data["clients"].pop("ci")
    found = problems(tmp_path, data)
    assert [p for p, _ in found] == [path]
    assert needle in found[0][1]


def test_effective_policy_merges_client_overrides(tmp_path: Path) -> None:
    data = changed({"policy.max_lifetime": "2m", "clients.ci.algorithms": ["PS256"],
                    "clients.ci.clock_skew": "1.5s", "clients.ci.require_typ": True})
    policy = load(tmp_path, data).effective_policy("ci")
    assert policy.algorithms == ("PS256",)
    assert (policy.max_lifetime, policy.clock_skew, policy.require_typ) == (120.0, 1.5, True)
    assert policy.audience == "strict"


def test_effective_policy_of_unknown_client(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        load(tmp_path, base_config()).effective_policy("nobody")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, "https://idp.example.com", id="issuer-origin"),
        pytest.param({"issuer": "https://idp.example.com:8443/realms/x"},
                     "https://idp.example.com:8443", id="issuer-with-path"),
        pytest.param({"public_url": "https://gw.example.com/auth/"},
                     "https://gw.example.com/auth", id="public-url-trailing-slash"),
    ],
)
def test_public_base(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    assert load(tmp_path, changed(changes)).public_base() == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("15s", 15.0), ("5m", 300.0), ("1h", 3600.0), ("14d", 1_209_600.0),
     ("1.5s", 1.5), ("0s", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        pytest.param(15, "needs a unit", id="int"),
        pytest.param(1.5, "needs a unit", id="float"),
        pytest.param("15", "must be a duration", id="numeric-text"),
        pytest.param("-1s", "must be a duration", id="negative"),
        pytest.param("1 s", "must be a duration", id="space"),
        pytest.param("1w", "must be a duration", id="weeks"),
        pytest.param(".5s", "must be a duration", id="no-leading-digit"),
        pytest.param(True, "must be a duration", id="bool"),
        pytest.param(None, "must be a duration", id="none"),
    ],
)
def test_parse_duration_refuses(value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_duration(value)


def test_python_callers_may_give_seconds() -> None:
    assert BackendSettings(url="http://127.0.0.1:1", timeout=2).timeout == 2


def test_models_are_frozen(tmp_path: Path) -> None:
    settings = load(tmp_path, base_config())
    with pytest.raises(pydantic.ValidationError):
        settings.issuer = "https://other.example"


def test_settings_built_in_python_keep_the_set_for_the_runtime_to_check() -> None:
    public, private = ec_keypair()
    client = ClientSettings.model_validate({
        "jwks": {"keys": [public, private]}, "backend_auth": {"method": "none"}})
    assert client.configured_jwks() == ("jwks", {"keys": [public, private]})
    settings = Settings(issuer="https://idp.example.com", backend=BackendSettings(
        url="https://legacy.example.com"), endpoints=("/oauth2/token",), clients={"ci": client})
    with pytest.raises(ConfigError) as caught:
        build_runtime(settings)
    assert caught.value.problems == [
        ("clients.ci.jwks.keys[1]", "holds private key material (d): publish the public key only")]


def test_settings_built_in_python_take_a_read_secret_file() -> None:
    secret = SecretFile("/run/secrets/ci", pydantic.SecretStr("from-python"))
    auth = BackendAuthSettings(method="client_secret_basic", secret_file=secret)
    assert auth.secret_value() == "from-python"
    assert "from-python" not in repr(auth)
    # Validation reads no file: a bare path has no contents to look up.
    with pytest.raises(pydantic.ValidationError, match="was not read"):
        BackendAuthSettings.model_validate(
            {"method": "client_secret_basic", "secret_file": "/run/secrets/ci"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.yaml", env={})
    [(path, message)] = caught.value.problems
    assert path == "" and message.startswith("cannot read")


def test_parse_settings_from_text(tmp_path: Path) -> None:
    settings = parse_settings(dump(base_config()), base_dir=tmp_path, env={},
                              files={str(tmp_path / "ci.secret"): b"t\n"})
    assert settings.clients["ci"].backend_auth.secret_value() == "t"


def test_parse_settings_touches_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    public = ec_keypair()[0]
    base = Path("/nowhere/config")
    data = changed({"clients.ci.jwks": DELETE, "clients.ci.jwks_file": "ci.jwks.json",
                    "replay.redis_password_file": "/run/redis.password",
                    "jwks_fetch.ca_file": "ca.pem"})
    files = {"/nowhere/config/ci.jwks.json": json.dumps({"keys": [public]}).encode(),
             "/nowhere/config/ci.secret": b"from-the-mapping\n",
             "/run/redis.password": b"redis-pw", "/nowhere/config/ca.pem": b"PEM"}

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"file access: {args}")

    for owner, name in ((Path, "open"), (Path, "read_bytes"), (Path, "read_text"),
                        (builtins, "open"), (os, "open"), (os, "stat")):
        monkeypatch.setattr(owner, name, no_io)
    settings = parse_settings(dump(data), base_dir=base, env={}, files=files)
    client = settings.clients["ci"]
    assert client.configured_jwks() == ("jwks_file", {"keys": [public]})
    assert client.backend_auth.secret_value() == "from-the-mapping"
    assert settings.replay.password_value() == "redis-pw"
    assert settings.jwks_fetch.ca_file == "/nowhere/config/ca.pem"


def test_parse_settings_reports_files_it_was_not_given(tmp_path: Path) -> None:
    (tmp_path / "ci.secret").write_text("on disk, but not given\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(dump(base_config()), base_dir=tmp_path, env={})
    assert caught.value.problems == [
        ("clients.ci.backend_auth.secret_file",
         f"cannot read {tmp_path / 'ci.secret'}: its contents were not given")]


def test_redis_password_file_is_read_when_loading(tmp_path: Path) -> None:
    (tmp_path / "redis.password").write_text("redis-secret\n")
    data = changed({"replay.store": "redis", "replay.redis_password_file": "redis.password"})
    settings = load(tmp_path, data)
    assert settings.replay.password_value() == "redis-secret"
    assert "redis-secret" not in repr(settings) + settings.model_dump_json()
    assert json.loads(settings.model_dump_json())["replay"]["redis_password_file"] == str(
        tmp_path / "redis.password")
    (tmp_path / "redis.password").unlink()  # loaded settings never read it again
    assert settings.replay.password_value() == "redis-secret"
    assert problems(tmp_path, data) == [
        ("replay.redis_password_file",
         f"cannot read {tmp_path / 'redis.password'}: no such file or directory")]


def test_example_config_loads_without_warnings() -> None:
    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    assert lint_settings(settings) == []
    assert settings.clients["ci-pipeline"].backend_auth.secret_value() == "ci-secret-for-tests"
    assert "ci-pipeline" in build_runtime(settings).clients
    assert settings.effective_policy("partner-acme").algorithms == ("ES256",)


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    models: list[type[pydantic.BaseModel]] = [Settings]
    for model in models:
        for name, field in model.model_fields.items():
            # A key may be shown commented out where it is one of two choices, and may
            # open a list item.
            assert re.search(rf"^\s*(# )?(- )?{name}:", text, re.MULTILINE), \
                f"{model.__name__}.{name}"
            models += [t for t in _model_types(field.annotation) if t not in models]


def _model_types(annotation: object) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found: list[type[pydantic.BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _model_types(arg)
    return found


def test_example_config_reports_its_unset_env_vars() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE, env={})
    assert [p for p, _ in caught.value.problems] == [
        "clients.ci-pipeline.backend_auth.secret", "clients.partner-acme.backend_auth.secret"]


def test_json_schema_describes_every_top_level_key() -> None:
    schema = settings_json_schema()
    json.dumps(schema)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(Settings.model_fields)
    assert set(schema["required"]) == {"issuer", "backend", "endpoints", "clients"}
    timeout = schema["$defs"]["BackendSettings"]["properties"]["timeout"]
    assert timeout["type"] == "string" and timeout["default"] == "10s"
    assert re.fullmatch(timeout["pattern"], "250ms") and not re.fullmatch(timeout["pattern"], "5")


LINTS = [
    ({"policy.max_lifetime": "10m"}, "policy.max_lifetime", "600s", "max-lifetime-global"),
    ({"clients.ci.max_lifetime": "1h"}, "clients.ci.max_lifetime", "3600s", "max-lifetime-client"),
    ({"policy.clock_skew": "2m"}, "policy.clock_skew", "120s", "clock-skew"),
    ({"policy.audience": "compat"}, "policy.audience", "set strict", "audience-compat"),
    ({"clients.ci.audience": "compat"}, "clients.ci.audience", "set strict",
     "client-audience-compat"),
    ({"policy.algorithms": ["ES256", "RS256", "RS512"]}, "policy.algorithms", "RS256, RS512",
     "rs-algorithms"),
    ({"clients.ci.algorithms": ["RS384"]}, "clients.ci.algorithms", "RS384", "client-rs384"),
    ({"backend.url": "http://legacy.internal:8000"}, "backend.url", "use https",
     "backend-plain-http"),
    ({"issuer": "http://idp.example.com"}, "issuer", "use https", "issuer-plain-http"),
    ({"admin.host": "0.0.0.0"}, "admin.host", "bind it to 127.0.0.1", "admin-all-interfaces"),
    ({"jwks_fetch.allow_http": True}, "jwks_fetch.allow_http", "turn allow_http off",
     "allow-http"),
    ({"jwks_fetch.allow_private_networks": True}, "jwks_fetch.allow_private_networks",
     "request forgery", "allow-private-networks"),
]


@pytest.mark.parametrize(
    ("changes", "path", "needle"), [pytest.param(c, p, n, id=i) for c, p, n, i in LINTS]
)
def test_lint_warning(tmp_path: Path, changes: dict[str, Any], path: str, needle: str) -> None:
    warnings = lint_settings(load(tmp_path, changed(changes)))
    assert [p for p, _ in warnings] == [path]
    assert needle in warnings[0][1]
    assert warnings[0][1].count(";") == 1  # the risk; the fix


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="base"),
        # The defaults pass `check --strict`: RS256 is in the default list for the clients
        # that need it, and only an operator's own RS* list is warned about.
        pytest.param({"policy": DELETE}, id="default-policy"),
        pytest.param({"policy.require_typ": False}, id="require-typ-false"),
        pytest.param({"backend.url": "http://127.0.0.1:8000"}, id="backend-http-loopback"),
        pytest.param({"backend.url": "http://[::1]:8000"}, id="backend-http-ipv6-loopback"),
        pytest.param({"backend.url": "http://localhost:8000"}, id="backend-http-localhost"),
        pytest.param({"policy.max_lifetime": "300s", "policy.clock_skew": "60s"},
                     id="at-the-thresholds"),
    ],
)
def test_no_lint_warning(tmp_path: Path, changes: dict[str, Any]) -> None:
    assert lint_settings(load(tmp_path, changed(changes))) == []
