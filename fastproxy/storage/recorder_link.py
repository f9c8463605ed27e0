"""The gateway's end of the usage recorder (recorder.py): the channel, the bounds, restarts.

`RecorderLink` is the usage store as the gateway sees it once a recorder process does
the writing: reads (stats, recent, export) stay here, on read-only WAL connections of
the inherited `UsageStore`; writes go over a Unix socketpair to the recorder.

The loop's part per finished request is to append one packed frame to ``out`` (the usage
service does that with ``_speedups.pack_exchange``) and call `packed`. The first frame of
a loop iteration schedules one `_flush` with ``call_soon``; it hands the whole buffer to
the channel's non-blocking transport: one ``write`` syscall per loop iteration, not per
record, and no wake-up of anything in this process.

Bounds, all on the loop side and never blocking: frames pending here (``out`` plus the
transport's buffer) may hold request bodies up to ``body_limit`` bytes; past that a
record goes without its body (its record then has no prompt count, as when the in-process
writer's bodies were bounded), and past ``limit`` it is dropped and counted. A backed-up
or dead recorder therefore costs counts, not memory.

A recorder that dies (killed, crashed) is noticed by EOF on the channel: one ERROR line,
the records it had been handed and not reported done are counted lost (an upper bound:
its last report may be up to half a second old), and a new one is started after a
backoff (doubling from ``RESTART_MIN_S`` to ``RESTART_MAX_S``). Records of the gap wait
in ``out``, within the same bounds, and go to the new recorder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from ..core.seams import StorageStatusDoc
from .pg_schema import describe
from .recorder import DSN_ENV, read_status_frames
from .usage_store import UsageStore

log = logging.getLogger("fastproxy.usage")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a recorder up this long resets the restart backoff
READY_TIMEOUT_S = 60.0  # a migration of a large file may take a while
STOP_TIMEOUT_S = 35.0  # the recorder's own drain gives up after 30 s


class _Generation:
    """One recorder process and its channel."""

    __slots__ = ("handed", "last", "proc", "ready", "started_at", "transport", "up")

    def __init__(self, proc: subprocess.Popen[bytes], ready: asyncio.Future[None]) -> None:
        self.proc = proc
        self.transport: asyncio.Transport | None = None
        self.handed = 0  # frames written to this recorder's channel
        self.last: dict[str, Any] | None = None  # its latest status frame
        self.ready = ready
        self.up = False  # it reported ready: frames go to it from then on
        self.started_at = time.monotonic()


class _Channel(asyncio.Protocol):
    def __init__(self, link: RecorderLink, gen: _Generation) -> None:
        self.link = link
        self.gen = gen
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for doc in read_status_frames(self.buf):
            self.gen.last = doc
            if doc.get("ready") and not self.gen.up:
                self.gen.up = True
                if not self.gen.ready.done():
                    self.gen.ready.set_result(None)
                self.link._flush()  # what waited for a recorder

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(self.gen)


class RecorderLink(UsageStore):
    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float,
        max_queue: int,
        retention_days: int,
        codec: str,
        settings: str,
        body_limit: int,
        limit: int,
        dsn: str | None = None,
        spool_dir: Path | None = None,
        spool_max_bytes: int = 256 << 20,
    ) -> None:
        super().__init__(
            path,
            flush_interval=flush_interval,
            max_queue=max_queue,
            retention_days=retention_days,
            dsn=dsn,
        )
        # With a DSN the recorder writes to PostgreSQL (pg_store.py) and the reads here
        # go there too; ``path`` is then only the SQLite file that is not used.
        self.spool_dir = spool_dir
        self.spool_max_bytes = spool_max_bytes
        self.where = describe(dsn) if dsn is not None else str(path)
        self.codec = codec
        self.settings = settings
        self.body_limit = body_limit
        self.limit = limit
        self.out = bytearray()  # packed frames not yet handed to a channel
        # Before ``out``, in order: earlier frame bytes and large bodies sent by reference.
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._chunk_bytes = 0
        self.unsent = 0  # frames in ``out`` and ``_chunks``
        self.link_dropped = 0  # records dropped here: ``limit`` reached
        self.bodies_dropped = 0  # records sent without their body: ``body_limit`` reached
        self.lost = 0  # records handed to a recorder that died before reporting them done
        self.restarts = 0
        self._gen: _Generation | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._closing = False
        self._backoff = RESTART_MIN_S
        self._restart_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Counters of recorders that have exited, so totals survive a restart.
        self._base_dropped = 0
        self._base_write_errors = 0
        self._base_written = 0

    # -- the hot path (event loop) ---------------------------------------------------
    def pending(self) -> int:
        """Bytes packed and not yet taken by the recorder's socket."""
        gen = self._gen
        t = gen.transport if gen is not None else None
        held = len(self.out) + self._chunk_bytes
        return held + (t.get_write_buffer_size() if t is not None else 0)

    def add_body(self, body: bytes | bytearray) -> None:
        """The bytes of a frame packed with ``defer_body``, sent by reference: a large
        request body is never copied on the loop (the gateway holds it once)."""
        self._chunks.append(self.out)
        self._chunks.append(body)
        self._chunk_bytes += len(self.out) + len(body)
        self.out = bytearray()

    def packed(self) -> None:
        """A frame was appended to ``out``: flush once, at the end of this iteration."""
        self.unsent += 1
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            assert loop is not None  # the service packs only once launched
            loop.call_soon(self._flush)

    def _flush(self, force: bool = False) -> None:
        self._scheduled = False
        gen = self._gen
        t = gen.transport if gen is not None else None
        if gen is None or t is None or not (gen.up or force) or t.is_closing() or not self.unsent:
            # No recorder ready: frames wait here, within the bounds (one that dies while
            # starting takes none with it).
            return
        # A fresh buffer each flush: the transport may keep the one it is given.
        data, self.out = self.out, bytearray()
        gen.handed += self.unsent
        self.unsent = 0
        if self._chunks:
            chunks, self._chunks, self._chunk_bytes = self._chunks, [], 0
            for chunk in chunks:
                if chunk:
                    t.write(chunk)
        if data:
            t.write(data)

    # -- start, stop (event loop) ----------------------------------------------------
    async def launch(self, ready_s: float = READY_TIMEOUT_S) -> None:
        """Start the recorder; returns once it reported the database open and migrated
        (or failed to open: status degraded), or after ``ready_s``."""
        self._loop = asyncio.get_running_loop()
        gen = await self._spawn()
        if gen is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(gen.ready), ready_s)
        except (TimeoutError, asyncio.CancelledError):
            if gen.proc.poll() is None:
                log.error("usage recorder (pid %d) not ready after %.0fs", gen.proc.pid, ready_s)

    async def _spawn(self) -> _Generation | None:
        loop = self._loop
        assert loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [
            sys.executable,
            "-m",
            "fastproxy.storage.recorder",
            "--fd",
            str(theirs.fileno()),
            "--path",
            os.fspath(self.path.absolute()),
            "--codec",
            self.codec,
            "--settings",
            self.settings,
            "--flush-interval",
            repr(self.flush_interval),
            "--max-queue",
            str(self.max_queue),
            "--retention-days",
            str(self.retention_days),
        ]
        env = None
        if self._dsn is not None:
            args += ["--store", "postgresql", "--spool-max-bytes", str(self.spool_max_bytes)]
            if self.spool_dir is not None:
                args += ["--spool-dir", os.fspath(self.spool_dir.absolute())]
            # In the environment, not the command line: the process list shows arguments.
            env = {**os.environ, DSN_ENV: self._dsn}
        try:
            # Off the loop: fork and exec of a large process take milliseconds.
            proc = await asyncio.to_thread(
                subprocess.Popen,
                args,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            ours.close()
            log.error("usage: cannot start the recorder (%s); usage tracking is degraded", exc)
            self._schedule_restart()
            return None
        finally:
            theirs.close()
        gen = _Generation(proc, loop.create_future())
        self._gen = gen
        transport, _ = await loop.create_unix_connection(lambda: _Channel(self, gen), sock=ours)
        # Our own bound (``limit``) governs; the transport never asks us to pause.
        transport.set_write_buffer_limits(high=(1 << 31) - 1)
        gen.transport = transport
        log.info("usage recorder started (pid %d): %s", proc.pid, self.where)
        return gen

    async def close(self, wait_s: float = STOP_TIMEOUT_S) -> None:
        """Hand over what is buffered, close the channel, and wait (off the loop, bounded)
        for the recorder to write everything and exit."""
        self._closing = True
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        gen = self._gen
        if gen is None:
            if self.unsent:
                log.error("usage: no recorder at shutdown; %d records not written", self.unsent)
            return
        self._flush(force=True)  # a recorder still starting reads them once it is ready
        if gen.transport is not None:
            gen.transport.close()  # its buffer is written first, then EOF for the recorder
        try:
            await asyncio.to_thread(gen.proc.wait, wait_s)
        except subprocess.TimeoutExpired:
            log.error(
                "usage recorder (pid %d) still writing after %.0fs; leaving it to finish",
                gen.proc.pid,
                wait_s,
            )

    # -- a recorder that died ----------------------------------------------------------
    def _lost(self, gen: _Generation) -> None:
        if not gen.ready.done():
            gen.ready.set_result(None)  # a recorder that died starting: launch waits no more
        if gen is not self._gen or self._closing:
            return  # closing: the last status stays what status() reports
        self._gen = None
        last = gen.last or {}
        done = int(last.get("received", 0)) - int(last.get("queue_depth", 0))
        self._base_dropped += int(last.get("dropped_records", 0))
        self._base_write_errors += int(last.get("write_errors", 0))
        self._base_written += int(last.get("rows_written", 0))
        lost = max(0, gen.handed - done)
        self.lost += lost
        if time.monotonic() - gen.started_at >= STABLE_S:
            self._backoff = RESTART_MIN_S
        code = gen.proc.poll()
        log.error(
            "usage recorder (pid %d) ended%s; %d records it had not written are lost; "
            "restarting in %.1fs",
            gen.proc.pid,
            f" with {code}" if code is not None else "",
            lost,
            self._backoff,
        )
        self._reap(gen.proc)
        self._schedule_restart()

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(proc.wait))
        self._hold(cast("asyncio.Task[None]", task))

    def _hold(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_restart(self) -> None:
        loop = self._loop
        if self._closing or loop is None:
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, RESTART_MAX_S)
        self._restart_timer = loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_timer = None
        if self._closing:
            return
        self.restarts += 1

        async def spawn() -> None:
            await self._spawn()

        self._hold(asyncio.ensure_future(spawn()))

    # -- status (any caller on the loop) -----------------------------------------------
    def status(self) -> StorageStatusDoc:
        gen = self._gen
        last = gen.last if gen is not None else None
        queued = self.unsent
        dropped = self.link_dropped + self.lost + self._base_dropped
        write_errors = self._base_write_errors
        written = self._base_written
        if gen is not None:
            queued += gen.handed
            if last is not None:
                queued += int(last["queue_depth"]) - int(last["received"])
                dropped += int(last["dropped_records"])
                write_errors += int(last["write_errors"])
                written += int(last.get("rows_written", 0))
        doc: dict[str, Any] = {
            "usage_db": last["usage_db"] if last is not None else "degraded",
            "queue_depth": max(0, queued),
            "dropped_records": dropped,
            "write_errors": write_errors,
            "path": self.where,
            "pending_body_bytes": self.pending(),
            "bodies_dropped": self.bodies_dropped,
            "records_lost": self.lost,
            "rows_written": written,
            "recorder_pid": gen.proc.pid if gen is not None else None,
            "recorder_restarts": self.restarts,
        }
        if self._dsn is not None:
            # The PostgreSQL store's own figures (pg_store.PgUsageStore.status): "spooling"
            # while the database is unreachable, and how much waits on disk.
            doc["store"] = "postgresql"
            for key in ("spool_bytes", "spool_records", "spool_dropped"):
                doc[key] = int(last.get(key, 0)) if last is not None else 0
        return cast(StorageStatusDoc, doc)

    @property
    def recorder_pid(self) -> int | None:
        gen = self._gen
        return gen.proc.pid if gen is not None else None
