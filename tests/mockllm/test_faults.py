"""Every steering delay and fault mode, seen from a real client over a real socket."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.mockllm.text import content_text
from tests.support.loop_thread import LoopThread

from .helpers import stat, wait_stat

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world!"}]}
STREAM = {**CHAT, "stream": True}
ANTHROPIC = {
    "model": "claude-haiku-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hello world!"}],
}


@pytest.fixture
def http(server: MockLLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, timeout=10) as c:
        yield c


def content_events(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.startswith("data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                out.append(choices[0]["delta"]["content"])
    return out


def read_lines(
    http: httpx.Client, body: dict[str, object], headers: dict[str, str]
) -> tuple[list[str], Exception | None]:
    """Stream a chat request; return the SSE lines read and the error that ended it, if any."""
    lines: list[str] = []
    try:
        with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.append(line)  # noqa: PERF402 - keep what arrived before an error
    except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
        return lines, exc
    return lines, None


@pytest.mark.parametrize("status", [400, 401, 500, 503, 529])
def test_status_openai_dialect(http: httpx.Client, status: int) -> None:
    for body in (CHAT, STREAM):  # a stream request still gets a JSON error, as real APIs do
        r = http.post("/v1/chat/completions", json=body, headers={"x-mock-status": str(status)})
        assert r.status_code == status
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == (
            "invalid_request_error"
            if status < 500
            else "overloaded_error"
            if status == 529
            else "server_error"
        )
        assert "retry-after" not in r.headers


def test_status_429_retry_after(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-status": "429"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = http.post(
        "/v1/messages", json=ANTHROPIC, headers={"x-mock-status": "429", "x-mock-retry-after": "7"}
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": r.json()["error"]["message"]},
    }
    r = http.post(
        "/v1/messages", json=ANTHROPIC, headers={"x-mock-status": "503", "x-mock-retry-after": "2"}
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "api_error"


def test_ttfb_delays_status_line(http: httpx.Client) -> None:
    t0 = time.monotonic()
    r = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-ttfb-ms": "150"})
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.15


def test_ttft_and_interval_pace_the_stream(http: httpx.Client) -> None:
    headers = {"x-mock-ttft-ms": "200", "x-mock-interval-ms": "40", "x-mock-tokens": "4"}
    t0 = time.monotonic()
    with http.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
        t_headers = time.monotonic() - t0
        times = [
            time.monotonic() - t0
            for line in r.iter_lines()
            if '"content":"' in line and '"content":""' not in line
        ]
    assert len(times) == 4
    assert times[0] >= 0.2 and times[0] - t_headers >= 0.1  # headers first, then the wait
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.03 for g in gaps), gaps


def test_event_bytes_pads_each_token(http: httpx.Client) -> None:
    lines, err = read_lines(http, STREAM, {"x-mock-tokens": "10", "x-mock-event-bytes": "1000"})
    assert err is None
    tokens = content_events(lines)
    assert len(tokens) == 10 and all(990 <= len(t) <= 1000 for t in tokens)


@pytest.mark.parametrize("n", [0, 3])
def test_reset_after_n_events(
    lt: LoopThread, server: MockLLMServer, http: httpx.Client, n: int
) -> None:
    lines, err = read_lines(http, STREAM, {"x-mock-fault": f"reset_after:{n}"})
    assert err is not None, "the stream must end in a connection error"
    assert len(content_events(lines)) == n
    assert "data: [DONE]" not in lines
    wait_stat(lt, server, "open_connections", 0)
    assert stat(lt, server, "streams_completed") == 0


def test_reset_after_seen_by_openai_sdk(server: MockLLMServer) -> None:
    with openai.OpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=10) as c:
        stream = c.chat.completions.create(
            model="gpt-4o@fault=reset_after:2", stream=True, messages=CHAT["messages"]
        )  # type: ignore[arg-type]
        got: list[str] = []
        # The SDK wraps the transport error of a broken stream in APIConnectionError.
        with pytest.raises(openai.APIConnectionError):
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)  # noqa: PERF401 - partial
    assert got == _tokens("gpt-4o", 16)[:2]


def test_close_after_truncates_stream(http: httpx.Client) -> None:
    lines, err = read_lines(http, STREAM, {"x-mock-fault": "close_after:2"})
    assert isinstance(err, httpx.RemoteProtocolError)  # incomplete chunked body
    assert len(content_events(lines)) == 2
    assert "data: [DONE]" not in lines and not any('"finish_reason":"stop"' in x for x in lines)


def test_close_after_beyond_token_count_still_has_no_terminal_event(http: httpx.Client) -> None:
    lines, err = read_lines(http, STREAM, {"x-mock-fault": "close_after:99", "x-mock-tokens": "3"})
    assert err is not None and len(content_events(lines)) == 3 and "data: [DONE]" not in lines


def test_close_after_truncates_json_body(http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-fault": "close_after:10"})


def test_hang_then_client_gives_up(lt: LoopThread, server: MockLLMServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        body = json.dumps(CHAT).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-fault: hang\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_stat(lt, server, "requests_total", 1)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # read, never answered
        assert stat(lt, server, "open_connections") == 1
    wait_stat(lt, server, "connections_closed", 1)
    assert stat(lt, server, "open_connections") == 0


def test_hang_seen_by_httpx_timeout(lt: LoopThread, server: MockLLMServer) -> None:
    with httpx.Client(base_url=server.root_url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/messages", json=ANTHROPIC, headers={"x-mock-fault": "hang"})
    wait_stat(lt, server, "open_connections", 0)


def test_hang_after_headers(lt: LoopThread, server: MockLLMServer) -> None:
    c = httpx.Client(base_url=server.root_url, timeout=httpx.Timeout(5, read=0.3))
    with (
        c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=STREAM,
            headers={"x-mock-fault": "hang_after_headers"},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        with pytest.raises(httpx.ReadTimeout):
            r.read()
    wait_stat(lt, server, "streams_aborted", 1)
    wait_stat(lt, server, "open_connections", 0)


def test_drop(lt: LoopThread, server: MockLLMServer, http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-fault": "drop"})
    with (
        openai.OpenAI(base_url=server.url, api_key="test", max_retries=0) as c,
        pytest.raises(openai.APIConnectionError),
    ):
        c.chat.completions.create(model="gpt-4o@fault=drop", messages=CHAT["messages"])  # type: ignore[arg-type]
    assert stat(lt, server, "faults_injected") == 2
    # The mock itself keeps serving.
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_malformed_sse(http: httpx.Client) -> None:
    lines, err = read_lines(http, STREAM, {"x-mock-fault": "malformed_sse", "x-mock-tokens": "4"})
    assert err is None
    bad = [x for x in lines if x.startswith("data: {")]
    broken = []
    for line in bad:
        try:
            json.loads(line[6:])
        except json.JSONDecodeError:
            broken.append(line)
    assert len(broken) == 1
    assert "this line has no colon" in lines
    assert content_events([x for x in lines if x not in broken]) == list(_tokens("gpt-4o", 4))
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"


def _tokens(model: str, n: int) -> list[str]:
    from fastproxy.mockllm.text import content_tokens

    return list(content_tokens(model, n))


def test_malformed_json_body(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-fault": "malformed_sse"})
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def _strip_ids(obj: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in obj.items() if k not in ("id", "created")}


def test_trickle_delivers_same_bytes(server: MockLLMServer, http: httpx.Client) -> None:
    normal = http.post("/v1/chat/completions", json=CHAT).json()
    trickled = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-fault": "trickle"})
    assert _strip_ids(trickled.json()) == _strip_ids(normal)
    plain, _ = read_lines(http, STREAM, {})
    slow, _ = read_lines(http, STREAM, {"x-mock-fault": "trickle"})
    assert content_events(slow) == content_events(plain) == _tokens("gpt-4o", 16)
    assert slow[-2:] == plain[-2:]
    # And it really arrives in pieces: with 2 ms between pieces, many separate reads.
    body = json.dumps(CHAT).encode()
    reads = 0
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"x-mock-fault: trickle\r\nx-mock-interval-ms: 2\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        while piece := sock.recv(65536):
            reads += 1
            data += piece
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reads > 20
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["choices"][0]["message"][
        "content"
    ] == content_text("gpt-4o", 16)
