"""Limits and HTTP strictness of the data plane, over raw sockets.

Each case: the bad input, the status the gateway must answer, that nothing reached the
mock LLM, and that the gateway still serves a normal request afterwards.
"""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from tests.conftest import RunningGateway, backend_for
from tests.support.rawhttp import connection_closed, exchange, read_response

BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def post(body: bytes = BODY, extra: bytes = b"", path: bytes = b"/v1/chat/completions",
         version: bytes = b"HTTP/1.1", host: bytes = b"host: localhost\r\n") -> bytes:
    return (b"POST " + path + b" " + version + b"\r\n" + host
            + b"content-type: application/json\r\n" + extra
            + b"content-length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
def gw(gateway_factory, mock_llm) -> RunningGateway:
    return gateway_factory({
        "backends": {"openai.1": backend_for(mock_llm)},
        "limits": {"max_request_line_bytes": 1024, "max_head_bytes": 4096, "max_headers": 20,
                   "max_body_bytes": 10_000, "max_connections": 50},
        "timeouts": {"header_seconds": 0.5, "body_idle_seconds": 0.5},
    })


def assert_still_serves(gw: RunningGateway) -> None:
    r = httpx.post(gw.url + "/v1/chat/completions", content=BODY,
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


CASES = [
    # (id, raw bytes, expected status, error code in the OpenAI error body or None)
    ("request line too long (414)",
     post(path=b"/v1/chat/completions?" + b"x" * 2000), 414, "uri_too_long"),
    ("too many headers (431)",
     post(extra=b"".join(b"x-h%d: v\r\n" % i for i in range(30))), 431, "too_many_headers"),
    ("header block too large (431)",
     post(extra=b"x-big: " + b"v" * 5000 + b"\r\n"), 431, "head_too_large"),
    ("body over the limit by Content-Length (413, refused before reading)",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
     b"content-length: 50000\r\n\r\n", 413, "request_too_large"),
    ("chunked body growing over the limit (413)",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
     b"transfer-encoding: chunked\r\n\r\n" + (b"1000\r\n" + b"a" * 4096 + b"\r\n") * 3, 413,
     "request_too_large"),
    ("HTTP/1.1 without Host (400)", post(host=b""), 400, "bad_request"),
    ("HTTP/1.1 with two Host headers (400)",
     post(host=b"host: a\r\nhost: b\r\n"), 400, "bad_request"),
    ("Transfer-Encoding on HTTP/1.0 (400)",
     b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n"
     b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    # httptools' dangerous leniencies stay off:
    ("bare LF line endings (lenient_optional_cr_before_lf off)",
     b"POST /v1/chat/completions HTTP/1.1\nhost: x\ncontent-length: 2\n\n{}", 400, "bad_request"),
    ("Content-Length together with chunked (lenient_chunked_length off)",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
     b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    ("space before the header colon (lenient_headers off)",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost : x\r\ncontent-length: 2\r\n\r\n{}", 400,
     "bad_request"),
    ("invalid chunk size (lenient_spaces_after_chunk_size off)",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
     b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400,
     "bad_request"),
]


@pytest.mark.parametrize(("raw", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_limits_and_strictness(gw: RunningGateway, mock_llm, raw: bytes, status: int,
                               code: str) -> None:
    before = mock_llm.stats.requests_total
    resp, sock = exchange(gw.port, raw)
    with sock:
        assert resp.status == status, resp.body
        assert orjson.loads(resp.body)["error"]["code"] == code
        assert resp.headers.get("connection") == "close"
        assert connection_closed(sock)
    assert mock_llm.stats.requests_total == before, "nothing may reach the backend"
    assert_still_serves(gw)


def test_header_deadline_408(gw: RunningGateway, mock_llm) -> None:
    """A client that starts a request and never finishes its headers (slowloris)."""
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        resp = read_response(sock, timeout=5)
        assert resp.status == 408
        assert orjson.loads(resp.body)["error"]["code"] == "request_timeout"
    assert mock_llm.stats.requests_total == 0
    assert_still_serves(gw)


def test_body_idle_408(gw: RunningGateway, mock_llm) -> None:
    """Headers promise 100 bytes of body; 10 arrive, then nothing."""
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":")
        resp = read_response(sock, timeout=5)
        assert resp.status == 408
    assert mock_llm.stats.requests_total == 0
    assert_still_serves(gw)


def test_body_trickle_is_not_a_timeout(gw: RunningGateway, mock_llm) -> None:
    """A slow but live upload (a byte every 0.2 s, past the 0.5 s idle limit overall)."""
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY))
        pieces = [BODY[i:i + 20] for i in range(0, len(BODY), 20)]
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.2)  # the point of the test: a slow client, not waiting for a result
        resp = read_response(sock, timeout=10)
    assert resp.status == 200


def test_idle_keepalive_connection_closed(gateway_factory, mock_llm) -> None:
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)},
                          "timeouts": {"keepalive_seconds": 0.3, "header_seconds": 0.3}})
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(post())
        assert read_response(sock).status == 200
        assert connection_closed(sock, timeout=5)


@pytest.mark.parametrize("keepalive, header", [(60.0, 0.3), (0.3, 60.0)],
                         ids=["short-header-after-long-keepalive", "short-keepalive-after-long-header"])
def test_each_phase_keeps_its_own_deadline(gateway_factory, mock_llm, keepalive: float,
                                           header: float) -> None:
    """The connection timer is re-armed only when a deadline comes sooner than it would
    fire: a short deadline after a long one must still be kept. Bad input: after one good
    request, the client either starts a second one and stops mid-headers, or goes idle."""
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)},
                          "timeouts": {"keepalive_seconds": keepalive, "header_seconds": header}})
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
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)},
                          "limits": {"max_connections": 3}})
    held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
    try:
        from tests.support.waiting import wait_until

        wait_until(lambda: len(gw.state.connections) == 3, what="3 accepted connections")
        extra = socket.create_connection(("127.0.0.1", gw.port))
        with extra:
            resp = read_response(extra)
            assert resp.status == 503
            assert connection_closed(extra)
    finally:
        for s in held:
            s.close()
    wait_until(lambda: len(gw.state.connections) == 0, what="connections released")
    assert_still_serves(gw)


def test_pipelined_requests_answered_in_order(gw: RunningGateway) -> None:
    first = post(orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "1"}]}),
                 extra=b"x-mock-tokens: 3\r\nx-mock-ttfb-ms: 150\r\n")
    second = post(orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "2"}]}),
                  extra=b"x-mock-tokens: 5\r\n")
    bad = post(b"{not json")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(first + second + bad)
        r1, r2, r3 = read_response(sock), read_response(sock), read_response(sock)
    assert orjson.loads(r1.body)["usage"]["completion_tokens"] == 3
    assert orjson.loads(r2.body)["usage"]["completion_tokens"] == 5
    assert r3.status == 400 and orjson.loads(r3.body)["error"]["code"] == "invalid_json"
