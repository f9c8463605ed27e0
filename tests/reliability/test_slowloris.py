"""Slow clients holding a connection: the header deadline and the body idle deadline.

The gateway under test has a 0.3 s header deadline and a 0.3 s body idle deadline (see
``TIMEOUTS`` in conftest). A client that does not finish its head in time, or stops
sending its body, gets a 408 in the path's dialect and a closed connection; nothing
reaches the backend, and the gateway serves on.
"""

from __future__ import annotations

import time

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway

from .conftest import (
    PATHS,
    TIMEOUTS,
    RawClient,
    assert_closed,
    assert_error,
    assert_still_serves,
    backend_requests,
    payload,
    request,
)

HEADER_S = TIMEOUTS["header_seconds"]
BODY_IDLE_S = TIMEOUTS["body_idle_seconds"]


def _head_start(path: str) -> bytes:
    """The request line and the first headers of a valid request, and no end of head."""
    raw = request(path)
    return raw[: raw.index(b"content-type")]


@pytest.mark.parametrize("path", PATHS)
def test_unfinished_head_gets_408(gw: RunningGateway, mock_llm: MockLLMServer, path: str) -> None:
    """The request line and Host arrive, then nothing: 408 at the header deadline."""
    with RawClient(gw.port) as client:
        t0 = time.monotonic()
        client.send(_head_start(path))
        resp = client.read(timeout=5)
        waited = time.monotonic() - t0
        assert_error(resp, 408, path, "request_timeout")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert HEADER_S * 0.9 <= waited < HEADER_S + 2, waited
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_dripping_head_does_not_extend_the_deadline(
    gw: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """Slowloris proper: one byte of a header every 20 ms, never ending the head. Bytes
    arriving must not push the header deadline back: 408 about when it was due."""
    with RawClient(gw.port) as client:
        t0 = time.monotonic()
        client.send(_head_start(path) + b"x-drip: ")
        answered = False
        while not answered and time.monotonic() - t0 < HEADER_S + 2:
            try:
                client.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break  # the gateway refused and closed: its answer is read below
            answered = client.wait_readable(0.02)  # the 20 ms pace, and the answer
        resp = client.read(timeout=5)
        waited = time.monotonic() - t0
        assert_error(resp, 408, path, "request_timeout")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert HEADER_S * 0.9 <= waited < HEADER_S + 2, waited
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_stalled_body_gets_408(gw: RunningGateway, mock_llm: MockLLMServer, path: str) -> None:
    """The head promises the whole body; 10 bytes of it arrive, then nothing: 408 once
    the body has been idle for the body deadline."""
    body = payload(path)
    with RawClient(gw.port) as client:
        client.send(request(path, body)[: -len(body) + 10])
        t0 = time.monotonic()
        resp = client.read(timeout=5)
        waited = time.monotonic() - t0
        assert_error(resp, 408, path, "request_timeout")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert BODY_IDLE_S * 0.9 <= waited < BODY_IDLE_S + 2, waited
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw, path)
