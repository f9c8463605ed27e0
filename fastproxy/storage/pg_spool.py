"""The on-disk spool of the PostgreSQL usage store: batches kept while the database is
unreachable, replayed in order when it is back.

Only the recorder's writer thread uses it (never the event loop). Layout, under
``<state_dir>/usage-spool/``:

- append-only files named ``<creation time, ns>-<origin>.spool``: sorting the names
  gives the order the batches were made in, across this process and any earlier one
  that left files behind;
- each file a sequence of frames: ``u32 length``, ``u32 crc32``, then one batch as JSON
  ``{"o": origin, "s": first oseq, "r": [[dims key, row, record text], ...]}``. A record
  keeps its (origin, oseq) on disk, so a replay that is repeated (the database took the
  batch but the answer was lost, or the recorder died halfway through a file) stores it
  once: the table's unique constraint skips it.
- every frame is written and fsync'd before the batch counts as kept: a crash or power
  cut then loses no batch the store reported spooled. A batch is one fsync (a few a
  second at most), not one per record.
- bounded by ``max_bytes`` over the whole directory: a batch that does not fit is
  dropped and counted (``dropped``); the writer goes on, nothing waits.
- a file being written or replayed is held with ``flock``, so several recorders (one per
  gateway process) sharing a state dir never replay the same file at once.
- a frame cut short (a crash mid-write) or failing its checksum ends that file's replay:
  the frames before it are replayed, the rest of the file is counted as dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

log = logging.getLogger("fastproxy.storage")

FILE_BYTES = 8 << 20  # a new file past this size: replayed files go early
_HEAD = struct.Struct("<II")

# One spooled record: dims key, row (REQUEST_COLUMNS without seq and dim), record text.
SpoolItem = tuple[list[Any], list[Any], str]


class Spool:
    def __init__(self, directory: Path, max_bytes: int, origin: str) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.origin = origin
        self.dropped = 0  # records that did not fit, or were cut short on disk
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0  # bytes in the directory's spool files
        self._measured = False

    # -- size --------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        try:
            return sorted(self.dir.glob("*.spool"))
        except OSError:
            return []

    def measure(self) -> int:
        """Bytes spooled now (this process's files and any left by others)."""
        total = 0
        for p in self._files():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        self._size, self._measured = total, True
        return total

    @property
    def size(self) -> int:
        if not self._measured:
            self.measure()
        return self._size

    def pending(self) -> bool:
        return bool(self._files())

    # -- writing -----------------------------------------------------------------------
    def append(self, first_oseq: int, items: list[SpoolItem]) -> bool:
        """Keep one batch; False when it does not fit (counted in ``dropped``) or the
        disk refused it."""
        body = orjson.dumps({"o": self.origin, "s": first_oseq, "r": items})
        frame = _HEAD.pack(len(body), zlib.crc32(body)) + body
        if self.size + len(frame) > self.max_bytes:
            self.dropped += len(items)
            return False
        try:
            f = self._current(len(frame))
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            self.dropped += len(items)
            log.error("usage spool %s: cannot write (%s); a batch is dropped", self.dir, exc)
            self._close_current()
            return False
        self._size += len(frame)
        return True

    def _current(self, need: int) -> BinaryIO:
        f = self._file
        if f is not None and f.tell() + need <= FILE_BYTES:
            return f
        self._close_current()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{time.time_ns():020d}-{self.origin}.spool"
        f = open(path, "ab")  # noqa: SIM115 - held open across batches, closed in _close_current
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        self._file, self._path = f, path
        return f

    def _close_current(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # releases its lock
        self._file, self._path = None, None

    def close(self) -> None:
        self._close_current()

    # -- replay --------------------------------------------------------------------------
    def replay(self) -> Iterator[tuple[Path, str, int, list[SpoolItem]]]:
        """Every spooled batch, oldest first, as (file, origin, first oseq, items). A file
        whose batches have all been yielded is removed when the caller asks for the next
        one, so the caller must consume a batch (store it) before asking for more; a
        caller that stops early leaves the file for a later replay, which is harmless
        (stored records are skipped by their ids)."""
        self._close_current()  # new batches go to a new file, after these
        for path in self._files():
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # another recorder is writing or replaying it
                if not path.exists():
                    continue  # replayed and removed while we waited for it
                yield from self._frames(path, f)
                with contextlib.suppress(OSError):
                    path.unlink()
            finally:
                f.close()
        self.measure()

    def _frames(self, path: Path, f: BinaryIO) -> Iterator[tuple[Path, str, int, list[SpoolItem]]]:
        while True:
            head = f.read(_HEAD.size)
            if not head:
                return
            body = f.read(_HEAD.unpack(head)[0]) if len(head) == _HEAD.size else b""
            if len(head) < _HEAD.size or zlib.crc32(body) != _HEAD.unpack(head)[1]:
                log.error(
                    "usage spool %s: a damaged batch ends the file; the rest is dropped", path
                )
                self.dropped += 1
                return
            doc = orjson.loads(body)
            yield path, str(doc["o"]), int(doc["s"]), [tuple(r) for r in doc["r"]]
