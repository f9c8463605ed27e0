"""The admin listener: binds ``admin.host:admin.port`` after the data listener and serves
the monitoring route table (table.py) over h11.

``admin.enabled: false`` removes the listener only: the data port answers the monitoring
paths too (``curl localhost:8000/v1/diagnostics`` works), under the same
access rules, so the route table exists either way.

Binding ``::`` makes one dual-stack socket (IPV6_V6ONLY off), so IPv4 clients reach it
as ``::ffff:a.b.c.d``; the access policy maps those back to IPv4 before comparing
(asyncio's own ``create_server`` would set IPV6_V6ONLY and refuse IPv4 clients).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..config import Config
from ..core.access import AccessPolicy
from ..core.clock import HttpDate
from ..core.seams import PlaneStats
from .protocol import AdminContext, AdminProtocol
from .routes import Router

log = logging.getLogger("fastproxy.admin")

BACKLOG = 128


class AdminService:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        date: HttpDate,
        plane: PlaneStats,
    ) -> None:
        self._config = config
        self._loop = loop
        self._router = router
        self._date = date
        self._plane = plane
        self._server: asyncio.base_events.Server | None = None
        self.connections: set[AdminProtocol] = set()
        self.port: int | None = None

    async def listen(self) -> int:
        """Bind and serve; returns the bound port."""
        config = self._config
        cfg = config.admin
        host = cfg.host.strip("[]")
        # The data port's policy plus the admin keys: only this listener accepts them.
        policy = AccessPolicy(
            cfg.allow_networks,
            (config.host, cfg.host),
            admin_keys=cfg.api_keys,
            remote_writes=cfg.remote_writes,
        )
        ctx = AdminContext(config, self._loop, self._router, policy, self._date, self._plane)

        def factory() -> AdminProtocol:
            return AdminProtocol(ctx, self.connections)

        if host == "::" and socket.has_ipv6:
            sock = _dual_stack_socket(cfg.port)
            self._server = await self._loop.create_server(factory, sock=sock, backlog=BACKLOG)
        else:
            self._server = await self._loop.create_server(
                factory, host, cfg.port, backlog=BACKLOG, reuse_address=True
            )
            ports = {s.getsockname()[1] for s in self._server.sockets}
            if cfg.port == 0 and len(ports) > 1:
                # A name such as "localhost" binds 127.0.0.1 and ::1, and port 0 gave each
                # its own port; rebind all of them on the first one so there is one port.
                chosen = self._server.sockets[0].getsockname()[1]
                self._server.close()
                await self._server.wait_closed()
                self._server = await self._loop.create_server(
                    factory, host, chosen, backlog=BACKLOG, reuse_address=True
                )
        port = self._server.sockets[0].getsockname()[1]
        self.port = port
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
        return port

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
