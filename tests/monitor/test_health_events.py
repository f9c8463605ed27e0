"""End to end: a backend whose probe fails goes unhealthy, its breaker opens, traffic fails
over, and every transition reaches the SSE stream and a webhook; recovery closes it again.

Two real mock LLMs, a real gateway, a real webhook receiver (stdlib HTTP server in a
thread), the SSE stream read through the data port. Waits are on events or deadlines.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httptools
import httpx
import pytest

from tests.conftest import backend_for
from tests.support.waiting import wait_until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class SSEReader:
    """Reads /internal/health/events over a raw socket in a thread (so ``close`` can cut
    it at once with ``shutdown``); parsed events land in a queue."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.comments: list[str] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self.opened = threading.Event()
        self.ended = threading.Event()
        self._buf = b""
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        self._sock.settimeout(None)
        self._sock.sendall(
            b"GET /internal/health/events HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"accept: text/event-stream\r\n\r\n"
        )
        self._parser = httptools.HttpResponseParser(self)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the events stream did not open"
        assert self.status == 200
        assert self.headers["content-type"].startswith("text/event-stream")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._buf += body
        while b"\n\n" in self._buf:
            block, self._buf = self._buf.split(b"\n\n", 1)
            kind, data = "message", None
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line)
                    self.opened.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if data is not None:
                self.events.put((kind, data))

    def on_message_complete(self) -> None:
        self.ended.set()

    def _run(self) -> None:
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                self._parser.feed_data(data)
        except OSError:
            pass
        finally:
            self.ended.set()

    def next(self, match: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The next event for which ``match(kind, event)`` is true (others are skipped)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; saw {seen}")
            try:
                kind, event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            seen.append((kind, event))
            if match(kind, event):
                return event

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self._sock.close()


class WebhookReceiver:
    """A tiny local HTTP server recording POSTed JSON; can fail the first N requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.attempts <= fail_first:
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/health?src=fastproxy"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def is_endpoint(url: str, to: str):
    return lambda kind, e: kind == "endpoint" and e.get("api_url") == url and e["to"] == to


def is_breaker(name: str, to: str):
    return lambda kind, e: kind == "breaker" and e.get("backend") == name and e["to"] == to


def health(gw) -> dict[str, Any]:
    r = httpx.get(gw.url + "/internal/health", timeout=5)
    assert r.status_code == 200
    return r.json()


def test_probe_failure_opens_breaker_fails_over_and_recovers(
    gateway_factory, mock_factory, server_loop, webhook
) -> None:
    a, b = mock_factory(), mock_factory()
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(a, models=["gpt-4o"]),
                "openai.2": backend_for(b, models=["gpt-4o-mini"]),
            },
            "failover_routes": {"gpt-4o": ["openai.2:gpt-4o-mini"]},
            "health_check": {
                "ping": {"interval_seconds": 0.2, "timeout_seconds": 1},
                "http": {"interval_seconds": 0.2, "timeout_seconds": 1, "failure_threshold": 2},
                "webhook_url": webhook.url,
            },
            "circuit_breaker": {"failure_threshold": 3, "open_cooldown_seconds": 3},
        }
    )
    a_url = gw.plane.backends["openai.1"].normalized_url
    sse = SSEReader(gw.url)
    try:
        server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/models", status=503))
        down = sse.next(is_endpoint(a_url, "unhealthy"))
        assert down["from"] == "healthy" and "HTTP 503" in down["reason"]
        assert down["at"].endswith("Z")
        opened = sse.next(is_breaker("openai.1", "open"))
        assert opened["from"] == "closed"

        # While open, traffic for gpt-4o goes to the healthy backend; the client sees 200s.
        for _ in range(5):
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert r.status_code == 200
            assert r.headers["x-fastproxy-backend"] == "openai.2"
        assert gw.health.circuit_state("openai.1") == "open"
        assert a.stats.requests_by_path.get("/v1/chat/completions", 0) == 0

        doc = health(gw)
        assert doc["status"] == "degraded"
        summary = doc["endpoint_health"]["summary"]
        assert summary == {"total_endpoints": 2, "healthy_endpoints": 1, "unhealthy_endpoints": 1}
        ep = next(e for e in doc["endpoint_health"]["endpoints"] if e["api_url"] == a_url)
        assert ep["is_healthy"] is False and ep["last_http_status_code"] == 503
        assert ep["consecutive_http_failures"] >= 2 and ep["http_check_success"] is False
        be = next(x for x in doc["endpoint_health"]["backends"] if x["name"] == "openai.1")
        assert be["circuit_state"] == "open" and be["open_until"].endswith("Z")
        assert be["is_endpoint_healthy"] is False

        wait_until(
            lambda: any(
                x.get("backend") == "openai.1" and x["to"] == "open" for x in webhook.bodies
            ),
            what="webhook POST of the opening",
        )

        # Recovery: the probe passes, the cooldown ends, the half-open trial closes it.
        server_loop.call(a.clear_behaviour)
        up = sse.next(is_endpoint(a_url, "healthy"))
        assert up["from"] == "unhealthy"
        sse.next(is_breaker("openai.1", "half_open"))
        closed = sse.next(is_breaker("openai.1", "closed"))
        assert closed["from"] == "half_open"
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.1"
        wait_until(
            lambda: any(
                x.get("backend") == "openai.1" and x["to"] == "closed" for x in webhook.bodies
            ),
            what="webhook POST of the closing",
        )
        assert health(gw)["status"] == "ok"
    finally:
        sse.close()


def test_webhook_retries_and_never_delays_the_stream(
    gateway_factory, mock_factory, server_loop
) -> None:
    flaky = WebhookReceiver(fail_first=2)
    a = mock_factory()
    try:
        gw = gateway_factory(
            {
                "backends": {"openai.1": backend_for(a, models=["gpt-4o"])},
                "health_check": {
                    "ping": {"enabled": False},
                    "webhook_url": flaky.url,
                    "http": {"interval_seconds": 60},
                },
                "circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 60},
            }
        )
        sse = SSEReader(gw.url)
        try:
            server_loop.call(lambda: a.set_behaviour(status=500))
            httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
            sse.next(is_breaker("openai.1", "open"), timeout=5)
            wait_until(lambda: flaky.bodies, timeout=15, what="webhook delivered on the 3rd try")
            assert flaky.attempts == 3
            assert flaky.bodies[0]["backend"] == "openai.1" and flaky.bodies[0]["to"] == "open"
            counters = gw.health.notifier.counters
            # The receiver keeps the body before its answer reaches the notifier, which
            # counts the delivery only then: wait for the count, do not race it.
            wait_until(
                lambda: counters["webhook_sent"] == 1, timeout=5, what="the delivery counted"
            )
            assert counters["webhook_failed"] == 0
        finally:
            sse.close()
    finally:
        flaky.close()


def test_events_stream_ends_when_the_gateway_stops(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            "health_check": {"ping": {"enabled": False}},
        }
    )
    sse = SSEReader(gw.url)
    try:
        assert sse.comments[0].startswith(": fastproxy health events")
        assert gw.health.notifier.subscriber_count == 1
        gw.stop()
        assert sse.ended.wait(5), "the stream should end promptly on drain, not hold the stop"
    finally:
        sse.close()


def test_admin_listener_serves_the_same_document_and_stream(
    gateway_factory, mock_factory, server_loop
) -> None:
    a = mock_factory()
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(a, models=["gpt-4o"])},
            "health_check": {"ping": {"enabled": False}},
            "circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 60},
        }
    )
    admin_port = gw.gateway.admin_port
    if not admin_port:
        pytest.skip("the admin listener is not built in this tree")
    admin = f"http://127.0.0.1:{admin_port}"
    doc = httpx.get(admin + "/internal/health", timeout=5).json()
    assert doc["endpoint_health"]["summary"]["total_endpoints"] == 1
    sse = SSEReader(admin)
    try:
        server_loop.call(lambda: a.set_behaviour(status=500))
        httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
        event = sse.next(is_breaker("openai.1", "open"), timeout=5)
        assert event["reason"].startswith("1 consecutive failures")
    finally:
        sse.close()
