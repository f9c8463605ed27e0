"""The response half of an exchange: relay a JSON body or an SSE stream to the client.

`Exchange` (exchange.py) decides *which* backend answers; this mixin turns the chosen
upstream response into bytes for the client: buffered JSON with its usage headers, or the
SSE relay running inside the upstream protocol's callbacks, with the idle watchdog and
the dialect error event that ends a cut stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from ..core.errors import UpstreamError
from ..httpclient.pool import UpstreamConnection
from ..httpclient.response import UpstreamResponse
from . import wire
from .accounting import StreamAccounting, json_completion_tokens, json_tool_names
from .dialects import anthropic, from_anthropic, from_openai, openai
from .errors import Abort
from .relay import SSERelay

if TYPE_CHECKING:
    from ..core.records import ExchangeRecord
    from ..httpclient.backend import Backend
    from ..state import GatewayState
    from .protocol import ClientProtocol, Request

log = logging.getLogger("fastproxy.data")


class ResponseRelay:
    """Mixin of `Exchange`; relies on the attributes and helpers Exchange defines."""

    __slots__ = ()

    if TYPE_CHECKING:
        proto: ClientProtocol
        req: Request
        state: GatewayState
        record: ExchangeRecord
        streaming_started: bool
        _conn: UpstreamConnection | None
        _relay: SSERelay | None
        _activity: Any
        _task: asyncio.Task[None] | None

        def _attempt(
            self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
        ) -> None: ...

        def _drop_conn(self) -> None: ...

    async def _relay_response(
        self, resp: UpstreamResponse, backend: Backend, dialect: Any, inject: bool
    ) -> bool:
        ctype = resp.header(b"content-type") or b""
        if resp.status == 200 and ctype.startswith(b"text/event-stream"):
            return await self._relay_stream(resp, backend, dialect, inject)
        resp.decided = True
        if self._conn is not None:
            self._conn.resume_reading()  # held while undecided (upstream.HOLD_UNDECIDED)
        await self._await_body(resp, backend)
        body = resp.body[0] if len(resp.body) == 1 else b"".join(resp.body)
        self._conn = None
        rec = self.record
        rec.bytes_rx = resp.bytes_rx
        rec.upstream_done_at = time.monotonic()
        extra = [b"x-fastproxy-backend: ", backend.name.encode(), b"\r\n"]
        parsed: Any = None
        ok = 200 <= resp.status < 300 and b"json" in ctype
        if ok:
            parsed = _json_obj(body)
            usage = _json_usage(parsed, dialect.name)
            if usage is not None:
                rec.usage = usage
                extra += _usage_headers(usage)
        else:
            # A backend's 4xx (bad request, 429 ...) is the request being refused, not
            # a success; its 5xx is the backend failing.
            rec.outcome = (
                "backend_error"
                if resp.status >= 500
                else ("rejected" if resp.status >= 400 else "ok")
            )
        self._write_json(resp.status, body, b"".join(extra), resp.headers)
        rec.bytes_tx = len(body)
        rec.first_tx_at = time.monotonic()
        if self._activity is not None:
            self._activity.count(resp.bytes_rx, len(body))
        if ok and self.state.accounting:
            # After the response is on its way: accounting never delays the client. The
            # estimate only matters when the backend did not count the completion itself
            # (a whole JSON body reached the client, so btp and ptc are that count).
            if rec.usage is None or rec.usage.completion is None:
                rec.btp_completion_est = rec.ptc_completion_est = json_completion_tokens(body)
            rec.tool_names = json_tool_names(parsed)
            rec.tool_call_count = len(rec.tool_names)
        return self.req.keep_alive

    async def _await_body(self, resp: UpstreamResponse, backend: Backend) -> None:
        """Wait for the end of the response, failing it after idle_timeout_s of silence."""
        done = resp.done
        if not done.done():
            watch = _IdleWatch(self.state.loop, resp, self._conn, backend.config.idle_timeout_s)
            try:
                await done
            except UpstreamError:
                pass
            finally:
                watch.cancel()
        err = resp.error
        if err is None:
            return
        self._conn = None
        self.record.error_kind = err.kind
        if err.kind == "timeout":
            self._drop_conn()
            self._attempt(backend.name, 0, "timeout")
            raise Abort(504, f"backend {backend.name} stalled mid-response", "upstream_timeout")
        # A body past the gateway's own limit is not the backend failing; anything else
        # mid-response is (a reset, a malformed body).
        self._attempt(backend.name, 0, "too_large" if err.kind == "too_large" else "reset")
        raise Abort(502, f"backend {backend.name} failed mid-response: {err}", "upstream_error")

    def _write_json(
        self,
        status: int,
        body: bytes,
        extra: bytes,
        upstream_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.record.status = status
        parts = [
            wire.STATUS_LINE.get(status) or b"HTTP/1.1 %d Status\r\n" % status,
            self.state.date_header,
        ]
        has_ct = False
        for name, value in upstream_headers or ():
            if name in wire.HOP_BY_HOP or not wire.is_safe_header(name, value):
                continue
            if name == b"content-type":
                has_ct = True
            parts += (name, b": ", value, b"\r\n")
        if not has_ct:
            parts.append(wire.JSON_CT)
        keep = self.req.keep_alive and not self.state.draining
        parts += (
            b"content-length: %d\r\n" % len(body),
            extra,
            wire.KEEP_ALIVE if keep else wire.CLOSE,
            wire.CRLF,
        )
        if not self.req.head_only:
            parts.append(body)
        self.proto.transport.write(b"".join(parts))  # type: ignore[union-attr]

    async def _relay_stream(
        self, resp: UpstreamResponse, backend: Backend, dialect: Any, inject: bool
    ) -> bool:
        proto, rec = self.proto, self.record
        transport = proto.transport
        assert transport is not None
        chunked = self.req.http11
        parts = [
            wire.STATUS_LINE[200],
            self.state.date_header,
            wire.SSE_HEADERS if chunked else wire.SSE_HEADERS_10,
        ]
        for name, value in resp.headers:
            if name in wire.HOP_BY_HOP or name in (
                b"content-type",
                b"cache-control",
                b"x-accel-buffering",
            ):
                continue
            if wire.is_safe_header(name, value):
                parts += (name, b": ", value, b"\r\n")
        keep = chunked and self.req.keep_alive and not self.state.draining
        parts += (
            b"x-fastproxy-backend: ",
            backend.name.encode(),
            b"\r\n",
            wire.KEEP_ALIVE if keep else wire.CLOSE,
            wire.CRLF,
        )
        transport.write(b"".join(parts))
        self.streaming_started = True
        acct = StreamAccounting() if self.state.accounting else None
        conn = self._conn

        def overflow(message: str) -> None:
            resp.fail(UpstreamError("too_large", message))
            if conn is not None:
                conn.close()

        relay = SSERelay(
            transport,
            dialect,
            inject,
            acct,
            self._activity,
            chunked,
            self.state.config.limits.max_sse_event_bytes,
            overflow,
        )
        self._relay = relay
        proto.upstream = self._conn
        if proto.write_paused and self._conn is not None:
            self._conn.pause_reading()
        resp.attach(relay)
        if self._conn is not None and not proto.write_paused:
            self._conn.resume_reading()  # held while undecided (upstream.HOLD_UNDECIDED)
        cut: str | None = None
        try:
            await self._await_body(resp, backend)
        except Abort as err:
            cut = str(err)
        finally:
            proto.upstream = None
            rec.upstream_done_at = time.monotonic()
            rec.bytes_rx = resp.bytes_rx
            rec.bytes_tx = relay.bytes_tx
            rec.first_tx_at = relay.first_tx_at
            rec.stream_events = relay.events
            rec.usage = relay.usage
            if acct is not None:
                rec.first_content_at = acct.first_content_at
                rec.btp_completion_est = acct.tokens
                rec.ptc_completion_est = acct.delivered_tokens(relay.bytes_tx, aborted=proto.closed)
                rec.tool_names = acct.tool_names
                rec.tool_call_count = len(acct.tool_names)
        self._conn = None
        if cut is None and not relay.terminal:
            cut = "backend ended the stream without its final event"
        if cut is None and relay.overflow:
            cut = "backend sent an oversized stream event"
        if cut is not None:
            relay.finish()
            rec.outcome = "truncated"
            log.warning("stream from %s cut: %s", backend.name, cut)
            event = dialect.stream_error_event(cut, "stream_truncated")
            transport.write(wire.chunk(event) if chunked else event)
        if chunked:
            transport.write(wire.CHUNKED_END)
        return keep

    def abort_stream(self, message: str) -> asyncio.Task[None] | None:
        """Graceful-stop deadline reached: end an active stream with an error event, or
        answer a request still waiting for its backend with a 503. Returns the task to
        wait for: it hands the request's record to the observers as it ends, and the
        stop sequence must let it before the usage store closes."""
        rec, proto = self.record, self.proto
        if not proto.closed:
            if self.streaming_started:
                dialect = anthropic if rec.frontend == "anthropic" else openai
                t = proto.transport
                event = dialect.stream_error_event(message, "gateway_shutdown")
                if self.req.http11:
                    t.write(wire.chunk(event) + wire.CHUNKED_END)  # type: ignore[union-attr]
                else:
                    t.write(event)  # type: ignore[union-attr]
                proto.closed = True
                t.close()  # type: ignore[union-attr]
            else:
                rec.status = 503
                proto.write_error(self.req, 503, message, "gateway_shutdown", close=True)
        rec.outcome = "gateway_shutdown"
        self._drop_conn()
        if self._task is not None:
            self._task.cancel()
        return self._task


class _IdleWatch:
    """Fails a response after ``idle`` seconds without a byte while the gateway reads.
    Bytes only stamp ``conn.last_rx``; the timer re-arms itself lazily, so a fast stream
    costs no timer churn (aiohttp's keep-alive habit). While reading is paused for a slow
    client the backend cannot be heard, so the watch waits and does not blame it; the
    client has its own deadline for that (``timeouts.send_seconds``)."""

    __slots__ = ("_conn", "_handle", "_idle", "_loop", "_resp")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resp: UpstreamResponse,
        conn: UpstreamConnection | None,
        idle: float,
    ) -> None:
        self._loop = loop
        self._resp = resp
        self._conn = conn
        self._idle = idle
        self._handle: asyncio.TimerHandle | None = loop.call_later(idle, self._check)

    def _check(self) -> None:
        self._handle = None
        resp, conn = self._resp, self._conn
        if resp.done.done():
            return
        if conn is not None and conn.reading_paused and not conn.closed:
            self._handle = self._loop.call_later(self._idle, self._check)
            return
        left = (conn.last_rx if conn is not None else 0.0) + self._idle - time.monotonic()
        if conn is not None and left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        resp.fail(UpstreamError("timeout", "backend stalled mid-response"))
        if conn is not None:
            conn.close()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _json_obj(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _json_usage(obj: Any, frontend: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if frontend == "anthropic" or obj.get("type") == "message":
        return from_anthropic(obj.get("usage"))
    return from_openai(obj.get("usage"))


def _usage_headers(usage: Any) -> list[bytes]:
    out = []
    if usage.prompt is not None:
        out.append(b"x-usage-prompt-tokens: %d\r\n" % usage.prompt)
    if usage.completion is not None:
        out.append(b"x-usage-completion-tokens: %d\r\n" % usage.completion)
    if usage.total is not None:
        out.append(b"x-usage-total-tokens: %d\r\n" % usage.total)
    if usage.cost is not None:
        out.append(b"x-usage-cost: " + repr(usage.cost).encode() + b"\r\n")
    return out
