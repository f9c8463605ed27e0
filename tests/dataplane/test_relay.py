"""Relay behaviour: aborts in every phase, cut streams, SSE headers, slow readers."""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MSG = {
    "model": "claude-haiku-4-5",
    "max_tokens": 4096,
    "messages": [{"role": "user", "content": "hi"}],
}


def raw_post(path: str, body: dict, headers: dict[str, str]) -> bytes:
    data = orjson.dumps(body)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    return (
        (
            f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + data
    )


def test_sse_headers(gateway: RunningGateway) -> None:
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-fastproxy-backend"] == "openai.1"
        body = r.read()
    assert body.rstrip().endswith(b"data: [DONE]")


# -- client aborts: the upstream connection must close at once ----------------------------
ABORT_CASES = [
    (
        "before the backend answered (non-streaming)",
        "/v1/chat/completions",
        CHAT,
        {"x-mock-ttfb-ms": "20000"},
        False,
    ),
    (
        "before the backend answered (streaming)",
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        {"x-mock-ttfb-ms": "20000"},
        False,
    ),
    (
        "during the first-token wait",
        "/v1/messages",
        {**MSG, "stream": True},
        {"x-mock-ttft-ms": "20000"},
        True,
    ),
    (
        "mid-stream",
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        {"x-mock-tokens": "100000", "x-mock-interval-ms": "20"},
        True,
    ),
    (
        "non-streaming body trickling in",
        "/v1/chat/completions",
        CHAT,
        {"x-mock-tokens": "2000", "x-mock-fault": "trickle", "x-mock-interval-ms": "20"},
        False,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "wait_for_headers"),
    [c[1:] for c in ABORT_CASES],
    ids=[c[0] for c in ABORT_CASES],
)
def test_client_abort_closes_upstream(
    gateway: RunningGateway, mock_llm, path: str, body: dict, headers: dict, wait_for_headers: bool
) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    try:
        sock.sendall(raw_post(path, body, headers))
        wait_until(
            lambda: mock_llm.stats.requests_total == 1 and mock_llm.stats.open_connections == 1,
            what="request reached the mock",
        )
        if wait_for_headers:
            sock.settimeout(10)
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        aborts = gateway.plane.counters.client_aborts
    finally:
        sock.close()
    # The mock would hold the request for 20 s; seeing the close within 3 s proves the
    # gateway closed its upstream socket as soon as the client went away.
    wait_until(
        lambda: mock_llm.stats.open_connections == 0,
        timeout=3,
        what="the mock sees the upstream connection close",
    )
    wait_until(lambda: gateway.plane.counters.client_aborts == aborts + 1, timeout=3)
    assert all(p.open_connections == 0 for p in gateway.plane.pools.values())
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200


# -- streams cut by the backend ------------------------------------------------------------
@pytest.mark.parametrize("fault", ["reset_after:3", "close_after:3"])
def test_openai_stream_cut_gets_error_event_and_no_done(
    gateway: RunningGateway, fault: str
) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"x-mock-fault": fault, "x-mock-tokens": "50"},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        body = r.read()
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert b"[DONE]" not in body
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "stream_truncated"
    content = [e for e in events[:-1] if b'"content"' in e]
    assert content, "the client keeps what it got before the cut"
    assert gateway.plane.counters.stream_truncations >= 1
    # The gateway still serves, on the same keep-alive client.
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    )


@pytest.mark.parametrize("fault", ["reset_after:3", "close_after:3"])
def test_anthropic_stream_cut_gets_error_event_and_no_message_stop(
    gateway: RunningGateway, fault: str
) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/messages",
        json={**MSG, "stream": True},
        headers={"x-mock-fault": fault, "x-mock-tokens": "50"},
        timeout=10,
    ) as r:
        body = r.read()
    assert b"message_stop" not in body
    last = [e for e in body.split(b"\n\n") if e.strip()][-1]
    assert last.startswith(b"event: error\ndata: ")
    err = orjson.loads(last.split(b"data: ", 1)[1])
    assert err["type"] == "error" and err["error"]["type"] == "api_error"


