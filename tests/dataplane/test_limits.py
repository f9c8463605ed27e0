"""Connection limits and timers of the data plane that are not faults, over raw sockets:
a slow but live upload, keep-alive deadlines, max_connections, pipelining.

The refusals (size limits, ambiguous framing, the header and body deadlines) are in
tests/reliability/, one test per case, in both dialects.
"""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from tests.conftest import RunningGateway, backend_for
from tests.support.rawhttp import connection_closed, read_response

BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def post(
    body: bytes = BODY,
    extra: bytes = b"",
    path: bytes = b"/v1/chat/completions",
    version: bytes = b"HTTP/1.1",
    host: bytes = b"host: localhost\r\n",
) -> bytes:
    return (
        b"POST "
        + path
        + b" "
        + version
        + b"\r\n"
        + host
        + b"content-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


@pytest.fixture
def gw(gateway_factory, mock_llm) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            "limits": {
                "max_request_line_bytes": 1024,
                "max_head_bytes": 4096,
                "max_headers": 20,
                "max_body_bytes": 10_000,
                "max_connections": 50,
            },
            "timeouts": {"header_seconds": 0.5, "body_idle_seconds": 0.5},
        }
    )


def assert_still_serves(gw: RunningGateway) -> None:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        content=BODY,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_body_trickle_is_not_a_timeout(gw: RunningGateway, mock_llm) -> None:
    """A slow but live upload (a byte every 0.2 s, past the 0.5 s idle limit overall)."""
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY)
        )
        pieces = [BODY[i : i + 20] for i in range(0, len(BODY), 20)]
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.2)  # the point of the test: a slow client, not waiting for a result
        resp = read_response(sock, timeout=10)
    assert resp.status == 200


def test_idle_keepalive_connection_closed(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            "timeouts": {"keepalive_seconds": 0.3, "header_seconds": 0.3},
        }
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(post())
        assert read_response(sock).status == 200
        assert connection_closed(sock, timeout=5)


@pytest.mark.parametrize(
    "keepalive, header",
    [(60.0, 0.3), (0.3, 60.0)],
    ids=["short-header-after-long-keepalive", "short-keepalive-after-long-header"],
)
def test_each_phase_keeps_its_own_deadline(
    gateway_factory, mock_llm, keepalive: float, header: float
) -> None:
    """The connection timer is re-armed only when a deadline comes sooner than it would
    fire: a short deadline after a long one must still be kept. Bad input: after one good
    request, the client either starts a second one and stops mid-headers, or goes idle."""
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            "timeouts": {"keepalive_seconds": keepalive, "header_seconds": header},
        }
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(post())
        assert read_response(sock).status == 200
        if header < keepalive:
            # Idle past the connection's first timer (armed at connect for `header`), so
            # the timer now waits for the long keep-alive deadline: the point of the test.
            time.sleep(header * 2)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            resp = read_response(sock, timeout=5)
            assert resp.status == 408
            assert orjson.loads(resp.body)["error"]["code"] == "request_timeout"
        else:
            assert connection_closed(sock, timeout=5)
    assert_still_serves(gw)


def test_max_connections_fast_503(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm)}, "limits": {"max_connections": 3}}
    )
    held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
    try:
        from tests.support.waiting import wait_until

        wait_until(lambda: len(gw.plane.connections) == 3, what="3 accepted connections")
        extra = socket.create_connection(("127.0.0.1", gw.port))
        with extra:
            resp = read_response(extra)
            assert resp.status == 503
            assert connection_closed(extra)
    finally:
        for s in held:
            s.close()
    wait_until(lambda: len(gw.plane.connections) == 0, what="connections released")
    assert_still_serves(gw)


def test_pipelined_requests_answered_in_order(gw: RunningGateway) -> None:
    first = post(
        orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "1"}]}),
        extra=b"x-mock-tokens: 3\r\nx-mock-ttfb-ms: 150\r\n",
    )
    second = post(
        orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "2"}]}),
        extra=b"x-mock-tokens: 5\r\n",
    )
    bad = post(b"{not json")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(first + second + bad)
        r1, r2, r3 = read_response(sock), read_response(sock), read_response(sock)
    assert orjson.loads(r1.body)["usage"]["completion_tokens"] == 3
    assert orjson.loads(r2.body)["usage"]["completion_tokens"] == 5
    assert r3.status == 400 and orjson.loads(r3.body)["error"]["code"] == "invalid_json"
