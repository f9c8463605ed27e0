"""Request smuggling forms: framing a proxy and its backend could read differently.

Each case writes one ambiguous or malformed request with a valid request pipelined
behind it on the same socket. The gateway must answer 400 in the path's dialect, close
the connection without answering the pipelined request (once framing is in doubt, the
bytes after it cannot be trusted to be a request), and forward nothing to the backend:
neither the bad request nor anything hidden in or after it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway

from .conftest import (
    CHAT_PATH,
    PATHS,
    RawClient,
    assert_closed,
    assert_error,
    assert_still_serves,
    backend_requests,
    follow_up,
    payload,
    request,
)


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def _hidden(path: str) -> bytes:
    """A whole request tucked inside the body, for a parser that ends the body early."""
    return follow_up(path, tokens=7)


# (id, builder of the raw bad request for a path). The body of every request is a
# valid JSON request for the path, so only the framing is wrong.
CASES: list[tuple[str, Callable[[str], bytes]]] = [
    (
        "content-length and chunked (CL.TE)",
        lambda p: request(
            p,
            b"0\r\n\r\n" + _hidden(p),
            framing=b"content-length: %d\r\ntransfer-encoding: chunked\r\n"
            % len(b"0\r\n\r\n" + _hidden(p)),
        ),
    ),
    (
        "chunked and content-length (TE.CL)",
        lambda p: request(
            p, _chunked(payload(p)), framing=b"transfer-encoding: chunked\r\ncontent-length: 4\r\n"
        ),
    ),
    (
        "two different content-lengths",
        lambda p: request(
            p,
            payload(p) + _hidden(p),
            framing=b"content-length: %d\r\ncontent-length: %d\r\n"
            % (len(payload(p)), len(payload(p) + _hidden(p))),
        ),
    ),
    (
        "two equal content-lengths",
        lambda p: request(
            p,
            framing=b"content-length: %d\r\ncontent-length: %d\r\n"
            % (len(payload(p)), len(payload(p))),
        ),
    ),
    (
        "content-length as a list",
        lambda p: request(
            p, framing=b"content-length: %d, %d\r\n" % (len(payload(p)), len(payload(p)))
        ),
    ),
    (
        "content-length with a plus sign",
        lambda p: request(p, framing=b"content-length: +%d\r\n" % len(payload(p))),
    ),
    ("content-length not a number", lambda p: request(p, framing=b"content-length: 0x10\r\n")),
    (
        "transfer-encoding on HTTP/1.0",
        lambda p: request(
            p, _chunked(payload(p)), version=b"HTTP/1.0", framing=b"transfer-encoding: chunked\r\n"
        ),
    ),
    (
        "transfer-encoding: chunked, identity (chunked not last)",
        lambda p: request(
            p, _chunked(payload(p)), framing=b"transfer-encoding: chunked, identity\r\n"
        ),
    ),
    (
        "transfer-encoding twice: chunked then identity",
        lambda p: request(
            p,
            _chunked(payload(p)),
            framing=b"transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
        ),
    ),
    (
        "transfer-encoding: xchunked (unknown coding)",
        lambda p: request(p, _chunked(payload(p)), framing=b"transfer-encoding: xchunked\r\n"),
    ),
    (
        "transfer-encoding hidden by obs-fold",
        lambda p: request(p, _chunked(payload(p)), framing=b"transfer-encoding:\r\n chunked\r\n"),
    ),
    (
        "obs-fold continuing a header value",
        lambda p: request(p, extra=b"x-note: first\r\n second\r\n"),
    ),
    (
        "space before the colon of transfer-encoding",
        lambda p: request(
            p,
            _chunked(payload(p)),
            framing=b"content-length: %d\r\ntransfer-encoding : chunked\r\n"
            % len(_chunked(payload(p))),
        ),
    ),
    ("space before the colon of host", lambda p: request(p, host=b"host : localhost\r\n")),
    (
        "whitespace before the first header",
        lambda p: request(p, host=b" x-pad: 1\r\nhost: localhost\r\n"),
    ),
    ("bare LF line endings", lambda p: request(p).replace(b"\r\n", b"\n")),
    ("bare CR inside a header value", lambda p: request(p, extra=b"x-note: a\rb\r\n")),
    ("NUL inside a header value", lambda p: request(p, extra=b"x-note: a\x00b\r\n")),
    (
        "invalid chunk size (not hex)",
        lambda p: request(
            p, b"zz\r\n" + payload(p) + b"\r\n0\r\n\r\n", framing=b"transfer-encoding: chunked\r\n"
        ),
    ),
    (
        "chunk size followed by spaces",
        lambda p: request(
            p,
            b"%x  \r\n%s\r\n0\r\n\r\n" % (len(payload(p)), payload(p)),
            framing=b"transfer-encoding: chunked\r\n",
        ),
    ),
    (
        "chunk size overflowing 64 bits",
        lambda p: request(
            p,
            b"1" + b"0" * 16 + b"\r\n" + payload(p) + b"\r\n0\r\n\r\n",
            framing=b"transfer-encoding: chunked\r\n",
        ),
    ),
    (
        "chunk data longer than its size",
        lambda p: request(
            p, b"2\r\n" + payload(p) + b"\r\n0\r\n\r\n", framing=b"transfer-encoding: chunked\r\n"
        ),
    ),
    ("HTTP/1.1 without Host", lambda p: request(p, host=b"")),
    ("HTTP/1.1 with two Host headers", lambda p: request(p, host=b"host: a\r\nhost: b\r\n")),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_ambiguous_framing_refused(
    gw: RunningGateway, mock_llm: MockLLMServer, build: Callable[[str], bytes], path: str
) -> None:
    """Bad input: the request the case names, with a valid request pipelined behind it."""
    with RawClient(gw.port) as client:
        client.send(build(path) + follow_up(path))
        resp = client.read()
        assert_error(resp, 400, path, "bad_request")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert backend_requests(mock_llm) == 0, "nothing may reach the backend"
    assert_still_serves(gw, path)


def test_not_http_at_all(gw: RunningGateway, mock_llm: MockLLMServer) -> None:
    """A TLS ClientHello on the plain port: no path is known, so the OpenAI dialect."""
    with RawClient(gw.port) as client:
        client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        resp = client.read()
        assert_error(resp, 400, CHAT_PATH, "bad_request")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw)