def test_sdk_sees_the_cut(gateway: RunningGateway) -> None:
    import openai

    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=CHAT["messages"],
            stream=True,
            extra_headers={"x-mock-fault": "reset_after:4"},
        )
        got = []
        with pytest.raises(openai.APIError):
            for chunk in stream:
                got.append(chunk)  # noqa: PERF402 - keep what arrived before the cut
    assert got, "chunks before the cut were delivered"


def test_backend_malformed_sse_is_relayed_then_cut_cleanly(gateway: RunningGateway) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"x-mock-fault": "malformed_sse"},
        timeout=10,
    ) as r:
        body = r.read()
    assert r.status_code == 200 and body
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    )


# -- backpressure ----------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_slow_reader_100mib_memory_bounded(gateway: RunningGateway, mock_llm) -> None:
    """100 MiB stream to a client reading 256 KiB at a time with pauses: the gateway's
    buffers stay bounded (upstream reading pauses while the client is slow)."""
    event_bytes = 16 * 1024
    tokens = (100 * 1024 * 1024) // event_bytes
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(
        raw_post(
            "/v1/chat/completions",
            {**CHAT, "stream": True},
            {"x-mock-tokens": str(tokens), "x-mock-event-bytes": str(event_bytes)},
        )
    )
    start_rss = _rss_bytes()
    peak_buffer = 0
    peak_rss = start_rss
    received = 0
    sock.settimeout(20)
    deadline = time.monotonic() + 120
    lt = gateway.lt

    def buffered() -> int:
        conns = list(gateway.plane.connections)
        return max((c.transport.get_write_buffer_size() for c in conns if c.transport), default=0)

    while time.monotonic() < deadline:
        data = sock.recv(256 * 1024)
        if not data:
            break
        received += len(data)
        if data.endswith(b"0\r\n\r\n"):
            break
        if received % (8 * 1024 * 1024) < 256 * 1024:
            peak_buffer = max(peak_buffer, lt.call(buffered))
            peak_rss = max(peak_rss, _rss_bytes())
            time.sleep(0.005)  # the slow reader
    sock.close()
    assert received > 100 * 1024 * 1024
    # uvloop's default high-water mark is 64 KiB; allow slack for one upstream chunk.
    assert peak_buffer < 4 * 1024 * 1024, peak_buffer
    assert peak_rss - start_rss < 64 * 1024 * 1024, peak_rss - start_rss


def test_http10_client_gets_a_close_delimited_stream(gateway: RunningGateway) -> None:
    """HTTP/1.0 has no chunked encoding: the stream is the raw events, ended by close."""
    data = orjson.dumps({**CHAT, "stream": True})
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(data) + data
        )
        sock.settimeout(10)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body.startswith(b"data: {") and body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ),
        ("/v1/messages", {**MSG, "stream": True}),
        ("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}),
        ("/v1/chat/completions", CHAT),
    ],
    ids=["openai-sse", "anthropic-sse", "responses-sse", "openai-json"],
)
def test_relay_is_byte_exact(gateway: RunningGateway, mock_llm, path: str, body: dict) -> None:
    """What the client receives through the gateway is exactly what the backend sent
    (ids and timestamps differ per response, so those are masked first)."""
    import re

    mask = re.compile(rb'("(?:id|item_id|created|created_at)":\s*)("[^"]*"|\d+)')
    headers = {"x-mock-tokens": "60"}
    via = httpx.post(gateway.url + path, json=body, headers=headers, timeout=10).content
    direct = httpx.post(mock_llm.url + path[3:], json=body, headers=headers, timeout=10).content
    assert len(via) > 500
    assert mask.sub(rb"\1X", via) == mask.sub(rb"\1X", direct)
