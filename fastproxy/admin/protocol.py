"""AdminProtocol: the admin listener's HTTP/1.1 server, on h11.

Rules this class keeps (and why):

* **h11 does the HTTP.** The admin plane carries little traffic and much trust, so it
  uses the strict, well-tested state machine rather than the data plane's hand-tuned
  httptools path: malformed input is a ``RemoteProtocolError`` answered with its
  ``error_status_hint`` (400, 431 for an oversized head) and a close, and the listener
  keeps serving every other connection.
* **Callbacks never await.** ``data_received`` feeds h11 and turns a complete request
  into one handler task; reading pauses while that task runs (one request in flight per
  connection; pipelined bytes wait in h11's buffer, which h11 bounds).
* **Ambiguous framing closes.** h11 reads a request carrying both Content-Length and
  Transfer-Encoding by its chunked coding, unfolds obs-fold lines and accepts bare-LF
  line ends; a proxy in front may read any of those differently and see a different
  next request. So CL with TE, TE on HTTP/1.0, a folded header line and a bare LF in the
  head are answered 400 and the connection closed (RFC 9112 requires the close for CL
  with TE), like every error h11 raises itself.
* **Access first.** A peer not allowed by the listener's policy (loopback compared as an
  IP, plus ``admin.allow_networks``) gets 403 and a close before its body is read; a
  foreign Host gets 421 (the DNS-rebinding guard). With ``admin.api_keys`` set, a remote
  peer is judged by its admin key instead: 401 without a valid one, 403 for a write
  unless ``admin.remote_writes`` (access.py says why). The key is never logged.
* **Bounded.** Head size by h11's ``max_incomplete_event_size`` (``limits.max_head_bytes``),
  body by ``MAX_BODY_BYTES`` (413), connections by ``MAX_CONNECTIONS`` (503), an
  incomplete request by ``timeouts.header_seconds`` and an idle keep-alive connection by
  ``timeouts.keepalive_seconds``.
* **Streams honour flow control.** ``AdminResponse.stream`` pieces go out as chunks;
  while the transport has paused us the writer awaits the `FlowControl`'s ``drain()``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import h11

from ..config import Config
from ..core.access import AccessPolicy
from ..core.auth import presented_key
from ..core.clock import HttpDate
from ..core.flow import FlowControl, FlowControlled
from ..core.seams import PlaneStats
from ..logs import quote
from . import dashboard
from .routes import AdminRequest, AdminResponse, Router, error_response, parse_query

log = logging.getLogger("fastproxy.admin")

MAX_BODY_BYTES = 1024 * 1024  # monitoring requests carry small JSON bodies at most
MAX_CONNECTIONS = 256
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 52\r\nconnection: close\r\n\r\n"
    b'{"detail": "too many admin connections; try again"}\n'
)
assert len(_BUSY_RESPONSE.split(b"\r\n\r\n", 1)[1]) == 52
# How h11 finds the end of a head (LF, optional CR, LF), and a folded continuation line.
_HEAD_END = re.compile(rb"\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What every admin connection shares: given by the admin service, read only."""

    config: Config
    loop: asyncio.AbstractEventLoop
    router: Router
    policy: AccessPolicy
    date: HttpDate
    plane: PlaneStats  # whether the gateway is draining (then every answer closes)


