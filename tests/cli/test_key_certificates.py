"""Certificates in sight of expiry on the command line: `check` warns, `keys` lists them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cli.keys import collect_inventory, render_inventory
from gateway.cli.main import check, keys_inventory
from gateway.config.loading import load_settings
from tests.conftest import BACKEND_SECRET, gateway_yaml
from tests.support.key_certificates import DAY, certificate_b64, with_certificate
from tests.support.tokens import Signer, make_signer

CLIENT = "ci-pipeline"


@dataclass
class Ran:
    returncode: int
    stdout: str


Run = Callable[..., Ran]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``check`` and ``keys`` in this process (faster than a subprocess): their exit code
    and what they print."""
    monkeypatch.setenv("CI_SECRET", BACKEND_SECRET)

    def verb(name: str, _: str, path: str, *flags: str) -> Ran:
        capsys.readouterr()
        if name == "check":
            code = check(Path(path), strict="--strict" in flags)
        else:
            code = keys_inventory(Path(path), as_json="--json" in flags)
        return Ran(code, capsys.readouterr().out)

    return verb


def config(tmp_path: Path, *keys: Signer, policy: str = "", client: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    text = gateway_yaml("http://127.0.0.1:9", {"keys": [k.public_jwk for k in keys]},
                        policy=policy, client=client)
    # Without RS256 (and with a loopback backend) check's other lints are quiet: only
    # certificates warn here.
    path.write_text(text.replace(", RS256]", "]", 1))
    return path


def in_days(days: float) -> float:
    return float(int(time.time() + days * DAY))


def test_check_warns_of_a_certificate_expiring_within_the_threshold(run: Run,
                                                                    tmp_path: Path) -> None:
    soon = with_certificate(make_signer("ES256", kid="soon"), not_after=in_days(5.5))
    later = with_certificate(make_signer("ES256", kid="later", slot=1), not_after=in_days(60))
    path = config(tmp_path, soon, later)
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stdout
    assert warnings[0].startswith(f"warning: clients.{CLIENT}.jwks: the certificate (x5c) of "
                                  "key kid=soon expires ")
    assert ", in 5 day(s);" in warnings[0]
    assert run("check", "--config", str(path), "--strict").returncode == 1


@pytest.mark.parametrize(
    ("days", "yaml", "warned"),
    [
        pytest.param(13.5, {}, True, id="within-the-default-14d"),
        pytest.param(15, {}, False, id="beyond-the-default-14d"),
        pytest.param(15, {"policy": ", certificate_expiry_warning: 30d"}, True,
                     id="within-a-policy-threshold"),
        pytest.param(15, {"client": "certificate_expiry_warning: 30d"}, True,
                     id="within-a-client-threshold"),
        pytest.param(5, {"policy": ", certificate_expiry_warning: 0s"}, False,
                     id="threshold-zero-warns-of-nothing-unexpired"),
        pytest.param(-1, {"policy": ", certificate_expiry_warning: 0s"}, True,
                     id="threshold-zero-still-warns-of-the-expired"),
    ],
)
def test_check_threshold(run: Run, tmp_path: Path, days: float, yaml: dict[str, str],
                         warned: bool) -> None:
    signer = with_certificate(make_signer("ES256"), not_after=in_days(days))
    result = run("check", "--config", str(config(tmp_path, signer, **yaml)), "--strict")
    assert result.returncode == (1 if warned else 0), result.stdout + result.stderr
    assert ("the certificate (x5c)" in result.stdout) is warned


def test_check_says_an_expired_certificate_has_expired(run: Run, tmp_path: Path) -> None:
    signer = with_certificate(make_signer("ES256"), not_after=in_days(-2))
    result = run("check", "--config", str(config(tmp_path, signer)))
    assert result.returncode == 0
    assert "key kid=es256-0 expired 20" in result.stdout


def test_check_refuses_a_key_whose_certificate_holds_another_key(run: Run,
                                                                  tmp_path: Path) -> None:
    other = with_certificate(make_signer("ES256", slot=1), not_after=in_days(30))
    broken = make_signer("ES256").with_jwk(x5c=other.public_jwk["x5c"])
    result = run("check", "--config", str(config(tmp_path, broken)))
    assert result.returncode == 2
    assert (f"error: clients.{CLIENT}.jwks.keys[0]: 'x5c' certifies another key than the "
            "JWK's own") in result.stdout


def test_keys_lists_each_certificate_in_text_and_json(run: Run, tmp_path: Path) -> None:
    start, end = in_days(-20), in_days(5.5)
    soon = with_certificate(make_signer("ES256", kid="soon"), not_before=start, not_after=end,
                            serial=0x1F)
    plain = make_signer("RS256", kid="plain")
    path = config(tmp_path, soon, plain)
    text = run("keys", "--config", str(path))
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  kid=soon ")))
    assert lines[at + 1] == ("    certificate: subject=O=Acme Corp,CN=client-a "
                             "issuer=O=Acme Corp,CN=client-a serial=1F")
    assert lines[at + 2] == (f"      notBefore={_iso(start)} notAfter={_iso(end)} days_left=5")
    assert lines[at + 3].startswith(f"      warning: certificate expires {_iso(end)}, in 5 day")
    assert lines[at + 4].startswith("  kid=plain ")  # a key without x5c shows no certificate

    listed = run("keys", "--config", str(path), "--json")
    assert listed.returncode == 0
    (entry,) = json.loads(listed.stdout)
    by_kid = {key["kid"]: key for key in entry["keys"]}
    assert by_kid["plain"]["certificate"] is None
    assert by_kid["soon"]["certificate"] == {
        "subject": "O=Acme Corp,CN=client-a", "issuer": "O=Acme Corp,CN=client-a",
        "serial": "1F", "not_before": _iso(start), "not_after": _iso(end), "days_left": 5,
        "warning": f"expires {_iso(end)}, in 5 day(s)"}


def test_keys_does_not_warn_beyond_the_threshold(run: Run, tmp_path: Path) -> None:
    later = with_certificate(make_signer("ES256"), not_after=in_days(100.5))
    listed = run("keys", "--config", str(config(tmp_path, later)), "--json")
    (entry,) = json.loads(listed.stdout)
    certificate = entry["keys"][0]["certificate"]
    assert (certificate["days_left"], certificate["warning"]) == (100, None)


async def test_keys_lists_the_ca_anchors_of_a_certificate_client(tmp_path: Path) -> None:
    ca = make_signer("ES256", slot=2)
    soon, later = in_days(3.5), in_days(400.5)
    bundle = b"".join(_pem(certificate_b64(ca, not_before=in_days(-1), not_after=not_after,
                                           serial=serial))
                      for serial, not_after in ((7, soon), (8, later)))
    (tmp_path / "partners-ca.pem").write_bytes(bundle)
    extra = ('  partner-acme:\n    certificate: {ca_file: partners-ca.pem, '
             'subject: "CN=partner-acme"}\n    backend_auth: {method: none}\n')
    text = gateway_yaml("http://127.0.0.1:9", {"keys": [make_signer("ES256").public_jwk]},
                        extra=extra)
    (tmp_path / "gateway.yaml").write_text(text)
    settings = load_settings(tmp_path / "gateway.yaml", env={"CI_SECRET": BACKEND_SECRET})
    entries = {entry.client: entry for entry in await collect_inventory(settings)}
    partner = entries["partner-acme"]
    assert (partner.source, partner.keys, partner.error) == ("certificate", [], None)
    assert [(a.serial, a.not_after, a.days_left) for a in partner.anchors] == [
        ("07", _iso(soon), 3), ("08", _iso(later), 400)]
    assert partner.anchors[0].warning is not None and partner.anchors[1].warning is None
    rendered = render_inventory([partner], as_json=False).splitlines()
    assert rendered[1] == ("  ca anchor: subject=O=Acme Corp,CN=client-a "
                           "issuer=O=Acme Corp,CN=client-a serial=07")
    assert rendered[3].startswith("    warning: certificate expires ")
    as_json: list[dict[str, Any]] = json.loads(render_inventory([partner], as_json=True))
    assert as_json[0]["anchors"][1]["serial"] == "08"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _pem(b64: str) -> bytes:
    return x509.load_der_x509_certificate(base64.b64decode(b64)).public_bytes(Encoding.PEM)


def test_an_expiring_certificate_is_accepted_by_its_warning_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_SECRET", BACKEND_SECRET)
    soon = with_certificate(make_signer("ES256", kid="soon"), not_after=in_days(5.5))
    path = config(tmp_path, soon)
    assert check(path, strict=True) == 1
    assert "[certificate-expiring]" in capsys.readouterr().out
    assert check(path, strict=True, accept=["certificate-expiring"]) == 0
