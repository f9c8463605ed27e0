"""FlowControl: the back-pressure of one transport, in one small class.

asyncio tells a protocol when its transport's write buffer crosses the high-water mark
(``pause_writing``) and when it drained below the low one (``resume_writing``); reading
is paused and resumed on the transport itself. Every protocol in the gateway needs the
same three things from that: a flag to test, a way to wait until writing may go on
(``drain``), and idempotent read pausing. The data port, the admin listener, the mock
LLM and the upstream connections all use this class instead of their own variants.

The data port adds one link: while the client cannot take more bytes, the backend
connection relaying to it stops being read (``follower``), so a slow reader holds back
the stream at the source instead of buffering it in the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Readable(Protocol):
    """What a flow can pause along with its own writing: the reader feeding it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    __slots__ = ("_transport", "_waiter", "closed", "follower", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        # The upstream connection whose bytes this transport is relaying, if any.
        self.follower: Readable | None = None

    # -- reading --------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self._transport.resume_reading()

    # -- writing (called from the protocol's pause_writing/resume_writing) ---------------
    def pause_writing(self) -> None:
        self.write_paused = True
        if self.follower is not None:
            self.follower.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.follower is not None:
            self.follower.resume_reading()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def follow(self, reader: Readable | None) -> None:
        """Link (or, with None, unlink) the reader to pause while writing is paused."""
        self.follower = reader
        if reader is not None and self.write_paused:
            reader.pause_reading()

    async def drain(self) -> None:
        """Wait until the transport takes more bytes. Returns at once on a closed
        connection (the caller tests ``closed``); a wait in progress when the peer goes
        away raises ConnectionResetError."""
        if self.closed or not self.write_paused:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    # -- end ---------------------------------------------------------------------------
    def connection_lost(self) -> None:
        self.closed = True
        self.follower = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
            waiter.exception()  # retrieved: nobody may be waiting any more


class FlowControlled:
    """asyncio.Protocol's two writing callbacks, handed to the connection's FlowControl
    (``self.flow``, made in ``connection_made``). A protocol that needs more on a pause
    (the data port arms its send timer) writes its own."""

    __slots__ = ()

    flow: FlowControl | None

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()
