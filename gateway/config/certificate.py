"""CA-anchored certificate clients: the CA bundle, the CRL and what the leaf must name.

The files are read at load (and on every reload) and held as bytes; parsing them (PEM
anchors, CRLs, the RFC 4514 subject) is the core's, run where the runtime is built, so a
problem there is still reported at its setting's path before anything starts.
"""

from __future__ import annotations

from pydantic import StrictStr, model_validator

from gateway.config.base import Frozen
from gateway.config.files import LoadedFileSetting

SAN_KINDS = ("dns", "uri", "email")


class SanSettings(Frozen):
    """One subjectAltName the leaf must carry (exactly one kind)."""

    dns: StrictStr | None = None  # a dNSName, compared case-insensitively
    uri: StrictStr | None = None  # a uniformResourceIdentifier, compared byte for byte
    email: StrictStr | None = None  # an rfc822Name, its domain compared case-insensitively

    @model_validator(mode="after")
    def _one_kind(self) -> SanSettings:
        given = [kind for kind in SAN_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of {', '.join(SAN_KINDS)} (has {len(given)})")
        if getattr(self, given[0]) == "":
            raise ValueError(f"{given[0]} must not be empty")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SAN_KINDS if getattr(self, kind) is not None)

    @property
    def value(self) -> str:
        value: str = getattr(self, self.kind)
        return value


class CertificateSettings(Frozen):
    """A client identified by a certificate that a configured CA issued (x5c in the header)."""

    ca_file: LoadedFileSetting  # PEM bundle of trust anchors; relative to the config file
    subject: StrictStr | None = None  # RFC 4514, e.g. "CN=partner-acme,O=Acme Corp,C=DE"
    san: SanSettings | None = None
    crl_file: LoadedFileSetting | None = None  # PEM (one or more CRLs) or DER

    @model_validator(mode="after")
    def _one_identity(self) -> CertificateSettings:
        if (self.subject is None) == (self.san is None):
            raise ValueError("needs exactly one of subject, san")
        if self.subject == "":
            raise ValueError("subject must not be empty")
        return self
