"""An open-loop (paced) HTTP/1.1 load generator that measures latency honestly.

Why not the closed-loop generator of bench/load: at a fixed concurrency the offered load
follows the server, so a slower server is simply sent less, and the latency cost of
background work hides in the throughput figure ("coordinated omission"). Here request i
is due at ``t0 + i / rate`` whatever happens, and its latency is measured from that due
time: a request that had to wait for a free connection counts the wait.

Each connection carries one request at a time (no pipelining). A due request takes an
idle connection, or waits in a queue while a new connection is opened (up to
``--max-connections``). Output: one JSON line with the counts and percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import deque

import httptools
import uvloop


class Conn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gen.ready(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.errors += 1
            self.transport.close()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.gen.finished(self, self.due, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)

    def send(self, due: float) -> None:
        self.due = due
        self.transport.write(self.gen.request)  # type: ignore[union-attr]


class Generator:
    def __init__(self, ns: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ns = ns
        body = ns.body.encode()
        self.request = (
            b"POST %b HTTP/1.1\r\nhost: %b:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b"
            % (ns.path.encode(), ns.host.encode(), ns.port, len(body), body)
        )
        self.idle: list[Conn] = []
        self.waiting: deque[float] = deque()
        self.open = 0
        self.connecting = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.non_200 = 0
        self.sent = 0
        self.t0 = 0.0
        self.measure_from = 0.0
        self.end_at = 0.0
        self.done = loop.create_future()

    # Times are perf_counter() seconds: uvloop's loop.time() has millisecond resolution,
    # too coarse for sub-millisecond latencies. Timers only wake us; due times decide.
    def start(self) -> None:
        self.t0 = time.perf_counter() + 0.05
        self.measure_from = self.t0 + self.ns.warmup
        self.end_at = self.measure_from + self.ns.duration
        self.loop.call_later(0.05, self._fire, 0)

    def _fire(self, i: int) -> None:
        # Fire every request that is due by now (a late timer catches up, never skips).
        now = time.perf_counter()
        interval = 1.0 / self.ns.rate
        while True:
            due = self.t0 + i * interval
            if due > now:
                break
            if due >= self.end_at:
                self._maybe_done()
                return
            self.sent += 1
            if self.idle:
                self.idle.pop().send(due)
            else:
                self.waiting.append(due)
                self._grow()
            i += 1
        self.loop.call_later(max(0.0, self.t0 + i * interval - time.perf_counter()), self._fire, i)

    def _grow(self) -> None:
        if self.open + self.connecting >= self.ns.max_connections:
            return
        self.connecting += 1
        task = self.loop.create_task(
            self.loop.create_connection(lambda: Conn(self), self.ns.host, self.ns.port)
        )
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:  # type: ignore[type-arg]
        self.connecting -= 1
        if task.exception() is not None:
            self.errors += 1

    def ready(self, conn: Conn) -> None:
        self.open += 1
        self._next(conn)

    def _next(self, conn: Conn) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)
            self._maybe_done()

    def finished(self, conn: Conn, due: float, status: int) -> None:
        now = time.perf_counter()
        if status != 200:
            self.non_200 += 1
        if due >= self.measure_from:
            self.latencies.append((now - due) * 1000.0)
        self._next(conn)

    def lost(self, conn: Conn) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        elif not self.done.done() and time.perf_counter() < self.end_at:
            self.errors += 1
            self._grow()

    def _maybe_done(self) -> None:
        if (
            time.perf_counter() >= self.end_at
            and not self.waiting
            and len(self.idle) == self.open
            and not self.done.done()
        ):
            self.done.set_result(None)


def pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p / 100.0 * len(sorted_ms)) - 1))  # nearest rank
    return round(sorted_ms[k], 3)


async def run(ns: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    gen = Generator(ns, loop)
    gen.start()
    try:
        await asyncio.wait_for(gen.done, ns.warmup + ns.duration + 30)
    except TimeoutError:
        pass
    for c in list(gen.idle):
        c.transport.close()  # type: ignore[union-attr]
    lat = sorted(gen.latencies)
    return {
        "rate": ns.rate,
        "duration_s": ns.duration,
        "measured": len(lat),
        "sent": gen.sent,
        "errors": gen.errors,
        "non_200": gen.non_200,
        "connections": gen.open,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "p999_ms": pct(lat, 99.9),
        "max_ms": round(lat[-1], 3) if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--body", required=True)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds sent but not measured")
    p.add_argument("--max-connections", type=int, default=256)
    ns = p.parse_args(argv)
    print(json.dumps(uvloop.run(run(ns))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
