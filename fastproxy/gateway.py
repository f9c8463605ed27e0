"""Gateway: builds the runtime from a Config, opens the listeners, stops gracefully.

Start-up order: backends (and the embedded demo backend when none is configured) →
model discovery → monitoring services → the data plane with the services plugged into
its seams → the monitoring route table → data listener → admin listener → `started` is
set and systemd hears READY. Stop: stop accepting, let in-flight exchanges finish up
to `timeouts.drain_seconds`, end the rest with a dialect error event, close pools,
flush services, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from typing import Protocol

import orjson
import uvloop

from .admin.service import AdminService
from .admin.table import MonitoringApi
from .admin.views import Views
from .config import BackendConfig, Config, LoadedConfig
from .config.lint import log_findings
from .core.access import AccessPolicy
from .core.clock import HttpDate
from .core.records import Counters
from .core.seams import ExchangeSink, Reporter
from .dataplane.plane import DataPlane
from .dataplane.protocol import ClientProtocol
from .httpclient.backend import Backend
from .httpclient.fetch import fetch
from .httpclient.pool import UpstreamPool
from .logs import configure_logging
from .memory import IdleTrimmer
from .mockllm import MockLLMServer
from .monitor.activity import ActivityService
from .monitor.health import HealthService
from .monitor.metrics import MetricsCollector
from .monitor.rate_limits import RateLimitWatch
from .monitor.usage_service import UsageService
from .systemd import Notifier

log = logging.getLogger("fastproxy")

DISCOVERY_TIMEOUT_S = 5.0
CUT_EXCHANGES_WAIT_S = 5.0


class Gateway:
    """Builds the runtime from a Config and is the one place that wires it together:
    it makes the backends and pools, the monitoring services, the data plane and the
    admin plane, and plugs each service into the seams (core/seams.py) that use it.
    No service registers itself anywhere, so what runs does not depend on the order
    services start in."""

    def __init__(self, config: Config, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self._env = dict(os.environ) if env is None else env
        self.plane: DataPlane | None = None
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.port: int | None = None
        self.admin_port: int | None = None
        self.demo: MockLLMServer | None = None
        # The services, for tests and views; None when configured off.
        self.health: HealthService | None = None
        self.usage: UsageService | None = None
        self.activity: ActivityService | None = None
        self.metrics: MetricsCollector | None = None
        self.rate_limits: RateLimitWatch | None = None
        self.admin: AdminService | None = None
        self.monitoring: MonitoringApi | None = None
        self._services: list[Service] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._notifier = Notifier(self._env)
        self._trimmer = IdleTrimmer()
        self._date = HttpDate()

    # -- start ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        backends, default_backend = await self._build_backends()
        limits = cfg.limits
        pools = {
            b.name: UpstreamPool(
                b,
                loop,
                max_head_bytes=limits.max_head_bytes,
                max_headers=limits.max_headers,
                max_body_bytes=limits.max_response_body_bytes,
                max_connections=limits.max_connections,
            )
            for b in backends.values()
        }
        await self._discover_models(backends, loop)

        # Monitoring services: made, then started; each knows only its own inputs.
        health = self.health = HealthService(cfg, backends, loop)
        rate_limits = self.rate_limits = RateLimitWatch()
        metrics = self.metrics = MetricsCollector()
        usage = self.usage = UsageService(cfg) if cfg.usage_tracking.enabled else None
        activity = self.activity = (
            ActivityService(cfg, backends, loop) if cfg.enable_activity_tracking else None
        )
        services: list[Service] = [s for s in (usage, activity, health) if s is not None]
        for service in services:
            await service.start()
            self._services.append(service)

        # The data plane, with the services plugged into its seams.
        sinks: list[ExchangeSink] = [metrics]
        if usage is not None:
            sinks.append(usage)
        plane = self.plane = DataPlane(
            cfg,
            loop,
            backends=backends,
            pools=pools,
            default_backend=default_backend,
            breakers=health,
            reporter=Reporter((health, rate_limits), sinks),
            activity=activity.tracker if activity is not None else None,
            accounting=usage is not None,
            counters=Counters(),
            date=self._date,
        )
        # The admin plane's one route table, read through the views, served on the data
        # port (through the MonitoringPort seam) and on the admin listener.
        views = Views(
            config=cfg,
            backends=backends,
            plane=plane,
            health=health,
            rate_limits=rate_limits,
            metrics=metrics,
            activity=activity.tracker if activity is not None else None,
            usage=usage,
        )
        data_port_policy = AccessPolicy(cfg.admin.allow_networks, (cfg.host, cfg.admin.host))
        monitoring = self.monitoring = MonitoringApi(views, data_port_policy)
        plane.monitoring = monitoring

        server = await loop.create_server(
            lambda: ClientProtocol(plane), cfg.host, cfg.port, backlog=2048, reuse_address=True
        )
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        if cfg.admin.enabled:
            self.admin = AdminService(cfg, loop, monitoring.router, self._date, plane)
            self.admin_port = await self.admin.listen()
        self._tick()
        log.info(
            "fastproxy data plane listening on http://%s:%d (backends: %s)",
            cfg.host,
            self.port,
            ", ".join(backends) or "none",
        )
        self.started.set()
        self._notifier.ready(f"listening on {cfg.host}:{self.port}")

    async def _build_backends(self) -> tuple[dict[str, Backend], str | None]:
        if not self.config.backends:
            self.demo = MockLLMServer(host="127.0.0.1", port=0)
            await self.demo.start()
            demo = Backend(
                "demo",
                BackendConfig(type="openai", api_url=self.demo.url),
                env=self._env,
                dialects=frozenset({"openai", "anthropic"}),
            )
            log.info(
                "no backends configured: serving the embedded demo backend at %s", self.demo.url
            )
            return {"demo": demo}, "demo"
        backends: dict[str, Backend] = {}
        for name, bcfg in self.config.backends.items():
            backend = Backend(name, bcfg, env=self._env)
            if not backend.has_key and bcfg.api_key_env:
                log.warning(
                    "backend %s: environment variable %s is not set; requests will "
                    "reach it without credentials",
                    name,
                    bcfg.api_key_env,
                )
            backends[name] = backend
        return backends, self.config.default_backend

    async def _discover_models(
        self, backends: dict[str, Backend], loop: asyncio.AbstractEventLoop
    ) -> None:
        """GET {api_url}/models for every backend that lists none, concurrently."""
        todo = [b for b in backends.values() if b.models is None]
        if not todo:
            return
        results = await asyncio.gather(
            *(self._fetch_models(b, loop) for b in todo), return_exceptions=True
        )
        for backend, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "backend %s: model discovery failed (%s); it serves explicit "
                    "backend:model requests and the default route",
                    backend.name,
                    result,
                )
            else:
                backend.models = frozenset(result)
                log.info("backend %s: discovered %d models", backend.name, len(result))

    async def _fetch_models(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> list[str]:
        # Anthropic's API wants anthropic-version on every call, listing models included.
        resp = await fetch(
            backend,
            b"GET",
            backend.upstream_path(b"/v1/models"),
            timeout_s=DISCOVERY_TIMEOUT_S,
            loop=loop,
        )
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        data = orjson.loads(resp.body).get("data") or []
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def _tick(self) -> None:
        plane = self.plane
        if plane is None:
            return
        self._date.tick()
        for pool in plane.pools.values():
            pool.sweep()
        counters = plane.counters
        self._trimmer.tick(counters.requests_total + counters.connections_total, lambda: plane.busy)
        if self._notifier.watchdog_interval:
            self._notifier.watchdog()
        # Wake at the next whole second so the Date header is right to the second.
        self._ticker = plane.loop.call_later(1.0 - (time.time() % 1.0), self._tick)

    # -- stop ---------------------------------------------------------------------------
    async def stop(self) -> None:
        plane = self.plane
        if plane is None or self.stopped.is_set():
            return
        self._notifier.stopping()
        plane.draining = True
        for server in self._servers:
            server.close()
        for conn in list(plane.connections):
            conn.shutdown()
        await _until_idle(plane, self.config.timeouts.drain_seconds)
        # Past the drain deadline: cut what is left (idle connections just close).
        for conn in list(plane.connections):
            conn.abort("the gateway is shutting down")
        # Each cut request still hands its record to the usage service as it ends: wait
        # for them (they only unwind) before the store closes.
        await _until_idle(plane, CUT_EXCHANGES_WAIT_S)
        for pool in plane.pools.values():
            pool.close()
        if self.admin is not None:
            await self.admin.stop()
        for service in reversed(self._services):
            await service.stop()
        if self.demo is not None:
            await self.demo.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for server in self._servers:
            await server.wait_closed()
        self.stopped.set()
        log.info("fastproxy stopped")


async def _until_idle(plane: DataPlane, seconds: float) -> None:
    """Wait until no request is in progress, or ``seconds`` passed (polled: a stop
    sequence runs once, and the requests it waits for end in their own time)."""
    deadline = time.monotonic() + seconds
    while plane.busy:
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(config: Config) -> int:
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0

    def _on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await gateway.stop()
        return 1
    # Everything built so far (modules, config, tokenizer tables, routes) lives until
    # exit: moved out of the collector's reach, a full collection no longer walks it.
    gc.freeze()
    await stop_requested.wait()
    log.info("stopping: draining in-flight requests (up to %.0fs)", config.timeouts.drain_seconds)
    await gateway.stop()
    return 0


def run_gateway(loaded: LoadedConfig) -> int:
    configure_logging(loaded.config.log_level)
    if loaded.file:
        log.info("config file: %s", loaded.file)
    log_findings(loaded.config, log)
    if sys.version_info >= (3, 12):
        return asyncio.run(serve(loaded.config), loop_factory=uvloop.new_event_loop)
    return uvloop.run(serve(loaded.config))
