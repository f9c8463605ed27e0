"""HealthService: probes endpoints, keeps one breaker per backend, tells routing and people.

Rules, and why:

1. **The unit of probing is the normalised api_url.** Instances that share a URL (two
   keys on one provider, say) share its probe state: probing it twice would double the
   cost and could disagree with itself. The probe uses the credentials of the first
   instance (config order) that has a key.
2. **The endpoint verdict** (``verdict``): unhealthy when ``http.failure_threshold``
   consecutive HTTP probes failed, or when ping is failing (``ping.failure_threshold``
   consecutive misses) *and* the last HTTP probe failed too. Ping alone never decides:
   ICMP is often filtered where HTTPS works. Otherwise "misconfigured" (401/403/other
   4xx), "rate_limited" (429) or "healthy"; all three count as healthy.
3. **Breakers are per backend instance**, fed by live attempt outcomes (the hot path:
   one dict lookup and a state check when nothing changes) and by probe verdicts. The
   transition rules are in breaker.py; this module only turns inputs into events and
   arms one timer per breaker for its next timed transition, so "open -> half_open" is
   announced when it happens, not when someone next asks.
4. **Scheduling.** The first round runs inside ``start()``, so the first
   ``/internal/health`` answer is real; its wait is capped (``_first_round_cap``) so a
   gateway with many dead backends still starts. After it, every endpoint has its own
   ping and HTTP timers, started at a random phase, each interval jittered by +-10%,
   so endpoints are not probed in lockstep (a burst of probes is a latency spike). A tick whose previous probe is still running
   is skipped (never two probes of one kind on one endpoint), at most
   ``max_concurrent_probes`` probes run at once, and an HTTP 429's Retry-After moves
   the next HTTP probe past it.
5. ``health_check.enabled: false`` stops probing only: the service, the breakers fed by
   live traffic and the routes still exist. ``circuit_breaker_enabled: false`` keeps
   the breakers' bookkeeping (shown in /internal/health) but routing is never refused.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from ..config import Config
from ..core.seams import BreakerState
from ..httpclient.backend import Backend
from .breaker import Breaker, Event, State, Transition
from .notify import Notifier
from .probes import FAILING, MISCONFIGURED, RATE_LIMITED, HttpResult, Pinger, PingResult, http_probe

log = logging.getLogger("fastproxy.monitor")

TRANSIENT_KINDS = frozenset({"connect", "timeout", "reset", "tls"})


class Condition(StrEnum):
    """An endpoint's condition (rule 2 above). Changed only by ``_evaluate``; the three
    other than UNHEALTHY all count as healthy. A str, so documents and events carry the
    plain word."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    MISCONFIGURED = MISCONFIGURED
    RATE_LIMITED = RATE_LIMITED


HEALTHY, UNHEALTHY = Condition.HEALTHY, Condition.UNHEALTHY
JITTER = 0.1


class Endpoint:
    """Probe state of one normalised api_url (shared by the backends that use it)."""

    __slots__ = (
        "api_url",
        "backends",
        "condition",
        "host",
        "http_code",
        "http_error",
        "http_failures",
        "http_kind",
        "http_latency_ms",
        "http_not_before",
        "http_ok",
        "http_task",
        "http_timer",
        "last_http_at",
        "last_http_ok_at",
        "last_ping_at",
        "last_ping_ok_at",
        "ping_error",
        "ping_failures",
        "ping_latency_ms",
        "ping_ok",
        "ping_status",
        "ping_task",
        "ping_timer",
        "probe_backend",
        "skipped_ticks",
    )

    def __init__(self, api_url: str, backends: list[Backend], ping_on: bool, http_on: bool) -> None:
        self.api_url = api_url
        self.backends = [b.name for b in backends]
        self.probe_backend = next((b for b in backends if b.has_key), backends[0])
        self.host = self.probe_backend.host
        self.condition: Condition = Condition.HEALTHY
        self.ping_status = "pending" if ping_on else "disabled"
        self.ping_ok: bool | None = None
        self.ping_failures = 0
        self.ping_latency_ms: float | None = None
        self.ping_error: str | None = None
        self.last_ping_at: float | None = None  # wall clock
        self.last_ping_ok_at: float | None = None
        self.http_kind = "pending" if http_on else "disabled"
        self.http_ok: bool | None = None
        self.http_failures = 0
        self.http_latency_ms: float | None = None
        self.http_code: int | None = None
        self.http_error: str | None = None
        self.last_http_at: float | None = None
        self.last_http_ok_at: float | None = None
        self.http_not_before = 0.0  # monotonic; Retry-After of a 429
        self.ping_task: asyncio.Task[None] | None = None
        self.http_task: asyncio.Task[None] | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        self.http_timer: asyncio.TimerHandle | None = None
        self.skipped_ticks = 0

    @property
    def is_healthy(self) -> bool:
        return self.condition != UNHEALTHY


