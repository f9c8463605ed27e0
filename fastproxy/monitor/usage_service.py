"""Usage tracking: one record per finished request, written to SQLite (or a shared
PostgreSQL database, ``usage_tracking.store``) by a recorder process.

With ``usage_tracking.enabled`` false the gateway makes no UsageService: no exchange
sink, no accounting, nothing on the hot path, no recorder process, and the usage
endpoints answer 503.

When on, ``on_exchange`` runs on the event loop once per request. It packs the record's
numbers, names and raw request body into one frame (``_speedups.pack_exchange``, straight
into the link's bytearray: no Python object per request) and the link hands the
iteration's frames to the recorder process in one write (storage/recorder_link.py).
The recorder (storage/recorder.py) unpacks each frame and builds the record with
`FrameCodec` below: prompt counting, session digest, cost, the store's row. So the loop
never parses, hashes, counts or touches the disk for usage, and the CPU for all of that
is spent in another interpreter.

The one thing a frame holds that can be large is the raw request body. Frames waiting on
the loop side (not yet taken by the recorder's socket) are bounded: with more than
``MAX_PENDING_BODY_BYTES`` pending, new records go without their body, and their records
say so (``ctp_prompt_tokens`` null, ``usage_source`` "backend" when the backend reported
usage, else "estimated"); with ``MAX_PENDING_BYTES`` pending they are dropped and
counted. A backed-up or restarting recorder therefore costs counts, not memory.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from .._speedups import fold_rollups, pack_exchange, unpack_exchanges
from ..config import Config
from ..config.loader import resolve_state_path
from ..config.schema import PriceEntry
from ..logs import configure_logging
from ..storage.recorder_link import RecorderLink
from .costs import PriceTable
from .usage_capture import UsageCapture
from .usage_projection import ExactCounter, Projector

if TYPE_CHECKING:
    from ..core.records import ExchangeRecord
    from ..storage.usage_schema import Prepared

__all__ = ["MAX_PENDING_BODY_BYTES", "MAX_PENDING_BYTES", "FrameCodec", "UsageCapture"]

log = logging.getLogger("fastproxy.usage")

# Frames pending on the loop side, request bodies included. 64 MiB is one maximal request
# (limits.max_body_bytes default): enough that a healthy recorder never hits it, small
# enough that a stalled one cannot grow the gateway by more.
MAX_PENDING_BODY_BYTES = 64 * 1024 * 1024
# Past the body bound, records go without bodies (a few hundred bytes each) up to this:
# tens of thousands of records, enough to ride out a recorder restart.
MAX_PENDING_BYTES = MAX_PENDING_BODY_BYTES + 16 * 1024 * 1024
# A body larger than this goes to the channel by reference instead of into the frame
# buffer: the gateway then holds a large request once, not twice.
INLINE_BODY_BYTES = 64 * 1024
# The recorder loads the codec by name (storage imports no monitoring module).
CODEC = f"{__name__}:recorder_codec"


class UsageService:
    """Implements the `ExchangeSink` seam (``on_exchange``) and owns the usage store the
    admin plane queries (a `RecorderLink`: reads here, writes in the recorder process);
    registers itself nowhere (the gateway plugs it in)."""

    def __init__(self, config: Config) -> None:
        self.config = config.usage_tracking
        self.log_level = config.log_level
        self.path = resolve_state_path(config, self.config.persistence_path)
        # The PostgreSQL store's DSN (docs/usage-storage.md), checked present at load.
        self.dsn: str | None = None
        if self.config.store == "postgresql":
            env_name = self.config.postgresql_dsn_env
            self.dsn = os.environ.get(env_name, "") if env_name else self.config.postgresql_dsn
        # Batches wait here while PostgreSQL is unreachable.
        self.spool_dir = resolve_state_path(config, "./var/usage-spool")
        self.store: RecorderLink | None = None

    async def start(self) -> None:
        cfg = self.config
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # The recorder reports the file it cannot open as degraded (health, metrics);
            # a usage database that cannot be written never keeps traffic from flowing.
            log.error(
                "usage: cannot create %s (%s); usage tracking is degraded",
                self.path.parent,
                exc.strerror or exc,
            )
        settings = orjson.dumps(
            {"pricing": msgspec.to_builtins(cfg.pricing), "log_level": self.log_level}
        ).decode()
        store = RecorderLink(
            self.path,
            flush_interval=cfg.flush_interval_seconds,
            max_queue=cfg.max_records_in_memory,
            retention_days=cfg.retention_days,
            codec=CODEC,
            settings=settings,
            body_limit=MAX_PENDING_BODY_BYTES,
            limit=MAX_PENDING_BYTES,
            dsn=self.dsn,
            spool_dir=self.spool_dir,
            spool_max_bytes=cfg.spool_max_bytes,
        )
        self.store = store
        # Returns once the recorder has the file open and migrated (reads need it), with
        # its exact tokenizer loaded, before the listeners take traffic.
        await store.launch()
        log.info("usage tracking: %s", store.where)

    async def stop(self) -> None:
        store = self.store
        if store is not None:
            # Waits (off the loop) until the recorder wrote every record: SIGTERM loses nothing.
            await store.close()

    # -- the hot path ------------------------------------------------------------------
    def on_exchange(self, rec: ExchangeRecord) -> None:
        link = self.store
        assert link is not None  # sinks are plugged in only once started
        pending = link.pending()
        if pending >= link.limit:
            link.link_dropped += 1
            return
        body = rec.request_body
        if body is not None and pending + len(body) > link.body_limit:
            body = None
            link.bodies_dropped += 1
        if body is not None and len(body) > INLINE_BODY_BYTES:
            pack_exchange(rec, body, link.out, True)
            link.add_body(body)
        else:
            pack_exchange(rec, body, link.out)
        link.packed()

    def status(self) -> dict[str, Any]:
        return dict(self.store.status()) if self.store is not None else {}


# -- the recorder process's side -----------------------------------------------------------
class FrameCodec:
    """The recorder's frame reader and row builder (storage/recorder.py loads it by name)."""

    __slots__ = ("projector",)

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    def unpack(self, buf: bytearray) -> tuple[list[Any], int]:
        return unpack_exchanges(buf)

    def build(self, frame: tuple[Any, ...]) -> Prepared:
        projector = self.projector
        try:
            return projector.prepared_frame(frame)
        except Exception as exc:
            _log_projection_error(exc)
            return projector.prepared_frame(frame, read_body=False)

    def fold_rollups(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """A batch's hourly and daily rollups, compiled (the store's SQL fold's work)."""
        return fold_rollups(rows)


def build_prepared(projector: Projector, capture: UsageCapture) -> Prepared:
    try:
        return projector.prepared(capture)
    except Exception as exc:
        _log_projection_error(exc)
        capture.body = None
        return projector.prepared(capture)


def _log_projection_error(exc: Exception) -> None:
    # A bug here must not lose the request: it is recorded without prompt facts.
    # Logged by type and place only: an exception's message may quote the body.
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    log.error(
        "usage: projecting a record failed (%s at %s:%s); stored without prompt facts",
        type(exc).__name__,
        frame.filename,
        frame.lineno,
    )


def recorder_codec(settings: str) -> FrameCodec:
    """Made in the recorder process from the gateway's settings (JSON: pricing, log level).
    Loads the exact tokenizer there (about a second), before the recorder reports ready."""
    doc = orjson.loads(settings)
    configure_logging(doc.get("log_level", "INFO"))
    pricing = msgspec.convert(doc.get("pricing") or {}, dict[str, PriceEntry])
    exact = ExactCounter.load()
    if exact is not None:
        log.info("usage: exact prompt counting for OpenAI models (quicktok)")
    return FrameCodec(Projector(PriceTable(pricing), exact))
