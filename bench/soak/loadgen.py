"""The soak's clients: SSE chat streams over raw sockets, one connection per stream.

Raw non-blocking sockets read with ``loop.sock_recv``, no client library: the kernel's
receive buffer is then the only buffer between the gateway and a slow reader, and a
client abort is exactly the close (FIN, or RST with SO_LINGER 0) the plan says.

Kinds, drawn per stream from a seeded generator:

- ``normal``: reads the whole stream as fast as it comes (16 tokens).
- ``abort``: a 100-token stream paced at 20 ms, so the backend is still producing when
  the client leaves after 1-5 events; half close with FIN, half with RST.
- ``reset``: the mock resets the backend connection after 0-12 content events
  (``x-mock-fault: reset_after:N``, steered per request); the client must get the
  dialect's ``stream_truncated`` error event and a properly closed chunked body.
- ``slow``: a ~0.9 MB stream (400 tokens of ~2 KiB) read like a client across a WAN
  whose reader is busy: a 4 KiB receive buffer and an MSS of 1460 (on loopback the MSS
  is 64 KiB, and the kernel would then grow the gateway's send buffer to megabytes and
  swallow the whole stream). It first stalls, long enough for the gateway's buffers to
  fill so that its backpressure pauses the backend, then reads what the kernel holds
  with a 2 ms pause between reads. Every stream has a deadline of its own, so a slow
  reader is bounded in time.

Every request carries a unique ``x-session-id``, the key that ties a usage record to
the stream that caused it.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from .procs import MODEL

NORMAL, ABORT, RESET, SLOW = "normal", "abort", "reset", "slow"
KINDS = (NORMAL, ABORT, RESET, SLOW)

# What each kind's client must end with, and the record's outcome it must leave.
EXPECTED_CLIENT = {NORMAL: "complete", ABORT: "aborted", RESET: "truncated", SLOW: "complete"}
EXPECTED_OUTCOME = {NORMAL: "ok", ABORT: "client_aborted", RESET: "truncated", SLOW: "ok"}

SLOW_TOKENS = 400
SLOW_EVENT_BYTES = 2048
TAIL_BYTES = 1024  # enough to hold the last event: [DONE] or the error event
HEAD_LIMIT = 64 * 1024
RECV_BYTES = 65536
_BODY = json.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "soak"}]}
).encode()


@dataclass(frozen=True)
class Mix:
    abort_pct: float
    reset_pct: float
    slow_pct: float

    def __post_init__(self) -> None:
        parts = (self.abort_pct, self.reset_pct, self.slow_pct)
        if min(parts) < 0 or sum(parts) > 100:
            raise ValueError("percentages must be >= 0 and add up to at most 100")

    def draw(self, rng: random.Random) -> str:
        x = rng.random() * 100
        for kind, pct in ((ABORT, self.abort_pct), (RESET, self.reset_pct), (SLOW, self.slow_pct)):
            if x < pct:
                return kind
            x -= pct
        return NORMAL


@dataclass(frozen=True, slots=True)
class StreamPlan:
    session: str
    kind: str
    abort_after_events: int = 0
    abort_rst: bool = False
    reset_after: int = 0


def make_plans(n: int, mix: Mix, rng: random.Random, prefix: str) -> list[StreamPlan]:
    plans = []
    for i in range(n):
        kind = mix.draw(rng)
        plans.append(
            StreamPlan(
                session=f"{prefix}-{i}",
                kind=kind,
                abort_after_events=rng.randint(1, 5) if kind == ABORT else 0,
                abort_rst=kind == ABORT and rng.random() < 0.5,
                reset_after=rng.randint(0, 12) if kind == RESET else 0,
            )
        )
    return plans


@dataclass(frozen=True)
class ClientSettings:
    port: int
    stream_timeout_s: float = 30.0
    slow_stall_s: float = 3.0
    slow_rcvbuf: int = 4096
    slow_mss: int = 1460
    slow_read_bytes: int = 16384
    slow_pause_s: float = 0.002


@dataclass(slots=True)
class StreamResult:
    session: str
    kind: str
    sent: bool = False  # the whole request was written: the gateway owes it a record
    status: int | None = None
    client: str = "not_run"  # complete | truncated | aborted | error:<why> | not_run
    payload_bytes: int = 0
    seconds: float = 0.0


@dataclass
class Progress:
    """Counters the sampler reads from its thread (plain ints: no lock needed)."""

    total: int = 0
    done: int = 0
    open: int = 0
    results: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, int]:
        return {
            "total": self.total,
            "done": self.done,
            "open": self.open,
            **{f"client_{k}": v for k, v in sorted(self.results.items())},
        }


def request_bytes(plan: StreamPlan, port: int) -> bytes:
    steer: list[str] = []
    if plan.kind == ABORT:
        steer = ["x-mock-tokens: 100", "x-mock-interval-ms: 20"]
    elif plan.kind == RESET:
        steer = [f"x-mock-fault: reset_after:{plan.reset_after}"]
    elif plan.kind == SLOW:
        steer = [f"x-mock-tokens: {SLOW_TOKENS}", f"x-mock-event-bytes: {SLOW_EVENT_BYTES}"]
    head = [
        "POST /v1/chat/completions HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        f"content-length: {len(_BODY)}",
        f"x-session-id: {plan.session}",
        "user-agent: fastproxy-soak",
        *steer,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + _BODY


class ChunkedBody:
    """Incremental decoder of a chunked body; keeps counts and the tail, not the body."""

    __slots__ = ("_buf", "_need", "_state", "done", "events", "payload", "tail")
    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0
        self._state = self._SIZE
        self.done = False
        self.events = 0
        self.payload = 0
        self.tail = b""

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while not self.done:
            if self._state == self._SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    return
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[: i + 2]
                self._need, self._state = size, (self._DATA if size else self._TRAILER)
            elif self._state == self._DATA:
                if not buf:
                    return
                piece = bytes(buf[: self._need])
                del buf[: len(piece)]
                self._need -= len(piece)
                self._payload(piece)
                if not self._need:
                    self._state = self._DATA_END
            elif self._state == self._DATA_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self._state = self._SIZE
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[: i + 2]
                self.done = i == 0  # an empty line ends the trailer section

    def _payload(self, piece: bytes) -> None:
        self.payload += len(piece)
        self.events += (self.tail[-1:] + piece).count(b"\n\n")
        self.tail = (self.tail + piece)[-TAIL_BYTES:]

    def verdict(self) -> str:
        if not self.done:
            return "error:eof_before_end"
        if b"data: [DONE]" in self.tail:
            return "complete"
        if b'"stream_truncated"' in self.tail:
            return "truncated"
        i = self.tail.rfind(b'"code":"')
        code = self.tail[i + 8 :].split(b'"', 1)[0].decode(errors="replace") if i >= 0 else "none"
        return f"error:ended_without_done({code})"


async def _read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[int, bool, bytes]:
    """(status, chunked, bytes after the head)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await loop.sock_recv(sock, RECV_BYTES)
        if not data:
            raise EOFError("connection closed before the response head")
        buf += data
        if len(buf) > HEAD_LIMIT:
            raise ValueError("response head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    chunked = any(
        line.lower().replace(b" ", b"") == b"transfer-encoding:chunked" for line in lines[1:]
    )
    return status, chunked, rest


