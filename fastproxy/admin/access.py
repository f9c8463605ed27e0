"""Who may read the monitoring API: loopback peers, plus configured networks.

Peers are compared as IP addresses, never as strings (the reference project compared
the literal "127.0.0.1" and so refused ::1 and accepted nothing else correctly):
127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x are loopback. The Host header is checked
too: a browser tricked by DNS rebinding sends a foreign Host to a loopback socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_loopback(peer_ip: str | None) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x, compared as addresses."""
    addr = _ip(peer_ip)
    return addr is not None and addr.is_loopback


class AccessPolicy:
    __slots__ = ("_hosts", "_networks")

    def __init__(self, allow_networks: Iterable[str], bound_hosts: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        hosts = set(_LOCAL_NAMES)
        for h in bound_hosts:
            if h and h not in ("0.0.0.0", "::"):
                hosts.add(h.strip("[]").lower())
        self._hosts = hosts

    def peer_allowed(self, peer_ip: str | None) -> bool:
        addr = _ip(peer_ip)
        if addr is None:
            return False
        if addr.is_loopback:
            return True
        return any(addr in net for net in self._networks)

    def host_allowed(self, host_header: str | None) -> bool:
        """Loopback names and addresses, the bound host names, or any IP literal."""
        if not host_header:
            return False
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        if host in self._hosts:
            return True
        # An IP literal cannot be a rebinding attack: rebinding needs a DNS name.
        return _ip(host) is not None

    def check(self, peer_ip: str | None, host_header: str | None) -> tuple[int, str] | None:
        """None when allowed, else (status, detail)."""
        if not self.peer_allowed(peer_ip):
            return 403, "Diagnostic endpoint is restricted to local access only"
        if not self.host_allowed(host_header):
            return 421, "Host header does not name this server (DNS-rebinding guard)"
        return None
