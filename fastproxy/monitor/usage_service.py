"""Usage tracking: one record per finished request, written to SQLite off the loop.

With ``usage_tracking.enabled`` false the gateway makes no UsageService: no exchange
sink, no accounting, nothing on the hot path, and the usage endpoints answer 503.

When on, ``on_exchange`` runs on the event loop once per request. It copies numbers and
names into a ``UsageCapture`` and queues it; the store hands it to ``build`` on its
writer thread, where the capture becomes the record (prompt counting, session digest,
cost) and at once the store's row (``Projector.prepared``). So the loop never parses,
hashes, counts or touches the disk for usage, and allocates one object per request.

The one thing the capture holds that can be large is the raw request body, kept until
the writer thread has counted its prompt. Those bodies are bounded together by
``MAX_PENDING_BODY_BYTES``: past it, new captures go without their body, and their
records say so (``ctp_prompt_tokens`` null, ``usage_source`` "backend" when the backend
reported usage, else "estimated"). A backed-up writer therefore costs counts, not memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..config.loader import resolve_state_path
from ..storage.usage_store import UsageStore
from .costs import PriceTable
from .usage_capture import UsageCapture
from .usage_projection import ExactCounter, Projector

if TYPE_CHECKING:
    from ..core.records import ExchangeRecord
    from ..storage.usage_schema import Prepared

log = logging.getLogger("fastproxy.usage")

# Request bodies waiting for the writer thread, all captures together. 64 MiB is one
# maximal request (limits.max_body_bytes default): enough that a healthy writer never
# hits it, small enough that a stalled one cannot grow the process by more.
MAX_PENDING_BODY_BYTES = 64 * 1024 * 1024


class PendingBodies:
    """Bytes of request bodies held by queued captures. Added on the loop, released on
    the writer thread, hence the lock (uncontended: two increments per request)."""

    __slots__ = ("_lock", "bytes", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self.dropped = 0  # captures that went without their body
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.bytes + n > self.limit:
                self.dropped += 1
                return False
            self.bytes += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.bytes -= n


class UsageService:
    """Implements the `ExchangeSink` seam (``on_exchange``) and owns the usage store the
    admin plane queries; registers itself nowhere (the gateway plugs it in)."""

    def __init__(self, config: Config) -> None:
        self.config = config.usage_tracking
        self.path = resolve_state_path(config, self.config.persistence_path)
        self.prices = PriceTable(self.config.pricing)
        self.pending = PendingBodies(MAX_PENDING_BODY_BYTES)
        self.projector: Projector | None = None
        self.store: UsageStore | None = None

    async def start(self) -> None:
        cfg = self.config
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # The store reports the file it cannot open as degraded (health, metrics);
            # a usage database that cannot be written never keeps traffic from flowing.
            log.error(
                "usage: cannot create %s (%s); usage tracking is degraded",
                self.path.parent,
                exc.strerror or exc,
            )
        # Loading the exact tokenizer (when installed) blocks for about a second; do it
        # now, before the listeners take traffic.
        exact = await asyncio.to_thread(ExactCounter.load)
        if exact is not None:
            log.info("usage: exact prompt counting for OpenAI models (quicktok)")
        self.projector = Projector(self.prices, exact)
        store = UsageStore(
            str(self.path),
            flush_interval=cfg.flush_interval_seconds,
            max_queue=cfg.max_records_in_memory,
            retention_days=cfg.retention_days,
            build=self.build,
        )
        await asyncio.to_thread(store.start)
        self.store = store
        log.info("usage tracking: %s", self.path)

    async def stop(self) -> None:
        store = self.store
        if store is not None:
            # Blocks until every queued record is written: the SIGTERM path loses nothing.
            await asyncio.to_thread(store.stop)

    # -- the hot path ------------------------------------------------------------------
    def on_exchange(self, rec: ExchangeRecord) -> None:
        body = rec.request_body
        size = len(body) if body is not None else 0
        keep = size == 0 or self.pending.reserve(size)
        capture = UsageCapture.take(rec, keep, size if keep else 0)
        store = self.store
        assert store is not None  # sinks are plugged in only once started
        if not store.submit(capture) and capture.held:
            self.pending.release(capture.held)  # dropped by a full queue: never built

    # -- the writer thread ---------------------------------------------------------------
    def build(self, capture: UsageCapture) -> Prepared:
        projector = self.projector
        assert projector is not None
        try:
            return projector.prepared(capture)
        except Exception as exc:
            # A bug here must not lose the request: record it without prompt facts.
            # Logged by type and place only: an exception's message may quote the body.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "usage: projecting a record failed (%s at %s:%s); stored without prompt facts",
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            capture.body = None
            return projector.prepared(capture)
        finally:
            if capture.held:
                self.pending.release(capture.held)
                capture.held = 0

    def status(self) -> dict[str, Any]:
        out = dict(self.store.status()) if self.store is not None else {}
        out["pending_body_bytes"] = self.pending.bytes
        out["bodies_dropped"] = self.pending.dropped
        return out
