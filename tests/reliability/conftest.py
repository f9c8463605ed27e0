"""Shared helpers for the reliability cases: exact bytes in, exact answers out.

Every case in this package checks the same five things, so they are written once here:
- the exact status, and an error body in the dialect of the path (`/v1/messages` is
  Anthropic, everything else OpenAI), with exactly the keys that dialect defines;
- what reached the backend (`backend_requests`: the mock LLM's own request counter);
- the client connection afterwards: either closed with nothing more written
  (`assert_closed`), or in sync, meaning a valid request written on the same socket
  gets its own answer and not someone else's (`assert_in_sync`);
- the gateway still serves a normal request on a fresh connection (`assert_still_serves`).

`RawClient` writes the bytes a test gives it, unchanged: the malformed inputs here are
exactly what an HTTP library would refuse to send.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
PATHS = (CHAT_PATH, MESSAGES_PATH)
OPENAI_MODEL = "gpt-4o"
ANTHROPIC_MODEL = "claude-haiku-4-5"

# The error `type` each dialect gives a status when the gateway itself refuses: the
# providers' own names where they have one, so their SDKs raise the matching error class.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    431: "invalid_request_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    414: "request_too_large",
    431: "request_too_large",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}

# Small limits and short deadlines, so every case is quick and none waits long.
LIMITS = {
    "max_request_line_bytes": 1024,
    "max_head_bytes": 4096,
    "max_headers": 20,
    "max_body_bytes": 10_000,
    "max_connections": 50,
}
TIMEOUTS = {"header_seconds": 0.3, "body_idle_seconds": 0.3}


def is_anthropic(path: str) -> bool:
    return path.startswith(MESSAGES_PATH)


def payload(path: str = CHAT_PATH, **extra: Any) -> bytes:
    """A valid JSON body for the path's API."""
    if is_anthropic(path):
        body: dict[str, Any] = {
            "model": ANTHROPIC_MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }
    else:
        body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return orjson.dumps({**body, **extra})


def request(
    path: str = CHAT_PATH,
    body: bytes | None = None,
    *,
    extra: bytes = b"",
    method: bytes = b"POST",
    version: bytes = b"HTTP/1.1",
    host: bytes = b"host: localhost\r\n",
    framing: bytes | None = None,
) -> bytes:
    """One request, byte for byte. ``framing`` replaces the Content-Length line (pass the
    framing headers under test, or b"" for none)."""
    body = payload(path) if body is None else body
    if framing is None:
        framing = b"content-length: %d\r\n" % len(body)
    return (
        method
        + b" "
        + path.encode()
        + b" "
        + version
        + b"\r\n"
        + host
        + b"content-type: application/json\r\n"
        + extra
        + framing
        + b"\r\n"
        + body
    )


def follow_up(path: str = CHAT_PATH, tokens: int = 3, body: bytes | None = None) -> bytes:
    """A valid request whose answer is recognisable: the mock gives exactly ``tokens``
    completion tokens."""
    return request(path, body, extra=b"x-mock-tokens: %d\r\n" % tokens)


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    def json(self) -> Any:
        return orjson.loads(self.body)


