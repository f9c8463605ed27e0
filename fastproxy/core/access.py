"""Who may read the monitoring API: loopback peers, configured networks, and (on the
admin listener, when the operator opts in) remote peers holding an admin key.

Peers are compared as IP addresses, never as strings (the reference project compared
the literal "127.0.0.1" and so refused ::1 and accepted nothing else correctly):
127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x are loopback. The Host header is checked
too: a browser tricked by DNS rebinding sends a foreign Host to a loopback socket.

Remote reads with a key (``admin.api_keys``, off while the list is empty):

* **Only admin keys.** The client keys (``auth.api_keys``) never open the admin plane:
  they are handed to many apps, and the admin plane names every session and can flip
  breakers. The loader refuses an admin key that is also a client key.
* **Only on the admin listener.** ``check`` (the data port's rule) knows nothing of keys:
  the data port asks for a *client* key first, and one port with two kinds of key
  is where they get mixed up.
* **Reads by default.** A keyed remote peer may GET and HEAD; anything else (reactivate)
  needs ``admin.remote_writes: true`` as well: a read-only key that leaks tells, a write
  key that leaks acts.
* **No Host check for a keyed request.** DNS rebinding borrows a victim browser's
  ambient access to a loopback or internal address; that browser cannot attach a Bearer
  key it does not know, so a request that carries the key is not a rebinding request.
  Behind a TLS terminator the Host is the terminator's public name, which the guard
  would refuse. Loopback and ``allow_networks`` peers, admitted by address, keep the
  guard whatever they send.
* **Loopback is still trusted without a key**, as before. A TLS terminator on the same
  machine that connects over 127.0.0.1 therefore turns every request it forwards into a
  loopback one (docs/admin-api.md says how to avoid that).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from .auth import verify

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
LOCAL_ONLY = "Diagnostic endpoint is restricted to local access only"
READS = frozenset({"GET", "HEAD"})
# RFC 6750: the scheme a client should use; no realm details that would help a prober.
CHALLENGE = [("www-authenticate", 'Bearer realm="fastproxy-admin"')]


class Admission:
    """The admin listener's answer for one request head: refused (status, detail and
    headers) or admitted, and whether it was admitted by an admin key."""

    __slots__ = ("admin_key", "denied", "detail", "headers", "status")

    def __init__(
        self,
        status: int = 0,
        detail: str = "",
        *,
        admin_key: bool = False,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.denied = status != 0
        self.status = status
        self.detail = detail
        self.admin_key = admin_key
        self.headers = list(headers)


ADMITTED = Admission()


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
    __slots__ = ("_admin_keys", "_hosts", "_networks", "_remote_writes")

    def __init__(
        self,
        allow_networks: Iterable[str],
        bound_hosts: Iterable[str],
        admin_keys: Iterable[str] = (),
        remote_writes: bool = False,
    ) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self._admin_keys = tuple(k.encode() for k in admin_keys)
        self._remote_writes = remote_writes
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
        """The address rule (the data port's, and the admin listener's without keys):
        None when allowed, else (status, detail)."""
        if not self.peer_allowed(peer_ip):
            return 403, LOCAL_ONLY
        if not self.host_allowed(host_header):
            return 421, "Host header does not name this server (DNS-rebinding guard)"
        return None

    @property
    def remote_keys(self) -> bool:
        """Whether remote reads with an admin key are switched on."""
        return bool(self._admin_keys)

    def admit(
        self, peer_ip: str | None, host_header: str | None, method: str, key: bytes | None
    ) -> Admission:
        """The admin listener's rule: the address rule, then (for a peer it refuses,
        when admin keys are configured) the admin key. ``key`` is what the request
        presented (``Authorization: Bearer`` or ``x-api-key``), None when nothing."""
        addr = _ip(peer_ip)
        if self._admin_keys and addr is not None and not addr.is_loopback and key is not None:
            # A remote peer that presents a key is judged by the key, even inside
            # allow_networks: a wrong key is an error worth an answer that says so.
            if verify(self._admin_keys, key) is None:
                return Admission(401, "invalid admin key", headers=CHALLENGE)
            if method not in READS and not self._remote_writes:
                return Admission(
                    403,
                    "remote requests with an admin key may only read (admin.remote_writes is off)",
                )
            return Admission(admin_key=True)
        denied = self.check(peer_ip, host_header)
        if denied is None:
            return ADMITTED
        if denied[0] == 403 and self._admin_keys and addr is not None:
            return Admission(
                401, "admin key required (Authorization: Bearer KEY)", headers=CHALLENGE
            )
        return Admission(*denied)
