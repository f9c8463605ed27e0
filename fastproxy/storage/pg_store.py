"""The PostgreSQL usage store: `UsageStore`'s writer thread, queue and batches, writing
to a database that several gateways (and their workers) share.

What it keeps from the SQLite store: the loop-side `submit` (a bounded deque, never
blocking), the writer thread and its batches, record building off the loop, `stop()`
writing everything queued, the read entry points (through pg_reader's dialect layer, so
the answers are the SQLite store's). What is its own:

- Each record gets an id before it is written or spooled: (origin, oseq), ``origin``
  random per store (one recorder process), ``oseq`` counting from 1. The table is unique
  on it and the batch insert skips what is already there, so a batch written twice
  (replayed from the spool, retried after a commit whose answer was lost) is stored
  once, and its rollups count only the rows that went in (pg_schema.WRITE_BATCH).
- A batch that cannot be written because the database is unreachable goes to the spool
  (pg_spool.py), and so does every later batch until the spool has been replayed, so
  records reach the database in the order they were made. One WARNING when spooling
  starts, one when the spool has been replayed; `status()` says ``spooling`` with the
  spool's size meanwhile. Reconnecting is tried at most every ``RECONNECT_S``.
- Migrations are versioned (pg_schema.MIGRATIONS, table ``schema_migrations``) and
  applied under an advisory lock; retention takes another, so one gateway deletes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import psycopg

from ..core.seams import StorageStatusDoc
from .pg_reader import connect, pg_reader_conn
from .pg_schema import (
    COPY_STAGE,
    CREATE_MIGRATIONS,
    CREATE_STAGE,
    INSERT_DIM,
    MIGRATE_LOCK,
    MIGRATIONS,
    RETENTION_LOCK,
    SELECT_DIM,
    VERSION,
    WRITE_BATCH,
    describe,
)
from .pg_spool import Spool, SpoolItem
from .usage_schema import SUBTRACT_HOURS_FROM_DAILY, Prepared
from .usage_store import RETENTION_BATCH, RETENTION_BATCHES_PER_ROUND, RETENTION_EVERY_S, UsageStore

log = logging.getLogger("fastproxy.storage")

RECONNECT_S = 1.0
STATEMENT_TIMEOUT_MS = 60_000
_STREAMING = 5  # the streaming flag's place in a prepared row (an int column)
# Errors of a record's values: the batch is written item by item and the bad one skipped.
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, OverflowError, TypeError, ValueError)
# Two writers upserting the same rollup groups: the loser's batch is simply written again.
_RETRY_ERRORS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class SchemaTooNew(Exception):
    """The database was migrated by a newer fastproxy: nothing is written to it."""


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the missing steps of MIGRATIONS, each in its own transaction, under a
    session advisory lock (two gateways starting at once: the second waits, then finds
    nothing to do). Returns the version the database had."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
    try:
        conn.execute(CREATE_MIGRATIONS)
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        had = int(row[0]) if row is not None else 0
        if had > VERSION:
            raise SchemaTooNew(
                f"usage schema version {had} is newer than this fastproxy's {VERSION}"
            )
        for version, name, statements in MIGRATIONS:
            if version <= had:
                continue
            with conn.transaction():
                for stmt in statements:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
            log.info("usage database: applied migration %d (%s)", version, name)
        return had
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))


def prune(conn: psycopg.Connection[Any], cutoff: float, batch: int, max_slices: int) -> bool:
    """usage_retention.prune for PostgreSQL: whole hours per transaction, rollups kept
    exact. Each slice holds the retention advisory lock; when another gateway holds it,
    this one leaves retention to it. True when more remain."""
    limit = (cutoff // 86400) * 86400.0
    for _ in range(max_slices):
        with conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,)).fetchone()
            if not (got and got[0]):
                return False
            first = conn.execute("SELECT min(ts) FROM usage_requests").fetchone()
            if first is None or first[0] is None or first[0] >= limit:
                return False
            nth = conn.execute(
                "SELECT ts FROM usage_requests WHERE ts < %s ORDER BY ts LIMIT 1 OFFSET %s",
                (limit, batch - 1),
            ).fetchone()
            end = limit if nth is None else (nth[0] // 3600) * 3600.0
            end = max(end, (first[0] // 3600) * 3600.0 + 3600.0)
            end_hour = int(end // 3600)
            conn.execute(
                "DELETE FROM usage_records WHERE seq IN "
                "(SELECT seq FROM usage_requests WHERE ts < %s)",
                (end,),
            )
            conn.execute("DELETE FROM usage_requests WHERE ts < %s", (end,))
            conn.execute(SUBTRACT_HOURS_FROM_DAILY.replace("?", "%s"), (end_hour,))
            conn.execute("DELETE FROM usage_daily WHERE n <= 0")
            conn.execute("DELETE FROM usage_hourly WHERE hour < %s", (end_hour,))
    return True


class PgUsageStore(UsageStore):
    def __init__(
        self,
        dsn: str,
        *,
        spool_dir: Path,
        spool_max_bytes: int,
        flush_interval: float,
        max_queue: int,
        retention_days: int,
        batch_size: int = 500,
        build: Callable[[Any], Prepared] | None = None,
        on_write: Callable[[], None] | None = None,
        courtesy: str = "yield",
        on_backlog: Callable[[bool], bool] | None = None,
    ) -> None:
        super().__init__(
            spool_dir,
            flush_interval=flush_interval,
            max_queue=max_queue,
            retention_days=retention_days,
            batch_size=batch_size,
            build=build,
            on_write=on_write,
            courtesy=courtesy,
            on_backlog=on_backlog,
            dsn=dsn,
        )
        self.where = describe(dsn)
        self.origin = uuid.uuid4().hex[:16]
        self._oseq = 1
        self.spool = Spool(spool_dir, spool_max_bytes, self.origin)
        self._pg: psycopg.Connection[Any] | None = None
        self._spooling = False
        self._next_connect = 0.0
        self._spooled_records = 0  # records in the spool now (this process's count)
        self._too_new = False

    def status(self) -> StorageStatusDoc:
        doc: dict[str, Any] = dict(super().status())
        spooling = self._spooling
        doc.update(
            usage_db="degraded" if self._too_new else "spooling" if spooling else "ok",
            path=self.where,
            store="postgresql",
            spool_bytes=self.spool.size,
            spool_records=self._spooled_records,
            spool_dropped=self.spool.dropped,
        )
        doc["dropped_records"] = int(doc["dropped_records"]) + self.spool.dropped
        return cast(StorageStatusDoc, doc)

    @property
    def degraded(self) -> bool:
        # Spooling is not degraded for the recorder's read-ahead: the writer keeps taking
        # batches (to disk), so backpressure still applies instead of reading ahead.
        return self._too_new

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        self._connect(first=True)
        if self._pg is not None and self.spool.pending():
            self._replay()  # batches an earlier run left on disk
        self._ready.set()
        while not self._stopping.is_set():
            items = self._collect()
            self._write(self._prepare_all(items))
            self._maintain()
        self._drain()
        if self._spooling and self._connect():
            self._replay()
        self.spool.close()
        self._close_pg()

    def _connect(self, first: bool = False) -> bool:
        """Open (and migrate) the writer's connection; False when the database cannot
        be reached now (tried again after RECONNECT_S)."""
        if self._pg is not None:
            return True
        now = time.monotonic()
        if not first and now < self._next_connect:
            return False
        self._next_connect = now + RECONNECT_S
        try:
            conn = connect(self._dsn or "", application_name="fastproxy-usage-writer")
            try:
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                migrate(conn)
                conn.execute(CREATE_STAGE)
                self._dims = {
                    tuple(r[1:]): r[0]
                    for r in conn.execute(
                        "SELECT dim, backend, backend_type, frontend_type, model_requested, "
                        "model_used, proxy_user, api, outcome, key_name, team FROM usage_dims"
                    )
                }
            except BaseException:
                conn.close()
                raise
        except SchemaTooNew as exc:
            self._too_new = True
            self._log_once("too-new", "usage database %s: %s; nothing is written", self.where, exc)
            return False
        except psycopg.Error as exc:
            if first:
                self._start_spooling(exc)
            return False
        self._pg = conn
        return True

    def _close_pg(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(psycopg.Error):
                self._pg.close()
            self._pg = None

    def _start_spooling(self, exc: BaseException) -> None:
        self._close_pg()
        self.write_errors += 1
        if not self._spooling:
            self._spooling = True
            log.warning(
                "usage database %s unreachable (%s); records go to the spool %s until it is back",
                self.where,
                type(exc).__name__,
                self.spool.dir,
            )

    def _ids(self, prepared: list[Prepared]) -> tuple[int, list[SpoolItem]]:
        first = self._oseq
        self._oseq += len(prepared)
        return first, [(list(key), list(row), text) for key, _hour, row, text in prepared]

    def _write(self, prepared: list[Prepared], final: bool = False) -> bool:
        """Write ``prepared`` (or spool it); always True: what cannot be kept is counted."""
        if not prepared:
            self._in_hand = 0
            if self._spooling and self._connect():
                self._replay()
            return True
        first, items = self._ids(prepared)
        if self._spooling and self._connect():
            self._replay()
        if not self._spooling:
            try:
                self._store(self.origin, first, items)
            except psycopg.Error as exc:
                self._start_spooling(exc)
        if self._spooling:
            self._keep_on_disk(first, items)
        self._in_hand = 0
        self._notify()
        return True

    def _keep_on_disk(self, first: int, items: list[SpoolItem]) -> None:
        if self.spool.append(first, items):
            self._spooled_records += len(items)
        else:
            self._log_once(
                "spool-full",
                "usage spool %s is full (%d bytes, usage_tracking.spool_max_bytes); "
                "records are dropped and counted until the database is back",
                self.spool.dir,
                self.spool.max_bytes,
            )

    def _replay(self) -> None:
        """Write every spooled batch, oldest first; stop at the first failure (the
        batches stay on disk and the store keeps spooling)."""
        replayed = 0
        try:
            for _path, origin, first, items in self.spool.replay():
                replayed += self._store(origin, first, items)
                self._spooled_records = max(0, self._spooled_records - len(items))
        except psycopg.Error as exc:
            self._close_pg()
            self._spooling = True
            self._log_once("replay", "usage spool replay stopped (%s)", type(exc).__name__)
            return
        if self._spooling:
            self._spooling = False
            self._spooled_records = 0
            log.warning(
                "usage database %s reachable again; %d spooled records written",
                self.where,
                replayed,
            )

    def _store(self, origin: str, first: int, items: list[SpoolItem]) -> int:
        """One batch in one transaction; returns the rows newly stored. A batch that
        fails on its values is written item by item, skipping the bad ones."""
        conn = self._pg
        if conn is None:
            raise psycopg.OperationalError("not connected")
        for attempt in range(3):
            try:
                written = self._insert_batch(conn, origin, first, items)
                break
            except _RETRY_ERRORS:
                if attempt == 2:
                    raise
            except _DATA_ERRORS:
                written = 0
                for i, item in enumerate(items):
                    try:
                        written += self._insert_batch(conn, origin, first + i, [item])
                    except _DATA_ERRORS as exc:
                        self.record_errors += 1
                        self._log_once(
                            "record-data",
                            "a usage record could not be stored (%s); it is skipped",
                            type(exc).__name__,
                        )
                break
        self.rows_written += written
        self.batches_written += 1
        return written

    def _dim(self, conn: psycopg.Connection[Any], key: tuple[Any, ...]) -> int:
        dim = self._dims.get(key)
        if dim is None:
            # Outside the batch's transaction: a dim is harmless if its batch fails, and
            # two gateways adding the same one at once both read back the single row.
            conn.execute(INSERT_DIM, key)
            row = conn.execute(SELECT_DIM, key).fetchone()
            assert row is not None
            dim = self._dims[key] = int(row[0])
        return dim

    def _insert_batch(
        self, conn: psycopg.Connection[Any], origin: str, first: int, items: list[SpoolItem]
    ) -> int:
        staged = []
        for i, (key, row, text) in enumerate(items):
            values = list(row)
            values[_STREAMING] = int(values[_STREAMING])
            staged.append(
                (origin, first + i, text, values[0], self._dim(conn, tuple(key)), *values[1:])
            )
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY_STAGE) as copy:
                for r in staged:
                    copy.write_row(r)
            got = cur.execute(WRITE_BATCH).fetchone()
        return int(got[0]) if got is not None else 0

    # -- housekeeping ------------------------------------------------------------------
    def _maintain(self) -> None:
        if self._spooling:
            if self._connect():
                self._replay()
            return
        conn = self._pg
        if not self.retention_days or conn is None:
            return
        now = time.monotonic()
        if now < self._next_retention:
            return
        try:
            more = prune(
                conn,
                time.time() - self.retention_days * 86400.0,
                RETENTION_BATCH,
                RETENTION_BATCHES_PER_ROUND,
            )
        except psycopg.Error as exc:
            self._log_once("retention", "usage retention failed (%s)", type(exc).__name__)
            more = False
        self._next_retention = now if more else now + RETENTION_EVERY_S

    # -- reads: the dialect layer under the SQLite store's queries -------------------------
    def _reader(self) -> sqlite3.Connection:
        return pg_reader_conn(self._dsn or "")
