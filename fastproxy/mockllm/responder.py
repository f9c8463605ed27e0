"""Turning an answer into writes: delays, stream pacing, batching, flow control and faults.

The dialect modules decide *what* to say (a JSON body, or a ``StreamScript`` of SSE events);
this module decides *how* it reaches the socket, so every fault behaves the same way on every
endpoint. Non-streaming answers with no delay or fault are returned as bytes and written from
the parser callback (no task); everything else is a job coroutine (see ``protocol.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from . import wire
from .behaviour import DEFAULT_PLAN, MockBehaviour, Plan, resolve
from .protocol import MockProtocol, Reply, Request

# Events are coalesced into writes of about this size when no pacing is asked for: one syscall
# per 32 KiB instead of one per token keeps a million-token stream cheap. The first content
# event is always written on its own, so time-to-first-token stays honest.
BATCH_BYTES = 32 * 1024
# A producer that is never paused yields to the loop after this many writes, so one fast
# stream cannot starve the other connections.
YIELD_EVERY = 16
# ``fault=trickle`` writes this many bytes at a time; odd, so pieces split CRLFs and UTF-8.
TRICKLE_BYTES = 7
# What ``fault=malformed_sse`` sends instead of a JSON body on non-streaming endpoints.
MALFORMED_JSON = b'{"id": "mock-malformed", "choices": [{"message": '


class StreamStats(Protocol):
    streams_started: int
    streams_completed: int
    streams_aborted: int
    faults_injected: int


class StreamScript:
    """What a stream says: events before, during (one per content token) and after content."""

    __slots__ = ("content", "malformed", "preamble", "terminal")

    def __init__(
        self,
        preamble: list[bytes],
        content: Iterable[bytes],
        terminal: Iterable[bytes],
        malformed: bytes,
    ) -> None:
        self.preamble = preamble
        self.content = content
        self.terminal = terminal
        self.malformed = malformed


class Ctx:
    """Everything a dialect handler needs about one request."""

    __slots__ = ("conn", "dialect", "header_layer", "ids", "persistent", "req", "stats")

    def __init__(
        self,
        conn: MockProtocol,
        req: Request,
        dialect: str,
        stats: StreamStats,
        persistent: MockBehaviour | None,
        header_layer: MockBehaviour | None,
        ids: itertools.count[int],
    ) -> None:
        self.conn = conn
        self.req = req
        self.dialect = dialect
        self.stats = stats
        self.persistent = persistent
        self.header_layer = header_layer
        self.ids = ids

    def plan(self, model_layer: MockBehaviour | None = None) -> Plan:
        return resolve(self.persistent, model_layer, self.header_layer)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{_INSTANCE_TAG}{next(self.ids):010x}"


# Ids must not collide between two mock servers in one test (a gateway may key on them).
_INSTANCE_TAG = os.urandom(3).hex()


def error_reply(
    ctx: Ctx, plan: Plan, status: int, message: str | None = None, param: str | None = None
) -> Reply:
    """A dialect error answer; 429 always carries Retry-After (default 1 s), others when set."""
    extra = b""
    retry = plan.retry_after
    if retry is None and status == 429:
        retry = 1
    if retry is not None:
        value = str(int(retry)) if float(retry).is_integer() else str(retry)
        extra = b"retry-after: " + value.encode() + b"\r\n"
    if ctx.dialect == "anthropic":
        extra += (
            b"x-should-retry: "
            + (b"true" if status in (408, 409, 429) or status >= 500 else b"false")
            + b"\r\n"
        )
    return json_reply(
        ctx, plan, status, wire.error_body(ctx.dialect, status, message, param), extra
    )


def json_reply(ctx: Ctx, plan: Plan, status: int, body: bytes, extra: bytes = b"") -> Reply:
    req = ctx.req
    if plan.immediate:
        return (
            wire.head(
                ctx.conn.date.get(),
                status,
                wire.JSON_TYPE,
                len(body),
                req.keep_alive,
                req.http10,
                extra,
            )
            + body
        )
    return _json_job(ctx, plan, status, body, extra)


async def _json_job(ctx: Ctx, plan: Plan, status: int, body: bytes, extra: bytes) -> None:
    conn, req = ctx.conn, ctx.req
    fault = plan.fault
    if plan.ttfb:
        await asyncio.sleep(plan.ttfb)
    if fault is not None:
        ctx.stats.faults_injected += 1
        if fault == "drop":
            conn.close()
            return
        if fault == "hang":
            await conn.wait_lost()
            return
        if fault == "malformed_sse":
            body = MALFORMED_JSON
    head = wire.head(
        conn.date.get(), status, wire.JSON_TYPE, len(body), req.keep_alive, req.http10, extra
    )
    if fault == "hang_after_headers":
        conn.write(head)
        await conn.wait_lost()
        return
    if fault == "trickle":
        await _trickle(conn, head + body, plan.interval)
        return
    if fault in ("reset_after", "close_after"):
        # Non-streaming: N counts body bytes, so N=0 cuts right after the head.
        conn.write(head + body[: plan.fault_after])
        await _cut(conn, fault)
        return
    conn.write(head + body)


async def _cut(conn: MockProtocol, fault: str) -> None:
    # Everything promised must reach the peer before the cut, or an RST would discard it.
    await conn.flush()
    if fault == "reset_after":
        conn.reset()
    else:
        conn.close()


async def _trickle(conn: MockProtocol, data: bytes, interval: float) -> None:
    for i in range(0, len(data), TRICKLE_BYTES):
        if i:
            await asyncio.sleep(interval)
        conn.write(data[i : i + TRICKLE_BYTES])
        if conn.paused:
            await conn.drain()


class _StreamWriter:
    """Frames, batches and paces stream writes; awaits drain only when paused."""

    __slots__ = ("buf", "chunked", "conn", "interval", "size", "trickle", "writes")

    def __init__(self, conn: MockProtocol, chunked: bool, trickle: bool, interval: float) -> None:
        self.conn = conn
        self.chunked = chunked
        self.trickle = trickle
        self.interval = interval
        self.buf: list[bytes] = []
        self.size = 0
        self.writes = 0

    async def raw(self, data: bytes) -> None:
        await self._send(data)

    async def event(self, data: bytes) -> None:
        if not data:
            return
        self.buf.append(data)
        self.size += len(data)
        if self.size >= BATCH_BYTES or self.trickle:
            await self.flush()

    async def flush(self) -> None:
        if not self.buf:
            return
        data = self.buf[0] if len(self.buf) == 1 else b"".join(self.buf)
        self.buf.clear()
        self.size = 0
        await self._send(wire.chunk(data) if self.chunked else data)

    async def end(self) -> None:
        await self.flush()
        if self.chunked:
            await self._send(wire.LAST_CHUNK)

    async def _send(self, data: bytes) -> None:
        conn = self.conn
        if self.trickle:
            await _trickle(conn, data, self.interval)
            return
        conn.write(data)
        if conn.paused:
            await conn.drain()
        else:
            self.writes += 1
            if self.writes % YIELD_EVERY == 0:
                await asyncio.sleep(0)


def stream_reply(ctx: Ctx, plan: Plan, script: StreamScript) -> Reply:
    return _stream_job(ctx, plan, script)


async def _stream_job(ctx: Ctx, plan: Plan, script: StreamScript) -> None:
    conn, req, stats = ctx.conn, ctx.req, ctx.stats
    fault = plan.fault
    if plan.ttfb:
        await asyncio.sleep(plan.ttfb)
    if fault is not None:
        stats.faults_injected += 1
        if fault == "drop":
            conn.close()
            return
        if fault == "hang":
            await conn.wait_lost()
            return
    if req.http10:
        req.keep_alive = False  # the body of a 1.0 stream is delimited by closing
    trickle = fault == "trickle"
    out = _StreamWriter(conn, not req.http10, trickle, plan.interval)
    head = wire.head(
        conn.date.get(),
        200,
        wire.SSE_TYPE,
        None,
        req.keep_alive,
        req.http10,
        wire.sse_extra(ctx.new_id("req_").encode()),
    )
    stats.streams_started += 1
    finished = False
    try:
        await out.raw(head)
        if fault == "hang_after_headers":
            await conn.wait_lost()
            return
        if plan.ttft:
            await asyncio.sleep(plan.ttft)
        for ev in script.preamble:
            await out.event(ev)
        limit = plan.fault_after if fault in ("reset_after", "close_after") else -1
        pace = plan.interval if not trickle else 0.0
        sent = 0
        for ev in script.content:
            if sent == limit:
                break
            if sent and pace:
                await out.flush()
                await asyncio.sleep(pace)
            await out.event(ev)
            sent += 1
            if sent == 1:
                if fault == "malformed_sse":
                    await out.event(script.malformed)
                await out.flush()
        if limit >= 0:
            # A cut stream never gets its terminal events, even when N >= the token count.
            await out.flush()
            await _cut(conn, fault or "")
            finished = True
            return
        if sent == 0 and fault == "malformed_sse":
            await out.event(script.malformed)
        if pace:
            await out.flush()
            await asyncio.sleep(pace)
        for piece in script.terminal:
            await out.event(piece)
        await out.end()
        finished = True
        stats.streams_completed += 1
    finally:
        if not finished:
            stats.streams_aborted += 1


def sse(event: str | None, payload: Any) -> bytes:
    """One SSE event from a JSON-able payload (``event:`` line only for named-event dialects)."""
    data = orjson.dumps(payload)
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def parse_json_body(ctx: Ctx) -> dict[str, Any] | Reply:
    """The request body as a JSON object, or a 400 reply in the caller's dialect.

    The 400 ignores steering: a broken request is the client's bug, answered at once.
    """
    try:
        body = orjson.loads(ctx.req.body)
    except orjson.JSONDecodeError as exc:
        return error_reply(ctx, DEFAULT_PLAN, 400, f"invalid JSON body: {exc}")
    if not isinstance(body, dict):
        return error_reply(ctx, DEFAULT_PLAN, 400, "the request body must be a JSON object")
    return body
