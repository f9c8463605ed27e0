"""Backpressure the gateway applies is never the backend's fault; a client that stops
reading altogether is dropped after `timeouts.send_seconds`, and only it is blamed."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.reliability.conftest import CHAT_PATH, MESSAGES_PATH, payload, request
from tests.support.waiting import wait_until

# Enough stream to fill the client's and the gateway's socket buffers many times over.
BIG = b"x-mock-tokens: 2000\r\nx-mock-event-bytes: 16384\r\n"


def _gateway(
    factory: Callable[..., RunningGateway], mock: MockLLMServer, **timeouts: float
) -> RunningGateway:
    return factory(
        {
            "backends": {
                "openai.1": backend_for(mock, "openai", idle_timeout_s=0.5),
                "anthropic.1": backend_for(mock, "anthropic", idle_timeout_s=0.5),
            },
            "default_backend": "openai.1",
            "usage_tracking": {"flush_interval_seconds": 0.05},
            "timeouts": timeouts,
        }
    )


def _slow_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return sock


def _records(gw: RunningGateway) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{gw.gateway.admin_port}/v1/usage/recent"
    return httpx.get(url, timeout=10).json()["records"]  # type: ignore[no-any-return]


def _backend_state(gw: RunningGateway, name: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{gw.gateway.admin_port}/internal/health"
    backends = httpx.get(url, timeout=10).json()["endpoint_health"]["backends"]
    return next(b for b in backends if b["name"] == name)  # type: ignore[no-any-return]


def _paused(gw: RunningGateway) -> bool:
    def check() -> bool:
        return any(c.flow.write_paused for c in gw.plane.connections)

    return bool(gw.lt.call(check))


@pytest.mark.parametrize(
    ("path", "backend", "terminal"),
    [
        (CHAT_PATH, "openai.1", b"data: [DONE]"),
        (MESSAGES_PATH, "anthropic.1", b"message_stop"),
    ],
)
def test_a_slow_reader_is_not_cut_by_the_backend_idle_timeout(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    caplog: pytest.LogCaptureFixture,
    path: str,
    backend: str,
    terminal: bytes,
) -> None:
    """Sends a 32 MiB stream request and reads nothing for 4x the backend's
    `idle_timeout_s` (0.5 s) while the gateway holds the backend paused, then reads it
    all: the whole stream with its terminal event, outcome `ok`, no WARNING, and the
    backend's breaker untouched."""
    gw = _gateway(gateway_factory, mock_llm, send_seconds=30)
    sock = _slow_socket(gw.port)
    sock.sendall(request(path, payload(path, stream=True), extra=BIG))
    wait_until(lambda: _paused(gw), timeout=10, what="the gateway to pause for the client")
    caplog.set_level(logging.WARNING, logger="fastproxy")
    # The one wait that is the input itself: a client not reading for 2 s.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert _paused(gw)
        time.sleep(0.05)
    pieces: list[bytes] = []
    tail = b""
    sock.settimeout(10)
    while not tail.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "the gateway closed the stream"
        pieces.append(chunk)
        tail = (tail + chunk)[-4096:]
    sock.close()
    received = b"".join(pieces)
    assert terminal in received[-8192:]
    assert b"stream_truncated" not in received and b"event: error" not in received
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    records = wait_until(lambda: _records(gw), what="the record")
    assert records[0]["outcome"] == "ok"
    state = _backend_state(gw, backend)
    assert state["consecutive_failures"] == 0 and state["circuit_state"] == "closed"


@pytest.mark.parametrize("path", [CHAT_PATH, MESSAGES_PATH])
def test_a_client_that_stops_reading_is_dropped_as_client_stalled(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, path: str
) -> None:
    """Sends a 32 MiB stream request and never reads: after `timeouts.send_seconds` (1 s)
    the gateway drops the connection; the record says `client_stalled`, the backend's
    breaker counts no failure, the metric counts one stall, and the gateway still serves."""
    gw = _gateway(gateway_factory, mock_llm, send_seconds=1)
    sock = _slow_socket(gw.port)
    sock.sendall(request(path, payload(path, stream=True), extra=BIG))
    records = wait_until(lambda: _records(gw), timeout=10, what="the stalled request's record")
    assert records[0]["outcome"] == "client_stalled"
    # The socket was closed under the client: reading on ends in EOF or a reset.
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    sock.close()
    for name in ("openai.1", "anthropic.1"):
        state = _backend_state(gw, name)
        assert state["consecutive_failures"] == 0 and state["circuit_state"] == "closed"
    metrics = httpx.get(f"http://127.0.0.1:{gw.gateway.admin_port}/metrics", timeout=10).text
    assert "fastproxy_client_stalls_total 1" in metrics
    r = httpx.post(
        gw.url + path,
        content=payload(path),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200


def test_many_concurrent_streams_to_one_backend_need_no_pool_setting(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    """Opens 300 concurrent streams to one backend with the default config (no
    `max_connections` on the backend): all 300 complete; none waits for a pool slot and
    gets a 504 (the old default pool of 256 did exactly that to the 257th)."""
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm, "openai")}})
    socks = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(
            request(
                CHAT_PATH,
                payload(CHAT_PATH, stream=True),
                extra=b"x-mock-tokens: 3\r\nx-mock-interval-ms: 400\r\n",
            )
        )
        socks.append(sock)
    wait_until(
        lambda: mock_llm.stats.streams_started == 300,
        timeout=20,
        what="300 streams open at the backend at once",
    )
    assert gw.plane.pools["openai.1"].open_connections == 300
    for sock in socks:
        sock.settimeout(20)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data[-300:]
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and b"data: [DONE]" in data
        sock.close()
