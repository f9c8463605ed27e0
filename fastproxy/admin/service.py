"""The admin listener as a gateway service: binds ``admin.host:admin.port`` after the data
listener, serves ``state.router`` over h11, and registers the diagnostics routes.

``admin.enabled: false`` removes the listener only: the diagnostics routes are still
registered, because the data port answers the monitoring paths too (CONTRACT.md §1, the
seed documents curl ``localhost:8000/v1/diagnostics``), under the same access rules.

Binding ``::`` makes one dual-stack socket (IPV6_V6ONLY off), so IPv4 clients reach it
as ``::ffff:a.b.c.d``; the access policy maps those back to IPv4 before comparing
(asyncio's own ``create_server`` would set IPV6_V6ONLY and refuse IPv4 clients).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..core.access import AccessPolicy
from .diagnostics_views import register_diagnostics
from .protocol import AdminProtocol

log = logging.getLogger("fastproxy.admin")

BACKLOG = 128


class AdminService:
    def __init__(self, gateway: Any, state: Any) -> None:
        self._gateway = gateway
        self._state = state
        self._server: asyncio.base_events.Server | None = None
        self.connections: set[AdminProtocol] = set()

    async def start(self) -> None:
        pass  # the listener opens in after_listen(), once the data port is bound

    async def after_listen(self) -> None:
        state = self._state
        cfg = state.config.admin
        host = cfg.host.strip("[]")
        # The data port's policy plus the admin keys: only this listener accepts them.
        policy = AccessPolicy(
            cfg.allow_networks,
            (state.config.host, cfg.host),
            admin_keys=cfg.api_keys,
            remote_writes=cfg.remote_writes,
        )

        def factory() -> AdminProtocol:
            return AdminProtocol(state, self.connections, policy)

        if host == "::" and socket.has_ipv6:
            sock = _dual_stack_socket(cfg.port)
            self._server = await state.loop.create_server(factory, sock=sock, backlog=BACKLOG)
        else:
            self._server = await state.loop.create_server(
                factory, host, cfg.port, backlog=BACKLOG, reuse_address=True
            )
            ports = {s.getsockname()[1] for s in self._server.sockets}
            if cfg.port == 0 and len(ports) > 1:
                # A name such as "localhost" binds 127.0.0.1 and ::1, and port 0 gave each
                # its own port; rebind all of them on the first one so there is one port.
                chosen = self._server.sockets[0].getsockname()[1]
                self._server.close()
                await self._server.wait_closed()
                self._server = await state.loop.create_server(
                    factory, host, chosen, backlog=BACKLOG, reuse_address=True
                )
        port = self._server.sockets[0].getsockname()[1]
        self._gateway.admin_port = port
        shown = f"[{host}]" if ":" in host else host
        log.info("fastproxy admin listening on http://%s:%d (diagnostics, /metrics)", shown, port)
        if cfg.api_keys:
            # How many keys, never which: a key must not reach a log.
            log.info(
                "fastproxy admin: remote %s allowed with an admin key (%d configured; "
                "plain HTTP: put a TLS terminator in front)",
                "reads and writes" if cfg.remote_writes else "reads",
                len(cfg.api_keys),
            )

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        # Admin requests are short reads; long ones (event streams) end with the gateway.
        for proto in list(self.connections):
            proto.shutdown()
        await server.wait_closed()


def _dual_stack_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def admin_service(gateway: Any, state: Any) -> AdminService | None:
    # Registered even without a listener: the data port serves these paths as well.
    register_diagnostics(state)
    if not state.config.admin.enabled:
        return None
    return AdminService(gateway, state)
