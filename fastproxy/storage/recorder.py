"""The usage recorder: a process of its own that owns the usage database.

The gateway's event loop packs each finished exchange into a frame (``_speedups``'s
``pack_exchange``) and writes the frames, a loop iteration's worth per syscall, to one
end of a Unix socketpair (recorder_link.py). This process holds the other end: it reads
the frames, unpacks them, and hands them to a `UsageStore` (the same writer machinery the
gateway once ran as a thread: batches, retries, degraded/corrupt-file handling, stop
drains), whose ``build`` projects each frame into its row. Everything proportional to a
request's content (prompt counting, session digest, cost, the JSON text, SQLite) runs
here, in another interpreter, on whatever core the kernel gives it.

Run as ``python -m fastproxy.storage.recorder --fd N --path DB --codec MODULE:FUNC ...``
(the gateway starts it with ``subprocess.Popen(pass_fds=...)``, never a fork of a running
event loop). ``--codec`` names the function that makes the frame codec (unpack + build);
storage imports no monitoring module, so the gateway tells this process by name which one
to load, as it hands the in-process store its ``build`` callable.

Back over the same socket go status frames (``u32 length`` + a JSON object): one "ready"
frame once the database is open and migrated (or has failed to open: then it says
degraded), then one after every written batch and at least every ``STATUS_EVERY_S``. The
gateway keeps the latest and adds its own counts.

Crash rules:
- The gateway dies (SIGKILL included): the socket reads to EOF after the last frame the
  gateway wrote; this process writes everything it has, then exits. It does not ask the
  kernel to kill it with its parent, and it ignores SIGINT/SIGTERM (a terminal's ^C or a
  service manager's signal to the whole group): the gateway decides when it ends, by
  closing the channel.
- Backpressure, not loss: while the store's queue is full and the database is healthy
  this process stops reading, so the socket and then the gateway's bounded buffer fill
  up (where the gateway sends records without their bodies, then drops and counts).
  With a failing database the store keeps what ``max_records_in_memory`` allows and
  counts the rest, as it always did.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..memory import tune_allocator
from .usage_schema import Prepared
from .usage_store import UsageStore

log = logging.getLogger("fastproxy.usage")

STATUS_EVERY_S = 0.5
# The PostgreSQL DSN's environment variable between the gateway and its recorder.
DSN_ENV = "FASTPROXY_RECORDER_DSN"
READ_CHUNK = 1 << 20
POLL_S = 0.02  # also how soon a written batch is reported
# The longest the recorder waits for the writer to take a batch before it reports.
ROOM_WAIT_S = 0.1
STOP_TIMEOUT_S = 30.0
# Records per transaction once there is a backlog (below it the flush interval decides):
# each commit writes every page it dirtied, and the session and timing indexes take
# their entries at scattered places, so a larger batch shares those pages among more
# rows (2,000 against 500: about 1.5 µs/record less, bench.usage.recorder_rate).
BATCH = 2000
# Frames read ahead of the writer while the database is healthy: enough to keep it busy,
# few enough that their bodies stay in cache and the heap does not grow to the store's
# max_queue (the rest waits in the socket and the gateway's bounded buffer).
WINDOW_BATCHES = 4
_LEN = struct.Struct("<I")
AUTOGROUP = "/proc/self/autogroup"
ASIDE_NICE = 19  # the autogroup's nice while the recorder keeps up (step_aside)
# The writer's connection in a process of its own, where its memory competes with no
# event loop: a 64 MiB page cache keeps the indexes' hot pages, and checkpoints run every
# ~40 MB of log instead of every 4 MB (about 1 µs/record less, bench.usage.recorder_rate).
PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=10000")
# Parsing request bodies makes many short-lived containers and hardly any cycles: a
# gen-0 collection every 700 allocations cost ~2 µs/record for nothing found.
GC_THRESHOLD = (50_000, 50, 100)


class FrameCodec(Protocol):
    """What ``--codec`` makes: the frame reader and the builder of a frame's row."""

    def unpack(self, buf: bytearray) -> tuple[list[Any], int]: ...

    def build(self, item: Any) -> Prepared: ...

    def fold_rollups(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]: ...


def status_frame(doc: dict[str, Any]) -> bytes:
    body = orjson.dumps(doc)
    return _LEN.pack(len(body)) + body


def read_status_frames(buf: bytearray) -> list[dict[str, Any]]:
    """The complete status frames at the start of ``buf`` (consumed from it)."""
    out: list[dict[str, Any]] = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if len(buf) - pos - 4 < n:
            break
        out.append(orjson.loads(bytes(buf[pos + 4 : pos + 4 + n])))
        pos += 4 + n
    del buf[:pos]
    return out


def batch_size(max_queue: int) -> int:
    """The store's batch: BATCH, or max_queue when that is smaller. The writer is woken
    when its queue reaches a batch; a batch larger than the queue can hold would leave it
    waiting for the flush interval with the queue full."""
    return min(BATCH, max_queue)


def load_codec(spec: str, settings: str) -> FrameCodec:
    module, _, name = spec.partition(":")
    factory: Callable[[str], FrameCodec] = getattr(importlib.import_module(module), name)
    return factory(settings)


