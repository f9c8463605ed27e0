"""Activity tracking: one live entry per exchange, its bytes in ``_speedups`` counters.

Rules this module keeps (docs/activity.md has the reasons and the measured costs):

* **Off means absent.** With ``enable_activity_tracking`` false the gateway makes no tracker,
  the data plane's ``activity`` stays None and the relay tests one attribute per chunk, nothing more.
* **Keyed by exchange id**, never by (backend, session): two concurrent requests of one
  session are two entries (the reference project overwrote one with the other).
* **``count()`` is two counter adds.** Per-backend and global lifetime totals are *not*
  touched per chunk: an entry's bytes are folded into its backend's "retired" pair when
  it leaves, and readers add the live entries back. Both are exact at every read; the
  per-chunk cost halves (measured: 71 ns vs 169 ns per call, bench/micro/bench_activity.py).
* **Last activity is observed, not stamped.** Stamping a time per chunk would allocate a
  float per call; instead each reader (the sweep and every snapshot) compares an entry's
  byte total with the total it saw last time and stamps the time when it moved. So
  ``last_activity_at`` is never earlier than the real last byte, and at most one
  observation interval later.
* **Stale = silent since the last byte**, not old since the start: the sweep removes an
  entry whose observed silence reaches ``activity.stale_timeout_seconds`` (a long but
  live stream is never swept; the reference swept by start time).
* **A closed or swept entry points at its backend's retired pair**, so a late ``count()``
  (a swept stream that wakes up) still lands in the lifetime totals and can never write
  into a slot that a new entry now owns.

Counter layout (stable, so the blocks could live in shared memory for a multi-worker
mode): entry slots come from segments of ``segment_entries`` x ``STRIDE`` uint64s,
handed out from a free list; slot ``k`` of a segment holds ``[rx, tx, last_ms, seen]`` at
``4k .. 4k+3``. Backend ``b`` (its index in registration order) owns
``[retired_rx, retired_tx]`` at ``2b, 2b+1`` of the totals block.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from .._speedups import CounterBlock
from ..config import Config
from ..core.seams import ActivityHandle

log = logging.getLogger("fastproxy.monitor")

STRIDE = 4
RX, TX, LAST_MS, SEEN = 0, 1, 2, 3
SEGMENT_ENTRIES = 256  # 8 KiB per segment; a gateway with 10k live streams holds 40 segments
SPARE_BACKEND_SLOTS = 64  # names the data plane may report beyond the configured backends
OVERFLOW_BACKEND = "(other)"


class ActivityEntry:
    """One live exchange. The data plane calls ``count(rx, tx)`` once per relayed chunk."""

    __slots__ = (
        "_base",
        "_bidx",
        "_block",
        "_final_rx",
        "_final_tx",
        "_rx",
        "_slot",
        "_tx",
        "backend",
        "exchange_id",
        "live",
        "model",
        "session_id",
        "started_at",
        "started_ms",
        "streaming",
    )

    def __init__(
        self,
        exchange_id: int,
        backend: str,
        session_id: str | None,
        model: str | None,
        streaming: bool,
        block: CounterBlock,
        slot: int,
        base: int,
        bidx: int,
        started_ms: int,
    ) -> None:
        self.exchange_id = exchange_id
        self.backend = backend
        self.session_id = session_id
        self.model = model
        self.streaming = streaming
        self.started_at = time.time()  # wall clock, for display only
        self.started_ms = started_ms  # monotonic ms, for durations and staleness
        self.live = True
        self._block = block
        self._slot = slot
        self._base = base
        self._bidx = bidx
        # Absolute counter indices, kept as attributes so count() does no arithmetic
        # (an int above 256 would be a fresh object per call).
        self._rx = base + RX
        self._tx = base + TX
        self._final_rx = 0
        self._final_tx = 0

    def count(self, rx: int, tx: int) -> None:
        """Bytes received from the backend and written to the client for one chunk."""
        block = self._block
        block.add(self._rx, rx)
        block.add(self._tx, tx)

    @property
    def bytes_rx(self) -> int:
        return self._block.get(self._rx) if self.live else self._final_rx

    @property
    def bytes_tx(self) -> int:
        return self._block.get(self._tx) if self.live else self._final_tx

    def __repr__(self) -> str:
        return (
            f"ActivityEntry(id={self.exchange_id}, backend={self.backend!r}, "
            f"live={self.live}, rx={self.bytes_rx}, tx={self.bytes_tx})"
        )


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    exchange_id: int
    backend: str
    session_id: str | None
    model: str | None
    streaming: bool
    started_at: float  # UTC epoch seconds
    duration_seconds: float
    last_activity_at: float  # UTC epoch seconds
    bytes_rx: int
    bytes_tx: int


@dataclass(frozen=True, slots=True)
class BackendActivity:
    active_connections: int
    bytes_rx: int  # live entries only
    bytes_tx: int
    lifetime_bytes_rx: int  # everything ever counted for this backend
    lifetime_bytes_tx: int


@dataclass(frozen=True, slots=True)
class GlobalActivity:
    total_active_connections: int
    total_bytes_rx: int
    total_bytes_tx: int
    lifetime_bytes_rx: int
    lifetime_bytes_tx: int


@dataclass(frozen=True, slots=True)
class ActivitySnapshot:
    at: float  # UTC epoch seconds
    connections: list[ConnectionInfo]  # newest first
    backends: dict[str, BackendActivity]
    totals: GlobalActivity


class ActivityTracker:
    """The live table. Everything runs on the event loop thread; no locks."""

    def __init__(
        self,
        backends: Iterable[str] = (),
        *,
        stale_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        segment_entries: int = SEGMENT_ENTRIES,
        counter_block: type[CounterBlock] = CounterBlock,
    ) -> None:
        self.stale_timeout_s = stale_timeout_s
        self._clock = clock
        self._block_type = counter_block  # the tests pass each implementation explicitly
        self._seg = segment_entries
        self._segments: list[CounterBlock] = []
        self._free: list[int] = []
        self._live: dict[int, ActivityEntry] = {}
        names = list(dict.fromkeys(backends))
        capacity = len(names) + SPARE_BACKEND_SLOTS + 1
        self._capacity = capacity
        self._totals = counter_block(2 * capacity)
        self._bidx: dict[str, int] = {}
        self._names: list[str] = []
        for name in names:
            self._backend_index(name)
        self.opened_total = 0
        self.closed_total = 0
        self.swept_total = 0

    # -- the data plane's API -----------------------------------------------------------
    def open(
        self,
        exchange_id: int,
        backend: str,
        session_id: str | None,
        model: str | None,
        streaming: bool,
    ) -> ActivityEntry:
        old = self._live.get(exchange_id)
        if old is not None:
            self.close(old)  # an id is live at most once: never two entries per exchange
        if not self._free:
            self._grow()
        slot = self._free.pop()
        block = self._segments[slot // self._seg]
        base = (slot % self._seg) * STRIDE
        now_ms = self._now_ms()
        block.set(base + LAST_MS, now_ms)
        entry = ActivityEntry(
            exchange_id,
            backend,
            session_id,
            model,
            streaming,
            block,
            slot,
            base,
            self._backend_index(backend),
            now_ms,
        )
        self._live[exchange_id] = entry
        self.opened_total += 1
        return entry

    def close(self, handle: ActivityHandle) -> None:
        """The exchange ended (completion, error, abort). Idempotent; swept entries too.
        ``handle`` is an entry this tracker opened (the seam's type says only that it
        counts bytes)."""
        entry = cast(ActivityEntry, handle)
        if not entry.live:
            return
        if self._live.get(entry.exchange_id) is entry:
            del self._live[entry.exchange_id]
        self._retire(entry)
        self.closed_total += 1

    # -- readers --------------------------------------------------------------------------
    @property
    def active_connections(self) -> int:
        return len(self._live)

    def sweep(self) -> int:
        """Remove entries silent for ``stale_timeout_s``; returns how many went."""
        now_ms = self._now_ms()
        stale_ms = int(self.stale_timeout_s * 1000)
        gone = []
        for entry in self._live.values():
            silent_ms = now_ms - self._observe(entry, now_ms)[2]
            if silent_ms >= stale_ms:
                gone.append((entry, silent_ms))
        for entry, silent_ms in gone:
            del self._live[entry.exchange_id]
            self._retire(entry)
            log.info(
                "activity: swept stale entry id=%d backend=%s (no bytes for %.1fs)",
                entry.exchange_id,
                entry.backend,
                silent_ms / 1000,
            )
        self.swept_total += len(gone)
        return len(gone)

    def global_snapshot(self) -> GlobalActivity:
        """Totals only: cheap enough to poll (no per-connection objects)."""
        rx = tx = 0
        for entry in self._live.values():
            block = entry._block
            rx += block.get(entry._rx)
            tx += block.get(entry._tx)
        totals = self._totals.snapshot()
        return GlobalActivity(
            len(self._live), rx, tx, rx + sum(totals[0::2]), tx + sum(totals[1::2])
        )

    def snapshot(self) -> ActivitySnapshot:
        """Every live connection and per-backend figures, observed now."""
        now_ms = self._now_ms()
        wall = time.time()
        conns: list[ConnectionInfo] = []
        per: dict[str, list[int]] = {name: [0, 0, 0] for name in self._names}
        for entry in self._live.values():
            rx, tx, last_ms = self._observe(entry, now_ms)
            conns.append(
                ConnectionInfo(
                    entry.exchange_id,
                    entry.backend,
                    entry.session_id,
                    entry.model,
                    entry.streaming,
                    entry.started_at,
                    max(0, now_ms - entry.started_ms) / 1000,
                    wall - max(0, now_ms - last_ms) / 1000,
                    rx,
                    tx,
                )
            )
            acc = per.setdefault(entry.backend, [0, 0, 0])
            acc[0] += 1
            acc[1] += rx
            acc[2] += tx
        totals = self._totals.snapshot()
        backends: dict[str, BackendActivity] = {}
        for name, (n, rx, tx) in per.items():
            # A name past the capacity has no pair of its own (its retired bytes are in
            # the shared overflow pair, which the global lifetime totals include).
            i = self._bidx.get(name)
            retired_rx = totals[2 * i] if i is not None else 0
            retired_tx = totals[2 * i + 1] if i is not None else 0
            backends[name] = BackendActivity(n, rx, tx, rx + retired_rx, tx + retired_tx)
        conns.sort(key=lambda c: c.exchange_id, reverse=True)
        live_rx = sum(b.bytes_rx for b in backends.values())
        live_tx = sum(b.bytes_tx for b in backends.values())
        return ActivitySnapshot(
            wall,
            conns,
            backends,
            GlobalActivity(
                len(self._live),
                live_rx,
                live_tx,
                live_rx + sum(totals[0::2]),
                live_tx + sum(totals[1::2]),
            ),
        )

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -- internals -------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _grow(self) -> None:
        n = len(self._segments)
        self._segments.append(self._block_type(self._seg * STRIDE))
        first = n * self._seg
        # Reversed so pop() hands out the lowest slot first (dense, cache-friendly).
        self._free.extend(range(first + self._seg - 1, first - 1, -1))

    def _backend_index(self, name: str) -> int:
        i = self._bidx.get(name)
        if i is not None:
            return i
        if len(self._names) >= self._capacity - 1:
            # The totals block is never reallocated (detached entries point into it), so
            # names beyond its capacity share one last pair.
            name = OVERFLOW_BACKEND
            i = self._bidx.get(name)
            if i is not None:
                return i
        i = len(self._names)
        self._bidx[name] = i
        self._names.append(name)
        return i

    def _observe(self, entry: ActivityEntry, now_ms: int) -> tuple[int, int, int]:
        """(rx, tx, last_ms), stamping last activity now if bytes moved since last time."""
        block, base = entry._block, entry._base
        rx = block.get(base + RX)
        tx = block.get(base + TX)
        if rx + tx != block.get(base + SEEN):
            block.set(base + SEEN, rx + tx)
            block.set(base + LAST_MS, now_ms)
            return rx, tx, now_ms
        return rx, tx, block.get(base + LAST_MS)

    def _retire(self, entry: ActivityEntry) -> None:
        """Fold the entry's bytes into its backend's pair and free its slot."""
        block, base = entry._block, entry._base
        rx = block.get(base + RX)
        tx = block.get(base + TX)
        totals = self._totals
        i = 2 * entry._bidx
        totals.add(i, rx)
        totals.add(i + 1, tx)
        for k in range(STRIDE):
            block.set(base + k, 0)
        self._free.append(entry._slot)
        entry.live = False
        entry._final_rx = rx
        entry._final_tx = tx
        # Late counts now land in the lifetime totals, never in a reused slot.
        entry._block = totals
        entry._rx = i
        entry._tx = i + 1


class ActivityService:
    """Owns the tracker (the `LiveActivity` seam the data plane counts into) and its
    sweep timer. Registers itself nowhere: the gateway hands the tracker to the plane."""

    def __init__(
        self, config: Config, backends: Iterable[str], loop: asyncio.AbstractEventLoop
    ) -> None:
        cfg = config.activity
        self._loop = loop
        self._interval = cfg.sweep_interval_seconds
        self.tracker = ActivityTracker(backends, stale_timeout_s=cfg.stale_timeout_seconds)
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._sweep)
        log.info(
            "activity tracking on (stale after %.0fs, swept every %.1fs)",
            self.tracker.stale_timeout_s,
            self._interval,
        )

    def _sweep(self) -> None:
        try:
            self.tracker.sweep()
        except Exception:  # a bug here must not stop future sweeps
            log.exception("activity sweep failed")
        self._timer = self._loop.call_later(self._interval, self._sweep)

    async def stop(self) -> None:
        # The tracker stays usable: requests finishing during the drain still close
        # their entries through it.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