class RawClient:
    """A blocking socket that sends exact bytes and parses the responses that come back,
    pipelined ones included (several may arrive in one read)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._parser = httptools.HttpResponseParser(self)
        self._current = Response()
        self._done: list[Response] = []
        self._begun = 0
        self._answered = 0
        self.eof = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_readable(self, timeout: float) -> bool:
        """True if the peer wrote (or closed) within ``timeout``; reads nothing."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._begun += 1
        self._current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.complete = True
        self._done.append(self._current)

    def _recv(self, deadline: float) -> bytes | None:
        """Bytes from the peer; b"" at EOF (a reset counts as one); None at the deadline."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return b""
        self._parser.feed_data(data)
        return data

    def read(self, timeout: float = 10.0) -> Response:
        """The next complete response; fails the test at the deadline or at EOF."""
        deadline = time.monotonic() + timeout
        while not self._done:
            if self.eof:
                raise AssertionError(
                    f"the connection closed before a complete response "
                    f"(got status {self._current.status}, "
                    f"body {self._current.body[:200]!r})"
                )
            if self._recv(deadline) is None:
                raise AssertionError(f"no complete response within {timeout}s")
        self._answered += 1
        return self._done.pop(0)

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the peer closed before the deadline. Bytes of another response
        arriving first fail the test: a closing connection must not answer more."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if self._recv(deadline) is None:
                return False
        assert self._begun == self._answered, (
            f"{self._begun - self._answered} more response(s) before the close: {self._done}"
        )
        return True


def assert_error(
    resp: Response, status: int, path: str, code: str, *, etype: str | None = None
) -> None:
    """``resp`` is ``status`` with an error body in the dialect of ``path``, exactly.

    ``code`` is the OpenAI ``error.code``; the Anthropic dialect has no code, so its
    ``error.type`` is checked instead (``etype``, else what the status maps to).
    """
    assert resp.complete, resp
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    if is_anthropic(path):
        assert set(body) == {"type", "error"}, body
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == (etype or ANTHROPIC_TYPES[status]), body
        message = body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, body
        assert err["code"] == code, body
        assert err["type"] == OPENAI_TYPES[status], body
        assert err["param"] is None, body
        message = err["message"]
    assert isinstance(message, str) and message, body


def assert_stream_cut(resp: Response, path: str) -> None:
    """A 200 SSE stream that ends with the dialect's error event and no terminal event,
    its chunked body properly ended (so the connection can carry the next request)."""
    assert resp.complete and resp.status == 200, resp
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    assert resp.headers.get("transfer-encoding") == "chunked", resp.headers
    events = [e for e in resp.body.split(b"\n\n") if e.strip()]
    last = events[-1]
    if is_anthropic(path):
        lines = last.split(b"\n")
        assert lines[0] == b"event: error", last
        data = orjson.loads(lines[1].removeprefix(b"data: "))
        assert set(data) == {"type", "error"} and data["type"] == "error", data
        assert set(data["error"]) == {"type", "message"}, data
        assert data["error"]["type"] == "api_error" and data["error"]["message"], data
        assert b"message_stop" not in resp.body
    else:
        data = orjson.loads(last.removeprefix(b"data: "))
        assert set(data) == {"error"}, data
        assert set(data["error"]) == {"message", "type", "param", "code"}, data
        assert data["error"]["code"] == "stream_truncated" and data["error"]["message"], data
        assert b"[DONE]" not in resp.body


def completion_tokens(resp: Response, path: str) -> int:
    usage = resp.json()["usage"]
    return int(usage["output_tokens"] if is_anthropic(path) else usage["completion_tokens"])


def assert_answers(resp: Response, path: str, tokens: int | None = None) -> None:
    """A normal 200 completion in the path's dialect (with ``tokens`` completion tokens)."""
    assert resp.complete and resp.status == 200, (resp.status, resp.body)
    body = resp.json()
    if is_anthropic(path):
        assert body["type"] == "message" and body["content"][0]["text"], body
    else:
        assert body["object"] == "chat.completion", body
        assert body["choices"][0]["message"]["content"], body
    if tokens is not None:
        assert completion_tokens(resp, path) == tokens, body


def backend_requests(mock: MockLLMServer) -> int:
    """API requests the mock LLM has received (its own counter: what reached it)."""
    return mock.stats.requests_total


def assert_closed(client: RawClient) -> None:
    assert client.closed(), "the gateway kept a connection open that it had to close"


def assert_in_sync(
    client: RawClient, path: str = CHAT_PATH, tokens: int = 3, body: bytes | None = None
) -> None:
    """The same connection carries one more request and gets that request's answer."""
    client.send(follow_up(path, tokens, body))
    assert_answers(client.read(), path, tokens)


def assert_in_sync_or_closed(
    client: RawClient, resp: Response, path: str = CHAT_PATH, body: bytes | None = None
) -> None:
    """Whichever the gateway announced: ``connection: close`` must be kept, otherwise
    the connection must be usable for the next request."""
    if resp.headers.get("connection") == "close":
        assert_closed(client)
    else:
        assert_in_sync(client, path, body=body)


def assert_still_serves(
    gw: RunningGateway, path: str = CHAT_PATH, body: bytes | None = None
) -> None:
    with RawClient(gw.port) as client:
        client.send(request(path, body))
        assert_answers(client.read(), path)


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer) -> RunningGateway:
    """One OpenAI and one Anthropic backend on the same mock, small limits, short deadlines."""
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            "default_backend": "openai.1",
            "limits": dict(LIMITS),
            "timeouts": dict(TIMEOUTS),
        }
    )


@pytest.fixture
def client_for(gw: RunningGateway) -> Iterator[Callable[[], RawClient]]:
    """Raw connections to ``gw``, closed at the end of the test."""
    opened: list[RawClient] = []

    def make() -> RawClient:
        c = RawClient(gw.port)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.sock.close()
