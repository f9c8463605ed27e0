"""The primary's side of multi-process mode: it spawns the workers, restarts one that
dies or hangs, and makes their reports the one view operators read.

The primary keeps every service there is one of per gateway: the health service (one
round of probes for the gateway, breaker states pushed to every worker), the usage
recorder link, the metrics, the admin listener. Workers keep only data planes. Why a
primary that serves no traffic: the kernel balances connections over the workers'
SO_REUSEPORT sockets, so a primary that also served would get a share of the traffic and
its services' work on top; and a worker that dies takes nothing but its own in-flight
requests with it.

What the views read: each worker counts its own requests (its metrics collector and
counters) and sends what it counted with its heartbeat every 0.5 s; the primary adds
the metrics into its collector and keeps each worker's latest counters
(`AggregatePlane`, the `PlaneStats` seam), with a replaced worker's last counts kept so
totals never go backwards. The primary does no work per request: with usage tracking
on, the workers' record frames pass through it to the recorder unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from ..config import Config
from ..core.budget import Blocked
from ..core.ratelimit import Ledger
from ..core.records import Counters
from ..core.replacement import ReplacementPolicy
from ..core.seams import AttemptSink, BreakerView
from ..httpclient.backend import Backend
from ..monitor.metrics import MetricsCollector
from .activity import MergedActivity
from .channel import Channel, Kind
from .limiting import answer_asks
from .replacing import answer, turns

log = logging.getLogger("fastproxy.workers")

BREAKERS_EVERY_S = 0.25  # time-driven breaker changes (open -> half-open) reach workers
RESTART_MIN_S, RESTART_MAX_S = 0.5, 10.0
STABLE_S = 30.0  # alive this long: the next death restarts at the shortest backoff
START_TIMEOUT_S = 60.0
_COUNTER_KEYS = (
    "requests_total",
    "client_aborts",
    "stream_truncations",
    "connections_total",
    "connections_rejected",
    "client_stalls",
    "failovers",
)
_U32 = struct.Struct("<I")
_CAPTURE_COUNTS = (
    "events_captured",
    "events_written",
    "bytes_written",
    "files_opened",
    "files_deleted",
    "dropped",
    "events_referred",
    "exchanges_skipped",
)


class WorkerProc:
    """One worker slot: its process, channel and latest heartbeat."""

    def __init__(self, index: int, serial: int) -> None:
        self.index = index
        self.serial = serial  # unique per process started: keys its activity snapshot
        self.retiring = False  # replaced by a rolling restart: drains, is not restarted
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.ready = False
        self.started_at = 0.0
        self.last_seen = 0.0
        self.stats: dict[str, Any] = {}
        self.restarts = 0
        self.backoff = RESTART_MIN_S
        self.ready_waiter: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class AggregatePlane:
    """`PlaneStats` over every worker (what /metrics and /v1/diagnostics read)."""

    def __init__(self, hub: WorkerHub) -> None:
        self._hub = hub
        self.draining = False
        # From heartbeats of workers that were replaced: their last counts.
        self._gone: dict[str, Any] = {k: 0 for k in _COUNTER_KEYS}
        self._gone_errors: dict[str, int] = {}

    @property
    def counters(self) -> Counters:
        c = Counters()
        errors = dict(self._gone_errors)
        for key in _COUNTER_KEYS:
            total = self._gone[key]
            for w in self._hub.procs():
                total += w.stats.get(key, 0)
            setattr(c, key, total)
        for w in self._hub.procs():
            for kind, n in w.stats.get("upstream_errors", {}).items():
                errors[kind] = errors.get(kind, 0) + n
        c.upstream_errors = errors
        return c

    def retire(self, stats: Mapping[str, Any]) -> None:
        """A worker is gone: keep its last counts in the totals."""
        for key in _COUNTER_KEYS:
            self._gone[key] += stats.get(key, 0)
        for kind, n in stats.get("upstream_errors", {}).items():
            self._gone_errors[kind] = self._gone_errors.get(kind, 0) + n

    def open_connections(self) -> int:
        return sum(w.stats.get("open_connections", 0) for w in self._hub.procs())

    def in_flight(self) -> tuple[int, int]:
        ws = self._hub.procs()
        return (
            sum(w.stats.get("in_flight", 0) for w in ws),
            sum(w.stats.get("streams", 0) for w in ws),
        )

    def backend_names(self) -> list[str]:
        return list(self._hub.backends)

    def pool_stats(self) -> Mapping[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {name: (0, 0) for name in self._hub.backends}
        for w in self._hub.procs():
            for name, (open_, idle) in w.stats.get("pools", {}).items():
                o, i = out.get(name, (0, 0))
                out[name] = (o + open_, i + idle)
        return out


class WorkerHub:
    """Spawns and supervises the workers and turns their reports into the primary's
    services' inputs."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        default_backend: str | None,
        breakers: BreakerView,
        attempt_sinks: tuple[AttemptSink, ...],
        metrics: MetricsCollector,
        forward_records: Callable[[memoryview, int], None] | None,
        watchdog_s: float,
        replacement: ReplacementPolicy | None = None,
        ledger: Ledger | None = None,
        on_spend: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.default_backend = default_backend
        self.breakers = breakers
        self.attempt_sinks = attempt_sinks
        self.metrics = metrics
        self.forward_records = forward_records
        self.watchdog_s = watchdog_s
        # The one replacement policy: it decides for every worker (workers/replacing.py).
        self.replacement = replacement
        # Rate limits' one ledger and the budget book's input (workers/limiting.py).
        self.ledger = ledger
        self.on_spend = on_spend
        self._blocked_doc = b""  # the last blocked set pushed, for workers started later
        self.loop = asyncio.get_running_loop()
        self.workers = [WorkerProc(i, i) for i in range(config.workers)]
        self.retiring: list[WorkerProc] = []  # replaced, still draining
        self._serial = config.workers
        self._roll_lock = asyncio.Lock()
        self.plane = AggregatePlane(self)
        self.activity = MergedActivity() if config.enable_activity_tracking else None
        self._gone_capture: dict[str, int] = {}
        self.port = 0
        self.stopping = False
        self._reserve: socket.socket | None = None
        self._breaker_doc = b""
        self._ticker: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start ------------------------------------------------------------------------
    async def start(self) -> int:
        """Reserve the port, start every worker, return once all listen."""
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound, never listening: the port stays ours (port 0 picks it once for all the
        # workers) while the kernel hands connections only to listening sockets.
        sock.bind((cfg.host, cfg.port))
        self._reserve = sock
        self.port = sock.getsockname()[1]
        waits = [self._spawn(w) for w in self.workers]
        await asyncio.wait_for(asyncio.gather(*waits), START_TIMEOUT_S)
        self._tick()
        return self.port

    async def _spawn(self, w: WorkerProc) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Off the loop: fork and exec of a large process take milliseconds, and a
            # restart happens while the other workers' reports keep arriving.
            w.proc = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", "fastproxy.workers.worker", "--fd", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        w.ready = False
        w.stats = {}
        w.started_at = w.last_seen = time.monotonic()
        w.ready_waiter = self.loop.create_future()
        w.channel = await Channel.open(
            parent,
            lambda kind, payload: self._on_frame(w, kind, payload),
            lambda: self._on_lost(w),
        )
        w.channel.send_json(
            Kind.CONFIG,
            {
                **self._config_doc(),
                "index": w.index,
                "serial": w.serial,
                "workers": len(self.workers),
            },
        )
        if self._blocked_doc:
            w.channel.send(Kind.BLOCKED, self._blocked_doc)
        await w.ready_waiter

    def _config_doc(self) -> dict[str, Any]:
        return {
            "config": msgspec.to_builtins(self.config),
            "backends": {
                name: {
                    "config": msgspec.to_builtins(b.config),
                    "models": sorted(b.models) if b.models is not None else None,
                    "dialects": sorted(b.dialects),
                }
                for name, b in self.backends.items()
            },
            "default_backend": self.default_backend,
            "breakers": self._breaker_states(),
            "port": self.port,
        }

    def reconfigure(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        default_backend: str | None,
        breakers: BreakerView,
        attempt_sinks: tuple[AttemptSink, ...],
        kept: list[str],
        replacement: ReplacementPolicy | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        """A reload: every worker switches to the new generation (a worker started from
        now on gets it with its CONFIG)."""
        self.config = config
        self.backends = backends
        self.default_backend = default_backend
        self.breakers = breakers
        self.attempt_sinks = attempt_sinks
        self.replacement = replacement
        self.ledger = ledger
        doc = {**self._config_doc(), "kept": kept}
        payload = orjson.dumps(doc)
        for w in self.workers:
            if w.channel is not None and not w.channel.closed:
                w.channel.send(Kind.RECONFIGURE, payload)
        self._push_breakers(force=True)

    def _breaker_states(self) -> dict[str, str]:
        return {name: self.breakers.breaker_state(name).value for name in self.backends}

    # -- what workers report ----------------------------------------------------------
    def _on_frame(self, w: WorkerProc, kind: Kind, payload: memoryview) -> None:
        w.last_seen = time.monotonic()
        if kind is Kind.RECORDS:
            self._records(payload)
        elif kind is Kind.ATTEMPTS:
            self._attempts(orjson.loads(payload))
        elif kind is Kind.DECIDE:
            if w.channel is not None:
                # Answered at once: the worker's request waits for it (replacing.py).
                w.channel.send(Kind.DECIDED, answer(self.replacement, payload))
                w.channel.flush()
        elif kind is Kind.TURNS:
            turns(self.replacement, payload)
        elif kind is Kind.ASKS:
            grants = answer_asks(self.ledger, payload)
            if grants is not None and w.channel is not None:
                # Written at once: a request may be waiting for it.
                w.channel.send(Kind.GRANTS, grants)
                w.channel.flush()
        elif kind is Kind.SPEND:
            if self.on_spend is not None:
                self.on_spend(orjson.loads(payload))
        elif kind is Kind.STATS:
            stats = orjson.loads(payload)
            self.metrics.merge(stats.pop("metrics"))
            activity = stats.pop("activity", None)
            if activity is not None and self.activity is not None:
                self.activity.update(w.serial, activity)
            w.stats = stats
        elif kind is Kind.READY:
            w.ready = True
            if w.ready_waiter is not None and not w.ready_waiter.done():
                w.ready_waiter.set_result(None)

    def _records(self, payload: memoryview) -> None:
        if self.forward_records is None or len(payload) < _U32.size:
            return
        (count,) = _U32.unpack_from(payload)
        self.forward_records(payload[_U32.size :], count)

    def _attempts(self, events: list[list[Any]]) -> None:
        for ev in events:
            for sink in self.attempt_sinks:
                try:
                    if ev[0] == "s":
                        sink.attempt_started(ev[1])
                    else:
                        after = ev[4].encode("latin-1") if ev[4] is not None else None
                        sink.attempt_finished(ev[1], ev[2], ev[3], after)
                except Exception:
                    log.exception("attempt sink failed")
        self._push_breakers()

    def _push_breakers(self, force: bool = False) -> None:
        doc = orjson.dumps(self._breaker_states())
        if doc == self._breaker_doc and not force:
            return
        self._breaker_doc = doc
        for w in self.workers:
            if w.channel is not None and not w.channel.closed:
                w.channel.send(Kind.BREAKERS, doc)

    def push_blocked(self, blocked: Blocked) -> None:
        """The subjects over budget changed: every worker gets the new set."""
        doc = self._blocked_doc = orjson.dumps(blocked.to_tuple())
        for w in self.procs():
            if w.channel is not None and not w.channel.closed:
                w.channel.send(Kind.BLOCKED, doc)
                w.channel.flush()

    def _on_lost(self, w: WorkerProc) -> None:
        self.plane.retire(w.stats)
        if self.ledger is not None:
            self.ledger.forget_worker(w.serial)  # its unused permits come back now
        for key, n in (w.stats.get("capture") or {}).items():
            if key in _CAPTURE_COUNTS:
                self._gone_capture[key] = self._gone_capture.get(key, 0) + n
        if self.activity is not None:
            self.activity.retire(w.serial)
        w.stats = {}
        w.channel = None
        proc = w.proc
        if w.ready_waiter is not None and not w.ready_waiter.done():
            w.ready_waiter.set_exception(RuntimeError(f"worker {w.index} exited while starting"))
            w.ready_waiter.exception()
        if w.retiring:
            if w in self.retiring:
                self.retiring.remove(w)
            if proc is not None:
                self._hold(self.loop.create_task(asyncio.to_thread(proc.wait)))  # type: ignore[arg-type]
            return
        if proc is not None:
            self._hold(self.loop.create_task(self._reap(w, proc)))

    async def _reap(self, w: WorkerProc, proc: subprocess.Popen[bytes]) -> None:
        # The channel closed first; the exit follows within moments.
        await asyncio.to_thread(proc.wait)
        if self.stopping:
            return
        log.error(
            "worker %d (pid %d) exited with status %s; restarting in %.1fs",
            w.index,
            proc.pid,
            proc.returncode,
            w.backoff,
        )
        alive = time.monotonic() - w.started_at
        delay = RESTART_MIN_S if alive > STABLE_S else w.backoff
        w.backoff = min(RESTART_MAX_S, delay * 2)
        await asyncio.sleep(delay)
        if self.stopping:
            return
        w.restarts += 1
        try:
            await asyncio.wait_for(self._spawn(w), START_TIMEOUT_S)
        except Exception as exc:
            log.error("worker %d did not start: %s", w.index, exc)

    def _hold(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tick(self) -> None:
        self._push_breakers(force=False)
        now = time.monotonic()
        for w in self.workers:
            # A worker that stopped reporting has a stuck loop: replace it.
            if (
                w.ready
                and w.channel is not None
                and now - w.last_seen > self.watchdog_s
                and w.proc is not None
                and w.proc.poll() is None
            ):
                log.error(
                    "worker %d (pid %d) sent nothing for %.0fs: killed",
                    w.index,
                    w.proc.pid,
                    now - w.last_seen,
                )
                with contextlib.suppress(OSError):
                    w.proc.kill()
        self._ticker = self.loop.call_later(BREAKERS_EVERY_S, self._tick)

    def procs(self) -> list[WorkerProc]:
        """Every worker process whose counts are live: the slots, and replaced workers
        still draining (so totals do not dip while a rolling restart runs)."""
        return [*self.workers, *self.retiring]

    async def roll(self) -> None:
        """Replace every worker, one at a time (SIGUSR2): the new process listens before
        the old one stops accepting and drains its requests. New code installed in the
        environment is what the new workers run (docs/workers.md, "Upgrades")."""
        async with self._roll_lock:
            log.info("rolling restart of %d workers", len(self.workers))
            for i, old in enumerate(list(self.workers)):
                if self.stopping:
                    return
                new = WorkerProc(old.index, self._serial)
                self._serial += 1
                new.restarts = old.restarts
                try:
                    await asyncio.wait_for(self._spawn(new), START_TIMEOUT_S)
                except Exception as exc:
                    log.error("rolling restart: worker %d did not start (%s); stopped", i, exc)
                    if new.proc is not None and new.proc.poll() is None:
                        new.retiring = True
                        new.proc.kill()
                    return
                old.retiring = True
                self.workers[i] = new
                if old.channel is not None:
                    self.retiring.append(old)
                if old.proc is not None and old.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        os.kill(old.proc.pid, signal.SIGTERM)
            log.info("rolling restart done: %s", self.summary())

    # -- what the gateway asks ----------------------------------------------------------
    def all_alive(self) -> bool:
        return all(w.ready and w.channel is not None for w in self.workers)

    def capture_status(self) -> dict[str, Any]:
        """Wire capture across workers: each captures to its own files and reports its
        counters with its heartbeat; here they are added up (a replaced worker's last
        counts included). ``state`` is "disabled" when any worker's capture is, with
        each such worker's reason."""
        docs = [d for w in self.procs() if (d := w.stats.get("capture"))]
        out: dict[str, Any] = {
            "enabled": True,
            "state": "on",
            "reason": None,
            "dir": docs[0]["dir"] if docs else None,
            "workers_reporting": len(docs),
        }
        reasons = [f"worker {i}: {d['reason']}" for i, d in enumerate(docs) if d["reason"]]
        if reasons:
            out["state"], out["reason"] = "disabled", "; ".join(reasons)
        for key in _CAPTURE_COUNTS:
            out[key] = self._gone_capture.get(key, 0) + sum(d.get(key, 0) for d in docs)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The workers as /v1/diagnostics lists them."""
        return [
            {
                "index": w.index,
                "pid": w.pid,
                "up": w.ready and w.channel is not None,
                "restarts": w.restarts,
                "open_connections": w.stats.get("open_connections", 0),
                "connections_total": w.stats.get("connections_total", 0),
                "in_flight": w.stats.get("in_flight", 0),
            }
            for w in self.workers
        ]

    def summary(self) -> str:
        live = sum(1 for w in self.workers if w.ready and w.channel is not None)
        open_ = self.plane.open_connections()
        return f"{live}/{len(self.workers)} workers up, {open_} connections open"

    def signal_all(self, sig: int) -> None:
        for w in self.procs():
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(w.proc.pid, sig)

    async def stop(self, wait_s: float) -> None:
        """SIGTERM every worker (each drains its requests), wait, then kill what is left."""
        self.stopping = True
        self.plane.draining = True
        if self._ticker is not None:
            self._ticker.cancel()
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(w.proc is None or w.proc.poll() is not None for w in self.procs()):
                break
            await asyncio.sleep(0.02)
        self.signal_all(signal.SIGKILL)
        for w in self.procs():
            if w.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(5)
        # Let the channels deliver what the workers wrote before they exited.
        deadline = time.monotonic() + 5
        while any(w.channel is not None for w in self.procs()):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for task in list(self._tasks):
            task.cancel()
        if self._reserve is not None:
            self._reserve.close()
