"""Edge cases of the upstream connection that are timing races end to end."""

from __future__ import annotations

import asyncio
from typing import Any

from fastproxy.config import BackendConfig
from fastproxy.dataplane.backends import Backend
from fastproxy.dataplane.upstream import UpstreamConnection, UpstreamPool, UpstreamResponse


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
    backend = Backend("openai.1", BackendConfig(type="openai", api_url="http://127.0.0.1:9/v1"),
                      env={})
    pool = UpstreamPool(backend, loop)
    conn = UpstreamConnection(pool)
    transport = RecordingTransport()
    conn.connection_made(transport)
    pool._members.add(conn)
    resp = UpstreamResponse(loop)
    conn.send(b"POST / HTTP/1.1\r\n\r\n", b"", resp)
    resp.attach(lambda chunk: conn.pause_reading())  # the client's buffer just filled up
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                       b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert resp.done.done()
    assert pool.idle_connections == 1
    assert transport.reading, "a pooled connection must be reading"
