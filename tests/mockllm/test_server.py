"""The HTTP server itself: keep-alive, pipelining, framing, stats, steering, control, TLS."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest
import trustme

from fastproxy.mockllm import MockBehaviour, MockLLMServer
from fastproxy.mockllm.text import content_text
from tests.support.loop_thread import LoopThread
from tests.support.waiting import wait_until

from .helpers import raw_request, stat, wait_stat

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world!"}]}
CHAT_BYTES = json.dumps(CHAT).encode()


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def split_responses(data: bytes) -> list[tuple[int, bytes]]:
    """Parse back-to-back Content-Length responses: [(status, body), ...]."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(x.split(b":")[1]) for x in lines[1:] if x.lower().startswith(b"content-length:")
        )
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


@pytest.fixture
def http(server: MockLLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, timeout=10) as c:
        yield c


def test_keep_alive_one_connection(
    lt: LoopThread, server: MockLLMServer, http: httpx.Client
) -> None:
    for _ in range(10):
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.get("/v1/models").status_code == 200
    assert stat(lt, server, "connections_opened") == 1
    assert stat(lt, server, "requests_total") == 20
    by_path = lt.call(lambda: dict(server.stats.requests_by_path))
    assert by_path == {"/v1/chat/completions": 10, "/v1/models": 10}
    http.close()
    wait_stat(lt, server, "connections_closed", 1)
    assert stat(lt, server, "open_connections") == 0


def test_recorded_requests(lt: LoopThread, server: MockLLMServer, http: httpx.Client) -> None:
    http.post("/chat/completions", json=CHAT, headers={"X-Custom": "Yes"})
    rec = lt.call(lambda: server.stats.requests[-1])
    assert rec.method == "POST" and rec.path == "/chat/completions"  # accepted without /v1
    assert ("x-custom", "Yes") in rec.headers
    assert json.loads(rec.body) == CHAT
    assert rec.received_at > 0


def test_streams_aborted_when_client_leaves(
    lt: LoopThread, server: MockLLMServer, http: httpx.Client
) -> None:
    body = {**CHAT, "stream": True}
    headers = {"x-mock-tokens": "100000", "x-mock-interval-ms": "5"}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    http.close()  # closes the socket mid-stream
    wait_stat(lt, server, "streams_aborted", 1)
    assert stat(lt, server, "streams_started") == 1
    assert stat(lt, server, "streams_completed") == 0
    wait_stat(lt, server, "open_connections", 0)


def test_pipelining_answers_in_order(server: MockLLMServer) -> None:
    # Three requests in one send, the first one slow: answers must still come in order.
    slow = post(b"/v1/chat/completions", CHAT_BYTES, b"x-mock-ttfb-ms: 50\r\n")
    models = b"GET /v1/models HTTP/1.1\r\nhost: mock\r\n\r\n"
    last = post(
        b"/v1/chat/completions",
        json.dumps({**CHAT, "model": "demo@tokens=2"}).encode(),
        b"connection: close\r\n",
    )
    data = raw_request(server.port, slow + models + last)
    answers = split_responses(data)
    assert [s for s, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][1])["model"] == "gpt-4o"
    assert json.loads(answers[1][1])["object"] == "list"
    assert json.loads(answers[2][1])["choices"][0]["message"]["content"] == content_text("demo", 2)


def test_pipelined_stream_then_json(server: MockLLMServer) -> None:
    stream = post(
        b"/v1/chat/completions",
        json.dumps({**CHAT, "stream": True}).encode(),
        b"x-mock-tokens: 3\r\n",
    )
    data = raw_request(
        server.port, stream + b"GET /v1/models HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n"
    )
    first, _, second = data.partition(b"0\r\n\r\n")
    assert b"text/event-stream" in first and b"data: [DONE]" in first
    assert second.startswith(b"HTTP/1.1 200 OK") and b'"object":"list"' in second


def test_chunked_request_body(server: MockLLMServer) -> None:
    half = len(CHAT_BYTES) // 2
    body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        CHAT_BYTES[:half],
        len(CHAT_BYTES) - half,
        CHAT_BYTES[half:],
    )
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: m\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n" + body
    )
    ((status, payload),) = split_responses(raw_request(server.port, req))
    assert status == 200 and json.loads(payload)["usage"]["prompt_tokens"] == 7


def test_http10_stream_is_close_delimited(server: MockLLMServer) -> None:
    body = json.dumps({**CHAT, "stream": True, "model": "gpt-4o@tokens=2"}).encode()
    req = b"POST /v1/chat/completions HTTP/1.0\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    data = raw_request(server.port, req)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
    assert rest.endswith(b"data: [DONE]\n\n")


