"""Settings of CA-anchored clients: one credential kind among the key sources, files at load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loading import load_settings
from gateway.config.settings import settings_json_schema
from tests.config.test_settings import (
    DELETE,
    changed,
    check_problems,
    load,
    problems,
)
from tests.support.pki import CA

WHERE = "clients.ci"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "partners-ca.pem"
    path.write_bytes(CA("Partners CA").pem)
    return path


def certificate(**settings: Any) -> dict[str, Any]:
    return changed({"clients.ci.jwks": DELETE,
                    "clients.ci.certificate": {"ca_file": "partners-ca.pem",
                                               "subject": "CN=ci,O=Acme,C=DE", **settings}})


def test_a_certificate_client_loads_with_its_files_read(tmp_path: Path, ca_file: Path) -> None:
    (tmp_path / "partners.crl").write_bytes(CA("Partners CA").crl())
    settings = load(tmp_path, certificate(crl_file="partners.crl"))
    loaded = settings.clients["ci"].certificate
    assert loaded is not None and loaded.crl_file is not None
    assert (loaded.ca_file.path, loaded.ca_file.data) == (str(ca_file), ca_file.read_bytes())
    assert loaded.crl_file.path == str(tmp_path / "partners.crl")
    assert not settings.clients["ci"].has_own_keys
    # Serialised (as the schema and `check --json` show it), a file is its path.
    assert settings.model_dump(mode="json")["clients"]["ci"]["certificate"]["ca_file"] == \
        str(ca_file)


@pytest.mark.parametrize(("changes", "where", "message"), [
    ({"clients.ci.certificate": {"ca_file": "partners-ca.pem", "subject": "CN=ci"}},
     WHERE, "certificate and jwks, jwks_file, jwks_uri exclude each other"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {"ca_file": "partners-ca.pem"}},
     f"{WHERE}.certificate", "needs exactly one of subject, san"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {
        "ca_file": "partners-ca.pem", "subject": "CN=ci", "san": {"dns": "ci.example"}}},
     f"{WHERE}.certificate", "needs exactly one of subject, san"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {
        "ca_file": "partners-ca.pem", "san": {"dns": "ci.example", "uri": "spiffe://x/y"}}},
     f"{WHERE}.certificate.san", "needs exactly one of dns, uri, email (has 2)"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {
        "ca_file": "partners-ca.pem", "subject": ""}},
     f"{WHERE}.certificate", "subject must not be empty"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {
        "ca_file": "missing.pem", "subject": "CN=ci"}},
     f"{WHERE}.certificate.ca_file", "cannot read"),
    ({"clients.ci.jwks": DELETE, "clients.ci.certificate": {
        "ca_file": "partners-ca.pem", "subject": "CN=ci", "crl_file": "empty.crl"}},
     f"{WHERE}.certificate.crl_file", "is empty"),
])
def test_certificate_settings_that_cannot_serve(
    tmp_path: Path, ca_file: Path, changes: dict[str, Any], where: str, message: str,
) -> None:
    (tmp_path / "empty.crl").write_bytes(b"\n")
    found = problems(tmp_path, changed(changes))
    assert any(path == where and message in text for path, text in found), found


def test_what_only_parsing_finds_is_reported_by_check_at_its_path(
    tmp_path: Path, ca_file: Path,
) -> None:
    (tmp_path / "partners.crl").write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n"
                                            b"-----END X509 CRL-----\n")
    assert check_problems(tmp_path, certificate(subject="cn=ci", crl_file="partners.crl")) == [
        (f"{WHERE}.certificate.subject",
         "is not an RFC 4514 distinguished name such as 'CN=partner-acme,O=Acme Corp,C=DE' "
         "(attribute names such as CN, O, OU, C in capitals, no spaces around ',' or '=')"),
        (f"{WHERE}.certificate.crl_file", "is not a CRL (PEM or DER)")]


def test_a_certificate_client_may_also_have_federated_trusts(
    tmp_path: Path, ca_file: Path,
) -> None:
    data = certificate()
    data["federation"] = {"issuers": {"github": {
        "issuer": "https://token.actions.githubusercontent.com", "jwks": {"keys": []},
        "preset": "github"}}}
    data["clients"]["ci"]["federated"] = [{"name": "t", "issuer": "github",
                                          "audience": "https://idp.example.com",
                                          "subject": "repo:acme@1/api@2:ref:refs/heads/main"}]
    client = load(tmp_path, data).clients["ci"]
    assert client.certificate is not None and client.federated


def test_the_schema_names_every_certificate_key() -> None:
    schema = settings_json_schema()
    definitions = schema["$defs"]
    assert set(definitions["CertificateSettings"]["properties"]) == {
        "ca_file", "subject", "san", "crl_file"}
    assert definitions["CertificateSettings"]["properties"]["ca_file"]["type"] == "string"
    assert set(definitions["SanSettings"]["properties"]) == {"dns", "uri", "email"}


EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"


@pytest.mark.parametrize("identity", ["subject", "dns"])
def test_the_examples_certificate_client_loads_once_uncommented(
    tmp_path: Path, identity: str,
) -> None:
    """The commented partner-globex block, with its subject or one of its SAN kinds."""
    dropped = {"san", "dns", "uri", "email"} if identity == "subject" else {
        "subject", "uri", "email"}
    lines, on = [], False
    for line in EXAMPLE.read_text().splitlines():
        on = line.startswith("  # partner-globex:") or (on and line.startswith("    "))
        if on and re.match(r" {0,12}# [\w\"-]", line):
            line = line.replace("# ", "", 1)
            if line.strip().split(":")[0] in dropped:
                continue
        lines.append(line)
    (tmp_path / "partners-ca.pem").write_bytes(CA("Globex CA").pem)
    (tmp_path / "partners.crl").write_bytes(CA("Globex CA").crl())
    text = "\n".join(lines).replace("/run/secrets/globex", "globex.secret") + "\n"
    (tmp_path / "globex.secret").write_text("s\n")
    (tmp_path / "gateway.yaml").write_text(text)
    settings = load_settings(tmp_path / "gateway.yaml", env={
        "CI_PIPELINE_SECRET": "a", "PARTNER_ACME_SECRET": "b"})
    certificate = settings.clients["partner-globex"].certificate
    assert certificate is not None and certificate.crl_file is not None
    if identity == "subject":
        assert certificate.subject == "CN=partner-globex,O=Globex,C=US"
    else:
        assert certificate.san is not None and certificate.san.dns == "client.globex.example"