class AdminProtocol(FlowControlled, asyncio.Protocol):
    __slots__ = (
        "_admin_key",
        "_body",
        "_conn",
        "_connections",
        "_head",
        "_policy",
        "_scan_head",
        "_tail",
        "_task",
        "_timer",
        "ctx",
        "flow",
        "peer_ip",
        "transport",
    )

    def __init__(self, ctx: AdminContext, connections: set[AdminProtocol]) -> None:
        self.ctx = ctx
        self._connections = connections
        # The admin listener's own policy knows the admin keys; the data port's does
        # not (the data port never accepts an admin key).
        self._policy = ctx.policy
        self._admin_key = False  # the request in progress was admitted by an admin key
        self._conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=ctx.config.limits.max_head_bytes
        )
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.peer_ip: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head: h11.Request | None = None
        self._body = bytearray()
        # Set when a complete head may be waiting in h11's buffer (a blank line arrived,
        # or a new cycle starts over pipelined bytes): only then is the buffer copied and
        # its raw head checked, so a head sent a byte at a time is not rescanned per byte.
        self._scan_head = False
        self._tail = b""  # the last bytes received: a blank line may span two reads

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; it has its methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.flow = FlowControl(transport)
        if len(self._connections) >= MAX_CONNECTIONS:
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) and peer else None
        self._arm(self.ctx.config.timeouts.header_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.flow is not None:
            self.flow.connection_lost()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if _HEAD_END.search(data) or _HEAD_END.search(self._tail + data[:2]):
            self._scan_head = True
        self._tail = data[-2:] if len(data) >= 2 else (self._tail + data)[-2:]
        try:
            self._conn.receive_data(data)
        except RuntimeError:  # data after the connection was marked closed: ignore
            return
        self._process()

    def eof_received(self) -> bool | None:
        try:
            self._conn.receive_data(b"")
        except RuntimeError:
            pass
        if self._task is None:
            self._process()
        return True  # keep our side open: a response may still be on its way

    def shutdown(self) -> None:
        """Gateway stop: end the connection now, whatever it is doing."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- request assembly -----------------------------------------------------------------
    def _process(self) -> None:
        conn = self._conn
        while self._task is None:
            transport = self.transport
            if transport is None or transport.is_closing():
                return  # answered and closing (_fail): nothing more is read
            if self._scan_head and conn.their_state is h11.IDLE:
                self._scan_head = False
                problem = _raw_head_problem(conn.trailing_data[0])
                if problem is not None:
                    self._fail(400, f"malformed request: {problem}")
                    return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, f"malformed request: {exc}")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # A pipelined request waits in h11's buffer until this cycle ends.
                transport.pause_reading()
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY_BYTES:
                    self._fail(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return

    def _on_head(self, head: h11.Request) -> None:
        self._head = head
        self._body.clear()
        # h11's limit bounds only an *incomplete* head in its buffer; a whole oversized
        # head that arrives in one read passes it, so measure the parsed head as well.
        size = len(head.method) + len(head.target) + 12
        for name, value in head.headers:
            size += len(name) + len(value) + 4
        if size > self.ctx.config.limits.max_head_bytes:
            self._fail(431, "request head too large")
            return
        if _header(head.headers, b"transfer-encoding") is not None:
            # h11 would frame the body by the chunked coding and keep the connection;
            # a peer reading Content-Length (or HTTP/1.0's close) sees another body end.
            if _header(head.headers, b"content-length") is not None:
                self._fail(400, "malformed request: both Content-Length and Transfer-Encoding")
                return
            if head.http_version == b"1.0":
                self._fail(400, "malformed request: Transfer-Encoding on HTTP/1.0")
                return
        host = _header(head.headers, b"host")
        policy = self._policy
        key = presented_key(head.headers) if policy.remote_keys else None
        grant = policy.admit(self.peer_ip, host, head.method.decode("ascii", "replace"), key)
        if grant.denied:
            self._fail(grant.status, grant.detail, grant.headers)
            return
        self._admin_key = grant.admin_key
        length = _header(head.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._fail(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
            return
        if self._conn.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))

    def _dispatch(self) -> None:
        head = self._head
        assert head is not None and self.transport is not None
        self._cancel_timer()
        self.transport.pause_reading()  # one request at a time per connection
        method = head.method.decode("ascii", "replace")
        target = head.target.decode("latin-1")
        if target.startswith("/"):
            # Origin form, the usual one: split at "?" only. A URL parser would read a
            # path starting with "//" as a host (and raise on "//[x").
            raw_path, _, query = target.partition("?")
        else:  # absolute form ("http://host/path"), which h11 accepts
            try:
                parts = urlsplit(target)
            except ValueError:
                self._fail(400, "malformed request target")
                return
            raw_path, query = parts.path, parts.query
        path = unquote(raw_path) or "/"
        # The dashboard (its page and assets) is this listener's own, not the route
        # table's, so the data port never serves it; _on_head admitted the request under
        # the same rules as the JSON endpoints.
        page = dashboard.resolve(method, path)
        if page is not None:
            handler, allowed = page
            params: dict[str, str] = {}
        else:
            handler, params, allowed = self.ctx.router.resolve(method, path)
        req = AdminRequest(
            method=method,
            path=path,
            query=parse_query(query),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
            body=bytes(self._body),
            peer_ip=self.peer_ip,
            params=params,
            admin_key=self._admin_key,
        )
        self._body.clear()
        self._task = self.ctx.loop.create_task(self._run(handler, allowed, req))

    # -- responding ---------------------------------------------------------------------------
    async def _run(self, handler: Any, allowed: list[str], req: AdminRequest) -> None:
        try:
            if handler is not None:
                try:
                    resp = await handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The path is the client's, percent-decoded (%0d%0a is a CRLF): quoted,
                    # so it stays one field of one line under any handler.
                    log.exception(
                        "admin handler for %s %s failed", quote(req.method), quote(req.path)
                    )
                    resp = error_response(500, "internal error (logged by the gateway)")
            elif allowed:
                resp = error_response(
                    405, f"method {req.method} not allowed; use {', '.join(allowed)}"
                )
                resp.headers.append(("allow", ", ".join(allowed)))
            else:
                resp = error_response(404, f"no such endpoint: {req.path}")
            await self._respond(resp, head_only=req.method == "HEAD")
        except (asyncio.CancelledError, ConnectionError):
            return  # the client left (or the gateway stops); _respond closed any stream
        finally:
            self._task = None
        self._next_cycle()

    async def _respond(self, resp: AdminResponse, head_only: bool) -> None:
        headers = self._headers(resp)
        if resp.stream is None or head_only:
            if resp.stream is None and resp.status != 304:
                # A 304's Content-Length would have to be the full body's; none is simpler.
                headers.append((b"content-length", b"%d" % len(resp.body)))
            self._send(h11.Response(status_code=resp.status, headers=headers))
            if resp.body and not head_only:
                self._send(h11.Data(data=resp.body))
            self._send(h11.EndOfMessage())
            await _close_stream(resp)
            return
        self._send(h11.Response(status_code=resp.status, headers=headers))
        try:
            async for piece in resp.stream:
                if self.transport is None:
                    return
                if piece:
                    self._send(h11.Data(data=piece))
                    await self.flow.drain()  # type: ignore[union-attr]
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # The head is out, so no error status is possible: cut the stream.
            log.exception("admin stream failed")
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            await _close_stream(resp)
        self._send(h11.EndOfMessage())

    def _headers(self, resp: AdminResponse) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", resp.content_type.encode("latin-1")),
            (b"date", self.ctx.date.value),
        ]
        own = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
        if not any(k.lower() == b"etag" for k, _ in own):
            # Monitoring data is never cacheable. A response with an ETag (the dashboard's
            # files) is meant to be kept and revalidated, and names its own Cache-Control.
            headers.append((b"cache-control", b"no-store"))
        headers += own
        if self.ctx.plane.draining:
            headers.append((b"connection", b"close"))
        return headers

    def _send(self, event: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self._conn.send(event)
        if data:
            transport.write(data)

    def _next_cycle(self) -> None:
        transport = self.transport
        if transport is None:
            return
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._head = None
            self._scan_head = True  # a pipelined head may already be buffered
            transport.resume_reading()
            self._arm(self.ctx.config.timeouts.keepalive_seconds)
            self._process()  # a pipelined request may already be buffered
        else:
            transport.close()  # MUST_CLOSE, or a body we chose not to read

    def _fail(self, status: int, detail: str, extra: list[tuple[str, str]] | None = None) -> None:
        """Answer before (or instead of) the request's end, then close."""
        transport = self.transport
        if transport is None:
            return
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            resp = error_response(status, detail)
            if extra:
                resp.headers += extra
            headers = self._headers(resp)
            headers += [(b"content-length", b"%d" % len(resp.body)), (b"connection", b"close")]
            try:
                self._send(h11.Response(status_code=status, headers=headers))
                self._send(h11.Data(data=resp.body))
                self._send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                pass  # e.g. a HEAD request: the status line and headers went out
        transport.close()

    # -- timers -------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = self.ctx.loop.call_later(seconds, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._task is None and self.transport is not None:
            self.transport.close()  # idle keep-alive, or a request that never completed


def _raw_head_problem(buffered: bytes) -> str | None:
    """What is wrong with the complete head at the start of ``buffered``, if anything
    h11 would let through: a line ended by a bare LF, or an obs-fold continuation line.
    None also when no complete head is buffered yet."""
    end = _HEAD_END.search(buffered)
    if end is None:
        return None
    head = buffered[: end.end()]
    if head.count(b"\n") != head.count(b"\r\n"):
        return "header lines must end in CRLF"
    if _OBS_FOLD.search(head):
        return "obsolete line folding"
    return None


def _header(headers: Any, name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


async def _close_stream(resp: AdminResponse) -> None:
    stream = resp.stream
    if stream is not None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("closing an admin stream failed")
