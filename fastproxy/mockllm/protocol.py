"""The mock's HTTP/1.1 server protocol: httptools callbacks, pipelining, flow control.

Rules of this module:

* Callbacks never await and never let an exception escape. A request whose answer is ready at
  once (the common non-streaming case) is written from ``on_message_complete`` itself; that
  fast path creates no task, which is most of what makes the mock fast enough never to be a
  benchmark's bottleneck.
* Anything slower (delays, streams, faults) runs as one *job* task per request. While a job
  runs, later pipelined requests wait in a queue and are answered in order afterwards; reading
  pauses when the queue is long, so a client cannot make us buffer without bound.
* Writes of a job await ``drain()`` only when the transport has paused us, so a slow reader
  stops the producer instead of growing the transport's buffer (bounded memory for a 100 MiB
  stream).
* ``connection_lost`` cancels the running job: a client that goes away ends the work at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import httptools

from ..core.flow import FlowControl, FlowControlled
from . import wire

log = logging.getLogger("fastproxy.mockllm")

# Past this many queued pipelined requests we stop reading the socket until the queue drains.
MAX_PIPELINED = 32
# Bodies above this are refused (413): the mock has no use for them and must not be a memory sink.
MAX_BODY_BYTES = 64 * 1024 * 1024

Job = Coroutine[Any, Any, None]
Reply = bytes | Job | None


class Request:
    """One parsed request. ``mock`` holds the ``x-mock-*`` headers, split off while parsing."""

    __slots__ = (
        "body",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "mock",
        "path",
        "query",
        "received_at",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[str, str]],
        mock: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        http10: bool,
    ) -> None:
        path, _, query = target.partition(b"?")
        self.method = method
        self.path = path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.headers = headers
        self.mock = mock
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.received_at = time.time()


class ConnectionCounters(Protocol):
    """The counters a connection updates (``MockStats``); a structural type, so no import cycle."""

    connections_opened: int
    connections_closed: int
    open_connections: int


class MockProtocol(FlowControlled, asyncio.Protocol):
    """One client connection. ``handler(request, protocol)`` returns bytes, a job, or None."""

    __slots__ = (
        "_body",
        "_body_size",
        "_closing",
        "_eof",
        "_handler",
        "_headers",
        "_job",
        "_lost_waiter",
        "_mock",
        "_on_close",
        "_on_open",
        "_parser",
        "_queue",
        "_stats",
        "_too_big",
        "_url",
        "date",
        "flow",
        "lost",
        "transport",
    )

    def __init__(
        self,
        handler: Callable[[Request, MockProtocol], Reply],
        stats: ConnectionCounters,
        date: wire.DateHeader,
        on_open: Callable[[MockProtocol], None],
        on_close: Callable[[MockProtocol], None],
    ) -> None:
        self._handler = handler
        self._stats = stats
        self._on_open = on_open
        self._on_close = on_close
        self.date = date
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._mock: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_big = False
        self._queue: deque[Request] = deque()
        self._job: asyncio.Task[None] | None = None
        self._closing = False
        self._eof = False
        self.flow: FlowControl | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        self.lost = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)  # type: ignore[arg-type]
        self._stats.connections_opened += 1
        self._stats.open_connections += 1
        # Registered here, not in the factory: a TLS handshake that fails never reaches
        # connection_made (nor connection_lost), and must not leave a ghost behind.
        self._on_open(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserCallbackError:
            # Our own bug inside a callback: the traceback matters, the peer gets a 500.
            log.exception("mock-llm: error in a request callback")
            self._reject(500, "internal error in mock-llm")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        # A job waiting for the peer to leave (the hang faults) takes EOF as "the client gave
        # up", as nginx does with its 499. Otherwise a half-closed client may still be waiting
        # for a response or pipelined answers: keep writing, and close once they are all out
        # (see _drain_queue); a peer that fully closed makes the next write fail anyway.
        if self._lost_waiter is not None and not self._lost_waiter.done():
            return None
        if self._job is not None or self._queue:
            self._eof = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._closing = True
        self._stats.connections_closed += 1
        self._stats.open_connections -= 1
        self._queue.clear()
        if self.flow is not None:
            self.flow.connection_lost()
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if self._job is not None:
            self._job.cancel()
        self._on_close(self)

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._mock = []
        self._body = []
        self._body_size = 0
        self._too_big = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        item = (key, value.decode("latin-1"))
        self._headers.append(item)
        if key.startswith("x-mock-"):
            self._mock.append(item)

    def on_headers_complete(self) -> None:
        for key, value in self._headers:
            if key == "expect" and value.lower() == "100-continue" and self.transport:
                self.transport.write(wire.CONTINUE_100)

    def on_body(self, body: bytes) -> None:
        if self._too_big:
            return
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._too_big = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        if self._too_big:
            self._reject(413, "request body too large for mock-llm")
            return
        req = Request(
            parser.get_method().decode("latin-1"),
            self._url,
            self._headers,
            self._mock,
            b"".join(self._body),
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
        )
        if self._job is not None or self._queue:
            self._queue.append(req)
            if len(self._queue) >= MAX_PIPELINED and self.flow is not None:
                self.flow.pause_reading()
            return
        self._dispatch(req)

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        """Answer ``req`` now (bytes) or start its job; called only when nothing else runs."""
        try:
            reply = self._handler(req, self)
        except Exception:
            log.exception("mock-llm: handler failed for %s %s", req.method, req.path)
            reply = self.simple_response(
                500, b'{"error":{"message":"mock-llm internal error"}}', keep_alive=False
            )
            req.keep_alive = False
        if reply is None:
            return
        if isinstance(reply, bytes):
            self.write(reply)
            if not req.keep_alive:
                self.close()
            return
        self._job = asyncio.get_running_loop().create_task(self._run_job(reply, req))

    async def _run_job(self, job: Job, req: Request) -> None:
        try:
            await job
        except (asyncio.CancelledError, ConnectionError):
            # The client went away (connection_lost cancelled us) or the server is closing;
            # the job's own ``finally`` blocks have done the bookkeeping.
            pass
        except Exception:
            log.exception("mock-llm: job failed for %s %s", req.method, req.path)
            self.abort()
        finally:
            self._job = None
        if self._closing:
            return
        if not req.keep_alive:
            self.close()
            return
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self._queue and self._job is None and not self._closing:
            self._dispatch(self._queue.popleft())
        if self._eof and self._job is None and not self._queue:
            self.close()
            return
        flow = self.flow
        if (
            flow is not None
            and flow.read_paused
            and len(self._queue) < MAX_PIPELINED // 2
            and not self._closing
        ):
            flow.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        body = wire.error_body("openai", status, message)
        self.write(self.simple_response(status, body, keep_alive=False))
        self.close()

    def simple_response(self, status: int, body: bytes, keep_alive: bool = True) -> bytes:
        return wire.head(self.date.get(), status, wire.JSON_TYPE, len(body), keep_alive) + body

    # --- writing, used by jobs -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        # is_closing() covers the window between a transport error and connection_lost, where
        # a write would raise RuntimeError (uvloop) or be dropped with a warning (asyncio).
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost")
        transport.write(data)

    @property
    def paused(self) -> bool:
        return self.flow is not None and self.flow.write_paused

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark (no-op if not paused)."""
        if self.lost or self.flow is None:
            raise ConnectionResetError("connection lost")
        await self.flow.drain()

    async def flush(self) -> None:
        """Wait until everything written has left the transport's buffer (for cuts and RST)."""
        transport = self.transport
        if transport is None or self.lost or transport.get_write_buffer_size() == 0:
            return
        # A zero high-water mark pauses us until the buffer is empty, then resume_writing
        # fires; this uses the transport's own notification instead of polling its size.
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self.drain()
        finally:
            if not self.lost:
                transport.set_write_buffer_limits()

    async def wait_lost(self) -> None:
        """Return when the peer has closed the connection (used by the hang faults)."""
        if self.lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await self._lost_waiter

    def close(self) -> None:
        """Graceful close: buffered data is still delivered, then FIN."""
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with an RST (SO_LINGER 0), as a crashed server or a middlebox would."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
