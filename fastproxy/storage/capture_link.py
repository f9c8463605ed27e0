"""The gateway's end of the wire-capture writer (capture_writer.py).

The loop's part per captured event is one call to the `CaptureBuffer` given to
`CaptureLink.attach` (fastproxy._speedups: bound, timestamp, redaction test, frame);
the buffer wakes the link through `wake`. Frames are handed to the channel's non-blocking transport in batches: the
first frame after a hand-off arms one timer (`FLUSH_AFTER_S`), and a buffer that reaches
`FLUSH_BYTES` goes at once. Handing over every loop iteration cost a ``write`` and a
wake-up of the writer process on the other core for every few requests, which at
saturation was a third of capture's cost on the loop; batched, the writer wakes a few
hundred times a second and reads large blocks. What waits here is at most
`FLUSH_AFTER_S` of events (or `FLUSH_BYTES`): lost if the gateway is killed, written on
a graceful stop (`close` hands it over first). Nothing here waits for the disk.

Bounds: frames pending here (the buffer plus what the transport still holds once it
has asked to pause) are capped at ``limit`` bytes; past it an event is dropped and
counted (the buffer's ``dropped``). A writer that
reports itself disabled (its disk failed) or exits stops the capture: `disabled` holds
the reason and ``on_disabled`` is called once, which logs the one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._speedups import CaptureBuffer

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PENDING_LIMIT = 64 * 1024 * 1024
FLUSH_AFTER_S = 0.005
FLUSH_BYTES = 256 * 1024
SEND_BUFFER = 4 * 1024 * 1024
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux


class _Channel(asyncio.Protocol):
    def __init__(self, link: CaptureLink) -> None:
        self.link = link
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                return
            line = bytes(self.buf[:end])
            del self.buf[: end + 1]
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            self.link._status(doc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost()

    def pause_writing(self) -> None:
        self.link._paused = True

    def resume_writing(self) -> None:
        # The writer caught up: what the transport holds no longer counts against the
        # bound (it is measured again at each hand-off while paused).
        self.link._paused = False
        if self.link.buffer is not None:
            self.link.buffer.backlog = 0


def _widen(sock: socket.socket) -> None:
    """A large send buffer on the gateway's end. The loop hands frames over between
    requests, and a busy loop comes back to a socket that was full only once per
    iteration: with the default ~208 KiB, capture of saturated SSE traffic moved ~40 MB/s
    and dropped most events, where the writer alone takes ~450 MB/s. The kernel caps
    SO_SNDBUF at net.core.wmem_max; SO_SNDBUFFORCE passes it where the process may."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, SEND_BUFFER)
    except OSError:
        pass  # not permitted: the capped buffer works, with more drops at saturation


class CaptureLink:
    def __init__(
        self,
        directory: Path,
        *,
        prefix: str,
        max_file_bytes: int,
        max_total_bytes: int,
        meta: dict[str, Any],
        on_disabled: Callable[[str], None],
        limit: int = PENDING_LIMIT,
    ) -> None:
        self.dir = directory
        self.prefix = prefix
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.meta = meta
        self.on_disabled = on_disabled
        self.limit = limit
        self.buffer: CaptureBuffer | None = None
        self.disabled: str | None = None
        self.last: dict[str, Any] = {}  # the writer's latest status
        self.proc: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._scheduled = False
        self._closing = False
        self._paused = False

    def attach(self, buffer: CaptureBuffer) -> None:
        """The buffer the loop appends to; it calls `wake`."""
        self.buffer = buffer

    # -- the hot path (event loop) ---------------------------------------------------
    def wake(self, full: bool) -> None:
        """From the buffer: ``full``, hand over now; else its first frame since the last
        hand-off, so arm the one timer."""
        if full:
            self._hand_over()
        elif not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_later(FLUSH_AFTER_S, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._hand_over()

    def _hand_over(self) -> None:
        t, buffer = self._transport, self.buffer
        if t is None or t.is_closing() or buffer is None or not len(buffer):
            return
        # A fresh buffer each time: the transport may keep the one it is given.
        t.write(buffer.take())
        if self._paused:
            buffer.backlog = t.get_write_buffer_size()

    # -- the writer's reports --------------------------------------------------------
    def _status(self, doc: dict[str, Any]) -> None:
        self.last = doc
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        reason = doc.get("disabled")
        if reason and self.disabled is None:
            self._disable(str(reason))

    def _lost(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if not self._closing and self.disabled is None:
            self._disable("the capture writer exited")

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        if self.buffer is not None:
            self.buffer.disabled = True
            self.buffer.clear()
        self.on_disabled(reason)

    # -- start, stop -----------------------------------------------------------------
    async def launch(self) -> None:
        """Start the writer; returns once it reported its directory usable or not."""
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _widen(ours)
        args = [
            sys.executable,
            "-m",
            "fastproxy.storage.capture_writer",
            "--fd",
            str(theirs.fileno()),
            "--dir",
            os.fspath(self.dir.absolute()),
            "--prefix",
            self.prefix,
            "--max-file-bytes",
            str(self.max_file_bytes),
            "--max-total-bytes",
            str(self.max_total_bytes),
            "--meta",
            json.dumps(self.meta),
        ]
        try:
            # Off the loop: fork and exec of a large process take milliseconds.
            self.proc = await asyncio.to_thread(
                subprocess.Popen, args, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            ours.close()
            self._disable(f"the capture writer did not start: {exc}")
            return
        finally:
            theirs.close()
        self._ready = loop.create_future()
        self._transport, _ = await loop.connect_accepted_socket(lambda: _Channel(self), ours)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)
        except TimeoutError:
            self._disable(f"the capture writer did not report in {READY_TIMEOUT_S:.0f}s")

    async def close(self) -> None:
        """Hand over what is pending, end the channel, wait (off the loop) for the writer."""
        self._closing = True
        self._hand_over()
        t = self._transport
        if t is not None and not t.is_closing():
            if t.can_write_eof():
                t.write_eof()  # the writer reads to EOF, writes it all, then exits
            else:
                t.close()
        proc = self.proc
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if t is not None:
            t.close()
