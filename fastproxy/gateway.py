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
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, cast

import orjson
import uvloop

from .admin.service import AdminService
from .admin.table import MonitoringApi
from .admin.views import Views
from .config import BackendConfig, Config, ConfigError, LoadedConfig
from .config.lint import log_findings
from .core.access import AccessPolicy
from .core.budget import Blocked, BudgetBook, BudgetEvent, period_bounds
from .core.clock import HttpDate
from .core.outbox import Outbox
from .core.ratelimit import Ledger
from .core.records import Counters
from .core.replacement import LocalReplacer, ReplacementPolicy
from .core.seams import ExchangeSink, Reporter
from .dataplane import admission
from .dataplane.admission import Admission
from .dataplane.plane import DataPlane
from .dataplane.protocol import ClientProtocol
from .dataplane.tracecontext import TraceStarter
from .httpclient.backend import Backend
from .httpclient.fetch import fetch
from .httpclient.pool import UpstreamPool
from .logs import configure_logging
from .memory import IdleTrimmer, tune_allocator
from .mockllm import MockLLMServer
from .monitor.activity import ActivityService, ActivityTracker
from .monitor.capture import CaptureService
from .monitor.health import HealthService
from .monitor.metrics import MetricsCollector
from .monitor.notify import utc_iso
from .monitor.rate_limits import RateLimitWatch
from .monitor.tracing import TracingService
from .monitor.usage_service import UsageService
from .reload import ReloadPlan, plan_reload
from .storage import usage_spend
from .systemd import Notifier
from .workers.limiting import cost_function
from .workers.primary import WorkerHub

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
        self.capture: CaptureService | None = None
        self.metrics: MetricsCollector | None = None
        self.rate_limits: RateLimitWatch | None = None
        # OpenTelemetry export, when on (with workers, each worker exports its own).
        self.tracing: TracingService | None = None
        # Random model replacement's policy, None when off. With workers it lives here, in
        # the primary, and decides for every worker (docs/workers.md).
        self.replacement: ReplacementPolicy | None = None
        # Rate limits' one ledger, when limits are configured: the truth for every
        # scope (with workers, theirs too: docs/policy.md, "Rate limits").
        self.ledger: Ledger | None = None
        self.budgets: BudgetKeeper | None = None  # the one budget book, when configured
        self.admin: AdminService | None = None
        self.monitoring: MonitoringApi | None = None
        self._services: list[Service] = []
        self._sinks: list[ExchangeSink] = []
        self._views: Views | None = None
        self._retired_pools: list[UpstreamPool] = []
        self.hub: WorkerHub | None = None  # workers > 1: the data planes are workers
        self._reload_lock = asyncio.Lock()
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._notifier = Notifier(self._env)
        self._trimmer = IdleTrimmer()
        self._date = HttpDate()
        # The plane's and the pools' held writes, flushed together (core/outbox.py);
        # made with the loop, in start().
        self._outbox: Outbox | None = None

    # -- start ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._outbox = Outbox(loop)
        backends, default_backend = await self._build_backends()
        pools = {b.name: self._pool(b, loop) for b in backends.values()}
        await self._discover_models(backends, loop)

        # Monitoring services: made, then started; each knows only its own inputs.
        health = self.health = HealthService(cfg, backends, loop)
        rate_limits = self.rate_limits = RateLimitWatch()
        metrics = self.metrics = MetricsCollector()
        usage = self.usage = UsageService(cfg) if cfg.usage_tracking.enabled else None
        activity = self.activity = (
            ActivityService(cfg, backends, loop) if cfg.enable_activity_tracking else None
        )
        # With workers, each worker captures its own exchanges (workers/worker.py).
        capture = self.capture = (
            CaptureService(cfg, self._env)
            if cfg.wire_capture.enabled and cfg.workers == 1
            else None
        )
        tracing = self.tracing = (
            TracingService(cfg.tracing) if cfg.tracing.on and cfg.workers == 1 else None
        )
        # Capture and tracing first: stopped last, after the drain's last exchanges.
        services: list[Service] = [
            s for s in (capture, tracing, usage, activity, health) if s is not None
        ]
        for service in services:
            await service.start()
            self._services.append(service)

        self.replacement = replacement_policy(cfg, backends)
        # Seeded before any listener opens: a restart keeps refusing a spent budget.
        await self._set_budgets(cfg)
        if cfg.workers > 1:
            await self._start_workers(backends, default_backend)
            return
        # The data plane, with the services plugged into its seams.
        sinks = self._sinks = [metrics]
        if usage is not None:
            sinks.append(usage)
        if tracing is not None:
            sinks.append(tracing)
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
            capture=capture,
            replacement=LocalReplacer(self.replacement) if self.replacement is not None else None,
            counters=Counters(),
            date=self._date,
            outbox=self._outbox,
            admission=self._admission(cfg, None),
            tracing=trace_starter(cfg) if tracing is not None else None,
            env=self._env,
        )
        # The admin plane's one route table, read through the views, served on the data
        # port (through the MonitoringPort seam) and on the admin listener.
        views = self._views = Views(
            config=cfg,
            backends=backends,
            plane=plane,
            health=health,
            rate_limits=rate_limits,
            metrics=metrics,
            activity=activity.tracker if activity is not None else None,
            usage=usage,
            capture=capture.status if capture is not None else None,
            replacement=self.replacement,
            rate_usage=self.rate_usage,
            budget_spend=self.budget_spend,
            env=self._env,
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

    async def _start_workers(
        self, backends: dict[str, Backend], default_backend: str | None
    ) -> None:
        """Multi-process mode (fastproxy/workers): this process keeps the services and
        the admin listener; ``workers`` processes serve the data port."""
        cfg, loop = self.config, asyncio.get_running_loop()
        health, metrics, usage = self.health, self.metrics, self.usage
        assert health is not None and metrics is not None and self.rate_limits is not None
        forward = None
        if usage is not None:
            link = usage.store

            def forward(frames: memoryview, count: int) -> None:
                # The workers packed these frames as the usage service would have: they
                # go on to the recorder as they are, within the link's bounds.
                assert link is not None
                if link.pending() + len(frames) > link.limit:
                    link.link_dropped += count
                    return
                link.out += frames
                for _ in range(count):
                    link.packed()

        interval = self._notifier.watchdog_interval
        hub = self.hub = WorkerHub(
            cfg,
            backends,
            default_backend,
            health,
            (health, self.rate_limits),
            metrics,
            forward,
            # A worker silent for this long has a stuck loop and is replaced: the
            # service's own watchdog interval when systemd gives one, else 10 s.
            max(2.0, 2 * interval) if interval else 10.0,
            self.replacement,
            ledger=self._reload_ledger(cfg),
            on_spend=self._on_spend,
        )
        if self.budgets is not None:
            self.budgets.push = hub.push_blocked
            self.budgets.blocked()  # the seeded set, for every worker as it starts
        views = self._views = Views(
            config=cfg,
            backends=backends,
            plane=hub.plane,
            health=health,
            rate_limits=self.rate_limits,
            metrics=metrics,
            # Duck-typed as the tracker: the reads views make, merged from the workers.
            activity=cast(ActivityTracker | None, hub.activity),
            usage=usage,
            workers=hub.describe,
            rate_usage=self.rate_usage,
            budget_spend=self.budget_spend,
            env=self._env,
            # Each worker captures to its own files; the primary adds up their counters.
            capture=hub.capture_status if cfg.wire_capture.enabled else None,
            replacement=self.replacement,
        )
        data_port_policy = AccessPolicy(cfg.admin.allow_networks, (cfg.host, cfg.admin.host))
        self.monitoring = MonitoringApi(views, data_port_policy)
        self.port = await hub.start()
        if cfg.admin.enabled:
            self.admin = AdminService(cfg, loop, self.monitoring.router, self._date, hub.plane)
            self.admin_port = await self.admin.listen()
        self._tick_primary()
        log.info(
            "fastproxy data plane listening on http://%s:%d (backends: %s; %d workers)",
            cfg.host,
            self.port,
            ", ".join(backends) or "none",
            cfg.workers,
        )
        self.started.set()
        self._notifier.ready(f"listening on {cfg.host}:{self.port}; {hub.summary()}")

    def _tick_primary(self) -> None:
        hub = self.hub
        if hub is None or hub.stopping:
            return
        self._date.tick()
        if self.ledger is not None:
            self.ledger.sweep()
        if self.budgets is not None:
            self.budgets.tick()
        if self._notifier.watchdog_interval:
            self._notifier.watchdog()
        if self._notifier.enabled:
            self._notifier.notify(f"STATUS={hub.summary()}")
        self._ticker = hub.loop.call_later(1.0 - (time.time() % 1.0), self._tick_primary)

    def _pool(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> UpstreamPool:
        limits = self.config.limits
        return UpstreamPool(
            backend,
            loop,
            max_head_bytes=limits.max_head_bytes,
            max_headers=limits.max_headers,
            max_body_bytes=limits.max_response_body_bytes,
            max_connections=limits.max_connections,
            outbox=self._outbox,
        )

    async def _build_backends(self) -> tuple[dict[str, Backend], str | None]:
        if not self.config.backends:
            if self.demo is not None and self._views is not None:
                # A reload that still configures none: the demo backend carries on.
                return {"demo": self._views.backends["demo"]}, "demo"
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

    def _set_ledger(self, cfg: Config) -> bool:
        """The ledger for ``cfg``'s limits (None without any); True if it is new."""
        if not admission.limits_configured(cfg):
            self.ledger = None
            return False
        if self.ledger is None or self.ledger.window != cfg.rate_limits.window_seconds:
            self.ledger = admission.new_ledger(cfg)
            return True
        return False

    def _on_spend(self, doc: Mapping[str, float]) -> None:
        if self.budgets is not None:
            self.budgets.on_spend(doc)

    def _reload_ledger(self, cfg: Config) -> Ledger | None:
        self._set_ledger(cfg)
        return self.ledger

    def _admission(self, cfg: Config, running: Admission | None) -> Admission | None:
        """One process's admission for ``cfg`` (None when nothing is limited): the
        ledger and limiter carry over a reload, so counts survive for scopes that stay;
        a new window starts both afresh."""
        if self._set_ledger(cfg):
            running = None
        if not admission.configured(cfg):
            return None
        keeper = self.budgets
        book = keeper.book if keeper is not None else None
        cost_of = cost_function(cfg) if keeper is not None else None
        charged = keeper.charged if keeper is not None else None
        if running is not None and (running.limiter is not None) == (self.ledger is not None):
            running.configure(cfg)
            running.budget, running.cost_of, running.charged = book, cost_of, charged
            return running
        return admission.local_admission(
            cfg, ledger=self.ledger, book=book, cost_of=cost_of, charged=charged
        )

    def _usage_path(self) -> Path | None:
        return self.usage.path if self.usage is not None else None

    def _announce_budget(self, event: BudgetEvent) -> None:
        health = self.health
        if health is not None:
            doc, line = budget_event(event)
            health.notifier.announce("budget", doc, line)

    async def _set_budgets(self, cfg: Config) -> None:
        """The budget book for ``cfg`` (None without budgets): made and seeded from the
        usage store the first time, re-budgeted on reload (new subjects seeded)."""
        if not admission.budgets_configured(cfg):
            self.budgets = None
            return
        if self.budgets is None:
            if self.usage is None:
                log.warning(
                    "budgets: usage_tracking is off, so spend is counted from 0 at every "
                    "start (nothing records it across restarts)"
                )
            self.budgets = BudgetKeeper(cfg, self._announce_budget)
            self.budgets.dsn = self.usage.dsn if self.usage is not None else None
            await self.budgets.seed(self._usage_path())
        else:
            await self.budgets.reconfigure(cfg, self._usage_path())

    def rate_usage(self, scope: str) -> tuple[int, int, int, int] | None:
        """A rate-limit scope's live figures (the ledger's), None when no limits run."""
        return self.ledger.usage(scope) if self.ledger is not None else None

    def budget_spend(self, subject: str) -> tuple[float, float, str, float] | None:
        """A budget subject's spend this period (the book's), None when it has none."""
        return self.budgets.book.spend(subject) if self.budgets is not None else None

    def _tick(self) -> None:
        plane = self.plane
        if plane is None:
            return
        self._date.tick()
        if plane.admission is not None:
            plane.admission.tick()
        if self.ledger is not None:
            self.ledger.sweep()
        if self.budgets is not None:
            self.budgets.tick()
        for pool in plane.pools.values():
            pool.sweep()
        counters = plane.counters
        self._trimmer.tick(counters.requests_total + counters.connections_total, lambda: plane.busy)
        if self._notifier.watchdog_interval:
            self._notifier.watchdog()
        # Wake at the next whole second so the Date header is right to the second.
        self._ticker = plane.loop.call_later(1.0 - (time.time() % 1.0), self._tick)

    # -- reload (fastproxy/reload.py says what changes and why it is safe) --------------
    async def reload(self, loaded: LoadedConfig) -> ReloadPlan | None:
        """Apply ``loaded`` to the running gateway; None when nothing was applied (not
        started, stopping, or building the new generation failed: logged)."""
        async with self._reload_lock:
            plane, views, old_health, hub = self.plane, self._views, self.health, self.hub
            if views is None or old_health is None:
                return None
            if (plane is None or plane.draining) and (hub is None or hub.stopping):
                return None
            self._notifier.reloading()
            try:
                plan = await self._reload(loaded, plane, hub, views, old_health)
            except Exception as exc:
                log.error("reload failed (%s); the running config is kept", exc, exc_info=True)
                plan = None
            self._notifier.ready(f"listening on {self.config.host}:{self.port}")
            return plan

    async def _reload(
        self,
        loaded: LoadedConfig,
        plane: DataPlane | None,
        hub: WorkerHub | None,
        views: Views,
        old_health: HealthService,
    ) -> ReloadPlan:
        loop = asyncio.get_running_loop()
        # The running backends and pools: the plane's, or with workers the primary's
        # (the workers keep their own pools for the backends a reload keeps).
        running_backends = plane.backends if plane is not None else views.backends
        running_pools = plane.pools if plane is not None else {}
        plan = plan_reload(self.config, loaded.config)
        for key in plan.restart_keys:
            log.warning(
                "reload: %s changed in the config; it takes effect after a restart "
                "(the running value is kept)",
                key,
            )
        log_findings(plan.config, log)  # the same warnings as at start-up
        running = self.config
        self.config = plan.config  # _build_backends and _pool read the new config
        try:
            built, default_backend = await self._build_backends()
            kept = set(plan.kept) | ({"demo"} if "demo" in running_backends else set())
            # A backend unchanged by the reload keeps its object (discovered models, key,
            # pool, breaker); anything else is new.
            backends = {n: running_backends[n] if n in kept else b for n, b in built.items()}
            fresh = {n: b for n, b in backends.items() if n not in kept}
            await self._discover_models(fresh, loop)
            pools: dict[str, UpstreamPool] = {}
            if plane is not None:
                pools = {
                    n: running_pools[n] if n in kept else self._pool(b, loop)
                    for n, b in backends.items()
                }
            limits = plan.config.limits
            for pool in pools.values():
                pool.max_head_bytes = limits.max_head_bytes
                pool.max_headers = limits.max_headers
                pool.max_body_bytes = limits.max_response_body_bytes
            health = HealthService(plan.config, backends, loop)
            health.adopt(old_health, kept)
            await health.start()
        except BaseException:
            self.config = running
            raise
        replacement = reload_replacement(self.replacement, running, plan.config, backends)
        await self._set_budgets(plan.config)
        if self.budgets is not None and hub is not None:
            self.budgets.push = hub.push_blocked
            self.budgets.blocked()
        # The swap: synchronous, so no request is planned half on each generation.
        retired = [p for n, p in running_pools.items() if pools.get(n) is not p]
        rate_limits = self.rate_limits
        attempt_sinks = (health, rate_limits) if rate_limits is not None else (health,)
        if plane is not None:
            plane.reconfigure(
                plan.config,
                backends,
                pools,
                default_backend,
                health,
                Reporter(attempt_sinks, self._sinks),
            )
            plane.replacement = LocalReplacer(replacement) if replacement is not None else None
            plane.admission = self._admission(plan.config, plane.admission)
        if hub is not None:
            hub.reconfigure(
                plan.config,
                backends,
                default_backend,
                health,
                attempt_sinks,
                sorted(kept),
                replacement,
                ledger=self._reload_ledger(plan.config),
            )
        views.config, views.backends, views.health = plan.config, backends, health
        views.replacement = self.replacement = replacement
        self._services = [health if s is old_health else s for s in self._services]
        self.health = health
        for pool in retired:
            pool.retire()
        self._retired_pools = [p for p in self._retired_pools if p.open_connections]
        self._retired_pools += retired
        await old_health.stop()
        log.info(
            "reload: config re-read%s: %s",
            f" from {loaded.file}" if loaded.file else "",
            plan.summary(),
        )
        return plan

    # -- stop ---------------------------------------------------------------------------
    async def stop(self) -> None:
        if self.hub is not None:
            await self._stop_workers(self.hub)
            return
        plane = self.plane
        if plane is None or self.stopped.is_set():
            return
        self._notifier.stopping()
        # The cut requests' records reach the usage service before it closes below.
        await plane.drain(self._servers, self.config.timeouts.drain_seconds, CUT_EXCHANGES_WAIT_S)
        for pool in self._retired_pools:
            pool.close()
        await self._stop_services()

    async def _stop_services(self) -> None:
        """The end of every stop: the admin listener, the services (usage last written
        here), the demo backend; then ``stopped``."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self.admin is not None:
            await self.admin.stop()
        for service in reversed(self._services):
            await service.stop()
        if self.demo is not None:
            await self.demo.close()
        for server in self._servers:
            await server.wait_closed()
        self.stopped.set()
        log.info("fastproxy stopped")

    async def _stop_workers(self, hub: WorkerHub) -> None:
        if self.stopped.is_set() or hub.stopping:
            return
        self._notifier.stopping()
        # Each worker drains its own requests for timeouts.drain_seconds, then cuts
        # what is left and hands over the last records; their channels deliver those
        # before the usage link below is closed.
        await hub.stop(self.config.timeouts.drain_seconds + CUT_EXCHANGES_WAIT_S + 5.0)
        await self._stop_services()


def trace_starter(config: Config) -> TraceStarter:
    return TraceStarter(config.tracing.sampler, config.tracing.sampler_arg)


def replacement_policy(config: Config, backends: Mapping[str, Backend]) -> ReplacementPolicy | None:
    """The policy for ``config`` (None when replacement is off), knowing which APIs each
    backend speaks: a rule never sends a request to a backend that cannot answer it."""
    if not config.replacement.enabled:
        return None
    policy = ReplacementPolicy.from_config(config.replacement)
    policy.set_target_dialects({name: b.dialects for name, b in backends.items()})
    return policy


def reload_replacement(
    running: ReplacementPolicy | None,
    old: Config,
    new: Config,
    backends: Mapping[str, Backend],
) -> ReplacementPolicy | None:
    """Replacement after a reload (docs/configuration.md, "Reload"): the same policy when
    only ``probability`` or ``turn_count`` changed (sessions, their replacements and the
    counters go on; the new values apply from the next decision), a new one (sessions
    start afresh, counters from zero) when ``enabled`` or the rules changed."""
    was, now = old.replacement, new.replacement
    if running is not None and now.enabled and was.replacement_rules == now.replacement_rules:
        running.probability = now.probability
        running.turn_count = now.turn_count
        running.set_target_dialects({name: b.dialects for name, b in backends.items()})
        return running
    if was != now:
        log.info(
            "reload: replacement %s",
            "off" if not now.enabled else "rules changed; sessions start afresh",
        )
    return replacement_policy(new, backends)


class BudgetKeeper:
    """The one budget book (with workers, the primary's): seeded from the usage store off
    the event loop, charged with each finished request's cost (in-line in one process,
    from the workers' SPEND frames otherwise), announcing 80% and 100% on the health
    webhook and event stream, and pushing the blocked set to the workers when it changed
    (docs/policy.md, "Budgets")."""

    def __init__(
        self,
        config: Config,
        announce: Callable[[BudgetEvent], None],
        push: Callable[[Blocked], None] | None = None,
    ) -> None:
        self.book = BudgetBook(admission.budgets_of(config))
        self._announce = announce
        self.push = push
        # The PostgreSQL usage store's DSN when that is the store (seeding reads it).
        self.dsn: str | None = None

    async def seed(self, usage_path: Path | None, only: set[str] | None = None) -> None:
        """Each subject's spend so far in its current period (all, or ``only``), read
        in a thread. Thresholds it already passed are not announced again."""
        if usage_path is None:
            return
        book, now = self.book, time.time()
        periods = []
        for subject in book.subjects():
            if only is not None and subject not in only:
                continue
            figures = book.spend(subject)
            if figures is not None:
                start, end = period_bounds(figures[2], now)
                periods.append((subject, start, end))
        try:
            found = await asyncio.to_thread(usage_spend.spent, usage_path, periods, self.dsn)
        except sqlite3.Error as exc:
            log.warning("budgets: the spend so far could not be read (%s); counting from 0", exc)
            return
        for subject, usd in found.items():
            book.seed(subject, usd)
        if found:
            log.info(
                "budgets: spend so far this period: %s",
                ", ".join(f"{s} ${usd:.4f}" for s, usd in sorted(found.items())),
            )
        self.blocked()

    def charged(self, subjects: tuple[str, ...], cost: float) -> None:
        for event in self.book.charge(subjects, cost):
            self._announce(event)
        self.blocked()

    def on_spend(self, doc: Mapping[str, float]) -> None:
        """A worker's SPEND frame: its cost per subject since its last one."""
        for subject, cost in doc.items():
            for event in self.book.charge((subject,), float(cost)):
                self._announce(event)
        self.blocked()

    def blocked(self) -> None:
        if self.push is not None:
            message = self.book.take_blocked()
            if message is not None:
                self.push(message)

    def tick(self) -> None:
        self.book.tick()
        self.blocked()  # a period that ended unblocks its subjects in the workers too

    async def reconfigure(self, config: Config, usage_path: Path | None) -> None:
        before = set(self.book.subjects())
        self.book.set_budgets(admission.budgets_of(config))
        fresh = set(self.book.subjects()) - before
        if fresh:
            await self.seed(usage_path, fresh)
        self.blocked()


def budget_event(event: BudgetEvent) -> tuple[dict[str, object], str]:
    """The health event (webhook and stream body) and log line of a threshold crossed."""
    doc: dict[str, object] = {
        **event.to_dict(),
        "at": utc_iso(time.time()),
        "fraction": event.threshold,
    }
    line = (
        f"budget {event.subject}: {doc['threshold_percent']}% of its ${event.amount:.2f} "
        f"{event.period} budget spent (${event.spent:.4f}); it resets at {doc['resets_at']}"
    )
    return doc, line


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(loaded: LoadedConfig) -> int:
    config = loaded.config
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0
    reloads: set[asyncio.Task[None]] = set()

    async def _reload() -> None:
        try:
            fresh = loaded.reread()
        except ConfigError as exc:
            log.error("reload refused: %s; the running config is kept", exc)
            return
        await gateway.reload(fresh)

    def _on_hup() -> None:
        # Each SIGHUP re-reads the file; Gateway.reload runs them one after another.
        task = loop.create_task(_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def _on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    loop.add_signal_handler(signal.SIGHUP, _on_hup)

    def _on_usr2() -> None:
        # Workers only: replace them one by one (an upgrade path for the data plane).
        hub = gateway.hub
        if hub is None:
            log.warning("SIGUSR2 (rolling restart) needs workers above 1; ignored")
            return
        task = loop.create_task(hub.roll())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGUSR2, _on_usr2)
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
    tune_allocator()
    configure_logging(loaded.config.log_level)
    if loaded.file:
        log.info("config file: %s", loaded.file)
    log_findings(loaded.config, log)
    if sys.version_info >= (3, 12):
        return asyncio.run(serve(loaded), loop_factory=uvloop.new_event_loop)
    return uvloop.run(serve(loaded))
