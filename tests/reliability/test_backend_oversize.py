"""What a backend may send is bounded like what a client may: the response head
(`limits.max_head_bytes`, `limits.max_headers`), a buffered body
(`limits.max_response_body_bytes`) and one SSE event (`limits.max_sse_event_bytes`).
Past a bound the client gets an error in its dialect, never a truncated answer that looks
complete."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.reliability.conftest import (
    CHAT_PATH,
    MESSAGES_PATH,
    RawClient,
    assert_error,
    assert_still_serves,
    payload,
    request,
)
from tests.support.loop_thread import LoopThread
from tests.support.waiting import wait_until


def _gateway(factory: Callable[..., RunningGateway], url: str, **limits: int) -> RunningGateway:
    return factory(
        {
            "backends": {
                "openai.1": {
                    "type": "openai",
                    "api_url": url,
                    "api_key": "k",
                    "models": ["gpt-4o"],
                },
                "anthropic.1": {
                    "type": "anthropic",
                    "api_url": url,
                    "api_key": "k",
                    "models": ["claude-haiku-4-5"],
                },
            },
            "default_backend": "openai.1",
            "limits": limits,
            "usage_tracking": {"flush_interval_seconds": 0.05},
        }
    )


def _records(gw: RunningGateway) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{gw.gateway.admin_port}/v1/usage/recent"
    return httpx.get(url, timeout=10).json()["records"]  # type: ignore[no-any-return]


def _sse(*events: bytes) -> bytes:
    body = b"".join(events)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )


@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
def test_an_sse_event_over_the_limit_ends_the_stream_with_an_error(
    gateway_factory: Callable[..., RunningGateway],
    raw_backend: Callable[[bytes], str],
    path: str,
) -> None:
    """The backend streams a small event, a 100 KiB event (the limit is 64 KiB), another
    event and the terminal event: the client gets the first event, then the dialect's
    error event, and neither the later event nor the terminal one; the record says
    `truncated`."""
    if path == CHAT_PATH:
        first = b'data: {"choices":[{"delta":{"content":"first"}}]}\n\n'
        huge = b'data: {"choices":[{"delta":{"content":"' + b"h" * 100_000 + b'"}}]}\n\n'
        later = b'data: {"choices":[{"delta":{"content":"later"}}]}\n\n'
        terminal = b"data: [DONE]\n\n"
    else:
        first = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta",'
            b'"delta":{"type":"text_delta","text":"first"}}\n\n'
        )
        huge = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta",'
            b'"delta":{"type":"text_delta","text":"' + b"h" * 100_000 + b'"}}\n\n'
        )
        later = first.replace(b"first", b"later")
        terminal = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    url = raw_backend(_sse(first, huge, later, terminal))
    gw = _gateway(gateway_factory, url, max_sse_event_bytes=64 * 1024)
    with RawClient(gw.port) as client:
        client.send(request(path, payload(path, stream=True)))
        resp = client.read()
    assert resp.status == 200
    assert b"first" in resp.body
    assert b"hhhh" not in resp.body and b"later" not in resp.body
    assert b"[DONE]" not in resp.body and b"message_stop" not in resp.body
    last = [e for e in resp.body.split(b"\n\n") if e.strip()][-1]
    assert b"larger than 65536 bytes" in last
    assert (b"event: error" in last) if path == MESSAGES_PATH else (b'"error"' in last)
    records = wait_until(lambda: _records(gw), what="the record")
    assert records[0]["outcome"] == "truncated"


@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
@pytest.mark.parametrize(
    "head",
    [
        b"x-huge: " + b"v" * 10_000 + b"\r\n",  # one header past max_head_bytes (4096)
        b"".join(b"x-h%d: v\r\n" % i for i in range(60)),  # more than max_headers (40)
    ],
    ids=["huge-header", "many-headers"],
)
def test_a_response_head_over_the_limits_is_a_502(
    gateway_factory: Callable[..., RunningGateway],
    raw_backend: Callable[[bytes], str],
    path: str,
    head: bytes,
) -> None:
    """The backend answers with a 10 kB header (limit 4096 bytes) or 60 headers (limit
    40): 502 in the caller's dialect, none of the backend's headers relayed, and the
    gateway still serves."""
    body = orjson.dumps({"ok": True})
    url = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + head
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
    gw = _gateway(gateway_factory, url, max_head_bytes=4096, max_headers=40)
    with RawClient(gw.port) as client:
        client.send(request(path))
        resp = client.read()
    assert_error(resp, 502, path, "upstream_error")
    assert "x-huge" not in resp.headers and "x-h1" not in resp.headers


class _Flood:
    """A backend that answers with a chunked JSON body that never ends, 1 MiB per write,
    waiting for each write to drain (so it, not the gateway, holds at most one chunk);
    bounded to 256 MiB and stops when the gateway hangs up."""

    def __init__(self) -> None:
        self.sent = 0
        self.cut = False  # the gateway hung up before the end

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
        try:
            for _ in range(256):
                writer.write(chunk)
                await writer.drain()
                self.sent += 0x100000
        except (ConnectionError, OSError):
            self.cut = True
        finally:
            writer.close()


@pytest.fixture
def flood(server_loop: LoopThread) -> Iterator[tuple[str, _Flood]]:
    f = _Flood()

    async def start() -> asyncio.AbstractServer:
        return await asyncio.start_server(f.handle, "127.0.0.1", 0)

    server = server_loop.run(start())
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", f

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    server_loop.run(stop())


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as fh:
        status = fh.read()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]


@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
def test_a_json_body_over_the_limit_is_a_502_with_bounded_memory(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    flood: tuple[str, _Flood],
    path: str,
) -> None:
    """The backend sends a non-streaming body that does not end (up to 256 MiB; the
    limit is 4 MiB): the client gets 502 in its dialect as soon as 4 MiB are past, the
    gateway stops reading (the backend sent far less than 256 MiB) and its memory grows
    by less than 32 MiB; the gateway still serves."""
    url, backend = flood
    gw = _gateway(gateway_factory, url, max_response_body_bytes=4 * 1024 * 1024)
    before = _rss()
    with RawClient(gw.port) as client:
        client.send(request(path))
        resp = client.read(timeout=30)
    assert_error(resp, 502, path, "upstream_error")
    assert "exceeds 4194304 bytes" in (resp.json().get("error") or {}).get("message", "")
    assert _rss() - before < 32 * 1024 * 1024
    # The gateway hung up long before the 256 MiB were out (the kernel's socket buffers,
    # up to tens of MiB on loopback, are what the backend got rid of beyond 4 MiB).
    wait_until(lambda: backend.cut, what="the gateway to hang up on the backend")
    assert backend.sent < 128 * 1024 * 1024
    records = wait_until(lambda: _records(gw), what="the record")
    assert records[0]["outcome"] == "backend_error" and records[0]["http_status_code"] == 502
    gw_ok = _gateway(gateway_factory, mock_llm.url, max_response_body_bytes=4 * 1024 * 1024)
    assert_still_serves(gw_ok, path)
    with RawClient(gw.port) as client:  # the first gateway too (its backend still floods)
        client.send(request(path))
        assert client.read(timeout=30).status == 502
