"""A tiny HTTP/1.1 server for client tests: records each request's exact bytes and
answers as the test scripts it, on a real socket on 127.0.0.1 (or another loopback
address given as ``host``, such as ``::1``).

The script is a function of (connection number, request number on it, request bytes)
returning the bytes to write and what to do next: ``KEEP`` reading the next request,
``CLOSE`` the connection, or ``HANG``: read nothing more and wait for the client to
close. Every connection's end is an event a test can await, so "the client closed the
connection" is observed, never assumed after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

KEEP, CLOSE, HANG = "keep", "close", "hang"

Script = Callable[[int, int, bytes], tuple[bytes, str]]


def answer(
    status: int, body: bytes = b"", headers: bytes = b"", length: int | None = None
) -> bytes:
    """A response with a content-length (``length``, or the body's own)."""
    n = len(body) if length is None else length
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%b\r\n%b" % (status, n, headers, body)


class ScriptedServer:
    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        self.script = script
        self.host = host
        self.requests: list[tuple[int, int, bytes]] = []  # (connection, request, bytes)
        self.ended: list[asyncio.Event] = []  # one per connection, set when it is over
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.ended)

    def url(self, path: str = "/v1") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def wait_ended(self, conn: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            await self.ended[conn].wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.ended)
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            n = 0
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append((conn, n, request))
                out, then = self.script(conn, n, request)
                n += 1
                if out:
                    writer.write(out)
                    await writer.drain()
                if then == CLOSE:
                    return
                if then == HANG:
                    with contextlib.suppress(ConnectionError):
                        while await reader.read(65536):
                            pass
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            ended.set()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's bytes (head and content-length body); None at the client's close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    try:
        body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head + body
