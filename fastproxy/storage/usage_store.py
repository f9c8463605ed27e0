"""UsageStore: the usage database behind ONE writer thread.

Why one thread: SQLite allows one writer at a time, and a blocking write on the event
loop would stall every stream (the reference project rewrote a JSON file under a lock on
the request path). The loop only calls `submit()`, a non-blocking put into a bounded
queue; a full queue drops the record and counts it, never blocking a request. Items may
be thunks, run here, so token counting happens off the loop too.

Failure policy (traffic is never affected): a failed batch is kept and retried (bounded
by the queue size), each kind of error is counted and logged once, and `status()` says
"degraded" until a write succeeds again. A file that is not a database is moved aside
(``<name>.corrupt-<UTC time>``) and a fresh one created, with a WARNING. `stop()` writes
every queued record before it returns (the SIGTERM path).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from . import usage_queries
from .usage_schema import INSERT, INSERT_RECORD, migrate

log = logging.getLogger("fastproxy.storage")

_STOP = object()
RETENTION_EVERY_S = 300.0
RETENTION_BATCH = 5000


class UsageStore:
    def __init__(self, path: str | Path, *, flush_interval: float, max_queue: int,
                 retention_days: int, batch_size: int = 500) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.retention_days = retention_days
        self.batch_size = batch_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._retry: list[tuple[Any, ...]] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self.dropped = 0
        self.write_errors = 0
        self.thunk_errors = 0
        self.rows_written = 0
        self._degraded = False
        self._logged: set[str] = set()
        self._last_retention = 0.0

    # -- loop side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fastproxy-usage-writer",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def submit(self, item: dict[str, Any] | Callable[[], dict[str, Any]]) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)  # blocks only if full: the writer is draining it meanwhile
        self._thread.join(timeout)
        self._thread = None

    def status(self) -> dict[str, Any]:
        return {
            "usage_db": "degraded" if self._degraded else "ok",
            "queue_depth": self._queue.qsize() + len(self._retry),
            "dropped_records": self.dropped,
            "write_errors": self.write_errors,
            "path": str(self.path),
        }

    # -- read side (any thread; the views call these via asyncio.to_thread) ------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        # Exports page through one read connection from successive worker threads (one
        # asyncio.to_thread per page); the use is sequential, never concurrent.
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5,
                               check_same_thread=False)
        try:
            yield conn
        finally:
            conn.close()

    def stats(self, filters: usage_queries.Filters) -> dict[str, Any]:
        with self._reader() as conn:
            return usage_queries.stats(conn, filters)

    def recent(self, filters: usage_queries.Filters, limit: int, offset: int) -> dict[str, Any]:
        with self._reader() as conn:
            return usage_queries.recent(conn, filters, limit, offset)

    def export_pages(self, filters: usage_queries.Filters,
                     page_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        with self._reader() as conn:
            yield from usage_queries.export_pages(conn, filters, page_size)

    def count(self, filters: usage_queries.Filters) -> int:
        with self._reader() as conn:
            return usage_queries.count(conn, filters)

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        self._open()
        self._ready.set()
        stopping = False
        while not stopping:
            batch: list[Any] = []
            try:
                batch.append(self._queue.get(timeout=self.flush_interval))
            except queue.Empty:
                pass
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [b for b in batch if b is not _STOP]
                # Drain everything still queued: nothing submitted before stop is lost.
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        batch.append(item)
            rows = [r for r in (self._row(item) for item in batch) if r is not None]
            self._write(rows, final=stopping)
            if not stopping:
                self._retention()
        if self._conn is not None:
            self._conn.close()

    def _row(self, item: Any) -> tuple[Any, ...] | None:
        try:
            record = item() if callable(item) else item
            return _to_row(record)
        except Exception:
            self.thunk_errors += 1
            self._log_once("record", "a usage record could not be built", exc=True)
            return None

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=0.5, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            migrate(conn)
            # Planner statistics: without them SQLite takes the backend_type index for a
            # filter that matches most rows and random-reads the table (20x slower).
            conn.execute("PRAGMA optimize=0x10002")
            self._conn = conn
        except sqlite3.DatabaseError as exc:
            if _is_corrupt(exc) and self._move_aside():
                self._open()
                return
            self._fail("open", exc)
        except OSError as exc:
            self._fail("open", exc)

    def _move_aside(self) -> bool:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.path.rename(target)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        except OSError as exc:
            self._fail("corrupt", exc)
            return False
        log.warning("usage database %s was not a database: moved aside to %s, started a new one",
                    self.path, target)
        return True

    def _write(self, rows: list[tuple[Any, ...]], final: bool) -> None:
        pending = self._retry + rows
        if not pending:
            return
        attempts = 5 if final else 1
        for attempt in range(attempts):
            if self._conn is None:
                self._open()
            conn = self._conn
            if conn is None:
                break
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(INSERT, [row[:-1] for row in pending])
                conn.executemany(INSERT_RECORD, [(row[0], row[-1]) for row in pending])
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if _is_corrupt(exc) and self._move_aside():
                    self._open()
                    continue
                self._fail(_kind(exc), exc)
                if final and attempt + 1 < attempts:
                    time.sleep(0.2)  # writer thread only: give a lock holder a moment
                continue
            self.rows_written += len(pending)
            self._retry = []
            if self._degraded:
                log.warning("usage database writable again; %d records written", len(pending))
            self._degraded = False
            return
        # Keep the batch for the next round, bounded: beyond the queue size, oldest go.
        overflow = len(pending) - self.max_queue
        if overflow > 0:
            self.dropped += overflow
            pending = pending[overflow:]
        self._retry = pending

    def _retention(self) -> None:
        if not self.retention_days or self._conn is None:
            return
        now = time.monotonic()
        if now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        cutoff = time.time() - self.retention_days * 86400
        try:
            self._conn.execute("PRAGMA optimize")
            while True:
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM usage WHERE ts < ? LIMIT ?", (cutoff, RETENTION_BATCH))]
                conn.executemany("DELETE FROM usage WHERE id = ?", [(i,) for i in ids])
                conn.executemany("DELETE FROM usage_record WHERE id = ?", [(i,) for i in ids])
                conn.execute("COMMIT")
                if len(ids) < RETENTION_BATCH:
                    break
        except sqlite3.Error as exc:
            self._fail("retention", exc)

    def _fail(self, kind: str, exc: BaseException) -> None:
        self.write_errors += 1
        self._degraded = True
        self._log_once(kind, f"usage database {self.path}: {kind} failed: {exc}")

    def _log_once(self, kind: str, message: str, exc: bool = False) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.error(message, exc_info=exc)


def _is_corrupt(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _kind(exc: BaseException) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    return "write"


def _to_row(r: dict[str, Any]) -> tuple[Any, ...]:
    ts_text = r["timestamp"]
    dt = datetime.fromisoformat(ts_text.replace("Z", "+00:00"))
    br = r.get("backend_reported_usage") or {}
    return (
        r["id"], dt.timestamp(), dt.weekday(), dt.hour, r.get("session_id"),
        r.get("frontend_type"), r.get("backend"), r.get("backend_type"),
        r.get("model_requested"), r.get("model_used"), int(bool(r.get("streaming"))),
        r.get("http_status_code"), r.get("outcome"), r.get("proxy_user"),
        r.get("ctp_prompt_tokens"), r.get("ptb_prompt_tokens"), r.get("btp_completion_tokens"),
        r.get("ptc_completion_tokens"), br.get("prompt"), br.get("completion"), br.get("total"),
        r.get("cost"), r.get("tool_call_count") or 0, r.get("ttft_ms"),
        r.get("total_duration_ms"), r.get("proxy_overhead_ms"), r.get("stream_tps"),
        orjson.dumps(r).decode(),
    )
