"""Size limits of a request: request line (414), head size and header count (431), body
(413, refused from its Content-Length before a byte of it is read).

The gateway under test has small limits (see ``LIMITS`` in conftest): a 1 KiB request
target, a 4 KiB head, 20 headers, a 10,000-byte body. Each refused request has a valid
request pipelined behind it: the gateway answers the refusal in the path's dialect,
closes without answering the pipelined one, forwards nothing, and serves on afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway

from .conftest import (
    LIMITS,
    PATHS,
    RawClient,
    assert_answers,
    assert_closed,
    assert_error,
    assert_in_sync,
    assert_still_serves,
    backend_requests,
    follow_up,
    is_anthropic,
    payload,
    request,
)

MAX_BODY = LIMITS["max_body_bytes"]


def _sized_body(path: str, size: int) -> bytes:
    """A valid JSON request for the path whose body is exactly ``size`` bytes."""
    base = payload(path, metadata={"pad": ""}) if is_anthropic(path) else payload(path, user="")
    body = base.replace(b'""', b'"' + b"p" * (size - len(base)) + b'"', 1)
    assert len(body) == size and orjson.loads(body)
    return body


# (id, builder of the raw request for a path, status, OpenAI error code)
CASES: list[tuple[str, Callable[[str], bytes], int, str]] = [
    (
        "request target of 2,000 bytes over a 1 KiB limit",
        lambda p: request(p + "?" + "x" * 2000),
        414,
        "uri_too_long",
    ),
    (
        "30 headers over a limit of 20",
        lambda p: request(p, extra=b"".join(b"x-h%d: v\r\n" % i for i in range(30))),
        431,
        "too_many_headers",
    ),
    (
        "one 5,000-byte header over a 4 KiB head",
        lambda p: request(p, extra=b"x-big: " + b"v" * 5000 + b"\r\n"),
        431,
        "head_too_large",
    ),
    (
        "15 headers of 300 bytes: each small, together over a 4 KiB head",
        lambda p: request(p, extra=b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 300) for i in range(15))),
        431,
        "head_too_large",
    ),
    (
        "chunked body growing past the 10,000-byte limit",
        lambda p: request(
            p, (b"1000\r\n" + b"a" * 4096 + b"\r\n") * 3, framing=b"transfer-encoding: chunked\r\n"
        ),
        413,
        "request_too_large",
    ),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("build", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_over_a_limit_refused(
    gw: RunningGateway,
    mock_llm: MockLLMServer,
    build: Callable[[str], bytes],
    status: int,
    code: str,
    path: str,
) -> None:
    """Bad input: the request the case names, with a valid request pipelined behind it."""
    with RawClient(gw.port) as client:
        client.send(build(path) + follow_up(path))
        resp = client.read()
        assert_error(resp, status, path, code)
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert backend_requests(mock_llm) == 0, "nothing may reach the backend"
    assert_still_serves(gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_endless_header_refused_at_the_limit(
    gw: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """One header value that never ends, written 100 bytes at a time: the head is
    refused once its raw bytes pass the memory guard (twice the head limits, 10 KiB here:
    431), not left to grow until the header deadline (which would be a 408), so the bytes
    counted are the whole head's, across reads."""
    start = request(path, extra=b"x-big: ")
    start = start[: start.index(b"x-big: ") + 7]
    with RawClient(gw.port) as client:
        client.send(start)
        try:
            for _ in range(160):  # 16,000 bytes, well past the 10 KiB guard
                client.send(b"v" * 100)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-head, as the test wants; the answer is read below
        resp = client.read()
        assert_error(resp, 431, path, "head_too_large")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_content_length_over_the_limit_refused_before_the_body(
    gw: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """The head announces 50,000 bytes; the client sends no body at all and still gets
    its 413 at once: the gateway does not wait for (or read) a body it will refuse."""
    with RawClient(gw.port) as client:
        client.send(request(path, b"", framing=b"content-length: 50000\r\n"))
        resp = client.read(timeout=5)
        assert_error(resp, 413, path, "request_too_large")
        assert resp.headers.get("connection") == "close"
        assert_closed(client)
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_body_at_the_limit_accepted_one_more_byte_refused(
    gw: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """The limit is inclusive: exactly 10,000 bytes are relayed (and the connection goes
    on), 10,001 are refused."""
    with RawClient(gw.port) as client:
        client.send(request(path, _sized_body(path, MAX_BODY)))
        assert_answers(client.read(), path)
        assert backend_requests(mock_llm) == 1
        assert_in_sync(client, path)
    assert backend_requests(mock_llm) == 2
    with RawClient(gw.port) as client:
        client.send(request(path, _sized_body(path, MAX_BODY + 1)))
        resp = client.read()
        assert_error(resp, 413, path, "request_too_large")
        assert_closed(client)
    assert backend_requests(mock_llm) == 2, "the oversized body must not reach the backend"
    assert_still_serves(gw, path)