async def run_stream(
    plan: StreamPlan, cs: ClientSettings, res: StreamResult | None = None
) -> StreamResult:
    """Run one stream, filling ``res`` as it goes (a cancelled stream keeps ``sent``)."""
    loop = asyncio.get_running_loop()
    res = res if res is not None else StreamResult(plan.session, plan.kind)
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    rst = False
    try:
        if plan.kind == SLOW:
            # Before connect, so the window the client advertises is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cs.slow_rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, cs.slow_mss)
        async with asyncio.timeout(cs.stream_timeout_s):
            await loop.sock_connect(sock, ("127.0.0.1", cs.port))
            await loop.sock_sendall(sock, request_bytes(plan, cs.port))
            res.sent = True
            status, chunked, rest = await _read_head(loop, sock)
            res.status = status
            if status != 200 or not chunked:
                res.client = f"error:status_{status}" + ("" if chunked else "_not_chunked")
                return res
            body = ChunkedBody()
            body.feed(rest)
            if plan.kind == SLOW:
                await asyncio.sleep(cs.slow_stall_s)
            while not body.done:
                if plan.kind == ABORT and body.events >= plan.abort_after_events:
                    rst = plan.abort_rst
                    res.client = "aborted"
                    break
                data = await loop.sock_recv(
                    sock, cs.slow_read_bytes if plan.kind == SLOW else RECV_BYTES
                )
                if not data:
                    break
                body.feed(data)
                if plan.kind == SLOW:
                    await asyncio.sleep(cs.slow_pause_s)
            res.payload_bytes = body.payload
            if res.client != "aborted":
                res.client = body.verdict()
    except TimeoutError:
        res.client = "error:stream_timeout"
    except (OSError, EOFError, ValueError) as exc:
        res.client = f"error:{type(exc).__name__}"
    finally:
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        res.seconds = time.monotonic() - start
    return res


async def run_streams(
    plans: list[StreamPlan],
    concurrency: int,
    cs: ClientSettings,
    progress: Progress,
    deadline_s: float,
) -> list[StreamResult]:
    """Run ``plans`` with at most ``concurrency`` open at once; streams not started by
    ``deadline_s`` (seconds from now) stay ``not_run``, running ones are cancelled."""
    results = [StreamResult(p.session, p.kind) for p in plans]
    progress.total, progress.done, progress.open = len(plans), 0, 0
    progress.results.clear()
    it = iter(range(len(plans)))

    async def worker() -> None:
        for i in it:
            progress.open += 1
            try:
                await run_stream(plans[i], cs, results[i])
            finally:
                progress.open -= 1
            progress.done += 1
            progress.results[results[i].client.split("(")[0]] += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*workers)
    except TimeoutError:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for r in results:
            if r.client == "not_run" and r.sent:
                r.client = "error:phase_deadline"
    return results
