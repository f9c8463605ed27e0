"""A worker: one data plane on the shared port, reporting everything to the primary.

Run as ``python -m fastproxy.workers.worker --fd N`` by the primary (primary.py), never by
hand: ``N`` is its end of the control channel, on which the primary sends the config and
the backends (with the models it discovered, so N workers do not ask the providers N
times). The worker then serves the data port (SO_REUSEPORT: the kernel spreads new
connections over the workers) and owns nothing else:

- breaker state comes from the primary, which runs the one health service (probes once
  for the gateway); the worker's attempt events go back to it;
- it counts its requests for /metrics and /v1/diagnostics itself and sends what it
  counted with each heartbeat; with usage tracking on, each finished request is also
  packed (`_speedups.pack_exchange`, the usage recorder's own frame) and handed to the
  primary once per loop iteration, which passes the frames on to the recorder unread;
- every ``HEARTBEAT_S`` it sends its connection counters, open connections and pools:
  the primary's views add them up, and a worker that stops sending (a stuck loop) is
  restarted.

SIGTERM drains like the single-process gateway (in-flight requests finish for up to
``timeouts.drain_seconds``). SIGINT is ignored: a terminal's ^C reaches the whole
process group, and the primary decides. A primary that goes away makes the worker
drain and exit too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

import msgspec
import orjson
import uvloop

from .._speedups import pack_exchange
from ..config import BackendConfig, Config
from ..core.budget import Blocked, BudgetGate
from ..core.clock import HttpDate
from ..core.outbox import Outbox
from ..core.records import Counters, ExchangeRecord
from ..core.seams import BreakerState, ExchangeSink, Reporter
from ..dataplane.admission import Admission
from ..dataplane.plane import DataPlane
from ..dataplane.protocol import ClientProtocol
from ..dataplane.tracecontext import TraceStarter
from ..httpclient.backend import Backend
from ..httpclient.pool import UpstreamPool
from ..logs import configure_logging
from ..memory import tune_allocator
from ..monitor.activity import ActivityService
from ..monitor.capture import CaptureService
from ..monitor.metrics import MetricsCollector
from ..monitor.tracing import TracingService
from .activity import snapshot_doc
from .channel import Channel, Kind
from .limiting import SpendSender, worker_admission
from .replacing import RemoteReplacer

log = logging.getLogger("fastproxy.workers")

HEARTBEAT_S = 0.5
# Records waiting for the primary past this many bytes go without their request body,
# and past twice as many are dropped and counted: a primary that stopped reading must
# not make the worker hold requests' bodies without bound.
BODY_BACKLOG = 64 * 1024 * 1024
RECORD_BACKLOG = 2 * BODY_BACKLOG
CUT_WAIT_S = 5.0
_U32 = struct.Struct("<I")


class RemoteBreakers:
    """The `BreakerView` routing asks: the primary's breaker states, as last sent."""

    __slots__ = ("states",)

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}

    def update(self, doc: dict[str, str]) -> None:
        self.states = {name: BreakerState(state) for name, state in doc.items()}

    def breaker_state(self, name: str) -> BreakerState:
        return self.states.get(name, BreakerState.CLOSED)


