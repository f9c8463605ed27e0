"""A 100+ MiB stream to a slow reader must not be buffered by the server (bounded memory)."""

from __future__ import annotations

import json
import os
import socket

from fastproxy.mockllm import MockLLMServer
from tests.support.loop_thread import LoopThread
from tests.support.waiting import wait_until

from .helpers import wait_stat

MIB = 1024 * 1024
TOKENS = 400_000
EVENT_BYTES = 256  # 400k events x ~430 wire bytes ≈ 165 MiB on the wire, 100 MB of content


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def server_buffer(lt: LoopThread, server: MockLLMServer) -> tuple[bool, int]:
    """(paused, bytes queued in the transport) of the one live connection, read on its loop."""

    def probe() -> tuple[bool, int]:
        (conn,) = server._conns  # white-box: the property under test is this buffer's size
        assert conn.transport is not None
        return conn.paused, conn.transport.get_write_buffer_size()

    return lt.call(probe)


def test_huge_stream_to_slow_reader_has_bounded_memory(
    lt: LoopThread, server: MockLLMServer
) -> None:
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: m\r\nconnection: close\r\n"
        b"x-mock-tokens: %d\r\nx-mock-event-bytes: %d\r\ncontent-length: %d\r\n\r\n%s"
        % (TOKENS, EVENT_BYTES, len(body), body)
    )
    baseline = rss_bytes()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)

        # Slow reader: not reading at all. The server must stop producing and wait, paused,
        # with no more than about one high-water mark plus one batch in its buffer.
        wait_until(lambda: server_buffer(lt, server)[0], what="server paused by flow control")
        paused, queued = server_buffer(lt, server)
        assert paused and queued < 1 * MIB, queued

        # A trickle of reads: every read lets the server produce only a little more.
        total = 0
        for _ in range(50):
            total += len(sock.recv(16 * 1024))
        assert server_buffer(lt, server)[1] < 1 * MIB

        # Then the rest at full speed, sampling the server's buffer and our memory as we go.
        peak_rss = rss_bytes()
        peak_queue = 0
        tail = b""
        next_probe = total
        while True:
            piece = sock.recv(1024 * 1024)
            if not piece:
                break
            total += len(piece)
            tail = (tail + piece)[-64:]
            if total >= next_probe:
                next_probe += 8 * MIB
                peak_rss = max(peak_rss, rss_bytes())
                if not tail.endswith(b"0\r\n\r\n"):
                    peak_queue = max(peak_queue, server_buffer(lt, server)[1])

    assert total > 100 * MIB
    assert tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert peak_queue < 1 * MIB, peak_queue
    assert peak_rss - baseline < 64 * MIB, (peak_rss - baseline) / MIB
    wait_stat(lt, server, "streams_completed", 1)
