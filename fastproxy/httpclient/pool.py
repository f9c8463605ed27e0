"""The upstream leg: a keep-alive pool of raw HTTP/1.1 connections per backend.

A connection is reused only when its previous response was read to its end, the backend
allowed keep-alive and nothing unexpected arrived in between: any framing doubt closes
it (a half-read response on a reused socket would be served to the next request).

`UpstreamResponse` is the sink one exchange attaches to a connection for one response:
the parser's callbacks fill it, and the exchange either lets it buffer the whole body
(JSON) or installs a relay callback that receives each body chunk as it arrives (SSE).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque

import httptools

from .._speedups import IMPLEMENTATION, parse_simple_response
from ..core.errors import UpstreamError
from ..core.flow import FlowControl, FlowControlled
from ..core.outbox import Outbox
from .backend import Backend
from .response import UpstreamResponse

log = logging.getLogger("fastproxy.data")

_LINGER_RST = struct.pack("ii", 1, 0)
_JOIN_MAX = 64 * 1024
# Body bytes read before the exchange has decided how to relay a response (buffer the
# JSON, or attach the stream relay): past this, reading pauses until it has. Otherwise
# a busy loop could read a whole stream into memory in that gap, past any flow control.
HOLD_UNDECIDED = 256 * 1024
# A backend's answer that arrives whole in one read (the usual JSON response) is parsed
# by the compiled `parse_simple_response` in one call instead of httptools' callback per
# header; only when the core is compiled: the pure twin is no faster than the callbacks.
WHOLE_IN_ONE_CALL = IMPLEMENTATION == "cython"


class _TooLarge(Exception):
    """Raised in a parser callback: the backend sent more than a limit allows."""


def _check_head(headers: list[tuple[bytes, bytes]], max_bytes: int, max_headers: int) -> None:
    if len(headers) > max_headers:
        raise _TooLarge(f"response from backend has more than {max_headers} headers")
    if sum(len(k) + len(v) + 4 for k, v in headers) > max_bytes:
        raise _TooLarge(f"response head from backend exceeds {max_bytes} bytes")


class UpstreamConnection(FlowControlled, asyncio.Protocol):
    __slots__ = (
        "_feeding",
        "_head_bytes",
        "_head_deadline",
        "_idle_s",
        "_idle_since",
        "_parser",
        "_pool",
        "_timer",
        "_timer_at",
        "closed",
        "flow",
        "last_rx",
        "requests",
        "response",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.requests = 0
        self.last_rx = 0.0
        self._idle_since = 0.0
        self.flow: FlowControl | None = None
        self._head_bytes = 0  # bytes read while the response head is incomplete
        self._feeding = 0  # size of the read being parsed
        # The response deadlines (see watch()): plain numbers and one lazy timer.
        self._head_deadline = 0.0
        self._idle_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        outbox = self._pool.outbox
        held = outbox.hold(transport) if outbox is not None else transport  # type: ignore[arg-type]
        self.transport = held  # type: ignore[assignment]
        self.flow = FlowControl(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:
            # Bytes with no request outstanding: the framing can no longer be trusted.
            self.close()
            return
        self.last_rx = time.monotonic()
        if WHOLE_IN_ONE_CALL and not self._head_bytes and not resp.got_head:
            pool = self._pool
            whole = parse_simple_response(data, pool.max_head_bytes, pool.max_headers)
            if whole is not None:
                self._whole(resp, whole, data)
                return
        self._feeding = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            resp.fail(UpstreamError("protocol", "backend attempted a protocol upgrade"))
            self.close()
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                resp.fail(UpstreamError("too_large", str(exc.__context__)))
            else:  # our own callback raised (the relay): a bug, not the backend's fault
                log.exception("relay callback failed", exc_info=exc.__context__)
                resp.fail(UpstreamError("protocol", f"malformed response from backend: {exc}"))
            self.close()
            return
        except httptools.HttpParserError as exc:
            resp.fail(UpstreamError("protocol", f"malformed response from backend: {exc}"))
            self.close()
            return
        if not resp.got_head and not resp.settled and self.response is resp:
            # Still in the head after this read: all of it was head (a read that ends the
            # head is checked exactly, header by header, in the callbacks).
            self._head_bytes += len(data)
            if self._head_bytes > self._pool.max_head_bytes:
                resp.fail(
                    UpstreamError(
                        "too_large",
                        f"response head from backend exceeds {self._pool.max_head_bytes} bytes",
                    )
                )
                self.close()

    def _whole(
        self,
        resp: UpstreamResponse,
        whole: tuple[int, bool, list[tuple[bytes, bytes]], int, int],
        data: bytes,
    ) -> None:
        """A whole response parsed in one call: the steps httptools' callbacks take, in
        their order. The parser saw none of it, so it still waits for a message's start,
        which is where the next response on this connection begins."""
        status, keep_alive, headers, body_start, length = whole
        try:
            resp.headers = headers
            resp.status = status
            resp.keep_alive = keep_alive
            resp.close_delimited = False
            resp.first_byte_at = self.last_rx
            resp.header_done()
            if length:
                self.on_body(data[body_start:])
            self.on_message_complete()
        except _TooLarge as exc:
            resp.fail(UpstreamError("too_large", str(exc)))
            self.close()
        except Exception as exc:  # our own callback raised (the relay): a bug
            log.exception("relay callback failed", exc_info=exc)
            resp.fail(UpstreamError("protocol", f"malformed response from backend: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.flow is not None:
            self.flow.connection_lost()
        resp = self.response
        self.response = None
        if resp is not None and not resp.settled:
            if resp.close_delimited and resp.got_head and exc is None:
                # No Content-Length, not chunked: the close is the end of the body.
                resp.end()
            else:
                started = resp.got_head
                msg = "backend closed the connection" + (
                    " mid-response" if started else " before responding"
                )
                resp.fail(UpstreamError("reset", msg, sent_nothing=resp.bytes_rx == 0))
        self._pool._forget(self)
        self._parser = None  # type: ignore[assignment]  # break the parser<->protocol cycle

    # -- httptools callbacks -------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.lower(), value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            resp.headers.clear()  # interim response (100 Continue): wait for the real one
            return
        pool = self._pool
        # The head came in reads already counted plus (part of) this one: only when that
        # could be over the limit are its header lines measured (a usual head, a few
        # hundred bytes in one read with its body, costs two comparisons).
        if (
            self._head_bytes + self._feeding > pool.max_head_bytes
            or len(resp.headers) > pool.max_headers
        ):
            _check_head(resp.headers, pool.max_head_bytes, pool.max_headers)
        resp.status = status
        resp.keep_alive = self._parser.should_keep_alive()
        resp.close_delimited = (
            resp.header(b"content-length") is None and resp.header(b"transfer-encoding") is None
        )
        resp.first_byte_at = self.last_rx
        resp.header_done()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp.bytes_rx += len(body)
        on_chunk = resp.on_chunk
        if on_chunk is not None:
            on_chunk(body)
        else:
            if resp.bytes_rx > self._pool.max_body_bytes:
                raise _TooLarge(
                    f"response body from backend exceeds {self._pool.max_body_bytes} bytes"
                )
            resp.body.append(body)
            if not resp.decided and resp.bytes_rx > HOLD_UNDECIDED:
                self.pause_reading()

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None or not resp.got_head:
            return
        self.response = None
        # The owner hears of the end before the connection is pooled: a request it
        # starts from there (a pipelined one) cannot be given this connection while its
        # parser is still inside this callback.
        resp.end()
        if resp.keep_alive and not self.closed:
            # A slow client may have paused our reading mid-stream. A pooled connection
            # must read again: else a FIN from the backend goes unseen (CLOSE-WAIT) and
            # the next request on it would stall.
            flow = self.flow
            if flow is not None and flow.read_paused:
                self.resume_reading()
            self._pool.release(self)
        else:
            self.close()

    # -- used by the exchange ------------------------------------------------------
    def send(
        self, head: bytes, body: bytes | bytearray | memoryview, response: UpstreamResponse
    ) -> None:
        self.response = response
        self.requests += 1
        self._head_bytes = 0
        # One buffer, one send(): writelines() measured ~30% dearer here for the small
        # bodies that dominate (uvloop queues each piece). A large body is written on its
        # own: joining would copy it, and the transport keeps a reference, not a copy.
        t = self.transport
        if len(body) > _JOIN_MAX:
            t.write(head)  # type: ignore[union-attr]
            t.write(body)  # type: ignore[union-attr]
        else:
            t.write(head + body if body else head)  # type: ignore[union-attr]

    def watch(self, head_deadline: float, idle_s: float) -> None:
        """Fail the response in flight when no head arrived by ``head_deadline``
        (``time.monotonic()``), or once it did, after ``idle_s`` without a byte while
        the gateway reads (a paused read is a slow client, not a silent backend).

        One lazy timer serves every request on the connection: it is re-armed only when
        a deadline comes before it would fire, and when it fires early it re-arms for
        what is left. A keep-alive connection answering quickly therefore costs no timer
        per request (a timer per request was ~2 µs of the relay's per-request CPU)."""
        self._head_deadline = head_deadline
        self._idle_s = idle_s
        self._arm(head_deadline)

    def _arm(self, at: float) -> None:
        timer = self._timer
        if timer is None or self._timer_at > at:
            if timer is not None:
                timer.cancel()
            self._timer_at = at
            self._timer = self._pool._loop.call_later(
                max(0.0, at - time.monotonic()), self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        resp = self.response
        if resp is None or self.closed or resp.settled or not self._idle_s:
            return
        now = time.monotonic()
        if not resp.got_head:
            due = self._head_deadline
        elif self.reading_paused:
            due = now + self._idle_s
        else:
            due = self.last_rx + self._idle_s
        # Within a millisecond counts as due: a timer re-armed for less could fire
        # again at once, still "early".
        if due - now > 0.001:
            self._arm(due)
            return
        if resp.got_head:
            resp.fail(UpstreamError("timeout", "backend stalled mid-response"))
        else:
            name = self._pool.backend.name
            resp.fail(UpstreamError("timeout", f"no response from {name} in time"))
        self.close()

    def pause_reading(self) -> None:
        # Only a response in flight is held back. A connection whose response has ended
        # is back in the pool (or about to be), and a pause would stall whichever
        # request uses it next: a relay still flushing its last bytes to a slow client
        # must not reach it.
        if self.response is None or self.closed or self.flow is None:
            return
        self.flow.pause_reading()

    def resume_reading(self) -> None:
        flow = self.flow
        if flow is not None and flow.read_paused and not self.closed:
            # The backend's silence is measured from here: while the gateway was not
            # reading (a slow client), the backend could not have been heard.
            self.last_rx = time.monotonic()
            flow.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self.flow is not None and self.flow.read_paused

    def close(self) -> None:
        """Close now, dropping anything buffered: never half-reuse.

        With a request in flight the close is a TCP reset (SO_LINGER 0): a plain FIN can
        read as an HTTP half-close to a server that is still computing its answer, and
        the backend should stop generating tokens for a client that has gone."""
        t = self.transport
        if t is not None and not self.closed:
            self.closed = True
            if self.response is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                    except OSError:
                        pass
            t.abort()
            self._pool._forget(self)

    def usable(self, now: float, max_idle: float) -> bool:
        t = self.transport
        return (
            not self.closed
            and t is not None
            and not t.is_closing()
            and now - self._idle_since < max_idle
        )


class UpstreamPool:
    """Keep-alive connections to one backend, at most ``max_connections`` open."""

    __slots__ = (
        "_idle",
        "_loop",
        "_members",
        "_waiters",
        "backend",
        "connects",
        "max_body_bytes",
        "max_connections",
        "max_head_bytes",
        "max_headers",
        "max_idle",
        "outbox",
        "retired",
    )

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        *,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_connections: int = 10_000,
        outbox: Outbox | None = None,
    ) -> None:
        self.backend = backend
        # The data plane's outbox: a request written after a poll's first write waits
        # for the poll's end with the responses (core/outbox.py). None (probes,
        # discovery): written at once.
        self.outbox = outbox
        # What one response may hold: a head like a request's, a buffered body.
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        # The backend's own cap if it has one, else the gateway's client connection
        # limit: each client connection holds at most one upstream connection at a time.
        self.max_connections = backend.config.max_connections or max_connections
        # An idle pooled connection older than this is closed: servers close idle
        # keep-alive sockets on their own schedule, and a request written into one that
        # is closing races with its FIN.
        self.max_idle = backend.config.pool_idle_timeout_s
        self._loop = loop
        self._idle: list[UpstreamConnection] = []
        self._members: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.connects = 0
        # A reload replaced this pool (its backend was removed or changed): requests
        # still using its connections finish on them, and none goes back to the pool.
        self.retired = False

    @property
    def open_connections(self) -> int:
        return len(self._members)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for one request, or None: no waiting, no task. The
        request cycle's usual case (keep-alive, an idle connection at hand) goes no
        further; ``acquire`` is for everything else."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.max_idle):
                return conn
            conn.close()
        return None

    async def acquire(self, wait_s: float) -> tuple[UpstreamConnection, bool]:
        """A connection ready for one request, and whether it was reused."""
        deadline = time.monotonic() + wait_s
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn, True
            if len(self._members) < self.max_connections:
                return await self._connect(deadline), False
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await waiter
            except TimeoutError:
                raise UpstreamError(
                    "timeout", "no upstream connection free in time", sent_nothing=True
                ) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, deadline: float) -> UpstreamConnection:
        b = self.backend
        conn = UpstreamConnection(self)
        self._members.add(conn)
        self.connects += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._loop.create_connection(
                    lambda: conn, b.host, b.port, ssl=b.ssl, server_hostname=b.server_hostname
                )
        except TimeoutError:
            self._forget(conn)
            conn.close()
            raise UpstreamError(
                "timeout", f"connect to {b.name} timed out", sent_nothing=True
            ) from None
        except OSError as exc:
            self._forget(conn)
            kind = "tls" if "SSL" in type(exc).__name__ else "connect"
            raise UpstreamError(
                kind, f"cannot connect to {b.name}: {exc.strerror or exc}", sent_nothing=True
            ) from None
        except BaseException:
            self._forget(conn)
            conn.close()
            raise
        return conn

    def retire(self) -> None:
        """No more requests: idle connections close now, busy ones when their response
        ends (or at once, should one be handed back)."""
        self.retired = True
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()

    def release(self, conn: UpstreamConnection) -> None:
        if self.retired:
            conn.close()
            return
        conn._idle_since = time.monotonic()
        self._idle.append(conn)
        if self._waiters:
            self._wake()

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn in self._members:
            self._members.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def sweep(self) -> None:
        """Close idle connections past ``max_idle`` (called once a second)."""
        if not self._idle:
            return
        now = time.monotonic()
        for conn in [c for c in self._idle if not c.usable(now, self.max_idle)]:
            conn.close()

    def close(self) -> None:
        for conn in list(self._members):
            conn.close()
        self._members.clear()
        self._idle.clear()
