"""The discovery rewrite a configuration builds: paths, origins, methods, algorithms."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.adapters.assemble import Runtime, build_runtime
from gateway.config.loading import parse_settings
from tests.support.tokens import make_signer

NOW = 1_750_000_000.0


def runtime_for(tmp_path: Path, *, issuer: str, public_url: str = "", passthrough: str,
                clients: str = "") -> Runtime:
    jwks = json.dumps({"keys": [make_signer("ES256").public_jwk]})
    public = f"public_url: {public_url}\n" if public_url else ""
    text = f"""
issuer: {issuer}
{public}backend: {{url: "http://legacy-idp.internal:8000"}}
endpoints: [/oauth2/token]
passthrough: {passthrough}
policy: {{algorithms: [ES256, PS256, ES256]}}
clients:
  ci-pipeline:
    jwks: {jwks}
    backend_auth: {{method: client_secret_basic, secret: !env CI_SECRET}}
{clients}
"""
    return build_runtime(parse_settings(text, base_dir=tmp_path, env={"CI_SECRET": "s"}))


def test_only_passthrough_paths_that_are_discovery_documents_are_rewritten(
    tmp_path: Path
) -> None:
    runtime = runtime_for(
        tmp_path, issuer="https://idp.example.com/realms/main",
        passthrough="[/.well-known/openid-configuration, /realms/main/.well-known/"
                    "openid-configuration, /.well-known/oauth-authorization-server/realms/"
                    "main, /realms/main/protocol/openid-connect/certs, /.well-known/other]")
    assert runtime.discovery.paths == {
        "/.well-known/openid-configuration", "/realms/main/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/realms/main"}


def test_backend_issuer_and_public_origins_point_at_the_gateway(tmp_path: Path) -> None:
    rewrite = runtime_for(tmp_path, issuer="https://idp.example.com/realms/main",
                          public_url="https://gw.example.com:8443/",
                          passthrough="[/.well-known/openid-configuration]").discovery
    assert rewrite.public_base == "https://gw.example.com:8443"
    assert rewrite.origins == {"http://legacy-idp.internal:8000", "https://idp.example.com",
                               "https://gw.example.com:8443"}
    assert rewrite.endpoints == {"/oauth2/token"}
    assert rewrite.routes == {"/oauth2/token", "/.well-known/openid-configuration"}
    assert rewrite.algorithms == ("ES256", "PS256")


def test_secret_methods_come_from_enabled_clients_in_migration_mode(tmp_path: Path) -> None:
    jwks = json.dumps({"keys": [make_signer("ES256", slot=1).public_jwk]})
    others = f"""
    legacy_auth: {{allow: [client_secret_post]}}
  old-app:
    jwks: {jwks}
    backend_auth: {{method: client_secret_post, secret: !env CI_SECRET}}
    legacy_auth: {{allow: [client_secret_basic], until: 2000-01-01}}
  gone-app:
    enabled: false
    jwks: {jwks}
    backend_auth: {{method: client_secret_post, secret: !env CI_SECRET}}
    legacy_auth: {{allow: [client_secret_basic]}}
"""
    rewrite = runtime_for(tmp_path, issuer="https://idp.example.com",
                          passthrough="[/.well-known/openid-configuration]",
                          clients=others).discovery
    # old-app's `until` has passed; gone-app is disabled.
    assert rewrite.auth_methods(NOW) == ["private_key_jwt", "client_secret_post"]
    assert rewrite.auth_methods(946_684_800.0) == [
        "private_key_jwt", "client_secret_basic", "client_secret_post"]
