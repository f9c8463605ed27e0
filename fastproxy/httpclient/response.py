"""One response from a backend, as the connection's parser fills it.

A request's owner either lets it buffer the whole body (a JSON answer, a probe) or
attaches a callback that receives each body chunk as it arrives (a stream relay).
Failures arrive as `UpstreamError` on both futures, ``head`` and ``done``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..core.errors import UpstreamError

__all__ = ["UpstreamError", "UpstreamResponse"]


class UpstreamResponse:
    """One response from a backend, filled by parser callbacks on the loop thread."""

    __slots__ = (
        "body",
        "bytes_rx",
        "close_delimited",
        "decided",
        "done",
        "error",
        "first_byte_at",
        "head",
        "headers",
        "keep_alive",
        "on_chunk",
        "status",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.body: list[bytes] = []
        self.on_chunk: Callable[[bytes], None] | None = None
        self.decided = False  # the exchange chose how to relay the body
        self.bytes_rx = 0
        self.keep_alive = False
        self.close_delimited = False
        self.error: UpstreamError | None = None
        self.first_byte_at = 0.0

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def attach(self, on_chunk: Callable[[bytes], None]) -> None:
        """Switch from buffering to relaying: flush what arrived, then stream."""
        self.decided = True
        self.on_chunk = on_chunk
        pending, self.body = self.body, []
        for piece in pending:
            on_chunk(piece)

    def fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        for fut in (self.head, self.done):
            if not fut.done():
                fut.set_exception(error)
                # The exchange may never await `done` (e.g. it gave up at the head).
                fut.exception()
