"""Upstream faults: a backend that refuses, resets, stalls, answers garbage or fails.

The rule under test: while nothing has been sent to the client, a fault becomes either a
failover to the next candidate or, on the last one, an error in the client's dialect
(502 for a failure, 504 for a stall); once a stream has started, the client gets the
dialect's error event instead of a terminal event, in a properly ended chunked body.
Either way the client connection stays in sync (or is closed when the gateway says so),
a POST that reached a backend is not sent to it again, and the gateway serves on.

Backends here time out fast (``first_byte_timeout_s`` and ``idle_timeout_s`` 0.3 s).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.mockllm.wire import error_body as mock_error_body
from tests.conftest import RunningGateway, backend_for

from .conftest import (
    CHAT_PATH,
    PATHS,
    RawClient,
    Response,
    assert_answers,
    assert_error,
    assert_in_sync,
    assert_in_sync_or_closed,
    assert_still_serves,
    assert_stream_cut,
    backend_requests,
    is_anthropic,
    payload,
    request,
)

SHORT = {"first_byte_timeout_s": 0.3, "idle_timeout_s": 0.3}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connect is refused
    return f"http://127.0.0.1:{port}/v1"


def _send(gw: RunningGateway, raw: bytes) -> tuple[RawClient, Response]:
    client = RawClient(gw.port)
    client.send(raw)
    return client, client.read()


def _faulty(path: str, fault: str, *, stream: bool = False, extra: bytes = b"") -> bytes:
    """A valid request for the path that asks the mock backend for ``fault``."""
    return request(
        path,
        payload(path, stream=stream) if stream else None,
        extra=b"x-mock-fault: " + fault.encode() + b"\r\n" + extra,
    )


def _live_body(path: str) -> bytes:
    """A request for a model only the healthy backends serve (see ``_with_live``)."""
    return payload(path, model="live-claude" if is_anthropic(path) else "live-gpt")


def _with_live(mock: MockLLMServer, **bad: dict[str, Any]) -> dict[str, Any]:
    """The faulty backends plus healthy ones on the mock for other models, so the test
    can show the gateway still serves and the client connection is still in sync."""
    return {
        "backends": {
            **bad,
            "openai.live": backend_for(mock, "openai", models=["live-gpt"]),
            "anthropic.live": backend_for(mock, "anthropic", models=["live-claude"]),
        }
    }


@pytest.fixture
def short_gw(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> RunningGateway:
    """Both dialects on the mock with short upstream timeouts, and no failover route."""
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai", **SHORT),
                "anthropic.1": backend_for(mock_llm, "anthropic", **SHORT),
            },
            "default_backend": "openai.1",
        }
    )


# -- the last (only) candidate fails before the client got a byte ---------------------

JSON_FAULTS = [
    # (id, mock fault, status, OpenAI code)
    ("connection closed with no response (drop)", "drop", 502, "upstream_error"),
    ("reset after 10 bytes of the body", "reset_after:10", 502, "upstream_error"),
    ("clean close 10 bytes into a longer Content-Length", "close_after:10", 502, "upstream_error"),
    ("no response at all (hang)", "hang", 504, "upstream_timeout"),
    ("status and headers, then silence", "hang_after_headers", 504, "upstream_timeout"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("fault", "status", "code"), [c[1:] for c in JSON_FAULTS], ids=[c[0] for c in JSON_FAULTS]
)
def test_fault_before_the_client_got_a_byte(
    short_gw: RunningGateway, mock_llm: MockLLMServer, fault: str, status: int, code: str, path: str
) -> None:
    """Bad input: the only backend for the model fails in the way the case names, before
    the gateway has sent the client anything."""
    client, resp = _send(short_gw, _faulty(path, fault))
    with client:
        assert_error(resp, status, path, code)
        assert backend_requests(mock_llm) == 1, "a POST the backend received is not resent"
        assert_in_sync_or_closed(client, resp, path)
    assert_still_serves(short_gw, path)


@pytest.mark.parametrize("path", PATHS)
def test_connect_refused_gives_502(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, path: str
) -> None:
    """Nothing listens at the backend's port: 502 in the dialect, counted as a connect
    error, and the client connection carries the next request."""
    gw = gateway_factory(
        _with_live(
            mock_llm,
            **{
                "openai.1": {"api_url": _dead_url(), "api_key": "k", "models": ["gpt-4o"]},
                "anthropic.1": {
                    "type": "anthropic",
                    "api_url": _dead_url(),
                    "api_key": "k",
                    "models": ["claude-haiku-4-5"],
                },
            },
        )
    )
    client, resp = _send(gw, request(path))
    with client:
        assert_error(resp, 502, path, "upstream_error")
        assert gw.plane.counters.upstream_errors.get("connect") == 1
        assert backend_requests(mock_llm) == 0
        assert_in_sync(client, path, body=_live_body(path))
    assert_still_serves(gw, path, _live_body(path))


MALFORMED = [
    ("not HTTP at all", b"garbage\r\n\r\n"),
    ("status code not a number", b"HTTP/1.1 2xx OK\r\ncontent-length: 2\r\n\r\n{}"),
    (
        "Content-Length and chunked together",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
        b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ),
    (
        "two different Content-Lengths",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
        b"content-length: 40\r\n\r\n{}",
    ),
    (
        "space before a header colon",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length : 2\r\n\r\n{}",
    ),
    (
        "invalid chunk size",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
        b"\r\nzz\r\n{}\r\n0\r\n\r\n",
    ),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("answer", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_response_gives_502(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    raw_backend: Callable[[bytes], str],
    answer: bytes,
    path: str,
) -> None:
    """The backend answers with bytes that are not a well-framed HTTP response: none of
    them reaches the client, which gets a 502 in its dialect."""
    gw = gateway_factory(
        _with_live(
            mock_llm,
            **{
                "openai.1": {"api_url": raw_backend(answer), "api_key": "k", "models": ["gpt-4o"]},
                "anthropic.1": {
                    "type": "anthropic",
                    "api_url": raw_backend(answer),
                    "api_key": "k",
                    "models": ["claude-haiku-4-5"],
                },
            },
        )
    )
    client, resp = _send(gw, request(path))
    with client:
        assert_error(resp, 502, path, "upstream_error")
        assert backend_requests(mock_llm) == 0, "no healthy backend is asked in its place"
        assert_in_sync_or_closed(client, resp, path, body=_live_body(path))
    assert_still_serves(gw, path, _live_body(path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_5xx_from_the_last_candidate_relayed_as_it_came(
    short_gw: RunningGateway, mock_llm: MockLLMServer, status: int, path: str
) -> None:
    """The only backend answers a 5xx: nothing to fail over to, so the client gets that
    status and the backend's own error body (already in the dialect), byte for byte."""
    client, resp = _send(short_gw, request(path, extra=b"x-mock-status: %d\r\n" % status))
    with client:
        assert resp.status == status
        assert resp.body == mock_error_body("anthropic" if is_anthropic(path) else "openai", status)
        assert resp.headers["x-fastproxy-backend"] == (
            "anthropic.1" if is_anthropic(path) else "openai.1"
        )
        assert backend_requests(mock_llm) == 1, "a 5xx on the last candidate is not retried"
        assert_in_sync_or_closed(client, resp, path)
    assert_still_serves(short_gw, path)


