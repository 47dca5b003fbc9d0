"""Building a CA-anchored client's credential from its settings, keeping its cache on reload."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.errors import ConfigError
from gateway.config.settings import Settings
from gateway.config.yaml_dialect import join_path
from gateway.core.assertion import AssertionPolicy
from gateway.core.certificate_chain import TrustFileProblem, load_trust
from gateway.core.certificate_credential import CertificateCredential, ChainCache
from gateway.core.certificate_identity import LeafIdentity, parse_identity
from gateway.core.credentials import AssertionCredential


def build_certificate_credential(
    settings: Settings, client_id: str, policies: Mapping[str, AssertionPolicy],
    previous: tuple[AssertionCredential, ...] = (),
) -> CertificateCredential:
    """The client's certificate credential; ``previous`` are its credentials before a reload.

    The cache of validated chains (and the parsed anchors) carry over when the ca_file and
    crl_file bytes and the subject or san are unchanged; any change starts afresh.
    Raises ConfigError at ``clients.<id>.certificate.<setting>`` for anchors, a CRL or a
    subject that cannot serve.
    """
    certificate = settings.clients[client_id].certificate
    assert certificate is not None, "only for a client with a certificate"
    where = join_path(join_path("clients", client_id), "certificate")
    problems: list[tuple[str, str]] = []
    identity: LeafIdentity | None = None
    try:
        if certificate.san is not None:
            identity = parse_identity(None, certificate.san.kind, certificate.san.value)
        else:
            identity = parse_identity(certificate.subject)
    except ValueError as exc:
        problems.append((f"{where}.{'san' if certificate.san else 'subject'}", str(exc)))
    crl = certificate.crl_file
    try:
        trust = load_trust(certificate.ca_file.data, None if crl is None else crl.data)
    except TrustFileProblem as exc:
        problems.append((f"{where}.{exc.setting}", exc.message))
    if problems or identity is None:
        raise ConfigError(problems)
    chains = ChainCache()
    for old in previous:
        if (isinstance(old, CertificateCredential) and old.trust.identity == trust.identity
                and old.identity == identity):
            trust, chains = old.trust, old.chains
    return CertificateCredential(client_id, trust, identity, policies,
                                 allow_reuse=settings.clients[client_id].allow_assertion_reuse,
                                 chains=chains)
