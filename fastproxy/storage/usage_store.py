"""UsageStore: the usage database behind ONE writer thread.

Rules of this module, and why:

- Only the writer thread writes. SQLite allows one writer at a time, and a blocking
  write on the event loop would stall every stream (the reference rewrote a JSON file
  under a lock on the request path). The loop only calls `submit()`: an append to a bounded
  deque. A full queue drops the item and counts it; it never blocks.
- The loop never wakes the writer per item. A `queue.Queue` put notifies a waiting
  consumer every time: one thread wake-up and GIL hand-over per request, for nothing, as
  the writer only acts on batches. Items go into a deque (append is atomic under the
  GIL); the writer sleeps on an Event that is set only when a batch is full, on stop, or
  after ``flush_interval``. (Measured end to end the change is within the noise: the
  cost of usage tracking is the writer's work, docs/BENCHMARKS.md.)
- Items may be thunks, run here, or anything the store's ``build`` callable turns into a
  row (the usage service's captures), so token counting and cost happen off the loop and
  the loop allocates no closure per request.
- Batches: the writer collects for up to ``flush_interval`` seconds or ``batch_size``
  items, then writes them in ONE transaction (rows, JSON records, hourly rollup and any
  new dimension rows together, so the rollup always equals the rows).
- Failures never reach callers. A failed batch is kept and retried next round (bounded
  by ``max_queue``: beyond it the oldest are dropped and counted); each kind of error is
  counted and logged once; `status()` says "degraded" until a write succeeds again. A
  file that is not a database is moved aside (``<name>.corrupt-<UTC time>``) and a fresh
  one created, with a WARNING. A file replaced or deleted under us is reopened. A thunk
  that raises is counted and logged, and the writer goes on.
- `stop()` writes every queued item before it returns (the SIGTERM path), retrying a
  locked database until its deadline.
- Reads (stats/recent/export) use their own read-only connections from any thread; WAL
  lets them run beside the writer.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.seams import StorageStatusDoc
from . import usage_export, usage_queries, usage_replacement
from .usage_files import error_kind, file_id, is_corrupt, set_aside, set_aside_logs
from .usage_retention import prune
from .usage_schema import (
    DIM_COLUMNS,
    INSERT_DIM,
    INSERT_RECORD,
    INSERT_REQUEST,
    ROLLUP_BATCH_DAILY,
    ROLLUP_BATCH_HOURLY,
    UPSERT_DAILY,
    UPSERT_HOURLY,
    Prepared,
    RollupFold,
    migrate,
    prepare,
)

log = logging.getLogger("fastproxy.storage")

RETENTION_EVERY_S = 300.0
RETENTION_BATCH = 5000  # about this many rows per delete transaction: no long stalls
RETENTION_BATCHES_PER_ROUND = 20  # then back to writing; the rest goes next round
AT_EXIT_TIMEOUT_S = 5.0
# How a writer shares its core (the store's ``courtesy``), and why:
#
# "yield", the writer thread in the gateway's own process. It shares a core with the event
# loop whenever the machine is busy (always where the gateway is pinned to one core). A
# batch is 10-25 ms of CPU, and the kernel lets a running thread go on for its time slice
# before a woken event loop gets the core, so a request that arrived mid-batch waited up
# to ~3 ms (c=1: p99 3.3 ms with usage tracking on, 0.6 ms off). A yield every
# YIELD_EVERY records hands the core to a runnable loop; with nothing else runnable it
# returns at once.
#
# "nap", the recorder process. Its core is shared with whatever else runs there (a
# client, a backend, another worker), usually in other sessions, and Linux schedules each
# session as a group (autogroup): a yield, SCHED_IDLE or a nice value only rank the
# recorder against its own session, never against them. A process woken in another
# group waits until the recorder's group has used its slice, 1-5 ms measured, so a burst
# of records made the c=1 p99 2-2.5 ms with usage on against 0.3 ms off. A sleep is the
# one thing every scheduler honours: the recorder stops for a moment after every
# NAP_SLICE_S of work, and a woken peer waits at most one slice.
#
# Either way only while the writer keeps up: pausing gives the others more than a fair
# share of the core, so at saturation the queue would grow without end; past one batch of
# backlog the writer stops pausing until it has caught up. docs/BENCHMARKS.md.
YIELD_EVERY = 32
ROLLUP_SLICE = 128  # rows folded into the rollups per statement, then a pause
NAP_SLICE_S = 100e-6  # work between naps: what a woken peer may wait at most
NAP_S = 1e-6  # asks for the shortest sleep; the timer's slack makes it ~50 µs
NAP_ROWS = 8  # rows per INSERT between naps (~11 µs each)
COURTESIES = ("yield", "nap", "none")
_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
_nap: Callable[[float], None] = time.sleep
# Errors that come from a record's values rather than from the file (the file's own
# errors are OperationalError / DatabaseError: locked, full, read-only, corrupt).
_DATA_ERRORS = (
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)


class UsageStore:
    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float,
        max_queue: int,
        retention_days: int,
        batch_size: int = 500,
        build: Callable[[Any], Prepared] | None = None,
        on_write: Callable[[], None] | None = None,
        pragmas: tuple[str, ...] = (),
        fold: RollupFold | None = None,
        courtesy: str = "yield",
        on_backlog: Callable[[bool], bool] | None = None,
        dsn: str | None = None,
    ) -> None:
        self.path = Path(path)
        # A PostgreSQL store (pg_store.py; a RecorderLink whose recorder writes to one):
        # reads go there through pg_reader's dialect layer instead of to the file.
        self._dsn = dsn
        self._build = build
        # Called on the writer thread after each write attempt (success or failure): the
        # recorder process reports its status to the gateway at once.
        self._on_write = on_write
        self._pragmas = pragmas  # extra PRAGMAs for the writer's connection (the recorder's)
        # The batch's rollups folded outside SQL (the recorder's compiled fold), else in SQL.
        self._fold = fold
        # How the writer shares its core: "yield", "nap" or "none" (module text).
        if courtesy not in COURTESIES:
            raise ValueError(f"courtesy must be one of {COURTESIES}, not {courtesy!r}")
        self._courtesy_kind = courtesy
        self._slice_at = 0.0  # writer thread: when its work since the last nap began
        # Called on the writer thread when it falls a batch behind (True) and when it has
        # caught up again (False): the recorder competes for its core only while behind.
        # It returns False when the change could not be made yet (asked again later).
        self._on_backlog = on_backlog
        self._backlogged = False
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.retention_days = retention_days
        self.batch_size = batch_size
        self._items: deque[Any] = deque()
        self._wake = threading.Event()  # a full batch is waiting, or stop() was called
        self.taken = threading.Event()  # set when the writer takes items off the queue
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = math.inf
        # Counters: each written by exactly one thread (no lock needed), summed on read.
        self._dropped_full = 0  # loop thread: queue full at submit()
        self._dropped_writer = 0  # writer thread: retry overflow, unwritable at stop
        self.write_errors = 0
        self.record_errors = 0  # items (thunks) that raised or were not records
        self.rows_written = 0
        self.batches_written = 0  # transactions that committed rows
        self._in_hand = 0  # writer thread: items taken off the queue, not yet kept
        # Writer-thread state.
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._retry: list[Prepared] = []
        self._dims: dict[tuple[Any, ...], int] = {}
        self._next_seq = 1
        self._degraded = False
        self._logged: set[str] = set()
        self._last_kind = ""
        self._next_retention = 0.0

    # -- loop side -----------------------------------------------------------------
    def start(self) -> None:
        """Start the writer; returns once it has opened (or failed to open) the file."""
        if self._thread is not None:
            return
        self._ready.clear()
        self._stopping.clear()
        self._stop_deadline = math.inf
        self._thread = threading.Thread(
            target=self._run, name="fastproxy-usage-writer", daemon=True
        )
        self._thread.start()
        # An interpreter that exits without stop() (an unhandled error in the gateway, a
        # script that forgot) still writes what is queued: atexit runs while daemon
        # threads are alive. Bounded, so a locked file cannot hold the exit for long.
        atexit.register(self._stop_at_exit)
        self._ready.wait(60)  # a migration of a large v1 file may take a while

    def submit(self, item: Any) -> bool:
        """Queue a record dict, a thunk making one (a dict, or its row already prepared),
        or an item for ``build``. Never blocks; False = dropped."""
        if self._thread is None or self._stopping.is_set():
            self._dropped_full += 1
            return False
        items = self._items
        n = len(items)
        if n >= self.max_queue:
            self._dropped_full += 1
            return False
        items.append(item)
        if n + 1 == self.batch_size:  # once per batch: the writer's only wake-up call
            self._wake.set()
        return True

    def submit_many(self, batch: list[Any]) -> int:
        """`submit` for several items at once (the recorder's read of a socket's worth);
        returns how many were queued, the rest are dropped and counted."""
        if self._thread is None or self._stopping.is_set():
            self._dropped_full += len(batch)
            return 0
        items = self._items
        n = len(items)
        take = max(0, min(len(batch), self.max_queue - n))
        if take < len(batch):
            self._dropped_full += len(batch) - take
            batch = batch[:take]
        items.extend(batch)
        if n < self.batch_size <= n + take:  # crossed a full batch: wake the writer once
            self._wake.set()
        return take

    def queued(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        """The queue holds ``max_queue`` items: a `submit` now would be dropped."""
        return len(self._items) >= self.max_queue

    @property
    def degraded(self) -> bool:
        return self._degraded

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then close. Blocking: call it off the loop."""
        thread = self._thread
        if thread is None:
            return
        atexit.unregister(self._stop_at_exit)
        # Keep a second for the join itself; the writer gives up retrying at this time.
        self._stop_deadline = time.monotonic() + max(0.0, timeout - 1.0)
        self._stopping.set()
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error(
                "usage writer did not finish within %.1fs; %d records still queued",
                timeout,
                len(self._items) + len(self._retry),
            )
        self._thread = None

    def _stop_at_exit(self) -> None:
        self.stop(timeout=AT_EXIT_TIMEOUT_S)

    def status(self) -> StorageStatusDoc:
        return {
            "usage_db": "degraded" if self._degraded else "ok",
            "queue_depth": len(self._items) + self._in_hand + len(self._retry),
            "dropped_records": self._dropped_full + self._dropped_writer,
            "write_errors": self.write_errors,
            "path": str(self.path),
        }

    # -- read side: any thread (the views call these through asyncio.to_thread) --------
    def _reader(self) -> sqlite3.Connection:
        if self._dsn is not None:
            from .pg_reader import pg_reader_conn  # psycopg is an optional extra

            return pg_reader_conn(self._dsn)
        return usage_queries.open_reader(self.path)

    def stats(self, filters: usage_queries.Filters) -> dict[str, Any]:
        with contextlib.closing(self._reader()) as conn:
            return usage_queries.stats(conn, filters)

    def spend(
        self, month_day: int, today: int
    ) -> tuple[
        dict[str, dict[str, usage_queries.Spend]], dict[str, dict[str, usage_queries.Spend]]
    ]:
        """Each named key's and team's requests and cost this UTC day and month
        (`usage_queries.spend`): GET /v1/keys."""
        with contextlib.closing(self._reader()) as conn:
            return usage_queries.spend(conn, month_day, today)

    def recent(self, filters: usage_queries.Filters, limit: int, offset: int) -> dict[str, Any]:
        with contextlib.closing(self._reader()) as conn:
            return usage_export.recent(conn, filters, limit, offset)

    def replacement_groups(self, since: float) -> list[usage_replacement.Group]:
        """Replaced and original requests since ``since``, grouped (effectiveness)."""
        return usage_replacement.replacement_groups(self.path, since, self._dsn)

    def count(self, filters: usage_queries.Filters) -> int:
        with contextlib.closing(self._reader()) as conn:
            return usage_queries.count(conn, filters)

    def open_export(
        self, filters: usage_queries.Filters, page_size: int = 1000
    ) -> usage_export.ExportCursor:
        """An export over one consistent snapshot: ``record_count`` then ``pages()``.
        Close it (it is a context manager) to release the read connection."""
        return usage_export.ExportCursor(self._reader(), filters, page_size)

    def export_pages(
        self, filters: usage_queries.Filters, page_size: int = 1000
    ) -> Iterator[list[dict[str, Any]]]:
        with self.open_export(filters, page_size) as cursor:
            yield from cursor.pages()

    # -- the writer thread -----------------------------------------------------------
    def _run(self) -> None:
        self._open()
        self._ready.set()
        while not self._stopping.is_set():
            items = self._collect()
            self._write(self._prepare_all(items))
            self._maintain()
        self._drain()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()
            self._conn = None

    def _collect(self) -> list[Any]:
        """Up to ``batch_size`` items: at once when that many wait, else after
        ``flush_interval`` with whatever came (or at stop)."""
        items = self._items
        if len(items) < self.batch_size and not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
        self._wake.clear()
        self._slice_at = time.monotonic()
        batch = self._take(self.batch_size)
        backlogged = len(items) >= self.batch_size
        if backlogged:
            self._wake.set()  # a backlog: go straight on with the next batch
        if backlogged != self._backlogged and (
            self._on_backlog is None or self._on_backlog(backlogged)
        ):
            self._backlogged = backlogged
        return batch

    def _take(self, limit: int) -> list[Any]:
        items = self._items
        batch: list[Any] = []  # the queue's items: records, thunks or captures for build
        while len(batch) < limit:
            try:
                batch.append(items.popleft())
            except IndexError:
                break
        self._in_hand = len(batch)
        if batch:
            self.taken.set()
        return batch

    def _drain(self) -> None:
        """The stop path: write every item still queued, in batch-size transactions. A
        locked database is retried until the stop deadline; a full disk or a read-only
        file will not heal in seconds, so they get three tries."""
        while True:
            items = self._take(self.batch_size)
            prepared = self._prepare_all(items)
            if not prepared and not self._retry:
                return
            tries = 0
            while not self._write(prepared, final=True):
                prepared = []  # now in self._retry
                tries += 1
                if (self._last_kind != "locked" and tries >= 3) or (
                    time.monotonic() >= self._stop_deadline
                ):
                    lost = len(self._retry) + len(self._items)
                    self._dropped_writer += lost
                    log.error(
                        "usage database %s: %d records could not be written before "
                        "shutdown; last error: %s",
                        self.path,
                        lost,
                        self._last_kind,
                    )
                    self._retry = []
                    return
                time.sleep(0.1)  # writer thread only: give a lock holder a moment

    def _prepare_all(self, items: list[Any]) -> list[Prepared]:
        out: list[Prepared] = []
        every = 1 if self._courtesy_kind == "nap" else YIELD_EVERY
        for i, item in enumerate(items, 1):
            p = self._prepare(item)
            if p is not None:
                out.append(p)
            if not i % every:
                self._courtesy()
        return out

    def _courtesy(self) -> None:
        kind = self._courtesy_kind
        if kind == "none" or len(self._items) >= self.batch_size:
            return
        if kind == "yield":
            _yield()
            return
        now = time.monotonic()
        if now - self._slice_at >= NAP_SLICE_S:
            _nap(NAP_S)  # writer thread only (module text)
            self._slice_at = time.monotonic()

    def _prepare(self, item: Any) -> Prepared | None:
        try:
            if callable(item):
                record = item()
            elif self._build is not None and type(item) is not dict:
                record = self._build(item)
            else:
                record = item
            # The usage service's builder returns the row itself (prepare_values).
            return record if type(record) is tuple else prepare(record)
        except Exception as exc:
            self.record_errors += 1
            # Type only: a message could quote request content.
            self._log_once(
                "record",
                "a usage record could not be built (%s); it is skipped",
                type(exc).__name__,
            )
            return None

    # -- opening, moving a bad file aside ----------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=0.5, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for pragma in self._pragmas:
                    conn.execute(pragma)
                migrate(conn)
                # Planner statistics, sampled so a large file costs milliseconds here.
                conn.execute("PRAGMA analysis_limit=1000")
                conn.execute("PRAGMA optimize=0x10002")
                self._dims = {
                    tuple(r[1:]): r[0]
                    for r in conn.execute(f"SELECT dim, {', '.join(DIM_COLUMNS)} FROM usage_dims")
                }
                self._next_seq = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM usage_requests"
                ).fetchone()[0]
            except BaseException:
                conn.close()
                raise
            self._conn, self._file_id = conn, file_id(self.path)
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc) and self._move_aside():
                self._open()
                return
            self._fail(error_kind(exc, "open"), exc)
        except OSError as exc:
            self._fail("open", exc)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _move_aside(self) -> bool:
        self._close()
        try:
            target = set_aside(self.path, "corrupt")
        except OSError as exc:
            self._fail("corrupt", exc)
            return False
        log.warning(
            "usage database %s is not a usable database: moved aside to %s; starting a new one",
            self.path,
            target,
        )
        return True

    def _check_file(self) -> None:
        """Reopen when the file was replaced or removed: writing on through the old
        handle would land in an unlinked inode and be lost without an error."""
        if self._conn is None or file_id(self.path) == self._file_id:
            return
        self._close()
        # SQLite keeps the WAL of a database that moved (it neither checkpoints nor deletes
        # it on close). Left there, it would be replayed onto whatever file now has the
        # name, so it goes aside: it belonged to the file that is gone.
        stale = set_aside_logs(self.path, "stale")
        log.warning(
            "usage database %s was replaced or removed; reopening%s",
            self.path,
            f" (its old write-ahead log kept as {stale})" if stale else "",
        )
        self._open()

    # -- writing -------------------------------------------------------------------
    def _write(self, prepared: list[Prepared], final: bool = False) -> bool:
        """Write the retry backlog plus ``prepared`` in one transaction; True on success
        (or nothing to do). On failure the items stay in the backlog."""
        pending = self._retry + prepared if self._retry else prepared
        if not pending:
            self._in_hand = 0
            return True
        self._check_file()
        for _ in range(2):  # a second try only right after moving a corrupt file aside
            if self._conn is None:
                self._open()
            if self._conn is None:
                break
            try:
                try:
                    self._insert(self._conn, pending)
                    written = len(pending)
                except _DATA_ERRORS:
                    written, pending = self._insert_each(self._conn, pending)
            except sqlite3.DatabaseError as exc:
                if is_corrupt(exc) and self._move_aside():
                    continue
                self._fail(error_kind(exc, "write"), exc)
                break
            self.rows_written += written
            self.batches_written += 1
            self._retry, self._in_hand = [], 0
            if self._degraded:
                log.info("usage database %s writable again; %d records written", self.path, written)
                self._degraded = False
            self._notify()
            return True
        self._keep(pending, final)
        self._notify()
        return False

    def _notify(self) -> None:
        if self._on_write is not None:
            try:
                self._on_write()
            except Exception as exc:  # a report that fails must not stop the writer
                self._log_once("notify", "usage status report failed (%s)", type(exc).__name__)

    def _insert_each(
        self, conn: sqlite3.Connection, pending: list[Prepared]
    ) -> tuple[int, list[Prepared]]:
        """A batch failed on its data, not on the file: write the items one by one and
        skip the bad ones, so one bad record cannot hold back every later one. Returns
        (written, []). An error of the file itself propagates, with ``pending`` cut in
        place to the items not yet written (the written ones are committed)."""
        written = 0
        for i, item in enumerate(pending):
            try:
                self._insert(conn, [item])
            except _DATA_ERRORS as exc:
                self.record_errors += 1
                self._log_once(
                    "record-data",
                    "a usage record could not be stored (%s); it is skipped",
                    type(exc).__name__,
                )
                continue
            except sqlite3.DatabaseError:
                self.rows_written += written  # those are committed: never retry them
                del pending[:i]
                raise
            written += 1
        return written, []

    def _keep(self, pending: list[Prepared], final: bool) -> None:
        overflow = len(pending) - self.max_queue
        if overflow > 0 and not final:
            self._dropped_writer += overflow  # the oldest go first
            pending = pending[overflow:]
        self._retry, self._in_hand = pending, 0

    def _insert(self, conn: sqlite3.Connection, pending: list[Prepared]) -> None:
        seq0, new_dims = self._next_seq, []
        conn.execute("BEGIN IMMEDIATE")
        try:
            requests, records = [], []
            seq = seq0
            for key, _hour, row, text in pending:
                dim = self._dims.get(key)
                if dim is None:
                    dim = conn.execute(INSERT_DIM, key).lastrowid
                    assert dim is not None
                    self._dims[key] = dim
                    new_dims.append(key)
                requests.append((seq, row[0], dim, *row[1:]))
                records.append((seq, text))
                seq += 1
            if self._courtesy_kind == "none":
                conn.executemany(INSERT_REQUEST, requests)
                conn.executemany(INSERT_RECORD, records)
            else:
                step = NAP_ROWS if self._courtesy_kind == "nap" else YIELD_EVERY
                for i in range(0, len(requests), step):
                    conn.executemany(INSERT_REQUEST, requests[i : i + step])
                    conn.executemany(INSERT_RECORD, records[i : i + step])
                    self._courtesy()
            if self._fold is not None:
                # A few groups per batch (hour x dim x status): one upsert each.
                hourly, daily = self._fold(requests)
                conn.executemany(UPSERT_HOURLY, hourly)
                conn.executemany(UPSERT_DAILY, daily)
            else:
                # The batch's rows are the ones at seq0 <= seq < seq: the rollups fold them
                # in SQL, a slice at a time (a whole batch is a few ms in one statement).
                for lo in range(seq0, seq, ROLLUP_SLICE):
                    hi = min(lo + ROLLUP_SLICE, seq)
                    conn.execute(ROLLUP_BATCH_HOURLY, (lo, hi))
                    conn.execute(ROLLUP_BATCH_DAILY, (lo, hi))
                    self._courtesy()
            conn.execute("COMMIT")
            self._next_seq = seq
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for key in new_dims:  # rolled back with the batch
                self._dims.pop(key, None)
            raise

    # -- housekeeping ----------------------------------------------------------------
    def _maintain(self) -> None:
        if not self.retention_days or self._conn is None:
            return
        now = time.monotonic()
        if now < self._next_retention:
            return
        try:
            more = prune(
                self._conn,
                time.time() - self.retention_days * 86400.0,
                RETENTION_BATCH,
                RETENTION_BATCHES_PER_ROUND,
            )
        except sqlite3.Error as exc:
            self._fail(error_kind(exc, "retention"), exc)
            more = False
        # A large backlog (first start after a long stop) goes in slices between batches.
        self._next_retention = now if more else now + RETENTION_EVERY_S

    # -- errors --------------------------------------------------------------------
    def _fail(self, kind: str, exc: BaseException) -> None:
        self._last_kind = kind
        self.write_errors += 1
        self._degraded = True
        self._log_once(
            kind,
            "usage database %s: %s (%s); records are kept and retried, see status()",
            self.path,
            exc,
            kind,
        )

    def _log_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.error(message, *args)