def test_429_on_last_candidate_honours_retry_after(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    """Every answer is 429: with Retry-After: 1 the gateway waits once, then relays the
    429; a long Retry-After (60 s) is not waited for, the 429 is relayed at once."""
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm, models=["gpt-4o"])}})
    mock_llm.set_behaviour(status=429, retry_after=1)
    with RawClient(gw.port) as client:
        client.send(request())
        resp = client.read()
        assert resp.status == 429 and resp.headers.get("retry-after") == "1"
        assert resp.body == mock_error_body("openai", 429)
        assert backend_requests(mock_llm) == 2
        mock_llm.set_behaviour(status=429, retry_after=60)
        client.send(request())  # the same connection: in sync after a relayed 429
        resp = client.read()
        assert resp.status == 429 and resp.headers.get("retry-after") == "60"
        assert backend_requests(mock_llm) == 3
    mock_llm.clear_behaviour()
    assert_still_serves(gw)


# -- the stream already started: the client gets an error event -------------------------

STREAM_FAULTS = [
    ("reset after 2 content events", b"x-mock-fault: reset_after:2\r\n"),
    ("clean close after 2 content events", b"x-mock-fault: close_after:2\r\n"),
    ("stream head, then silence", b"x-mock-fault: hang_after_headers\r\n"),
    ("silence after the first event", b"x-mock-tokens: 3\r\nx-mock-interval-ms: 5000\r\n"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("extra", [c[1] for c in STREAM_FAULTS], ids=[c[0] for c in STREAM_FAULTS])
def test_fault_mid_stream_ends_with_an_error_event(
    short_gw: RunningGateway, mock_llm: MockLLMServer, extra: bytes, path: str
) -> None:
    """Bad input: the only backend starts a stream (the client already has its 200 and
    headers), then fails in the way the case names."""
    client, resp = _send(short_gw, request(path, payload(path, stream=True), extra=extra))
    with client:
        assert_stream_cut(resp, path)
        assert backend_requests(mock_llm) == 1
        assert_in_sync(client, path)
    assert short_gw.plane.counters.stream_truncations == 1
    assert_still_serves(short_gw, path)


# -- failover: a fault on one candidate, the next one answers -----------------------------


@pytest.fixture
def pair(
    gateway_factory: Callable[..., RunningGateway], mock_factory: Callable[..., MockLLMServer]
) -> tuple[Callable[..., RunningGateway], MockLLMServer, MockLLMServer]:
    a, b = mock_factory(), mock_factory()

    def make(primary: dict[str, Any] | None = None, **extra: Any) -> RunningGateway:
        return gateway_factory(
            {
                "backends": {
                    "openai.1": primary or backend_for(a, models=["gpt-4o"]),
                    "openai.2": backend_for(b, models=["gpt-4o-mini"]),
                },
                "failover_routes": {"gpt-4o": ["openai.2:gpt-4o-mini"]},
                **extra,
            }
        )

    return make, a, b


def _answered_by_second(resp: Response) -> None:
    assert_answers(resp, CHAT_PATH)
    assert resp.headers["x-fastproxy-backend"] == "openai.2"
    assert resp.json()["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("status", [429, 502, 503, 504, 529])
def test_transient_status_fails_over(pair: Any, status: int) -> None:
    """Bad input: the first candidate answers 429 or a transient 5xx; the failover route
    names a second one, which answers."""
    make, a, b = pair
    gw = make()
    a.set_behaviour(status=status)
    client, resp = _send(gw, request())
    with client:
        _answered_by_second(resp)
        assert backend_requests(a) == 1 and backend_requests(b) == 1
        assert_in_sync(client)
    a.clear_behaviour()
    assert_still_serves(gw)


def test_connect_error_fails_over(pair: Any) -> None:
    """Bad input: nothing listens at the first candidate's port (a stream request)."""
    make, _, b = pair
    gw = make(primary={"api_url": _dead_url(), "api_key": "k", "models": ["gpt-4o"]})
    client, resp = _send(gw, request(body=orjson.dumps({**CHAT, "stream": True})))
    with client:
        assert resp.status == 200 and resp.headers["x-fastproxy-backend"] == "openai.2"
        assert resp.body.rstrip().endswith(b"data: [DONE]")
        assert gw.plane.counters.upstream_errors.get("connect") == 1
        assert backend_requests(b) == 1
        assert_in_sync(client)
    assert_still_serves(gw)


def test_first_byte_timeout_fails_over(pair: Any) -> None:
    """Bad input: the first candidate reads the request and never answers (0.3 s first
    byte timeout)."""
    make, a, b = pair
    gw = make(primary=backend_for(a, models=["gpt-4o"], first_byte_timeout_s=0.3))
    a.set_behaviour(fault="hang")
    client, resp = _send(gw, request())
    with client:
        _answered_by_second(resp)
        assert backend_requests(a) == 1 and backend_requests(b) == 1
        assert_in_sync(client)
    a.clear_behaviour()
    assert_still_serves(gw)


def test_no_failover_after_first_byte(pair: Any) -> None:
    """Bad input: the first candidate resets its stream after 2 content events. Once the
    stream started, the cut is reported to the client, never retried elsewhere."""
    make, a, b = pair
    gw = make()
    client, resp = _send(
        gw,
        request(
            body=orjson.dumps({**CHAT, "stream": True}), extra=b"x-mock-fault: reset_after:2\r\n"
        ),
    )
    with client:
        assert_stream_cut(resp, CHAT_PATH)
        assert backend_requests(a) == 1
        assert backend_requests(b) == 0, "a started stream is never retried elsewhere"
        assert_in_sync(client)
    assert_still_serves(gw)
