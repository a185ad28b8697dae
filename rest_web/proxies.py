"""Who the client is: the TCP peer, unless that peer is a proxy the operator said to trust.

Every throttle keys on the client address, so whoever can choose that address can escape the
throttle. ``X-Forwarded-For`` is a header any client can write; it says something only when the
hop that appended it is ours. So it is read only when the TCP peer is in ``IM_TRUSTED_PROXIES``
(comma list of addresses or CIDR networks; default none, where the header is ignored), and then
from the right: each entry a trusted proxy appended is skipped, and the first entry that is not
a trusted proxy is the client. Entries left of it were written by the client and are ignored.
``Forwarded`` (RFC 7239) and ``X-Real-IP`` are never read. uvicorn's own proxy-header handling is
off wherever REST is served (rest_web/app.py, cli/stack.py): it trusts loopback by default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

from common.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# a header this long is not from a sane chain of proxies: read only its last entries
MAX_HOPS = 32


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    """The ``IM_TRUSTED_PROXIES`` rule; empty trusts nobody."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, value: str) -> TrustedProxies:
        networks: list[Network] = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ConfigError(
                    f"IM_TRUSTED_PROXIES: {part!r} is not an address or a network"
                ) from None
        return cls(networks)

    def trusts(self, address: str | None) -> bool:
        if not self.networks or address is None:
            return False
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.networks)

    def client_of(self, scope: Scope) -> str | None:
        """The client's address for throttling: the peer, or what trusted proxies say."""
        client = scope.get("client")
        peer = str(client[0]) if client else None
        if not self.trusts(peer):
            return peer
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"x-forwarded-for"
        ]
        hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()][-MAX_HOPS:]
        nearest = peer
        for hop in reversed(hops):
            ip = _ip(hop)
            if ip is None:
                return nearest  # garbage written by whoever the nearest trusted hop talked to
            if not self.trusts(str(ip)):
                return str(ip)
            nearest = str(ip)
        return nearest
