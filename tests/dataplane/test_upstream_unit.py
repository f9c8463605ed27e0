"""Edge cases of the upstream connection that are timing races end to end."""

from __future__ import annotations

import asyncio
from typing import Any

from fastproxy.config import BackendConfig
from fastproxy.httpclient.backend import Backend
from fastproxy.httpclient.pool import UpstreamConnection, UpstreamPool
from fastproxy.httpclient.response import UpstreamResponse


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closed = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def write(self, data: Any) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_pause_on_the_final_chunk_is_undone_before_pooling() -> None:
    """A slow client pauses upstream reading from inside the relay callback for the very
    chunk that completes the response: the connection must go back to the pool reading,
    or a backend FIN goes unseen (CLOSE-WAIT) and the next request on it stalls."""
    loop = asyncio.get_running_loop()
    pool, conn, transport = _pooled_conn(loop)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    resp.attach(lambda chunk: conn.pause_reading())  # the client's buffer just filled up
    conn.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert resp.done.done()
    assert pool.idle_connections == 1
    assert transport.reading, "a pooled connection must be reading"


def _pooled_conn(
    loop: asyncio.AbstractEventLoop,
) -> tuple[UpstreamPool, UpstreamConnection, RecordingTransport]:
    backend = Backend(
        "openai.1", BackendConfig(type="openai", api_url="http://127.0.0.1:9/v1"), env={}
    )
    pool = UpstreamPool(backend, loop)
    conn = UpstreamConnection(pool)
    transport = RecordingTransport()
    conn.connection_made(transport)
    pool._members.add(conn)
    return pool, conn, transport


async def test_a_stream_that_ended_before_its_relay_never_pauses_the_pooled_connection() -> None:
    """The whole stream arrives before the exchange attaches its relay (a busy loop), so
    the connection is back in the pool when the relay flushes those bytes to a slow
    client and the client's flow control asks to pause "its" upstream: that must not
    pause the pooled connection, or the next request on it hangs unread (found by the
    soak: 133 of 12,001 streams hung)."""
    loop = asyncio.get_running_loop()
    pool, conn, transport = _pooled_conn(loop)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert resp.done.done() and pool.idle_connections == 1
    resp.attach(lambda chunk: conn.pause_reading())  # the slow client's buffer fills up
    assert transport.reading, "a pooled connection was paused by a finished relay"
    again, reused = await pool.acquire(1.0)
    assert again is conn and reused
    nxt = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", nxt)
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert nxt.done.done() and nxt.body == [b"ok"]


async def test_reading_is_held_until_the_exchange_decides_how_to_relay() -> None:
    """A response body bigger than HOLD_UNDECIDED arriving before the exchange attached a
    relay (or chose to buffer JSON) pauses reading, so that gap cannot read a whole
    stream into memory; attaching the relay gets every held byte to it."""
    from fastproxy.httpclient.pool import HOLD_UNDECIDED

    loop = asyncio.get_running_loop()
    _, conn, transport = _pooled_conn(loop)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    piece = b"x" * 65536
    conn.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    for _ in range(HOLD_UNDECIDED // len(piece) + 1):
        conn.data_received(b"%x\r\n%b\r\n" % (len(piece), piece))
    assert not transport.reading, "reading went on with no relay to take the bytes"
    got: list[bytes] = []
    resp.attach(got.append)
    assert sum(map(len, got)) == resp.bytes_rx > HOLD_UNDECIDED


async def test_one_lazy_timer_serves_every_request_on_a_connection() -> None:
    """The first-byte and idle deadlines are plain numbers under one timer: a keep-alive
    connection answering quickly re-arms nothing per request."""
    import time

    loop = asyncio.get_running_loop()
    pool, conn, _ = _pooled_conn(loop)
    handles = set()
    for _ in range(100):
        resp = UpstreamResponse(loop)
        conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
        conn.watch(time.monotonic() + 30.0, 30.0)
        handles.add(id(conn._timer))
        conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert resp.finished and resp.body == [b"ok"]
        assert pool.take_idle() is conn
    assert len(handles) == 1, f"{len(handles)} timers armed for 100 requests"


async def test_the_lazy_timer_still_fails_a_silent_backend() -> None:
    """Bad input: a backend that never sends a head, then one that stalls mid-body."""
    import time

    from fastproxy.core.errors import UpstreamError

    loop = asyncio.get_running_loop()
    _, conn, transport = _pooled_conn(loop)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    conn.watch(time.monotonic() + 0.05, 5.0)
    try:
        await asyncio.wait_for(resp.head, 5)
    except UpstreamError as err:
        assert err.kind == "timeout" and "no response" in str(err)
    else:
        raise AssertionError("no first-byte timeout")
    assert transport.closed

    _, conn, transport = _pooled_conn(loop)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    conn.watch(time.monotonic() + 5.0, 0.05)
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
    try:
        await asyncio.wait_for(resp.done, 5)
    except UpstreamError as err:
        assert err.kind == "timeout" and "stalled" in str(err)
    else:
        raise AssertionError("no idle timeout mid-body")
    assert transport.closed
