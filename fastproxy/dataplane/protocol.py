"""ClientProtocol: the data plane's HTTP/1.1 server side, on httptools.

Rules this class keeps (and why):
- Callbacks never block, never await and never let an exception escape: they parse,
  update state, write canned bytes or start the request cycle (cycle.py), which gets
  the transport, the flow control and an on-done callback, never this object.
- One deadline at a time, named by phase: IDLE (keep-alive, or a fresh connection that
  has sent nothing), HEAD (header deadline: slowloris), BODY (idle time between body
  bytes). Deadlines are plain numbers and the one timer is lazy: setting a deadline
  re-arms it only when the new deadline comes before the timer would fire, clearing one
  leaves the timer armed, and a timer that fires early re-arms itself for what is left.
  So a keep-alive connection does not create and cancel three timers per request (HEAD,
  BODY, IDLE: ~4 % of the gateway's CPU per JSON request in a profile at c=64); body
  bytes only stamp a time.
- Limits and authentication are enforced before work: a missing or wrong API key, an
  unknown path or a Content-Length over the body limit is refused as soon as the head is
  parsed, before a byte of body is read and before any ``100 Continue``. Request line,
  head size and header count are counted as the parser reports them, so the verdict
  does not depend on how the bytes were split into reads; raw bytes of a head still
  incomplete at the end of a read are only a memory guard at twice the limits (a body
  or a pipelined request after a complete head never counts).
- Chunked trailers are read and discarded: they never become headers, so they can
  neither authenticate, nor reach the backend, nor trip the loop guard.
- Exactly one response per request. HEAD gets headers only (a body would be read as the
  next response on the connection). ``Upgrade`` on a request the gateway serves is
  ignored: the request (and its body) is read as plain HTTP and the connection stays
  HTTP. ``CONNECT`` gets one error and a close.
- Responses leave in request order: pipelined requests wait in a short queue (reading
  pauses while it is non-empty) and a rejection is queued like any other response.
- httptools' dangerous leniencies stay off (the parser is created strict and nothing
  here relaxes it): bare LF line ends, CL+TE together, bad chunk sizes are all errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from .._speedups import IMPLEMENTATION, parse_simple_request
from ..core.auth import bearer_key
from ..core.errors import GatewayError, RequestRejected
from ..core.flow import FlowControl
from . import wire
from .cycle import RequestCycle, record_rejection
from .dialects import openai
from .plane import DataPlane
from .request import Request, is_model_path
from .responses import error_response

log = logging.getLogger("fastproxy.data")


class Phase:
    """What the connection is waiting for, which names the deadline that applies.
    Plain int constants, for the reason `cycle.Stage` gives."""

    IDLE = 0  # a request to begin (keep-alive, or a fresh connection)
    HEAD = 1  # the rest of a request head (the header deadline: slowloris)
    BODY = 2  # more body bytes (idle time between them)


MAX_PIPELINE = 16
# A whole request in one read goes to the compiled `parse_simple_request` only when the
# core is compiled: the pure twin is as slow as the callbacks it would save.
WHOLE_IN_ONE_CALL = IMPLEMENTATION == "cython"
# Head of the synthetic message that lets a fresh parser go on reading the body of a
# request whose Upgrade the gateway ignores (httptools hands everything after an upgrade
# request's head to "the other protocol"); its callbacks are muted.
_BODY_CL = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
_BODY_CHUNKED = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"

_OVER_CAPACITY = wire.simple_response(
    503,
    openai.error_body(503, "gateway at max_connections; retry later", "overloaded"),
    keep_alive=False,
    extra=b"retry-after: 1\r\n",
)


def _put(buf: bytearray, sized: int, end: int, piece: bytes | bytearray) -> None:
    """Store ``piece`` as the bytes of the body that end at ``end``."""
    if sized:
        buf[end - len(piece) : end] = piece
    else:
        buf += piece


def _refuse(status: int, message: str, code: str) -> RequestRejected:
    """A refusal decided while parsing: answered in order, then the connection closes."""
    return RequestRejected(message, status=status, code=code, close=True)


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_config",
        "_deadline",
        "_head_bytes",
        "_head_guard",
        "_in_head",
        "_keyring",
        "_last_body_at",
        "_limits",
        "_loop",
        "_messages",
        "_mute",
        "_parser",
        "_phase",
        "_send_timer",
        "_timeouts",
        "_timer",
        "_timer_at",
        "_url",
        "closed",
        "connection_id",
        "current",
        "flow",
        "peer",
        "plane",
        "queue",
        "req",
        "transport",
    )

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._loop = plane.loop
        self._follow_config()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.connection_id = 0
        self.req: Request | None = None
        self._url: list[bytes] = []
        self._head_bytes = 0  # bytes of the head in progress, counted as reads arrive
        self._in_head = False  # between a message's first byte and its parsed head
        self._messages = 0  # messages begun on this connection
        self._mute = False  # the parser is reading a synthetic head (see _ignore_upgrade)
        self._last_body_at = 0.0
        self.queue: deque[Request] = deque()
        self.current: RequestCycle | None = None
        self.flow: FlowControl | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the armed timer fires (loop time)
        self._deadline = 0.0  # when the current phase times out; 0: no deadline
        self._phase = Phase.IDLE
        self.closed = False

    def _follow_config(self) -> None:
        """Take the plane's current limits, timeouts and API keys: at the start, and
        when a request begins after a reload (SIGHUP), so that the next request on a
        keep-alive connection is held to the new ones."""
        plane = self.plane
        self._config = config = plane.config
        self._limits = lim = config.limits
        self._timeouts = config.timeouts
        self._keyring = plane.keyring
        # The head limits are on what a head says (the request line, header names and
        # values: checked exactly as the parser reports them, whatever the reads). Raw
        # bytes also hold separators and optional whitespace the parser drops, so they
        # only guard memory, against a head that never ends: twice the limits, so a head
        # within them is never refused by the guard because of how it was split.
        self._head_guard = 2 * (lim.max_head_bytes + lim.max_request_line_bytes)

    @property
    def busy(self) -> bool:
        """A request of this connection is being answered."""
        return self.current is not None

    @property
    def streaming(self) -> bool:
        """A response stream is being relayed on this connection."""
        return self.current is not None and self.current.streaming_started

    def abort(self, message: str) -> None:
        """The gateway stops and will not wait longer: end the request in progress
        (an error event for a stream, a 503 otherwise), or close an idle connection."""
        if self.current is not None:
            self.current.abort(message)
        elif self.transport is not None:
            self.transport.close()

    # -- connection lifecycle ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; it has its methods.
        transport = cast(asyncio.Transport, transport)
        plane = self.plane
        # A poll's writes after its first wait for the poll's end (core/outbox.py);
        # flow control is the transport's own.
        self.transport = plane.outbox.hold(transport)
        self.flow = FlowControl(transport)
        plane.counters.connections_total += 1
        if len(plane.connections) >= self._limits.max_connections or plane.draining:
            plane.counters.connections_rejected += 1
            self.transport.write(_OVER_CAPACITY)
            self.transport.close()
            self.closed = True
            return
        self.connection_id = plane.new_connection_id()
        self.peer = transport.get_extra_info("peername")
        plane.connections.add(self)
        # A fresh connection gets the header deadline to send its first request.
        self._arm(Phase.IDLE, self._timeouts.header_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:  # cancelled for real: it would keep this protocol alive
            self._timer.cancel()
            self._timer = None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self.plane.connections.discard(self)
        if self.flow is not None:
            self.flow.connection_lost()
        current = self.current
        if current is not None:
            current.client_gone()
        self.queue.clear()
        self._parser = None  # type: ignore[assignment]

    # -- flow control -----------------------------------------------------------------
    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()
        if self._send_timer is None and not self.closed:
            self._send_timer = self._loop.call_later(self._timeouts.send_seconds, self._stalled)

    def _stalled(self) -> None:
        """The client read nothing for ``timeouts.send_seconds`` while we had bytes for
        it: drop it. Its own fault, so the backend (paused meanwhile) is never blamed."""
        self._send_timer = None
        if self.closed or self.flow is None or not self.flow.write_paused:
            return
        self.plane.counters.client_stalls += 1
        if self.current is not None:
            self.current.client_stalled()
        log.info(
            "client connection %d stopped reading for %.0fs: dropped",
            self.connection_id,
            self._timeouts.send_seconds,
        )
        self.transport.abort()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        assert self.flow is not None
        self.flow.resume_writing()

    def _pause_reading(self) -> None:
        if not self.closed and self.flow is not None:
            self.flow.pause_reading()

    # -- timers -------------------------------------------------------------------------
    def _arm(self, phase: int, seconds: float) -> None:
        """Enter ``phase``: the one place the phase changes, with its deadline."""
        self._phase = phase
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        # The armed timer stays: when it fires it finds no deadline and lets go.
        self._deadline = 0.0

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if self.closed or not deadline:
            return
        phase = self._phase
        if phase == Phase.BODY:
            deadline = max(deadline, self._last_body_at + self._timeouts.body_idle_seconds)
        # Within a millisecond counts as due: the loop's timers are that coarse, and a
        # timer re-armed for less could fire again at once, still "early".
        if deadline - self._loop.time() > 0.001:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        if phase == Phase.IDLE:
            self.transport.close()  # type: ignore[union-attr]
            return
        what = "request headers" if phase == Phase.HEAD else "request body"
        self._reject_now(_refuse(408, f"timed out waiting for the {what}", "request_timeout"))

    # -- parsing -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if (
            WHOLE_IN_ONE_CALL
            and self.req is None
            and self.current is None
            and not self.queue
            and self._whole(data)
        ):
            return
        in_head, begun, idle = self._in_head, self._messages, self.req is None
        self._feed(data)
        if self._in_head and not self.closed:
            if in_head and begun == self._messages:
                # The whole read fell inside a head still being parsed.
                self._head_bytes += len(data)
            elif idle and self._messages == begun + 1:
                # The read began between messages: all of it is this head.
                self._head_bytes = len(data)
            else:
                # The read also ended an earlier message: count what the parser reported
                # of the new head (request line, complete headers), not the bytes before
                # it. This undercounts by at most the header being parsed, within one read.
                req = self.req
                self._head_bytes = sum(map(len, self._url)) + (req.head_size if req else 0)
            if self._head_bytes > self._head_guard:
                self._reject_now(_refuse(431, "request head too large", "head_too_large"))

    def _feed(self, data: bytes) -> None:
        rest: bytes | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            err = exc.__context__
            if isinstance(err, GatewayError):
                self._reject_now(err)
            else:
                log.error("bug in request callback", exc_info=err)
                self._reject_now(_refuse(500, "internal error", "internal_error"))
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :] if exc.args else b""
        except httptools.HttpParserInvalidURLError:
            self._reject_now(_refuse(400, "malformed request target", "bad_request"))
        except httptools.HttpParserError as exc:
            self._reject_now(_refuse(400, f"malformed HTTP request: {exc}", "bad_request"))
        if rest is not None:
            # Outside the handler: an error the rest raises must not carry the upgrade as
            # its context (a RequestRejected would be mistaken for a bug in a callback).
            self._ignore_upgrade(rest)

    def _ignore_upgrade(self, rest: bytes) -> None:
        """httptools stopped at a request asking to switch protocols. CONNECT was refused
        at its head; any other request is served as plain HTTP: a fresh parser reads on,
        first the body the upgrade request announced, then whatever follows it."""
        self._parser = httptools.HttpRequestParser(self)
        req = self.req
        if req is not None and req.expects_body:
            # The upgrade request is still open (on_message_complete held it back): give
            # the new parser a muted head that frames the body the same way.
            cl = req.header(b"content-length")
            self._mute = True
            try:
                self._parser.feed_data(_BODY_CHUNKED if req.te_present else _BODY_CL % int(cl or 0))
            finally:
                self._mute = False
        if rest and not self.closed:
            self.data_received(rest)

    def on_message_begin(self) -> None:
        if self._mute:
            return
        if self.plane.config is not self._config:
            self._follow_config()  # reloaded: this request meets the new config
        self.req = Request(self._loop.time())
        self._url = []
        self._head_bytes = 0
        self._in_head = True
        self._messages += 1
        self._arm(Phase.HEAD, self._timeouts.header_seconds)

    def on_url(self, url: bytes) -> None:
        if self._mute:
            return
        self._url.append(url)
        if sum(map(len, self._url)) > self._limits.max_request_line_bytes:
            raise _refuse(414, "request line too long", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked trailer (or the muted head): discarded, never a header
        req = self.req
        assert req is not None
        name = name.lower()
        req.headers.append((name, value))
        if len(req.headers) > self._limits.max_headers:
            raise _refuse(431, "too many request headers", "too_many_headers")
        req.head_size += len(name) + len(value) + 4
        if req.head_size > self._limits.max_head_bytes:
            raise _refuse(431, "request headers too large", "head_too_large")
        if name == b"host":
            req.host_count += 1
        elif name == b"transfer-encoding":
            req.te_present = True

    def on_headers_complete(self) -> None:
        if self._mute:
            return
        self._in_head = False
        req = self.req
        assert req is not None
        parser = self._parser
        self._head_complete(
            req,
            parser.get_method(),
            parser.get_http_version() == "1.1",
            parser.should_keep_alive(),
            b"".join(self._url),
            False,
        )

    def _head_complete(
        self,
        req: Request,
        method: bytes,
        http11: bool,
        keep_alive: bool,
        target: bytes,
        whole: bool,
    ) -> None:
        """Everything decided from a complete head, whichever parser read it; ``whole``:
        the body is already here (no body deadline, no ``100 Continue``)."""
        req.method = method
        req.http11 = http11
        req.keep_alive = keep_alive
        req.index_headers()
        path, _, query = target.partition(b"?")
        req.resolve(path)
        req.query = query
        if req.http11 and req.host_count != 1:
            raise _refuse(400, "HTTP/1.1 requires exactly one Host header", "bad_request")
        if not req.http11 and req.te_present:
            raise _refuse(400, "Transfer-Encoding is not allowed in HTTP/1.0", "bad_request")
        if req.method == b"CONNECT":
            raise _refuse(
                405,
                "CONNECT is not supported: this is an API gateway, not a forward proxy",
                "method_not_allowed",
            )
        keyring = self._keyring
        if keyring is not None:
            # The header index is built: two probes instead of a scan of the head.
            given = req.header(b"x-api-key")
            if given is None:
                given = bearer_key(req.header(b"authorization"))
            key = keyring.identify(given)
            if key is None:
                raise _refuse(401, "invalid or missing API key", "invalid_api_key")
            req.client_key = key
            req.client_key_id = key.key_id
        cl = req.header(b"content-length")
        if cl is not None:
            try:
                length = int(cl)
            except ValueError:
                raise _refuse(400, "invalid Content-Length", "bad_request") from None
            req.content_length = length
            if length > self._limits.max_body_bytes:
                raise _refuse(
                    413,
                    f"request body of {length} bytes exceeds the limit of "
                    f"{self._limits.max_body_bytes}",
                    "request_too_large",
                )
        expects_body = req.te_present or (cl is not None and cl != b"0")
        req.expects_body = expects_body
        if expects_body:
            # The body is read only for a request the gateway will serve: anything else
            # is answered now, before the client sends it (or waits for 100 Continue).
            self._check_route(req)
            if whole:
                return
            self._last_body_at = self._loop.time()
            self._arm(Phase.BODY, self._timeouts.body_idle_seconds)
            if req.header(b"expect") == b"100-continue" and self.current is None and not self.queue:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        else:
            self._cancel_timer()

    def _check_route(self, req: Request) -> None:
        """Refuse, from the head alone, a request with a body that no endpoint takes."""
        path = req.path
        if req.api is not None:
            if req.method != b"POST":
                raise _refuse(405, "use POST for this endpoint", "method_not_allowed")
        elif is_model_path(path):
            if req.method not in (b"GET", b"HEAD"):
                raise _refuse(405, "use GET for this path", "method_not_allowed")
        else:
            text = path.decode("latin-1")
            monitoring = self.plane.monitoring
            allowed = monitoring.allowed_methods(text) if monitoring is not None else []
            if not allowed:
                raise _refuse(404, f"no such endpoint: {text}", "not_found")
            method = req.method.decode("latin-1")
            if method not in allowed and not (method == "HEAD" and "GET" in allowed):
                raise _refuse(405, f"method not allowed for {text}", "method_not_allowed")

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        req.body_size += len(body)
        if req.body_size > self._limits.max_body_bytes:
            raise _refuse(413, "request body exceeds the limit", "request_too_large")
        self._last_body_at = self._loop.time()
        buf = req.body_buf
        if buf is None:
            if not req.body:
                req.body = body  # the usual case: the whole body in one read, kept as is
                return
            # A second piece: from now on one buffer, of the declared size when there is
            # one (grown instead, it would be over-allocated by an eighth).
            first = req.body
            cl = req.content_length
            req.body = req.body_buf = buf = bytearray(cl) if cl else bytearray()
            _put(buf, cl, len(first), first)
        _put(buf, req.content_length, req.body_size, body)

    def on_message_complete(self) -> None:
        if self._mute:
            return
        req = self.req
        assert req is not None
        if req.expects_body and not req.body_size and self._parser.should_upgrade():
            return  # its body follows the upgrade point: _ignore_upgrade reads it
        self._complete(req)

    def _complete(self, req: Request) -> None:
        self.req = None
        self._cancel_timer()
        req.body_buf = None
        self.queue.append(req)
        if self.current is None:
            self._next()
        elif len(self.queue) >= 1:
            self._pause_reading()
        if len(self.queue) > MAX_PIPELINE:
            self._pause_reading()

    def _whole(self, data: bytes) -> bool:
        """The usual request, whole in one read, parsed in one call (the compiled
        `parse_simple_request`) instead of a Python callback per element. False: not
        such a request; httptools reads it, and any verdict on it is its own."""
        if self.plane.config is not self._config:
            self._follow_config()  # reloaded: this request meets the new config
        lim = self._limits
        parsed = parse_simple_request(
            data, lim.max_request_line_bytes, lim.max_head_bytes, lim.max_headers
        )
        if parsed is None:
            return False
        method, target, headers, head_size, body_start, length = parsed
        req = Request(self._loop.time())
        req.headers = headers
        req.head_size = head_size
        req.host_count = 1  # the parser takes no other count
        self.req = req
        self._url = [target]
        self._messages += 1
        try:
            self._head_complete(req, method, True, True, target, True)
        except GatewayError as err:
            self._reject_now(err)
            return True
        if length:
            req.body = data[body_start:]
            req.body_size = length
        self._complete(req)
        return True

    # -- responses -------------------------------------------------------------------
    def _reject_now(self, err: GatewayError) -> None:
        """Refuse the request being parsed; respond in order, then close."""
        req = self.req
        if req is None:
            req = Request(self._loop.time())
        elif not req.path and self._url:
            # Refused before the head was complete: the request line already says which
            # API (and so which error dialect) the client speaks.
            req.resolve(b"".join(self._url).partition(b"?")[0])
        self.req = None
        req.reject = err
        req.keep_alive = False
        self._cancel_timer()
        self._pause_reading()
        self.queue.append(req)
        if self.current is None:
            self._next()

    def _next(self) -> None:
        """Start the next queued request, if the connection is free."""
        while self.queue and self.current is None and not self.closed:
            req = self.queue.popleft()
            if req.reject is not None:
                err = req.reject
                assert isinstance(err, GatewayError)
                self._refuse_now(req, err)
                record_rejection(self.plane, req, self.connection_id, err.status)
                continue
            assert self.transport is not None and self.flow is not None
            peer_ip = self.peer[0] if self.peer else None
            self.current = RequestCycle(
                self.plane,
                req,
                self.transport,
                self.flow,
                self.connection_id,
                peer_ip,
                self._cycle_done,
            )
            self.current.start()
            return
        if not self.closed and self.current is None:
            flow = self.flow
            if flow is not None and flow.read_paused:  # paused only while requests queue
                flow.resume_reading()
            if self.plane.draining:
                self.transport.close()  # type: ignore[union-attr]
            elif self.req is None:
                self._arm(Phase.IDLE, self._timeouts.keepalive_seconds)

    def _cycle_done(self, keep_alive: bool) -> None:
        """The request cycle's on_done: its response is complete (or abandoned)."""
        self.current = None
        if self.closed:
            return
        if not keep_alive or (self.plane.draining and not self.queue):
            self.closed = True
            self._cancel_timer()
            self.transport.close()  # type: ignore[union-attr]
            return
        self._next()

    def _refuse_now(self, req: Request, err: GatewayError) -> None:
        """Answer a request refused from its head, in its dialect."""
        keep = req.keep_alive and not err.close and not self.plane.draining
        self.transport.write(  # type: ignore[union-attr]
            error_response(req, err, self.plane.date.line, keep)
        )
        if not keep:
            self.closed = True
            self._cancel_timer()
            self.transport.close()  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after its response."""
        if self.current is None and self.req is None and not self.queue and not self.closed:
            self.closed = True
            self._cancel_timer()
            self.transport.close()  # type: ignore[union-attr]