def verdict(ep: Endpoint, http_on: bool, http_threshold: int) -> Condition:
    """The endpoint's condition from its counters (rule 2 of the module header)."""
    if http_on:
        if ep.http_failures >= http_threshold:
            return UNHEALTHY
        if ep.http_failures >= 1 and ep.ping_status == "failing":
            return UNHEALTHY  # two independent signals agree: do not wait for the threshold
        if ep.http_kind in (MISCONFIGURED, RATE_LIMITED):
            return Condition(ep.http_kind)
    return HEALTHY


class HealthService:
    """Implements the seams `BreakerView` (``breaker_state``) and `AttemptSink`
    (``attempt_started``, ``attempt_finished``); the admin plane reads it for
    /internal/health. It is given its configuration and backends and registers itself
    nowhere: the gateway plugs it in."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        keepalive_s: float = 15.0,
    ) -> None:
        cfg = config.health_check
        self.config = cfg
        self.loop = loop
        self.now = clock
        self.keepalive_s = keepalive_s
        self.ping_on = cfg.enabled and cfg.ping.enabled
        self.http_on = cfg.enabled and cfg.http.enabled
        self.breaker_enabled = cfg.circuit_breaker_enabled
        self.endpoints: dict[str, Endpoint] = {}
        self.breakers: dict[str, Breaker] = {}
        self.endpoint_of: dict[str, Endpoint] = {}
        self.notifier = Notifier(
            outward=cfg.notify_backends,
            webhook_url=cfg.webhook_url,
            log_repeat_window_s=cfg.log_repeat_window_seconds,
        )
        self.pinger = Pinger(loop)
        self.stopping = False
        self.in_flight = 0  # probes holding a concurrency slot now, and the peak seen
        self.peak_in_flight = 0
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(cfg.max_concurrent_probes)
        self._breaker_timers: dict[str, asyncio.TimerHandle] = {}
        # Breakers and endpoints exist from construction: routing may ask about any
        # backend whatever order services start in.
        cb = self._cb = config.circuit_breaker
        groups: dict[str, list[Backend]] = {}
        for b in backends.values():
            groups.setdefault(b.normalized_url, []).append(b)
            self.breakers[b.name] = Breaker(b.name, cb.failure_threshold, cb.open_cooldown_seconds)
        for url, members in groups.items():
            ep = Endpoint(url, members, self.ping_on, self.http_on)
            self.endpoints[url] = ep
            for b in members:
                self.endpoint_of[b.name] = ep

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.notifier.start()
        if not (self.ping_on or self.http_on) or not self.endpoints:
            log.info("health probes off; circuit breakers follow live traffic only")
            return
        await self._first_round()
        # The first round probed every endpoint at once. Left at interval +-10%, the next
        # rounds would come as bursts too (the benchmark saw 100 probes stall the loop for
        # tens of ms), so each endpoint's second probe gets a random phase: 0.5-1.5
        # intervals, the same mean; the +-10% jitter keeps them apart afterwards.
        for ep in self.endpoints.values():
            for kind, on in (("ping", self.ping_on), ("http", self.http_on)):
                if on and getattr(ep, f"{kind}_timer") is None:
                    self._schedule(ep, kind, self._interval(kind) * self._rng.uniform(0.5, 1.5))

    def _first_round_cap(self) -> float:
        timeouts = [
            self.config.ping.timeout_seconds if self.ping_on else 0.0,
            self.config.http.timeout_seconds if self.http_on else 0.0,
        ]
        return max(timeouts) + 1.0

    async def _first_round(self) -> None:
        tasks = []
        for ep in self.endpoints.values():
            for kind, on in (("ping", self.ping_on), ("http", self.http_on)):
                if on:
                    tasks.append(self._start_probe(ep, kind))
        _, pending = await asyncio.wait(tasks, timeout=self._first_round_cap())
        if pending:
            log.warning(
                "health: %d first-round probes still running after %.0fs; start-up "
                "goes on and they report when done",
                len(pending),
                self._first_round_cap(),
            )

    async def stop(self) -> None:
        self.stopping = True
        tasks = []
        for ep in self.endpoints.values():
            for timer in (ep.ping_timer, ep.http_timer):
                if timer is not None:
                    timer.cancel()
            ep.ping_timer = ep.http_timer = None
            tasks += [t for t in (ep.ping_task, ep.http_task) if t is not None]
        for timer in self._breaker_timers.values():
            timer.cancel()
        self._breaker_timers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.notifier.stop()

    # -- scheduling -------------------------------------------------------------------
    def _interval(self, kind: str) -> float:
        base = (
            self.config.ping.interval_seconds
            if kind == "ping"
            else self.config.http.interval_seconds
        )
        return base * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)

    def _schedule(self, ep: Endpoint, kind: str, delay: float | None = None) -> None:
        old = ep.ping_timer if kind == "ping" else ep.http_timer
        if old is not None:
            old.cancel()
        handle = self.loop.call_later(
            self._interval(kind) if delay is None else delay, self._tick, ep, kind
        )
        setattr(ep, f"{kind}_timer", handle)

    def _tick(self, ep: Endpoint, kind: str) -> None:
        if self.stopping:
            return
        self._schedule(ep, kind)
        if (ep.ping_task if kind == "ping" else ep.http_task) is not None:
            ep.skipped_ticks += 1  # still running: never two probes of one kind at once
            return
        if kind == "http" and self.now() < ep.http_not_before:
            return
        self._start_probe(ep, kind)

    def _start_probe(self, ep: Endpoint, kind: str) -> asyncio.Task[None]:
        task = self.loop.create_task(self._probe(ep, kind), name=f"fastproxy-health-{kind}")
        setattr(ep, f"{kind}_task", task)
        return task

    async def _probe(self, ep: Endpoint, kind: str) -> None:
        try:
            async with self._sem:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    if kind == "ping":
                        ping = await self.pinger.ping(ep.host, self.config.ping.timeout_seconds)
                        self._apply_ping(ep, ping)
                    else:
                        http = self.config.http
                        result = await http_probe(
                            ep.probe_backend,
                            self.loop,
                            http.method,
                            http.path,
                            http.timeout_seconds,
                        )
                        self._apply_http(ep, result)
                finally:
                    self.in_flight -= 1
        except Exception:
            log.exception("health: %s probe of %s failed unexpectedly", kind, ep.api_url)
        finally:
            setattr(ep, f"{kind}_task", None)

    # -- results ------------------------------------------------------------------------
    def _apply_ping(self, ep: Endpoint, r: PingResult) -> None:
        ep.last_ping_at = time.time()
        ep.ping_latency_ms = r.latency_ms
        ep.ping_error = r.error
        if r.unavailable:
            ep.ping_status, ep.ping_ok, ep.ping_failures = "unavailable", None, 0
        elif r.ok:
            ep.ping_status, ep.ping_ok, ep.ping_failures = "ok", True, 0
            ep.last_ping_ok_at = ep.last_ping_at
        else:
            ep.ping_ok = False
            ep.ping_failures += 1
            ep.ping_status = (
                "failing" if ep.ping_failures >= self.config.ping.failure_threshold else "ok"
            )
        self._evaluate(ep, None)

    def _apply_http(self, ep: Endpoint, r: HttpResult) -> None:
        ep.last_http_at = time.time()
        ep.http_code = r.status or None
        ep.http_latency_ms = r.latency_ms
        ep.http_error = r.error
        ep.http_kind = r.kind
        if r.kind == FAILING:
            ep.http_ok = False
            ep.http_failures += 1
        else:
            ep.http_ok = True
            ep.http_failures = 0
            ep.last_http_ok_at = ep.last_http_at
        if r.retry_after:
            ep.http_not_before = self.now() + r.retry_after
            if not self.stopping:
                self._schedule(ep, "http", max(r.retry_after, self._interval("http")))
        self._evaluate(ep, r)

    def _evaluate(self, ep: Endpoint, http: HttpResult | None) -> None:
        new = verdict(ep, self.http_on, self.config.http.failure_threshold)
        old = ep.condition
        reason = self._reason(ep, new)
        if new != old:
            ep.condition = new
            self.notifier.publish("endpoint", "api_url", ep.api_url, old, new, reason)
        if new == UNHEALTHY and (new != old or http is not None):
            for name in ep.backends:
                self._feed(name, Event.PROBE_UNHEALTHY, f"endpoint unhealthy: {reason}")
        elif http is not None and http.counts_as_success:
            for name in ep.backends:
                self._feed(name, Event.PROBE_HEALTHY, f"probe answered HTTP {http.status}")

    def _reason(self, ep: Endpoint, condition: Condition) -> str:
        if condition == UNHEALTHY:
            out = f"HTTP probe failed {ep.http_failures}x (last: {ep.http_error})"
            if ep.ping_status == "failing":
                out += f"; ping failing {ep.ping_failures}x ({ep.ping_error})"
            return out
        if condition == HEALTHY:
            if ep.http_ok:
                return f"HTTP probe ok (HTTP {ep.http_code}, {ep.http_latency_ms:.1f} ms)"
            return "HTTP probe failures below the threshold"
        return ep.http_error or condition

    # -- breakers -------------------------------------------------------------------------
    def breaker_state(self, name: str) -> BreakerState:
        """Routing's question, once per candidate per request: cheap and free of side
        effects. With ``circuit_breaker_enabled: false`` every backend is routable."""
        b = self.breakers.get(name)
        if b is None or b.state is _CLOSED or not self.breaker_enabled:
            return _ROUTE_CLOSED
        return _ROUTING_STATE[b.state_at(self.now())]

    def attempt_started(self, name: str) -> None:
        """A request is being sent to ``name``: in half-open, it becomes the trial."""
        b = self.breakers.get(name)
        if b is None or b.state is _CLOSED or not self.breaker_enabled:
            return
        _, transitions = b.allows_request(self.now())
        if transitions:
            self._after(b, transitions)

    def attempt_finished(
        self, name: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        """The outcome of one upstream attempt, as soon as it is known.
        ``retry_after`` (a 429's header) is accepted and unused: a 429 is never a
        breaker failure."""
        b = self.breakers.get(name)
        if b is None:
            return
        if status >= 500:
            event, reason = Event.LIVE_FAILURE, f"HTTP {status}"
        elif status > 0:
            if b.state is _CLOSED and b.failures == 0:
                return  # the common case: nothing to count, nothing to change
            event, reason = Event.LIVE_SUCCESS, f"HTTP {status}"
        elif kind in TRANSIENT_KINDS:
            event, reason = Event.LIVE_FAILURE, str(kind)
        else:
            return  # protocol errors and the like are neither evidence of health nor outage
        self._feed(name, event, reason)

    def _feed(self, name: str, event: Event, reason: str) -> None:
        b = self.breakers[name]
        self._after(b, b.feed(event, self.now(), reason))

    def _after(self, b: Breaker, transitions: list[Transition]) -> None:
        if not transitions:
            return
        for t in transitions:
            old, new = t.old.public, t.new.public
            if old != new:
                self.notifier.publish("breaker", "backend", t.backend, old, new, t.reason)
            else:
                log.debug("breaker %s: %s (%s)", t.backend, t.event.value, t.reason)
        timer = self._breaker_timers.pop(b.name, None)
        if timer is not None:
            timer.cancel()
        deadline = b.next_deadline()
        if deadline is not None and not self.stopping:
            self._breaker_timers[b.name] = self.loop.call_later(
                max(0.0, deadline - self.now()), self._breaker_due, b
            )

    def _breaker_due(self, b: Breaker) -> None:
        self._breaker_timers.pop(b.name, None)
        self._after(b, b.advance(self.now()))

    def adopt(self, old: HealthService, names: Iterable[str]) -> None:
        """A reload made this service for the new backend set: the breakers of
        ``names`` (backends the reload kept as they were) carry on with their state
        and history, under the new thresholds; every other backend starts closed.
        Called before `start`; the old service is stopped after."""
        cb_threshold = self._cb.failure_threshold
        cb_cooldown = self._cb.open_cooldown_seconds
        for name in names:
            b = old.breakers.get(name)
            if b is None or name not in self.breakers:
                continue
            b.threshold, b.cooldown = cb_threshold, cb_cooldown
            self.breakers[name] = b
            deadline = b.next_deadline()
            if deadline is not None:
                self._breaker_timers[name] = self.loop.call_later(
                    max(0.0, deadline - self.now()), self._breaker_due, b
                )

    # -- the API other parts of the gateway use ----------------------------------------
    def circuit_state(self, name: str) -> str:
        """The breaker's state as views show it. Reading changes nothing: timed
        transitions are applied by the breaker's own timer, this only looks ahead."""
        b = self.breakers.get(name)
        if b is None:
            return "closed"
        return b.state_at(self.now()).public

    def reactivate(self, name: str) -> bool:
        """Force a breaker closed (POST /v1/diagnostics/backends/{name}/reactivate)."""
        if name not in self.breakers:
            return False
        self._feed(name, Event.RESET, "reactivated by an operator")
        return True

    def open_until_wall(self, b: Breaker) -> float | None:
        if b.state is not State.OPEN:
            return None
        return time.time() + (b.open_until - self.now())


_ROUTING_STATE = {
    State.CLOSED: BreakerState.CLOSED,
    State.OPEN: BreakerState.OPEN,
    State.HALF_OPEN: BreakerState.HALF_OPEN,
    State.TRIAL: BreakerState.BUSY,
}
# The members every request meets, bound once: in Python 3.11 ``State.CLOSED`` on an
# enum class goes through the metaclass's ``__getattr__`` hook (~70 ns a lookup).
_CLOSED = State.CLOSED
_ROUTE_CLOSED = BreakerState.CLOSED
