"""GatewayState: the one shared mutable runtime object, passed explicitly.

Everything that more than one connection needs at run time lives here (uvicorn's
ServerState): live client connections, backends and their pools, counters, the cached
Date header, and the observer hooks monitoring services register. Nothing here is
module-level; a process may run several gateways (the tests do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from .admin.routes import Router
from .config import Config
from .core.access import AccessPolicy
from .logs import AccessLine

if TYPE_CHECKING:
    from .core.records import ExchangeRecord
    from .httpclient.backend import Backend
    from .httpclient.pool import UpstreamPool


class Counters:
    """Plain integer counters of the data plane (exported by /metrics)."""

    __slots__ = (
        "client_aborts",
        "client_stalls",
        "connections_rejected",
        "connections_total",
        "failovers",
        "requests_total",
        "stream_truncations",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_rejected = 0
        self.requests_total = 0
        self.client_aborts = 0
        self.client_stalls = 0
        self.stream_truncations = 0
        self.failovers = 0
        self.upstream_errors: dict[str, int] = {}


class GatewayState:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.connections: set[Any] = set()
        self.backends: dict[str, Backend] = {}
        self.pools: dict[str, UpstreamPool] = {}
        self.default_backend: str | None = config.default_backend
        self.counters = Counters()
        self.date_header = b""
        self.draining = False
        self.next_request_id = 0
        self.next_connection_id = 0
        # Called once per finished exchange, on the loop; must not block.
        self.observers: list[Callable[[ExchangeRecord], None]] = []
        # Called as hook(backend_name, http_status, error_kind) the moment each upstream
        # attempt's outcome is known (head received: status, kind None; failure: status
        # 0 and kind connect|timeout|reset|tls|protocol), and once more with status 0 and
        # kind "reset" if a response is cut after its head; the 4th argument is a 429's
        # raw Retry-After (else None). Feeds the circuit breaker and the rate-limit hold.
        self.attempt_hooks: list[Callable[[str, int, str | None, bytes | None], None]] = []
        # Circuit-breaker query for routing; None until the health service installs one.
        self.is_open: Callable[[str], bool] | None = None
        # The monitoring API, shared by the admin listener and the data port.
        self.router = Router()
        self.access = AccessPolicy(config.admin.allow_networks, (config.host, config.admin.host))
        # Services, set by each service's start() when enabled; None when off, so the
        # hot path tests one attribute and pays nothing else for a disabled feature.
        self.usage: Any = None
        self.activity: Any = None
        self.health: Any = None
        self.metrics: Any = None
        self.capture: Any = None
        self.storage_status: Callable[[], dict[str, Any]] | None = None
        # Completion accounting (token estimates, tool calls, TTFT) for the usage record;
        # switched on by the usage service, so the relay pays nothing when it is off.
        self.accounting = False
        # The access logger when `access_log` is on (one line per request), else None.
        self.access_line = AccessLine()
        self.access_log: logging.Logger | None = (
            logging.getLogger("fastproxy.access") if config.access_log else None
        )
        self.tick()

    def tick(self) -> None:
        """Refresh the cached Date header (once a second, not per response)."""
        self.date_header = b"date: " + formatdate(time.time(), usegmt=True).encode() + b"\r\n"

    def new_request_id(self) -> int:
        self.next_request_id += 1
        return self.next_request_id

    def new_connection_id(self) -> int:
        self.next_connection_id += 1
        return self.next_connection_id