class Recorder:
    def __init__(self, sock: socket.socket, store: UsageStore, codec: FrameCodec) -> None:
        self.sock = sock
        self.store = store
        self.codec = codec
        self.received = 0
        self._buf = bytearray()
        self._sent_at = 0.0
        self._last_batches = -1
        self._peer_gone = False
        self._send_lock = threading.Lock()  # the main thread and the writer's on_write
        self.window = min(store.max_queue, WINDOW_BATCHES * store.batch_size)

    def status(self, ready: bool = False) -> dict[str, Any]:
        st = self.store
        doc: dict[str, Any] = dict(st.status())
        doc.update(
            ready=ready,
            pid=os.getpid(),
            received=self.received,
            rows_written=st.rows_written,
            record_errors=st.record_errors,
        )
        return doc

    def send_status(self, ready: bool = False) -> None:
        self._sent_at = time.monotonic()
        self._last_batches = self.store.batches_written
        with self._send_lock:
            if self._peer_gone:
                return
            try:
                self.sock.sendall(status_frame(self.status(ready)))
            except OSError:
                # The gateway is gone; what it sent is still read to EOF and written.
                self._peer_gone = True

    def run(self) -> None:
        self.send_status(ready=True)
        sock = self.sock
        while True:
            readable, _, _ = select.select([sock], [], [], POLL_S)
            if readable:
                try:
                    data = sock.recv(READ_CHUNK)
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                self._take(data)
            self._maybe_report()
        if self._buf:
            log.error("usage recorder: %d bytes of an incomplete frame at EOF", len(self._buf))
        self.store.stop(STOP_TIMEOUT_S)
        self.send_status()

    def _take(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        items, consumed = self.codec.unpack(buf)
        del buf[:consumed]
        self.received += len(items)
        store = self.store
        window = self.window
        taken = store.taken
        i, n = 0, len(items)
        while i < n:
            taken.clear()
            room = n - i if store.degraded else window - store.queued()
            if room <= 0:
                # A healthy writer behind: wait for it to take a batch rather than drop.
                # The socket fills meanwhile, and the gateway's bounded buffer after it.
                taken.wait(ROOM_WAIT_S)
                self._maybe_report()
                continue
            store.submit_many(items[i : i + room])
            i += room

    def _maybe_report(self) -> None:
        if (
            self.store.batches_written != self._last_batches
            or time.monotonic() - self._sent_at >= STATUS_EVERY_S
        ):
            self.send_status()


def step_aside() -> Callable[[bool], bool] | None:
    """Make the recorder a session of its own, weighted as lightly as Linux allows while
    it keeps up; the returned callable restores a normal weight while it is behind.

    Linux schedules each session as one group (autogroup) and shares a core between
    groups before it looks at the processes inside them. In the gateway's session, the
    recorder's bursts (a batch's commit is one call of 0.5-3 ms) delayed a client or
    backend woken on its core by up to a few ms: c=1 p99 2.2 ms with usage tracking on
    against 0.3 ms off; with this and the writer's naps (usage_store, "nap") it is
    0.7-1.05 ms. Behind by a batch, it gets nice 0 back, so a busy core never starves it
    into dropping records. Without autogroups (or their file) it only starts the session
    and returns None. docs/usage-storage.md."""

    def weigh(behind: bool) -> bool:
        # False when refused (Linux limits how often a non-root process may change it):
        # the writer asks again after its next batch.
        try:
            with open(AUTOGROUP, "w") as f:
                f.write("0" if behind else str(ASIDE_NICE))
        except OSError:
            return False
        return True

    with contextlib.suppress(OSError):
        os.setsid()  # fails only for a group leader: then it already has its own group
    return weigh if weigh(False) else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastproxy.storage.recorder")
    p.add_argument("--fd", type=int, required=True, help="the channel's socket")
    p.add_argument("--path", required=True, help="the usage database")
    p.add_argument("--codec", required=True, help="MODULE:FUNCTION making the frame codec")
    p.add_argument("--settings", default="{}", help="JSON handed to the codec factory")
    p.add_argument("--flush-interval", type=float, default=1.0)
    p.add_argument("--max-queue", type=int, default=100_000)
    p.add_argument("--retention-days", type=int, default=0)
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--spool-dir", help="postgresql: where batches wait while it is unreachable")
    p.add_argument("--spool-max-bytes", type=int, default=256 << 20)
    ns = p.parse_args(argv)
    tune_allocator()
    aside = step_aside()
    # The gateway ends this process by closing the channel, never by a signal to its group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=ns.fd)
    sock.setblocking(True)
    codec = load_codec(ns.codec, ns.settings)
    store: UsageStore
    if ns.store == "postgresql":
        # The DSN comes in the environment, never on the command line (which any local
        # user can read in the process list): it may hold a password.
        from .pg_store import PgUsageStore

        store = PgUsageStore(
            os.environ.pop(DSN_ENV, ""),
            spool_dir=Path(ns.spool_dir or Path(ns.path).parent / "usage-spool"),
            spool_max_bytes=ns.spool_max_bytes,
            flush_interval=ns.flush_interval,
            max_queue=ns.max_queue,
            retention_days=ns.retention_days,
            build=codec.build,
            on_write=lambda: recorder.send_status(),
            batch_size=batch_size(ns.max_queue),
            courtesy="nap",
            on_backlog=aside,
        )
    else:
        store = UsageStore(
            ns.path,
            flush_interval=ns.flush_interval,
            max_queue=ns.max_queue,
            retention_days=ns.retention_days,
            build=codec.build,
            on_write=lambda: recorder.send_status(),
            pragmas=PRAGMAS,
            batch_size=batch_size(ns.max_queue),
            fold=codec.fold_rollups,
            courtesy="nap",
            on_backlog=aside,
        )
    recorder = Recorder(sock, store, codec)
    store.start()
    # What start-up built (modules, tokenizer tables, prices) lives until exit.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    recorder.run()
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
