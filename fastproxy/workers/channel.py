"""The control channel between the primary and one worker: typed frames on a socketpair.

A frame is ``u8 kind``, ``u32 length`` (little-endian), then the payload: JSON (orjson)
for control messages, the packed exchange frames of `_speedups.pack_exchange` as they
are for records. Each side writes at most once per loop iteration (frames queue in a
buffer and one ``call_soon`` flushes it), so a worker relaying 20k requests/s hands its
records over in a few hundred writes, not 20k.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

import orjson

log = logging.getLogger("fastproxy.workers")

_HEAD = struct.Struct("<BI")
MAX_FRAME = 256 * 1024 * 1024  # a frame past this is a broken peer, not a big batch


class Kind(IntEnum):
    CONFIG = 1  # primary -> worker: the config, discovered models, the worker's index
    BREAKERS = 2  # primary -> worker: {backend: breaker state} as routing reads it
    RECORDS = 3  # worker -> primary: packed exchange frames
    ATTEMPTS = 4  # worker -> primary: attempt events for the breakers
    STATS = 5  # worker -> primary: the heartbeat (counters, connections, pools)
    READY = 6  # worker -> primary: listening
    RECONFIGURE = 7  # primary -> worker: a reload's config and backends (as CONFIG)
    DECIDE = 8  # worker -> primary: replacement decisions to make [[token, sid, ...], ...]
    DECIDED = 9  # primary -> worker: their answers [[token, decision], ...]
    TURNS = 10  # worker -> primary: decided requests that ended [[sid, decision, ok], ...]
    ASKS = 11  # worker -> primary: rate-limit asks [Ask.to_tuple(), ...]
    GRANTS = 12  # primary -> worker: the ledger's answers [Grant.to_tuple(), ...]
    SPEND = 13  # worker -> primary: cost charged since the last SPEND {subject: usd}
    BLOCKED = 14  # primary -> worker: the subjects over budget, Blocked.to_tuple()


class Channel(asyncio.Protocol):
    """One end of the socketpair. ``on_frame(kind, payload)`` runs for each frame;
    ``on_lost()`` once, when the peer is gone."""

    def __init__(
        self,
        on_frame: Callable[[Kind, memoryview], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self._out = bytearray()
        self._scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(
        cls,
        sock: Any,
        on_frame: Callable[[Kind, memoryview], None],
        on_lost: Callable[[], None],
    ) -> Channel:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(lambda: cls(on_frame, on_lost), sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= _HEAD.size:
                kind, size = _HEAD.unpack_from(buf, pos)
                if size > MAX_FRAME:
                    log.error("control channel: a %d-byte frame; closing", size)
                    self.close()
                    return
                if end - pos - _HEAD.size < size:
                    break
                start = pos + _HEAD.size
                pos = start + size
                try:
                    self._on_frame(Kind(kind), view[start:pos])
                except Exception:
                    log.exception("control channel: frame of kind %d failed", kind)
        finally:
            view.release()
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost()

    def send(self, kind: Kind, payload: bytes | bytearray) -> None:
        if self.closed:
            return
        self._out += _HEAD.pack(kind, len(payload))
        self._out += payload
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_json(self, kind: Kind, doc: Any) -> None:
        self.send(kind, orjson.dumps(doc))

    def flush(self) -> None:
        self._scheduled = False
        t = self.transport
        if t is None or self.closed or not self._out:
            return
        t.write(bytes(self._out))
        self._out.clear()

    def buffered(self) -> int:
        """Bytes queued here or in the transport: what the peer has not read yet."""
        t = self.transport
        return len(self._out) + (t.get_write_buffer_size() if t is not None else 0)

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()
