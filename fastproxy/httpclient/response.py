"""One response from a backend, as the connection's parser fills it.

A request's owner either lets it buffer the whole body (a JSON answer, a probe) or
attaches a callback that receives each body chunk as it arrives (a stream relay).

Two ways to learn how it goes, and neither costs the other anything:

- a ``listener`` (the data plane's request cycle) is called at the head, at the end and
  on failure, from the connection's callbacks: no future, no task switch per request;
- ``head`` and ``done`` are futures for code that awaits (the health probe, model
  discovery, tests), made only when first asked for and resolved from the same state.

Failures arrive as `UpstreamError`: on the listener's ``response_failed`` and on both
futures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ..core.errors import UpstreamError

__all__ = ["ResponseListener", "UpstreamError", "UpstreamResponse"]


class ResponseListener(Protocol):
    """What the owner of a response is told, on the loop thread, as it happens.

    ``response_head`` and ``response_end`` run inside the connection's parser callbacks
    (the owner may write to its client there, not start another request on this
    connection); ``response_failed`` runs wherever the failure was found. None raises:
    an owner catches its own errors."""

    def response_head(self, resp: UpstreamResponse) -> None: ...

    def response_end(self, resp: UpstreamResponse) -> None: ...

    def response_failed(self, resp: UpstreamResponse, error: UpstreamError) -> None: ...


class UpstreamResponse:
    """One response from a backend, filled by parser callbacks on the loop thread."""

    __slots__ = (
        "_done",
        "_head",
        "_loop",
        "body",
        "bytes_rx",
        "close_delimited",
        "decided",
        "error",
        "finished",
        "first_byte_at",
        "got_head",
        "headers",
        "keep_alive",
        "listener",
        "on_chunk",
        "status",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, listener: ResponseListener | None = None
    ) -> None:
        self._loop = loop
        self.listener = listener
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self.got_head = False
        self.finished = False  # the body ended (not failed)
        self.body: list[bytes] = []
        self.on_chunk: Callable[[bytes], None] | None = None
        self.decided = False  # the exchange chose how to relay the body
        self.bytes_rx = 0
        self.keep_alive = False
        self.close_delimited = False
        self.error: UpstreamError | None = None
        self.first_byte_at = 0.0

    # -- state, as the connection reports it ---------------------------------------------
    @property
    def settled(self) -> bool:
        """Ended or failed: nothing more will happen to this response."""
        return self.finished or self.error is not None

    def header_done(self) -> None:
        if self.got_head or self.error is not None:
            return
        self.got_head = True
        if self._head is not None:
            self._head.set_result(None)
        if self.listener is not None:
            self.listener.response_head(self)

    def end(self) -> None:
        if self.settled:
            return
        self.finished = True
        if self._done is not None:
            self._done.set_result(None)
        if self.listener is not None:
            self.listener.response_end(self)

    def fail(self, error: UpstreamError) -> None:
        if self.settled:
            return
        self.error = error
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: the owner may never await it
        if self.listener is not None:
            self.listener.response_failed(self, error)

    # -- for code that awaits ------------------------------------------------------------
    @property
    def head(self) -> asyncio.Future[None]:
        """Resolved when the head arrived; raises the failure that came first."""
        if self._head is None:
            self._head = self._future(self.got_head)
        return self._head

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolved when the body ended; raises the failure if it did not."""
        if self._done is None:
            self._done = self._future(self.finished)
        return self._done

    def _future(self, happened: bool) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        if happened:
            fut.set_result(None)
        elif self.error is not None:
            fut.set_exception(self.error)
            fut.exception()
        return fut

    # -- used by the owner -----------------------------------------------------------------
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
