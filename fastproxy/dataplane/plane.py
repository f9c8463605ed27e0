"""DataPlane: what every connection of the data port shares, typed and built once.

The gateway (gateway.py) makes one, hands it the backends and pools, and plugs the
monitoring services in through the seams (core/seams.py): the breakers routing asks,
the reporter the request cycle tells, the live activity counters, the monitoring API
for the monitoring paths the data port answers too. Services are given to the plane;
none of them reaches into it. What the plane itself changes at run time is its own:
the connection set, the counters, the request and connection ids, ``draining``.

Nothing here is module-level; a process may run several gateways (the tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from ..config import Config
from ..core.clock import HttpDate
from ..core.keys import Keyring, keyring_from_config
from ..core.outbox import Outbox
from ..core.records import Counters
from ..core.replacement import Replacer
from ..core.seams import BreakerView, LiveActivity, MonitoringPort, Reporter, WireTap
from ..httpclient.backend import Backend
from ..httpclient.pool import UpstreamPool
from ..logs import AccessLine
from .admission import Admission
from .routing import Plans, Policy
from .tracecontext import TraceStarter


class Connection(Protocol):
    """What the gateway's stop sequence needs of a data-port connection."""

    @property
    def busy(self) -> bool: ...

    @property
    def streaming(self) -> bool: ...

    def shutdown(self) -> None: ...

    def abort(self, message: str) -> None: ...


class DataPlane:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        backends: Mapping[str, Backend] | None = None,
        pools: Mapping[str, UpstreamPool] | None = None,
        default_backend: str | None = None,
        breakers: BreakerView | None = None,
        reporter: Reporter | None = None,
        activity: LiveActivity | None = None,
        accounting: bool = False,
        monitoring: MonitoringPort | None = None,
        capture: WireTap | None = None,
        replacement: Replacer | None = None,
        counters: Counters | None = None,
        date: HttpDate | None = None,
        admission: Admission | None = None,
        tracing: TraceStarter | None = None,
        env: Mapping[str, str] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        # Where named keys' secret variables are read (the gateway's environment).
        self._env: Mapping[str, str] = os.environ if env is None else env
        self.keyring: Keyring | None = keyring_from_config(config, self._env)
        self.loop = loop
        # Client writes after a poll's first wait for the poll's end, with the upstream
        # pools' (the owner passes the outbox it gave them): core/outbox.py says why.
        self.outbox = outbox if outbox is not None else Outbox(loop)
        self.backends: Mapping[str, Backend] = backends if backends is not None else {}
        self.pools: Mapping[str, UpstreamPool] = pools if pools is not None else {}
        self.default_backend = default_backend if default_backend else config.default_backend
        self.breakers = breakers
        self.reporter = reporter if reporter is not None else Reporter((), ())
        # Live activity entries per request, when tracking is on; None costs one test.
        self.activity = activity
        # Completion accounting (token estimates, tool calls, TTFT) for the usage record;
        # on only when usage tracking is, so the relay pays nothing otherwise.
        self.accounting = accounting
        self.monitoring = monitoring
        # Wire capture, when on; None costs one test per request and nothing per chunk.
        self.capture = capture
        # Random model replacement, when on; None costs one test per request. A reload
        # may replace it (gateway.py), between requests, like the routing generation.
        self.replacement = replacement
        # Aliases, groups and load balancing, when configured; None costs one test per
        # request. Each plane (each worker) keeps its own stats and affinity.
        self.policy: Policy | None = Policy(config) if Policy.configured(config) else None
        # Plans by model without a policy: made once per name and routing generation.
        self.plans = Plans()
        # Rate limits and budgets, when configured; None costs one test per request. Its
        # owner (the gateway, or the worker) rebuilds it on reload (admission.py).
        self.admission = admission
        # OpenTelemetry traces, when on: ids and times per request on the loop, spans
        # built and exported off it (docs/tracing.md); None costs one test per request.
        self.tracing = tracing
        self.counters = counters if counters is not None else Counters()
        self.date = date if date is not None else HttpDate()
        self.connections: set[Connection] = set()
        self.draining = False
        self._next_request_id = 0
        # Multi-process mode: worker i of n numbers its requests i+1, i+1+n, ... so
        # exchange ids are unique across the gateway (fastproxy/workers/activity.py).
        self.id_step = 1
        self._next_connection_id = 0
        self.access_line = AccessLine()
        self.access_log: logging.Logger | None = (
            logging.getLogger("fastproxy.access") if config.access_log else None
        )

    def reconfigure(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        pools: Mapping[str, UpstreamPool],
        default_backend: str | None,
        breakers: BreakerView,
        reporter: Reporter,
    ) -> None:
        """A reload's new routing generation. Each is replaced, never changed in place:
        a request already planned keeps the backends and pools it was planned with, and
        every request planned from now on gets the new ones."""
        removed = [n for n in self.backends if n not in backends]
        policy = self.policy
        if policy is not None:
            self.policy = policy.rebuilt(config, removed)
        elif Policy.configured(config):
            self.policy = Policy(config)
        self.config = config
        self.keyring = keyring_from_config(config, self._env)
        self.backends = backends
        self.pools = pools
        self.default_backend = default_backend if default_backend else config.default_backend
        self.breakers = breakers
        self.reporter = reporter

    async def drain(
        self, servers: Sequence[asyncio.AbstractServer], drain_s: float, cut_wait_s: float
    ) -> None:
        """The data plane's part of a graceful stop (one process's, or one worker's):
        stop accepting, let requests in flight finish for ``drain_s``, then cut what is
        left and wait ``cut_wait_s`` for the cut ones to unwind (each still hands its
        record to the exchange sinks), and close the pools."""
        self.draining = True
        for server in servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        await _until_idle(self, drain_s)
        # Past the drain deadline: cut what is left (idle connections just close).
        for conn in list(self.connections):
            conn.abort("the gateway is shutting down")
        await _until_idle(self, cut_wait_s)
        for pool in self.pools.values():
            pool.close()

    def new_request_id(self) -> int:
        self._next_request_id += self.id_step
        return self._next_request_id

    def number_requests(self, first: int, step: int) -> None:
        """Request ids from now on: ``first``, ``first + step``, ..."""
        self._next_request_id = first - step
        self.id_step = step

    def new_connection_id(self) -> int:
        self._next_connection_id += 1
        return self._next_connection_id

    @property
    def busy(self) -> bool:
        """Some connection still has a request in progress."""
        return any(c.busy for c in self.connections)

    # -- PlaneStats: what views read ------------------------------------------------------
    def open_connections(self) -> int:
        return len(self.connections)

    def in_flight(self) -> tuple[int, int]:
        requests = streams = 0
        for conn in self.connections:
            if conn.busy:
                requests += 1
                streams += conn.streaming
        return requests, streams

    def backend_names(self) -> list[str]:
        return list(self.backends)

    def pool_stats(self) -> Mapping[str, tuple[int, int]]:
        return {n: (p.open_connections, p.idle_connections) for n, p in self.pools.items()}


async def _until_idle(plane: DataPlane, seconds: float) -> None:
    """Wait until no request is in progress, or ``seconds`` passed (polled: a stop
    sequence runs once, and the requests it waits for end in their own time)."""
    deadline = time.monotonic() + seconds
    while plane.busy:
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)
