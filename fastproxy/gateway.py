"""Gateway: builds the runtime from a Config, opens the listeners, stops gracefully.

Start-up order: backends (and the embedded demo backend when none is configured) →
model discovery → monitoring services → data listener → admin listener → `started`
is set and systemd hears READY. Stop: stop accepting, let in-flight exchanges finish up
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
from typing import Any

import orjson
import uvloop

from .config import BackendConfig, Config, LoadedConfig
from .dataplane.protocol import ClientProtocol
from .httpclient.backend import Backend
from .httpclient.pool import UpstreamPool
from .logs import configure_logging
from .memory import IdleTrimmer
from .state import GatewayState
from .systemd import Notifier

log = logging.getLogger("fastproxy")

DISCOVERY_TIMEOUT_S = 5.0
CUT_EXCHANGES_WAIT_S = 5.0


class Gateway:
    def __init__(self, config: Config, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self._env = dict(os.environ) if env is None else env
        self.state: GatewayState | None = None
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.port: int | None = None
        self.admin_port: int | None = None
        self.demo: Any = None
        self.services: list[Any] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._notifier = Notifier(self._env)
        self._trimmer = IdleTrimmer()

    # -- start ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        state = GatewayState(self.config, loop)
        self.state = state
        await self._build_backends(state)
        limits = self.config.limits
        for b in state.backends.values():
            state.pools[b.name] = UpstreamPool(
                b,
                loop,
                max_head_bytes=limits.max_head_bytes,
                max_headers=limits.max_headers,
                max_body_bytes=limits.max_response_body_bytes,
                max_connections=limits.max_connections,
            )
        await self._discover_models(state)
        for factory in _service_factories():
            service = factory(self, state)
            if service is not None:
                await service.start()
                self.services.append(service)
        cfg = self.config
        server = await loop.create_server(
            lambda: ClientProtocol(state), cfg.host, cfg.port, backlog=2048, reuse_address=True
        )
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        for service in self.services:
            hook = getattr(service, "after_listen", None)
            if hook is not None:
                await hook()
        self._tick()
        log.info(
            "fastproxy data plane listening on http://%s:%d (backends: %s)",
            cfg.host,
            self.port,
            ", ".join(state.backends) or "none",
        )
        self.started.set()
        self._notifier.ready(f"listening on {cfg.host}:{self.port}")

    async def _build_backends(self, state: GatewayState) -> None:
        if not self.config.backends:
            from .mockllm import MockLLMServer

            self.demo = MockLLMServer(host="127.0.0.1", port=0)
            await self.demo.start()
            demo = Backend(
                "demo",
                BackendConfig(type="openai", api_url=self.demo.url),
                env=self._env,
                dialects=frozenset({"openai", "anthropic"}),
            )
            state.backends["demo"] = demo
            state.default_backend = "demo"
            log.info(
                "no backends configured: serving the embedded demo backend at %s", self.demo.url
            )
            return
        for name, bcfg in self.config.backends.items():
            backend = Backend(name, bcfg, env=self._env)
            if not backend.has_key and bcfg.api_key_env:
                log.warning(
                    "backend %s: environment variable %s is not set; requests will "
                    "reach it without credentials",
                    name,
                    bcfg.api_key_env,
                )
            state.backends[name] = backend

    async def _discover_models(self, state: GatewayState) -> None:
        """GET {api_url}/models for every backend that lists none, concurrently."""
        todo = [b for b in state.backends.values() if b.models is None]
        if not todo:
            return
        results = await asyncio.gather(
            *(self._fetch_models(state, b) for b in todo), return_exceptions=True
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

    async def _fetch_models(self, state: GatewayState, backend: Backend) -> list[str]:
        from .httpclient.response import UpstreamResponse

        pool = UpstreamPool(backend, state.loop)
        try:
            conn, _ = await pool.acquire(DISCOVERY_TIMEOUT_S)
            resp = UpstreamResponse(state.loop)
            head = (
                b"GET "
                + backend.upstream_path(b"/v1/models")
                + b" HTTP/1.1\r\nhost: "
                + backend.host_header
                + b"\r\naccept-encoding: identity\r\n"
                + backend.auth_headers
                + b"connection: close\r\n\r\n"
            )
            conn.send(head, b"", resp)
            async with asyncio.timeout(DISCOVERY_TIMEOUT_S):
                await resp.done
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            data = orjson.loads(b"".join(resp.body)).get("data") or []
            return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        finally:
            pool.close()

    def _tick(self) -> None:
        state = self.state
        if state is None:
            return
        state.tick()
        for pool in state.pools.values():
            pool.sweep()
        counters = state.counters
        self._trimmer.tick(
            counters.requests_total + counters.connections_total,
            lambda: any(c.current is not None for c in state.connections),
        )
        if self._notifier.watchdog_interval:
            self._notifier.watchdog()
        # Wake at the next whole second so the Date header is right to the second.
        self._ticker = state.loop.call_later(1.0 - (time.time() % 1.0), self._tick)

    # -- stop ---------------------------------------------------------------------------
    async def stop(self) -> None:
        state = self.state
        if state is None or self.stopped.is_set():
            return
        self._notifier.stopping()
        state.draining = True
        for server in self._servers:
            server.close()
        for conn in list(state.connections):
            conn.shutdown()
        deadline = time.monotonic() + self.config.timeouts.drain_seconds
        while any(c.current is not None for c in state.connections):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        cut: list[asyncio.Task[None]] = []
        for conn in list(state.connections):
            if conn.current is not None:
                task = conn.current.abort_stream("the gateway is shutting down")
                if task is not None:
                    cut.append(task)
            elif conn.transport is not None:
                conn.transport.close()
        if cut:
            # Each cut exchange still hands its record to the usage service as it ends:
            # wait for them (they only unwind) before the store closes.
            await asyncio.wait(cut, timeout=CUT_EXCHANGES_WAIT_S)
        for pool in state.pools.values():
            pool.close()
        for service in reversed(self.services):
            await service.stop()
        if self.demo is not None:
            await self.demo.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for server in self._servers:
            await server.wait_closed()
        self.stopped.set()
        log.info("fastproxy stopped")


def _service_factories() -> list[Any]:
    from .services import service_factories

    return service_factories()


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
    if sys.version_info >= (3, 12):
        return asyncio.run(serve(loaded.config), loop_factory=uvloop.new_event_loop)
    return uvloop.run(serve(loaded.config))
