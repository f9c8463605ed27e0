"""The outbox (core/outbox.py): writes held until the loop has run the poll's callbacks.

Real uvloop servers and real sockets on 127.0.0.1: each test's server protocol wraps its
transport in a `HeldTransport` as the data plane does, and the test reads what reached
the client's socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from fastproxy.core.outbox import HOLD_MAX, HeldTransport, Outbox

DEADLINE_S = 5.0


class _Server(asyncio.Protocol):
    """Runs ``on_data(held, inner, data)`` inside data_received, the callback the data
    plane writes from."""

    def __init__(self, outbox: Outbox, on_data: Callable[..., None], made: list[Any]) -> None:
        self._outbox = outbox
        self._on_data = on_data
        self._made = made
        self.held: HeldTransport | None = None
        self.inner: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner = transport  # type: ignore[assignment]
        self.held = self._outbox.hold(transport)  # type: ignore[arg-type]
        self._made.append(self)

    def data_received(self, data: bytes) -> None:
        self._on_data(self.held, self.inner, data)


async def _with_server(
    on_data: Callable[..., None], test: Callable[..., Awaitable[None]], clients: int = 1
) -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop)
    made: list[_Server] = []
    server = await loop.create_server(
        lambda: _Server(outbox, on_data, made), "127.0.0.1", 0, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    socks = []
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            socks.append(s)
        await test(loop, socks, made)
    finally:
        for s in socks:
            s.close()
        server.close()
        await server.wait_closed()


async def _read_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            piece = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), DEADLINE_S)
        except ConnectionResetError:
            return bytes(got)
        if not piece:
            return bytes(got)
        got += piece


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        piece = await asyncio.wait_for(loop.sock_recv(sock, n - len(got)), DEADLINE_S)
        assert piece, f"EOF after {len(got)} of {n} bytes"
        got += piece
    return bytes(got)


def _waiting(sock: socket.socket) -> int:
    """How many bytes wait in the socket (peeked, not read; at most 64). Bytes written
    at once are there when write() returns: loopback delivers in the sender's call."""
    try:
        return len(sock.recv(64, socket.MSG_DONTWAIT | socket.MSG_PEEK))
    except BlockingIOError:
        return 0


def test_the_polls_first_write_goes_out_at_once_and_the_rest_after_the_callback() -> None:
    """A lone request (c=1) must not wait: the first write of a poll is written at once.
    The writes after it in the same poll are held, counted as buffered, and leave when
    the poll's callbacks have run."""
    seen: dict[str, Any] = {}
    clients: list[socket.socket] = []

    def on_data(held: HeldTransport, inner: asyncio.Transport, data: bytes) -> None:
        held.write(b"first ")
        seen["after_first"] = _waiting(clients[0])
        held.write(b"second")
        # Still in the callback: held, counted as buffered, not on the wire.
        seen["buffered"] = held.get_write_buffer_size()
        seen["after_second"] = _waiting(clients[0])

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        clients.extend(socks)
        await loop.sock_sendall(socks[0], b"go")
        assert await _read_exactly(loop, socks[0], 12) == b"first second"
        assert seen == {"after_first": 6, "buffered": 6, "after_second": 6}
        # The next poll's first write is again immediate (the flush reopened it).
        await loop.sock_sendall(socks[0], b"again")
        assert await _read_exactly(loop, socks[0], 12) == b"first second"
        assert seen == {"after_first": 6, "buffered": 6, "after_second": 6}

    uvloop.run(_with_server(on_data, test))


def test_order_is_kept_across_held_and_immediate_writes_and_close_sends_the_rest() -> None:
    big = b"B" * (HOLD_MAX + 1)  # over the limit: written at once, after what is held
    mutable = bytearray(b"<mutable>")  # not bytes: never held (it could change)

    def on_data(held: HeldTransport, inner: asyncio.Transport, data: bytes) -> None:
        held.write(b"a")
        held.write(mutable)
        held.write(b"c")
        held.write(big)
        held.write(b"d")
        held.writelines([b"e", b"f"])
        held.close()  # sends "def" first

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        await loop.sock_sendall(socks[0], b"go")
        assert await _read_until_eof(loop, socks[0]) == b"a<mutable>c" + big + b"def"

    uvloop.run(_with_server(on_data, test))


def test_abort_drops_what_is_held() -> None:
    def on_data(held: HeldTransport, inner: asyncio.Transport, data: bytes) -> None:
        held.write(b"sent at once")  # the poll's first write
        held.write(b", never sent")  # held
        held.abort()

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        await loop.sock_sendall(socks[0], b"go")
        assert await _read_until_eof(loop, socks[0]) == b"sent at once"

    uvloop.run(_with_server(on_data, test))


def test_a_connection_gone_before_the_flush_loses_only_its_own_bytes() -> None:
    """Two connections write in the same poll; the first one's transport is closed
    under it (what a lost connection looks like) before the flush: the second
    connection's bytes still go out, and nothing raises on the loop."""
    errors: list[Any] = []

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        deadline = loop.time() + DEADLINE_S
        while len(made) < 2:
            assert loop.time() < deadline, "the server never saw both connections"
            await asyncio.sleep(0.005)
        first, second = made
        assert first.held is not None and second.held is not None and first.inner is not None
        second.held.write(b"kept ")  # the poll's first write: at once
        first.held.write(b"lost")  # held
        second.held.write(b"and kept")  # held
        first.inner.abort()  # gone before the flush
        assert await _read_exactly(loop, socks[1], 13) == b"kept and kept"
        assert await _read_until_eof(loop, socks[0]) == b""
        assert errors == []

    def on_data(*_: Any) -> None:
        raise AssertionError("the clients send nothing")

    uvloop.run(_with_server(on_data, test, clients=2))


def test_write_eof_sends_what_is_held_first() -> None:
    def on_data(held: HeldTransport, inner: asyncio.Transport, data: bytes) -> None:
        held.write(b"before ")  # at once
        held.write(b"eof")  # held: write_eof sends it first
        held.write_eof()

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        await loop.sock_sendall(socks[0], b"go")
        assert await _read_until_eof(loop, socks[0]) == b"before eof"

    uvloop.run(_with_server(on_data, test))


def test_held_writes_over_the_limit_go_out_at_once() -> None:
    """Small writes that add up to more than HOLD_MAX in one callback are written then,
    not at the end of the poll: the transport's flow control (a slow client pausing the
    backend) must see them while the callback still runs."""
    seen: dict[str, Any] = {}
    piece = b"p" * 4096
    count = HOLD_MAX // len(piece) + 1

    def on_data(held: HeldTransport, inner: asyncio.Transport, data: bytes) -> None:
        held.write(b"x")  # the poll's first write: at once
        for _ in range(count - 1):
            held.write(piece)
        seen["held_before"] = held.get_write_buffer_size() - inner.get_write_buffer_size()
        held.write(piece)  # past the limit
        seen["held_after"] = held.get_write_buffer_size() - inner.get_write_buffer_size()

    async def test(loop: asyncio.AbstractEventLoop, socks: list[socket.socket], made: Any) -> None:
        await loop.sock_sendall(socks[0], b"go")
        assert await _read_exactly(loop, socks[0], 1 + count * len(piece)) == b"x" + piece * count
        assert seen == {"held_before": (count - 1) * len(piece), "held_after": 0}

    uvloop.run(_with_server(on_data, test))
