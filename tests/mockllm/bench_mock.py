"""Throughput of the mock LLM server: small non-streaming chat completions per second.

Not a test (pytest does not collect it) and not run in CI. It starts the mock in a child
process (optionally pinned to one core) and drives it with a raw uvloop keep-alive client, so
the figure is the server's, not an HTTP library's:

    .venv/bin/python -m tests.mockllm.bench_mock --connections 50 --seconds 5 --server-cpu 0 \
        --client-cpu 1

``wrk`` gives the same kind of figure; see docs/mock-llm.md for both commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import cast

import uvloop

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world!"}]})
REQUEST = (
    "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    f"content-length: {len(BODY)}\r\n\r\n{BODY}"
).encode()


class BenchClient(asyncio.Protocol):
    """One keep-alive connection: send a request, wait for its full response, repeat."""

    def __init__(self, deadline: float, done: asyncio.Future[int]) -> None:
        self.deadline = deadline
        self.done = done
        self.buf = b""
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            start = head.find(b"content-length: ") + 16
            length = int(head[start : head.find(b"\r\n", start)])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.count += 1
            assert self.transport is not None
            if time.monotonic() >= self.deadline:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(self.count)
                return
            self.transport.write(REQUEST)


async def drive(port: int, connections: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    deadline = start + seconds
    futures = []
    for _ in range(connections):
        fut: asyncio.Future[int] = loop.create_future()
        await loop.create_connection(partial(BenchClient, deadline, fut), "127.0.0.1", port)
        futures.append(fut)
    counts = await asyncio.gather(*futures)
    return sum(counts) / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--client-cpu", type=int, default=None)
    ns = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "fastproxy.mockllm", "--port", "0", "--log-level", "WARNING"]
    if ns.server_cpu is not None:
        cmd = ["taskset", "-c", str(ns.server_cpu), *cmd]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(root))
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        if ns.client_cpu is not None:
            os.sched_setaffinity(0, {ns.client_cpu})
        rate = uvloop.run(drive(port, ns.connections, ns.seconds))
        print(
            f"{rate:,.0f} non-streaming chat completions/s "
            f"({ns.connections} keep-alive connections, {ns.seconds:g} s)"
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
