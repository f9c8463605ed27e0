"""What the gateway decides from a request's head: trailers, HEAD, Upgrade, CONNECT and
the head-size limit. Each test sends the exact bytes named in its docstring."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.reliability.conftest import (
    CHAT_PATH,
    LIMITS,
    PATHS,
    RawClient,
    assert_answers,
    assert_closed,
    assert_error,
    assert_in_sync,
    assert_still_serves,
    backend_requests,
    payload,
    request,
)


def _chunked(body: bytes, trailers: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(body), body, trailers)


@pytest.mark.parametrize("path", PATHS)
def test_chunked_trailers_never_become_headers(
    gw: RunningGateway, mock_llm: MockLLMServer, client_for: Callable[[], RawClient], path: str
) -> None:
    """Sends a chunked body whose trailers carry x-leak, Authorization and the loop-guard
    header: none reaches the backend, none trips the loop guard (no 508)."""
    client = client_for()
    trailers = (
        b"x-leak: planted\r\nauthorization: Bearer sk-trailer-secret\r\nx-fastproxy-hop: 1\r\n"
    )
    client.send(
        request(
            path, framing=b"transfer-encoding: chunked\r\n", body=_chunked(payload(path), trailers)
        )
    )
    assert_answers(client.read(), path)
    forwarded = dict(mock_llm.stats.requests[-1].headers)
    assert "x-leak" not in forwarded
    assert "sk-trailer-secret" not in str(mock_llm.stats.requests[-1].headers)
    assert_in_sync(client, path)


def test_an_authorization_trailer_is_not_an_api_key(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    """Sends no key in the head and the valid key in a chunked trailer: 401, and the
    backend sees nothing."""
    from tests.conftest import backend_for

    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm)}, "auth": {"api_keys": ["client-key-1"]}}
    )
    with RawClient(gw.port) as client:
        client.send(
            request(
                CHAT_PATH,
                framing=b"transfer-encoding: chunked\r\n",
                body=_chunked(payload(), b"authorization: Bearer client-key-1\r\n"),
            )
        )
        assert_error(client.read(), 401, CHAT_PATH, "invalid_api_key", etype="authentication_error")
    assert backend_requests(mock_llm) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        CHAT_PATH,
        "/v1/messages",
        "/internal/health",
        "/no/such/path",
        "/v1/diagnostics/activity",
    ],
)
def test_head_is_answered_with_headers_only(
    gw: RunningGateway, client_for: Callable[[], RawClient], path: str
) -> None:
    """Sends HEAD to a listing, to two POST-only API paths (405), to a monitoring path and
    to an unknown path (404), then a valid request on the same connection: every HEAD
    answer has no body, so the next response is read in sync."""
    client = client_for()
    client.send(b"HEAD " + path.encode() + b" HTTP/1.1\r\nhost: localhost\r\n\r\n")
    # A parser that knows the request was HEAD: the body length is not read.
    sock = client.sock
    sock.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "closed before the head"
        head += chunk
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line.split()[1] in (b"200", b"404", b"405"), status_line
    assert rest.endswith(b"\r\n\r\n"), f"bytes after a HEAD answer's headers: {rest!r}"
    assert b"content-length:" in rest.lower() or b"transfer-encoding" in rest.lower()
    assert_in_sync(client)


@pytest.mark.parametrize("path", PATHS)
def test_upgrade_on_a_request_with_a_body_is_ignored(
    gw: RunningGateway, mock_llm: MockLLMServer, client_for: Callable[[], RawClient], path: str
) -> None:
    """Sends `Upgrade: websocket` + `Connection: upgrade` on a chat request with a body,
    then a second request pipelined in the same write: two answers, each its own, and no
    Upgrade header reaches the backend."""
    client = client_for()
    first = request(
        path, extra=b"upgrade: websocket\r\nconnection: upgrade\r\nx-mock-tokens: 5\r\n"
    )
    client.send(first + request(path, extra=b"x-mock-tokens: 4\r\n"))
    assert_answers(client.read(), path, tokens=5)
    assert_answers(client.read(), path, tokens=4)
    headers = dict(mock_llm.stats.requests[-2].headers)
    assert "upgrade" not in headers
    assert_in_sync(client, path)


def test_upgrade_with_a_chunked_body_is_ignored(
    gw: RunningGateway, client_for: Callable[[], RawClient]
) -> None:
    """Sends `Upgrade: h2c` on a chunked chat request: answered once, connection in sync."""
    client = client_for()
    client.send(
        request(
            CHAT_PATH,
            extra=b"upgrade: h2c\r\nconnection: upgrade\r\nx-mock-tokens: 6\r\n",
            framing=b"transfer-encoding: chunked\r\n",
            body=_chunked(payload(), b""),
        )
    )
    assert_answers(client.read(), CHAT_PATH, tokens=6)
    assert_in_sync(client)


def test_upgrade_on_a_bodiless_request_is_ignored(
    gw: RunningGateway, client_for: Callable[[], RawClient]
) -> None:
    """Sends `GET /v1/models` with `Upgrade: websocket`: one 200 listing, in sync."""
    client = client_for()
    client.send(
        b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\n"
        b"connection: upgrade\r\n\r\n"
    )
    resp = client.read()
    assert resp.status == 200 and resp.json()["object"] == "list"
    assert_in_sync(client)


def test_connect_gets_one_error_and_a_close(
    gw: RunningGateway, mock_llm: MockLLMServer, client_for: Callable[[], RawClient]
) -> None:
    """Sends `CONNECT api.openai.com:443` followed by tunnel bytes: one 405, then the
    connection closes with nothing more written; nothing reaches the backend."""
    client = client_for()
    client.send(
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nhost: api.openai.com:443\r\n\r\n"
        b"\x16\x03\x01 tunnel bytes"
    )
    assert_error(client.read(), 405, CHAT_PATH, "method_not_allowed")
    assert_closed(client)
    assert backend_requests(mock_llm) == 0
    assert_still_serves(gw)


@pytest.mark.parametrize("path", PATHS)
def test_a_head_split_across_reads_then_a_large_body_is_served(
    gw: RunningGateway, client_for: Callable[[], RawClient], path: str
) -> None:
    """Sends the first half of a head, then (in a second write) its end and a valid body
    larger than the head limit (`max_head_bytes` 4096 here): 200, not 431."""
    client = client_for()
    body = payload(path, metadata={"pad": "x" * (LIMITS["max_head_bytes"] + 2000)})
    assert len(body) < LIMITS["max_body_bytes"]
    data = request(path, body=body, extra=b"x-mock-tokens: 3\r\n")
    split = data.index(b"content-type")
    client.send(data[:split])
    # Let the gateway read the first part on its own (a separate read, not one segment).
    client.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.sock.recv(1)
    client.send(data[split:])
    assert_answers(client.read(), path, tokens=3)
    assert_in_sync(client, path)


def test_a_pipelined_request_after_a_bodiless_one_is_not_counted_as_head(
    gw: RunningGateway, client_for: Callable[[], RawClient]
) -> None:
    """Sends `GET /v1/models` and the first line of a chat request in one write, then the
    rest of that request with a body larger than the head limit in a second write: both
    answered (the second is not 431)."""
    client = client_for()
    body = payload(metadata={"pad": "y" * (LIMITS["max_head_bytes"] + 2000)})
    second = request(body=body, extra=b"x-mock-tokens: 2\r\n")
    split = second.index(b"\r\n") + 2
    client.send(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\n\r\n" + second[:split])
    assert client.read().status == 200
    client.send(second[split:])
    assert_answers(client.read(), CHAT_PATH, tokens=2)


def test_a_head_over_the_limit_across_reads_is_still_refused(
    gw: RunningGateway, mock_llm: MockLLMServer, client_for: Callable[[], RawClient]
) -> None:
    """Sends a head of 3,000-byte headers over several writes, past `max_head_bytes`
    (4096) but under the header-count limit, and never ends it: 431 as soon as the
    complete headers pass the limit (not a 408 at the header deadline), a close, nothing
    at the backend."""
    client = client_for()
    client.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n")
    client.send(b"x-big: " + b"z" * 3000 + b"\r\n")
    client.send(b"x-big2: " + b"z" * 3000 + b"\r\n")
    client.send(b"x-big3: z")
    resp = client.read()
    assert_error(resp, 431, CHAT_PATH, "head_too_large")
    assert_closed(client)
    assert backend_requests(mock_llm) == 0


def test_an_error_in_the_request_after_an_ignored_upgrade_is_not_a_500(
    gw: RunningGateway, client_for: Callable[[], RawClient]
) -> None:
    """Sends `GET /v1/models` with `Upgrade: websocket`, and in the same write a request
    whose target is over the request-line limit (1 KiB here): 200, then 414 in the
    dialect; the refusal must not be mistaken for a bug in a callback (a 500), which it
    was while the rest was parsed inside the upgrade's exception handler (found by the
    20,000-example run of the split-invariance fuzzer)."""
    client = client_for()
    client.send(
        b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n"
        b"upgrade: websocket\r\n\r\n"
        b"GET /" + b"p" * 1100 + b" HTTP/1.1\r\nhost: localhost\r\n\r\n"
    )
    assert client.read().status == 200
    assert_error(client.read(), 414, CHAT_PATH, "uri_too_long")
    assert_closed(client)
