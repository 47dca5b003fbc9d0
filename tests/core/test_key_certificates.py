"""A registered key's own certificate: read once, bound to the key, and its expiry in words."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway.core.key_certificates import (
    days_left,
    describe_certificate,
    expiry_warning,
    read_key_certificate,
)
from tests.support.key_certificates import DAY, certificate_b64
from tests.support.tokens import NOW, make_signer

WITHIN = 14 * DAY


@pytest.mark.parametrize(
    ("not_after", "expected"),
    [
        pytest.param(NOW + 15 * DAY, None, id="beyond-the-threshold"),
        pytest.param(NOW + WITHIN, None, id="exactly-at-the-threshold"),
        pytest.param(NOW + WITHIN - 1, "expires 2025-06-29T15:06:39Z, in 13 day(s)",
                     id="just-within"),
        pytest.param(NOW + 3600, "expires 2025-06-15T16:06:40Z, in 0 day(s)", id="today"),
        pytest.param(NOW, "expired 2025-06-15T15:06:40Z", id="at-not-after"),
        pytest.param(NOW - 2 * DAY, "expired 2025-06-13T15:06:40Z", id="past"),
    ],
)
def test_expiry_warning(not_after: float, expected: str | None) -> None:
    assert expiry_warning(not_after, NOW, WITHIN) == expected


def test_a_zero_threshold_warns_of_expired_certificates_only() -> None:
    assert expiry_warning(NOW + 60, NOW, 0) is None
    assert expiry_warning(NOW - 60, NOW, 0) is not None


def test_days_left_round_down() -> None:
    assert [days_left(NOW + offset, NOW) for offset in (DAY * 2.5, DAY, 1, -1, -DAY - 1)] == [
        2, 1, 0, -1, -2]


def test_the_leaf_is_described_without_key_material() -> None:
    signer = make_signer("ES256")
    leaf = certificate_b64(signer, not_before=NOW - DAY, not_after=NOW + DAY, serial=0x5)
    key = signer.private_key.raw_value.public_key()
    certificate = read_key_certificate([leaf], key)
    assert not isinstance(certificate, str)
    assert (certificate.serial, certificate.not_before, certificate.not_after) == (
        "05", NOW - DAY, NOW + DAY)
    assert certificate.subject == certificate.issuer == "O=Acme Corp,CN=client-a"


def test_control_characters_in_a_name_are_escaped() -> None:
    key = make_signer("ES256").private_key.raw_value
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\x1b[31m\nname")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(1).not_valid_before(start)
                   .not_valid_after(start + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    described = describe_certificate(certificate)
    assert described.subject.isprintable() and "\\x1b" in described.subject
