"""Registered keys' certificates in sight of expiry, per client: for the gauge and ``check``."""

from __future__ import annotations

from gateway.adapters.assemble import Runtime, registered_keys
from gateway.config.lint import LintWarning
from gateway.config.yaml_dialect import join_path
from gateway.core.credentials import RegisteredKeys
from gateway.core.key_certificates import expiry_warning

Problems = list[tuple[str, str]]


def _registered(runtime: Runtime) -> list[tuple[str, RegisteredKeys]]:
    return [(client_id, registered) for client_id, client in runtime.clients.items()
            if (registered := registered_keys(client)) is not None]


def registered_certificate_expiry(runtime: Runtime) -> dict[str, float | None]:
    """Each client's soonest x5c ``notAfter`` among the registered keys held now.

    None for a client whose keys carry no certificate; a client whose keys are not held
    yet (a first fetch under way) is left out: its key source reports them when they come.
    """
    expiry: dict[str, float | None] = {}
    for client_id, credential in _registered(runtime):
        keys = credential.source.current()
        if keys is not None:
            expiry[client_id] = keys.certificate_not_after
    return expiry


def certificate_expiry_warnings(runtime: Runtime, now: float) -> Problems:
    """A warning per registered key whose certificate expires within the client's
    ``certificate_expiry_warning`` (or has expired), at the client's key set's path.

    Only keys held now are seen: a ``check`` does not fetch ``jwks_uri`` sets.
    """
    settings = runtime.settings
    warnings: Problems = []
    for client_id, credential in _registered(runtime):
        keys = credential.source.current()
        if keys is None or keys.certificate_not_after is None:
            continue
        within = settings.effective_policy(client_id).certificate_expiry_warning
        where = join_path(join_path("clients", client_id), credential.source.kind)
        for key in keys.keys:
            if key.not_after is None:
                continue
            warning = expiry_warning(key.not_after, now, within)
            if warning is not None:
                warnings.append(LintWarning(
                    "certificate-expiring", where,
                    f"the certificate (x5c) of key kid={key.kid or '-'} {warning}; have it "
                    "renewed and publish the key with its new certificate (an expired one "
                    "stops the key verifying under refuse_expired_certificates)"))
    return warnings
