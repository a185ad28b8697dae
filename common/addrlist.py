"""``host[:port],host[:port],...``: the address lists inside service URLs.

URL parsers (``urllib``, redis-py's) read one host and port; a cluster's URL names several
(``redis+sentinel://s1:26379,s2:26379/im``, ``mysql://root@db1:3306,db2:3306/im``). One parser
for them all, so they agree on the details: ports default per service, IPv6 addresses go in
brackets (``[fd00::1]:3306``), and a malformed entry is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

from common.errors import ConfigError

Address = tuple[str, int]


def parse_host_list(text: str, default_port: int, what: str) -> tuple[Address, ...]:
    """The addresses of ``text`` in order; ``what`` names the URL kind in errors."""
    parts = text.split(",")
    if not text or any(not p.strip() for p in parts):
        raise ConfigError(f"{what}: empty host in {text!r}")
    out = tuple(_host_port(p.strip(), default_port, what) for p in parts)
    if len(set(out)) != len(out):
        raise ConfigError(f"{what}: an address is named twice in {text!r}")
    return out


def _host_port(part: str, default_port: int, what: str) -> Address:
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"{what}: bad address {part!r}")
        port = tail[1:]
    else:
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, ""
        elif ":" in host:
            raise ConfigError(f"{what}: put an IPv6 address in brackets: {part!r}")
    if not host:
        raise ConfigError(f"{what}: empty host in {part!r}")
    if port and not port.isdigit():
        raise ConfigError(f"{what}: port {port!r} of {host} is not a number")
    number = int(port) if port else default_port
    if not 0 < number < 65536:
        raise ConfigError(f"{what}: port {number} of {host} out of range")
    return host, number


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