class Forwarder:
    """The worker's `AttemptSink` and `ExchangeSink`: both go to the primary, batched
    per loop iteration (one RECORDS frame, one ATTEMPTS frame)."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self.records = bytearray()
        self.count = 0
        self.attempts: list[list[Any]] = []
        self.dropped = 0
        self.bodies_dropped = 0
        self._scheduled = False

    def _later(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def attempt_started(self, backend: str) -> None:
        self.attempts.append(["s", backend])
        self._later()

    def attempt_finished(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        after = retry_after.decode("latin-1") if retry_after is not None else None
        self.attempts.append(["f", backend, status, kind, after])
        self._later()

    def on_exchange(self, rec: ExchangeRecord) -> None:
        """Plugged in only with usage tracking on: the records go to the recorder."""
        backlog = self.channel.buffered() + len(self.records)
        if backlog > RECORD_BACKLOG:
            self.dropped += 1
            return
        body = rec.request_body
        if body is not None and backlog + len(body) > BODY_BACKLOG:
            body = None
            self.bodies_dropped += 1
        pack_exchange(rec, body, self.records)
        self.count += 1
        self._later()

    def flush(self) -> None:
        self._scheduled = False
        if self.attempts:
            self.channel.send_json(Kind.ATTEMPTS, self.attempts)
            self.attempts = []
        if self.count:
            # The count first: the primary passes the frames on without reading them.
            self.channel.send(Kind.RECORDS, _U32.pack(self.count) + self.records)
            self.records = bytearray()
            self.count = 0
        self.channel.flush()


class Worker:
    def __init__(self) -> None:
        self.channel: Channel  # set by _main once open (frames may come before that)
        self.loop = asyncio.get_running_loop()
        self.config: Config | None = None
        self.plane: DataPlane | None = None
        self.breakers = RemoteBreakers()
        self.forwarder: Forwarder | None = None
        self.metrics: MetricsCollector | None = None
        self.activity: ActivityService | None = None
        self.capture: CaptureService | None = None
        self.tracing: TracingService | None = None
        self.replacer: RemoteReplacer | None = None  # made once the channel is open
        self.spend: SpendSender | None = None  # budget spend for the primary's book
        self.serial = 0  # this process's name in the primary's rate-limit ledger
        self.server: asyncio.base_events.Server | None = None
        self.stop_requested = asyncio.Event()
        self.configured: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._date = HttpDate()
        # The plane's and the pools' held writes, flushed together (core/outbox.py).
        self._outbox = Outbox(self.loop)
        self._ticker: asyncio.TimerHandle | None = None
        self.blocked: Blocked | None = None

    # -- the channel ------------------------------------------------------------------
    def on_frame(self, kind: Kind, payload: memoryview) -> None:
        if kind is Kind.CONFIG and not self.configured.done():
            self.configured.set_result(orjson.loads(payload))
        elif kind is Kind.BREAKERS:
            self.breakers.update(orjson.loads(payload))
        elif kind is Kind.RECONFIGURE:
            self.reconfigure(orjson.loads(payload))
        elif kind is Kind.DECIDED and self.replacer is not None:
            self.replacer.decided(payload)
        elif kind is Kind.GRANTS:
            if self.plane is not None and self.plane.admission is not None:
                self.plane.admission.on_grants(orjson.loads(payload))
        elif kind is Kind.BLOCKED:
            self._blocked(orjson.loads(payload))

    def _blocked(self, doc: Any) -> None:
        """The primary's blocked set (before the plane exists, kept for it)."""
        self.blocked = Blocked.from_tuple(doc)
        adm = self.plane.admission if self.plane is not None else None
        if adm is not None and isinstance(adm.budget, BudgetGate):
            adm.budget.update(self.blocked)

    def _admission(self, config: Config, running: Admission | None) -> Admission | None:
        if self.spend is None:
            self.spend = SpendSender(self.channel, self.loop)
        adm = worker_admission(config, self.serial, self.channel, self.spend, running)
        if adm is not None and isinstance(adm.budget, BudgetGate) and self.blocked is not None:
            adm.budget.update(self.blocked)
        return adm

    def on_lost(self) -> None:
        # The primary is gone: nobody reads our records or restarts us. Drain and exit.
        if self.replacer is not None:
            self.replacer.abandon()  # nobody will answer: served as asked
        self.stop_requested.set()

    def _replacing(self, config: Config, backends: dict[str, Backend]) -> RemoteReplacer | None:
        """The plane's `Replacer` for ``config``: asks the primary, which holds the one
        policy (workers/replacing.py); None when replacement is off."""
        if not config.replacement.enabled:
            return None
        if self.replacer is None:
            self.replacer = RemoteReplacer(self.channel, self.loop)
        self.replacer.configure(config, {n: b.dialects for n, b in backends.items()})
        return self.replacer

    # -- start ------------------------------------------------------------------------
    def _backends(
        self, doc: dict[str, Any], config: Config, keep: dict[str, tuple[Backend, UpstreamPool]]
    ) -> tuple[dict[str, Backend], dict[str, UpstreamPool]]:
        """The backends and pools ``doc`` describes; those in ``keep`` (unchanged by a
        reload) stay the objects they are, warm connections and all."""
        backends: dict[str, Backend] = {}
        pools: dict[str, UpstreamPool] = {}
        limits = config.limits
        for name, b in doc["backends"].items():
            if name in keep:
                backends[name], pools[name] = keep[name]
            else:
                backend = Backend(
                    name,
                    msgspec.convert(b["config"], BackendConfig),
                    dialects=frozenset(b["dialects"]),
                )
                backend.models = frozenset(b["models"]) if b["models"] is not None else None
                backends[name] = backend
                pools[name] = UpstreamPool(
                    backend,
                    self.loop,
                    max_connections=limits.max_connections,
                    outbox=self._outbox,
                )
            pool = pools[name]
            pool.max_head_bytes = limits.max_head_bytes
            pool.max_headers = limits.max_headers
            pool.max_body_bytes = limits.max_response_body_bytes
        return backends, pools

    def reconfigure(self, doc: dict[str, Any]) -> None:
        """A reload in the primary: new requests use the new generation, requests in
        flight finish on the one they were planned with (as in one process:
        fastproxy/reload.py)."""
        plane = self.plane
        if plane is None:
            return
        config = msgspec.convert(doc["config"], Config)
        keep = {
            name: (plane.backends[name], plane.pools[name])
            for name in doc["kept"]
            if name in plane.backends and name in plane.pools
        }
        backends, pools = self._backends(doc, config, keep)
        retired = [p for n, p in plane.pools.items() if pools.get(n) is not p]
        self.breakers.update(doc["breakers"])
        plane.reconfigure(
            config, backends, pools, doc["default_backend"], self.breakers, plane.reporter
        )
        plane.replacement = self._replacing(config, backends)
        plane.admission = self._admission(config, plane.admission)
        self.config = config
        for pool in retired:
            pool.retire()

    async def start(self) -> None:
        doc = await self.configured
        config = self.config = msgspec.convert(doc["config"], Config)
        configure_logging(config.log_level)
        self.serial = int(doc.get("serial", doc["index"]))
        loop = self.loop
        backends, pools = self._backends(doc, config, {})
        self.breakers.update(doc["breakers"])
        accounting = config.usage_tracking.enabled
        forwarder = self.forwarder = Forwarder(self.channel, loop)
        # Counted here, added up by the primary from each heartbeat: the primary does no
        # work per request (records cross only for the usage recorder).
        # No model-label bound here: the primary applies it to the sum (each worker
        # bounding its own labels would pick different models in each).
        metrics = self.metrics = MetricsCollector(max_models=sys.maxsize)
        sinks: tuple[ExchangeSink, ...] = (metrics, forwarder) if accounting else (metrics,)
        if config.tracing.on:
            # Each worker exports its own spans: no record crosses to the primary for them.
            self.tracing = TracingService(config.tracing, instance=f"worker-{doc['index'] + 1}")
            await self.tracing.start()
            sinks = (*sinks, self.tracing)
        plane = self.plane = DataPlane(
            config,
            loop,
            backends=backends,
            pools=pools,
            default_backend=doc["default_backend"],
            breakers=self.breakers,
            reporter=Reporter((forwarder,), sinks),
            accounting=accounting,
            replacement=self._replacing(config, backends),
            counters=Counters(),
            date=self._date,
            outbox=self._outbox,
            admission=self._admission(config, None),
            tracing=(
                TraceStarter(config.tracing.sampler, config.tracing.sampler_arg)
                if self.tracing is not None
                else None
            ),
        )
        plane.number_requests(doc["index"] + 1, doc["workers"])
        if config.wire_capture.enabled:
            # Each worker writes its own files (its own writer process, a file prefix of
            # its own, its share of the total cap): no two processes append to one file.
            index = doc["index"] + 1
            self.capture = CaptureService(
                config, os.environ, prefix=f"w{index}-", share=doc["workers"], worker=index
            )
            await self.capture.start()
            plane.capture = self.capture
        if config.enable_activity_tracking:
            # Tracked here, per chunk, on this worker's loop; the primary merges the
            # snapshots each heartbeat carries (fastproxy/workers/activity.py).
            self.activity = ActivityService(config, list(backends), loop)
            await self.activity.start()
            plane.activity = self.activity.tracker
        # Monitoring paths are served by the primary's admin listener, which sees every
        # worker; on the data port they are not found (docs/workers.md).
        self.server = await loop.create_server(
            lambda: ClientProtocol(plane),
            config.host,
            doc["port"],
            backlog=2048,
            reuse_address=True,
            reuse_port=True,
        )
        self.channel.send_json(Kind.READY, {"pid": os.getpid()})
        self._tick()

    def _tick(self) -> None:
        plane = self.plane
        if plane is None:
            return
        self._date.tick()
        for pool in plane.pools.values():
            pool.sweep()
        if self.replacer is not None:
            self.replacer.expire(time.monotonic())
        if plane.admission is not None:
            plane.admission.tick()  # reports, returns, and fails open past the timeout
        self.heartbeat()
        self._ticker = self.loop.call_later(HEARTBEAT_S, self._tick)

    def heartbeat(self) -> None:
        plane, fwd, metrics = self.plane, self.forwarder, self.metrics
        if plane is None or fwd is None or metrics is None:
            return
        fwd.flush()  # records of requests counted below reach the primary first
        c = plane.counters
        requests, streams = plane.in_flight()
        self.channel.send_json(
            Kind.STATS,
            {
                "at": time.time(),
                "requests_total": c.requests_total,
                "client_aborts": c.client_aborts,
                "stream_truncations": c.stream_truncations,
                "metrics": metrics.take_delta(),
                "activity": (
                    snapshot_doc(self.activity.tracker) if self.activity is not None else None
                ),
                "capture": self.capture.status() if self.capture is not None else None,
                "connections_total": c.connections_total,
                "connections_rejected": c.connections_rejected,
                "client_stalls": c.client_stalls,
                "failovers": c.failovers,
                "upstream_errors": c.upstream_errors,
                "open_connections": plane.open_connections(),
                "in_flight": requests,
                "streams": streams,
                "pools": {n: list(v) for n, v in plane.pool_stats().items()},
                "records_dropped": fwd.dropped,
                "bodies_dropped": fwd.bodies_dropped,
            },
        )

    # -- stop -------------------------------------------------------------------------
    async def stop(self) -> None:
        plane, config = self.plane, self.config
        if plane is None or config is None:
            return
        servers = [self.server] if self.server is not None else []
        await plane.drain(servers, config.timeouts.drain_seconds, CUT_WAIT_S)
        if self._ticker is not None:
            self._ticker.cancel()
        if self.activity is not None:
            await self.activity.stop()
        if self.capture is not None:
            await self.capture.stop()
        if self.tracing is not None:
            await self.tracing.stop()
        if self.spend is not None:
            self.spend.flush()  # the last costs reach the primary's budget book
        self.heartbeat()  # the last counts, so the primary's totals end exact
        if self.forwarder is not None:
            self.forwarder.flush()
        self.channel.close()


async def _main(fd: int) -> int:
    loop = asyncio.get_running_loop()
    worker = Worker()
    worker.channel = await Channel.open(socket.socket(fileno=fd), worker.on_frame, worker.on_lost)
    loop.add_signal_handler(signal.SIGTERM, worker.stop_requested.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        await asyncio.wait_for(worker.start(), 60)
    except (OSError, TimeoutError) as exc:
        log.error("worker cannot start: %s", exc)
        return 1
    await worker.stop_requested.wait()
    await worker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastproxy.workers.worker")
    parser.add_argument("--fd", type=int, required=True)
    ns = parser.parse_args(argv)
    tune_allocator()
    if sys.version_info >= (3, 12):
        return asyncio.run(_main(ns.fd), loop_factory=uvloop.new_event_loop)
    return uvloop.run(_main(ns.fd))


if __name__ == "__main__":
    sys.exit(main())
