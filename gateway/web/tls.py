"""The public listener's TLS context: built from the configured files, reloaded in place."""

from __future__ import annotations

import ssl

from gateway.config.errors import ConfigError
from gateway.config.settings import TlsSettings


def new_server_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) holding the configured certificate.

    Raises ConfigError when the certificate or key cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificate(context, tls)
    return context


def load_certificate(context: ssl.SSLContext, tls: TlsSettings) -> None:
    """Put the files' certificate in ``context``: handshakes from now on present it.

    Raises ConfigError when the files cannot be read or do not match; the context then
    keeps the certificate it had.
    """
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        # Never the file contents: the key is a secret.
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        problem = ("listen.tls", f"cannot load the certificate and key: {reason}")
        raise ConfigError([problem]) from exc
