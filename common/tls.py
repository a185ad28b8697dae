"""TLS contexts for the client port (DESIGN.md §6: TLS is a configuration switch).

The connector serves TLS when ``IM_TLS_CERT`` and ``IM_TLS_KEY`` name a PEM certificate chain
and its key; the client library then connects with a context that verifies the certificate and
the host name by default, against the system's trust store or a CA file given to it. Both sides
refuse anything older than TLS 1.2.
"""

from __future__ import annotations

import ssl

from common.errors import ConfigError


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; :class:`ConfigError` if they do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate {cert!r} / key {key!r} do not load: {exc}") from exc
    return ctx


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the certificate must chain to a trusted root (the system's,
    or ``cafile``) and name the host connected to."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
