"""TLS for the public listener: HTTPS with the configured certificate, or loopback HTTP.

Shoppers' tokens and addresses cross the network, so a gateway listening anywhere but on
loopback must have a certificate ([gateway] tls_cert/tls_key); plain HTTP is only for a
development gateway on 127.0.0.1/::1/localhost.
"""

from __future__ import annotations

import ipaddress
import ssl

from cluster.config import ConfigError, GatewaySettings, HostPort


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_context(settings: GatewaySettings, listen: HostPort) -> ssl.SSLContext | None:
    """The SSL context to serve with, or None for loopback HTTP; ConfigError otherwise."""
    if settings.tls_cert is None or settings.tls_key is None:
        if not is_loopback(listen.host):
            raise ConfigError(
                f"gateway listen={listen}: a gateway reachable beyond loopback must serve "
                "HTTPS; set [gateway] tls_cert and tls_key (or listen on 127.0.0.1)"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"gateway.tls_cert={str(settings.tls_cert)!r}, gateway.tls_key="
            f"{str(settings.tls_key)!r}: cannot load ({exc})"
        ) from None
    return context
