"""Outbox: the data plane's writes, held until the loop has run the callbacks of one poll.

Why hold a write at all: a write to a peer that is asleep in ``epoll_wait`` wakes it,
and waking a process on another core is an inter-processor interrupt (on a VM, an exit
to the hypervisor). A relay that is the slowest process on its host finds its peers
(the clients, the backends) asleep at nearly every write, because each of them handles
its part of a request faster than the relay and goes back to waiting. Written one by
one as the requests of a poll are handled, each response and each upstream request
paid its own wake-up: a third of the kernel's time per request, profiled at c=64. Held
until the poll's callbacks have run and then written together, a peer is woken once
and finds every socket of the batch ready, and two writes to one connection in one
poll (a stream's head and first chunk) go out in one ``send``.

The first write of a poll is not held: it goes out at once, and only the writes after
it in the same poll wait. A poll with one request in it (one client at a time) is then
written exactly as without an outbox; holding its one write cost 13 % of c=1
throughput and ~15 µs of CPU per request (the backend no longer worked on the request
while the gateway finished its callback). Under load the first write still wakes its
peer early, but every other write of the poll joins one flush.

The delay of a held write is the rest of the poll's callbacks, not a timer: the flush
is the first callback of the next loop iteration (``call_soon`` from within the poll),
before the loop waits again.

Rules that keep the bytes right:
- Every write of a held connection goes through its `HeldTransport`, so the order on
  the wire is the order of the calls. ``close`` sends what is held first; ``abort``
  drops it, as aborting a transport drops its buffer.
- A write of a large or mutable buffer (over 64 KiB, or not ``bytes``) is not held: what
  is held goes first and it is written at once, so a request body is never copied and
  a large write meets the transport's flow control when it is made. Held writes that
  add up to over 64 KiB go out at once too: flow control (a slow client pausing the
  backend's stream) acts within the poll, as it did before anything was held.
- What is held for a connection that is gone by the flush is dropped with it.
- ``get_write_buffer_size`` counts the held bytes: a stream's accounting reads it to
  tell what the client had not received when it left.
"""

from __future__ import annotations

import asyncio
import logging

from .transports import WrappedTransport

log = logging.getLogger("fastproxy.data")

# Larger writes go out at once: holding them gains nothing (one wake-up per 64 KiB is
# nothing next to the bytes) and joining them would copy.
HOLD_MAX = 64 * 1024


class Outbox:
    """The connections with writes held, flushed together once per loop iteration.
    One per event loop, shared by the client side and the upstream pools, so both
    sides' writes of a poll leave in the same flush."""

    __slots__ = ("_due", "_loop", "_open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[HeldTransport] = []
        # A write went out in this poll (its flush is scheduled): the later ones wait.
        self._open = False

    def first(self) -> bool:
        """Whether this is the poll's first write, which goes out at once (and makes
        the writes after it in the same poll wait for the flush)."""
        if self._open:
            return False
        self._open = True
        self._loop.call_soon(self.flush)
        return True

    def due(self, held: HeldTransport) -> None:
        """``held`` has bytes waiting: flush it with the others, after this poll."""
        self._due.append(held)

    def flush(self) -> None:
        self._open = False
        due, self._due = self._due, []
        for held in due:
            held.flush()

    def hold(self, transport: asyncio.Transport) -> HeldTransport:
        return HeldTransport(transport, self)


class HeldTransport(WrappedTransport):
    """A transport whose writes wait for the outbox's flush; everything else is the
    inner transport's own."""

    __slots__ = ("_held", "_held_size", "_outbox")

    def __init__(self, inner: asyncio.Transport, outbox: Outbox) -> None:
        super().__init__(inner)
        self._outbox = outbox
        # None, one bytes object (the usual case: one write per poll) or a list of them.
        self._held: bytes | list[bytes] | None = None
        self._held_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes or len(data) > HOLD_MAX:
            if self._held is not None:
                self.flush()
            self._inner.write(data)
            return
        if not data:
            return
        held = self._held
        if held is None:
            outbox = self._outbox
            if outbox.first():
                self._inner.write(data)
                return
            self._held = data
            self._held_size = len(data)
            outbox.due(self)
            return
        if type(held) is list:
            held.append(data)
        else:
            self._held = [held, data]  # type: ignore[list-item]
        self._held_size += len(data)
        if self._held_size > HOLD_MAX:
            # A fast sender (a backend's stream read up to 32 times in one poll) meets
            # the transport's flow control now, as it would without holding: a slow
            # client pauses the backend within the poll, not after megabytes.
            self.flush()

    def flush(self) -> None:
        """Write what is held, if anything (the outbox calls it; so does ``close``)."""
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_size = 0
        inner = self._inner
        if inner.is_closing():
            return  # gone: its buffer went with it, and so does this
        try:
            inner.write(held if type(held) is bytes else b"".join(held))  # type: ignore[arg-type]
        except Exception:
            # A transport that fails a write is one connection's problem: the others in
            # this flush still go out (the failed one's protocol sees its own loss).
            log.debug("held write failed", exc_info=True)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._held = None
        self._held_size = 0
        self._inner.abort()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + self._held_size

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()