def test_expect_100_continue(server: MockLLMServer) -> None:
    data = raw_request(
        server.port,
        post(b"/v1/chat/completions", CHAT_BYTES, b"expect: 100-continue\r\nconnection: close\r\n"),
    )
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_bad_requests_in_dialect(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/messages", content=b"[1]")
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/nothing", json={})
    assert r.status_code == 404 and "error" in r.json()
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405
    r = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-tokens": "many"})
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json=CHAT, headers={"x-mock-fault": "explode"})
    assert r.status_code == 400 and "fault" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o@nope=1"})
    assert r.status_code == 400
    # After all that the same connection still serves.
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_malformed_http_gets_400_and_close(server: MockLLMServer) -> None:
    data = raw_request(server.port, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")


def test_set_behaviour_persistent_and_header_wins(
    lt: LoopThread, server: MockLLMServer, http: httpx.Client
) -> None:
    lt.call(lambda: server.set_behaviour(tokens=3))
    lt.call(lambda: server.set_behaviour(path_prefix="/v1/models", status=503))
    r = http.post("/v1/chat/completions", json=CHAT)
    assert r.json()["usage"]["completion_tokens"] == 3
    assert http.get("/v1/models").status_code == 503
    assert http.get("/models").status_code == 503  # the prefix names the endpoint either way
    r = http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o@tokens=4"})
    assert r.json()["usage"]["completion_tokens"] == 4  # model name beats persistent
    r = http.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "gpt-4o@tokens=4"},
        headers={"x-mock-tokens": "5"},
    )
    assert r.json()["usage"]["completion_tokens"] == 5  # header beats everything
    lt.call(server.clear_behaviour)
    assert http.get("/v1/models").status_code == 200
    assert http.post("/v1/chat/completions", json=CHAT).json()["usage"]["completion_tokens"] == 16


def test_constructor_behaviour(lt: LoopThread) -> None:
    srv = MockLLMServer(port=0, behaviour=MockBehaviour(tokens=2, cost=0.5))
    lt.run(srv.start())
    try:
        usage = httpx.post(srv.url + "/chat/completions", json=CHAT).json()["usage"]
        assert usage["completion_tokens"] == 2 and usage["cost"] == 0.5
    finally:
        lt.run(srv.close())


def test_control_endpoints(lt: LoopThread, server: MockLLMServer, http: httpx.Client) -> None:
    r = http.post("/_mock/behaviour", json={"path_prefix": "/v1/messages", "status": 529})
    assert r.status_code == 200
    assert r.json()["by_prefix"] == {"/v1/messages": {"status": 529}}
    anth = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    r = http.post("/v1/messages", json=anth)
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # other paths untouched
    assert http.post("/_mock/behaviour", json={"bogus": 1}).status_code == 400
    stats = http.get("/_mock/stats").json()
    assert stats["requests_total"] == 2  # control requests are not counted
    assert stats["requests_by_path"] == {"/v1/messages": 1, "/v1/chat/completions": 1}
    assert stats["requests"][0]["body_bytes"] > 0 and "body" not in stats["requests"][0]
    assert stats["open_connections"] == 1
    assert http.post("/_mock/reset").json() == {"reset": True}
    assert http.post("/v1/messages", json=anth).status_code == 200
    after = http.get("/_mock/stats").json()
    assert after["requests_total"] == 1 and after["open_connections"] == 1
    assert http.delete("/_mock/behaviour").status_code == 200
    assert http.get("/_mock/nothing").status_code == 404


def test_reset_stats_in_process(lt: LoopThread, server: MockLLMServer, http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json=CHAT)
    lt.call(server.reset_stats)
    assert stat(lt, server, "requests_total") == 0
    assert lt.call(lambda: len(server.stats.requests)) == 0
    assert stat(lt, server, "open_connections") == 1


def test_close_ends_open_connections(lt: LoopThread) -> None:
    srv = MockLLMServer(port=0)
    lt.run(srv.start())
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(post(b"/v1/chat/completions", CHAT_BYTES, b"x-mock-fault: hang\r\n"))
    wait_until(lambda: lt.call(lambda: srv.stats.requests_total) == 1)
    lt.run(srv.close())
    assert srv.stats.open_connections == 0
    assert sock.recv(10) == b""  # the hanging connection was closed by the server
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_tls(lt: LoopThread) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    srv = MockLLMServer(port=0, ssl=server_ctx)
    lt.run(srv.start())
    try:
        assert srv.url.startswith("https://127.0.0.1:") and srv.url.endswith("/v1")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with httpx.Client(verify=client_ctx, timeout=10) as c:
            r = c.post(srv.url + "/chat/completions", json=CHAT)
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == content_text("gpt-4o", 16)
            with c.stream(
                "POST", srv.url + "/chat/completions", json={**CHAT, "stream": True}
            ) as s:
                assert list(s.iter_lines())[-2:] == ["data: [DONE]", ""]
        with pytest.raises(httpx.ConnectError):  # and a client not trusting the CA refuses it
            httpx.get(srv.url + "/models", timeout=5)
    finally:
        lt.run(srv.close())
