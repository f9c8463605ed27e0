"""A small, fast HTTP/1.1 load generator: raw asyncio protocol on uvloop + httptools.

Run as its own process (``python -m bench.load.loadgen ...``), usually several at once,
each with its share of the connections. Every connection sends one request, waits for
the whole response, then sends the next (a closed loop, like wrk), so the offered load
is "as fast as the server answers" at a fixed concurrency.

Why not wrk for streams: wrk sees a stream as one long response; it cannot time the
first event or the gaps between events. Here ``on_body`` receives each de-chunked
piece as it arrives and counts the events in it (``\\n\\n`` ends an SSE event). Events
that arrive in one read share one timestamp, so their gaps are recorded as zeros; only
the gaps between reads are stored, which keeps the cost per event at one
``bytes.count`` call in C.

Output: one JSON line on stdout (counts, errors, own CPU time) and the raw samples in
three binary files ``PREFIX.{lat,ttft,gap}`` (int64 microseconds) for the parent to
merge across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from array import array
from collections.abc import Sequence

import httptools
import uvloop

from .scenarios import bench_key

DONE_TAIL = b"[DONE]\n\n"


class Stats:
    __slots__ = (
        "bytes",
        "completed",
        "errors",
        "events",
        "gaps",
        "lat",
        "ttft",
        "unfinished",
        "zero_gaps",
    )

    def __init__(self) -> None:
        self.completed = 0
        self.unfinished = 0
        self.events = 0
        self.bytes = 0
        self.zero_gaps = 0
        self.errors: dict[str, int] = {}
        self.lat = array("q")
        self.ttft = array("q")
        self.gaps = array("q")

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Generator:
    def __init__(self, ns: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.host: str = ns.host
        self.port: int = ns.port
        self.sse: bool = ns.mode == "sse"
        self.per_conn: int = ns.requests_per_conn
        self.stats = Stats()
        self.running = False
        self.measuring = False
        self.target: int = ns.connections
        self.attempted = 0
        self.live: set[Client] = set()
        self.finished = loop.create_future()
        body = ns.body.encode()
        extra = b"".join(h.encode() + b"\r\n" for h in ns.header)
        # With --keys N: N ready-made requests, one per key, sent in turn.
        self.requests = [
            b"POST %b HTTP/1.1\r\nhost: %b:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%b%b\r\n%b"
            % (ns.path.encode(), ns.host.encode(), ns.port, len(body), extra, auth, body)
            for auth in (
                [b"authorization: Bearer %b\r\n" % bench_key(i).encode() for i in range(ns.keys)]
                or [b""]
            )
        ]
        self.sent_total = 0

    async def connect(self) -> None:
        if not self.running:
            return
        self.attempted += 1
        try:
            await self.loop.create_connection(lambda: Client(self), self.host, self.port)
        except OSError as exc:
            self.stats.error("connect:" + type(exc).__name__)
            self.check_finished()

    def closed(self, client: Client) -> None:
        self.live.discard(client)
        if self.running and self.per_conn == 0:
            # A closed-loop connection that died is replaced, as wrk does.
            self.loop.create_task(self.connect())
        self.check_finished()

    def check_finished(self) -> None:
        if self.live or self.finished.done():
            return
        # Done when stopped, or (one request per connection) when every connection has
        # been opened and has closed again.
        if not self.running or (self.per_conn and self.attempted >= self.target):
            self.finished.set_result(None)


class Client(asyncio.Protocol):
    __slots__ = (
        "busy",
        "events",
        "gen",
        "last_at",
        "nl",
        "parser",
        "sent",
        "sent_at",
        "status",
        "tail",
        "transport",
    )

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.sent = 0
        self.sent_at = 0.0
        self.last_at = 0.0
        self.events = 0
        self.status = 0
        self.nl = False
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gen.live.add(self)
        self.send()

    def send(self) -> None:
        self.busy = True
        self.sent += 1
        self.events = 0
        self.status = 0
        self.nl = False
        self.tail = b""
        self.sent_at = time.perf_counter()
        gen = self.gen
        requests = gen.requests
        gen.sent_total += 1
        self.transport.write(requests[gen.sent_total % len(requests)])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.gen.stats.error("parse:" + type(exc).__name__)
            self.busy = False
            self.transport.close()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.gen.sse:
            return
        n = body.count(b"\n\n")
        if self.nl and body[:1] == b"\n":
            n += 1  # an event end split across two reads
        self.nl = body[-1:] == b"\n"
        self.tail = (self.tail + body[-len(DONE_TAIL) :])[-len(DONE_TAIL) :]
        if n:
            now = time.perf_counter()
            stats = self.gen.stats
            if self.gen.measuring:
                if self.events == 0:
                    stats.ttft.append(int((now - self.sent_at) * 1e6))
                else:
                    stats.gaps.append(int((now - self.last_at) * 1e6))
                stats.zero_gaps += n - 1
                stats.events += n
                stats.bytes += len(body)
            self.events += n
            self.last_at = now

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        gen = self.gen
        stats = gen.stats
        self.busy = False
        if gen.measuring:
            if self.status != 200:
                stats.error(f"status:{self.status}")
            elif gen.sse and self.tail != DONE_TAIL:
                stats.error("truncated")
            else:
                stats.completed += 1
                stats.lat.append(int((now - self.sent_at) * 1e6))
        if gen.running and (gen.per_conn == 0 or self.sent < gen.per_conn):
            self.send()
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        if self.busy:
            if gen.running:
                gen.stats.error("connection_lost")
            else:
                gen.stats.unfinished += 1
        self.parser = None  # type: ignore[assignment]
        gen.closed(self)


async def run(ns: argparse.Namespace) -> tuple[dict[str, object], Stats]:
    loop = asyncio.get_running_loop()
    gen = Generator(ns, loop)
    delay = ns.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    gen.running = gen.measuring = True
    step = ns.ramp / ns.connections if ns.connections else 0.0
    for i in range(ns.connections):
        # Spread connection set-up over the ramp: 2,000 SYNs at once would overflow the
        # accept queue and measure the kernel, not the relay.
        loop.call_later(i * step, lambda: loop.create_task(gen.connect()))
    try:
        if ns.requests_per_conn:
            await asyncio.wait_for(asyncio.shield(gen.finished), ns.duration)
        else:
            await asyncio.sleep(ns.duration)
    except TimeoutError:
        pass
    gen.running = False
    if ns.drain > 0 and gen.live:
        # Let in-flight requests finish (and count) rather than cut them.
        try:
            await asyncio.wait_for(asyncio.shield(gen.finished), ns.drain)
        except TimeoutError:
            pass
    gen.measuring = False
    elapsed = time.perf_counter() - t0
    for client in list(gen.live):
        if client.transport is not None:
            client.transport.abort()
    await asyncio.sleep(0.05)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    s = gen.stats
    return {
        "completed": s.completed,
        "unfinished": s.unfinished,
        "errors": s.errors,
        "events": s.events,
        "bytes": s.bytes,
        "zero_gaps": s.zero_gaps,
        "elapsed_s": elapsed,
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
    }, s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load.loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--mode", choices=["json", "sse"], default="json")
    p.add_argument("--body", required=True)
    p.add_argument("--header", action="append", default=[], help="'name: value' (repeatable)")
    p.add_argument("--keys", type=int, default=0, help="send N bench keys in turn")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--ramp", type=float, default=0.0, help="seconds to open all connections")
    p.add_argument("--requests-per-conn", type=int, default=0, help="0: until the duration ends")
    p.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="after the duration, wait this long for in-flight requests",
    )
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (time.time())")
    p.add_argument("--out", required=True, help="prefix of the sample files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    result, s = uvloop.run(run(ns))
    for name, samples in (("lat", s.lat), ("ttft", s.ttft), ("gap", s.gaps)):
        with open(f"{ns.out}.{name}", "wb") as f:
            samples.tofile(f)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
