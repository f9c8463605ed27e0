"""The health probe and the webhook notifier on ``httpclient.fetch``: the same bytes on
the wire as their hand-built heads sent, the same verdicts and error strings, over real
sockets (a scripted server, see scripted.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from fastproxy.config import BackendConfig
from fastproxy.httpclient.backend import Backend
from fastproxy.monitor.notify import Notifier
from fastproxy.monitor.probes import FAILING, MISCONFIGURED, OK, RATE_LIMITED, http_probe
from tests.httpclient.scripted import CLOSE, HANG, ScriptedServer, answer
from tests.httpclient.test_request import old_probe_head, old_webhook_head

EVENT = b'{"at":"2024-01-01T00:00:00.000Z","backend":"openai.1","from":"closed","to":"open"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("name", "key", "method", "path"),
    [
        ("openai.1", "sk-test-123456", "GET", "/models"),
        ("anthropic.1", "k", "HEAD", "models"),
        ("openai.2", None, "GET", "/"),
    ],
)
async def test_probe_sends_the_bytes_it_always_sent(
    name: str, key: str | None, method: str, path: str
) -> None:
    async with ScriptedServer(lambda c, n, req: (answer(200, b"{}"), CLOSE)) as srv:
        backend = Backend(name, BackendConfig(api_url=srv.url(), api_key=key), env={})
        r = await http_probe(backend, asyncio.get_running_loop(), method, path, 5.0)
        assert (r.kind, r.status, r.error) == (OK, 200, None)
        assert r.latency_ms is not None and r.latency_ms > 0
    ((_, _, sent),) = srv.requests
    assert sent == old_probe_head(backend, method, path)


@pytest.mark.parametrize(
    ("response", "kind", "error", "retry_after"),
    [
        (answer(204), OK, None, None),
        (
            answer(429, headers=b"retry-after: 7\r\n"),
            RATE_LIMITED,
            "HTTP 429: rate limited (Retry-After: 7.0)",
            7.0,
        ),
        (answer(429), RATE_LIMITED, "HTTP 429: rate limited (Retry-After: none)", None),
        (answer(401), MISCONFIGURED, "HTTP 401: credentials rejected", None),
        (answer(404), MISCONFIGURED, "HTTP 404: the probe path or api_url looks wrong", None),
        (answer(503, b"down"), FAILING, "HTTP 503", None),
        # The status decides; a body that never finishes does not turn a 200 into a failure.
        (answer(200, b"{", length=50), OK, None, None),
    ],
)
async def test_probe_verdicts(
    response: bytes, kind: str, error: str | None, retry_after: float | None
) -> None:
    async with ScriptedServer(lambda c, n, req: (response, HANG)) as srv:
        backend = Backend("openai.1", BackendConfig(api_url=srv.url()), env={})
        r = await http_probe(backend, asyncio.get_running_loop(), "GET", "/models", 0.5)
        assert (r.kind, r.error, r.retry_after) == (kind, error, retry_after)
        await srv.wait_ended(0)  # the probe's connection never outlives it


async def test_probe_failures_read_as_before() -> None:
    loop = asyncio.get_running_loop()
    async with ScriptedServer(lambda c, n, req: (b"", HANG)) as srv:
        backend = Backend("openai.1", BackendConfig(api_url=srv.url()), env={})
        r = await http_probe(backend, loop, "GET", "/models", 0.2)
        assert (r.kind, r.status, r.error) == (FAILING, 0, "timeout: no answer within 0.2s")
    async with ScriptedServer(lambda c, n, req: (b"", CLOSE)) as srv:
        backend = Backend("openai.1", BackendConfig(api_url=srv.url()), env={})
        r = await http_probe(backend, loop, "GET", "/models", 5.0)
        assert r.kind == FAILING
        assert r.error == "reset: backend closed the connection before responding"
    refused = Backend("openai.1", BackendConfig(api_url=f"http://127.0.0.1:{_free_port()}"), env={})
    r = await http_probe(refused, loop, "GET", "/models", 5.0)
    assert r.kind == FAILING and r.error is not None
    assert r.error.startswith("connect: cannot connect to openai.1: ")


async def test_probe_head_answers_at_the_head() -> None:
    # A HEAD answer announces a body it never sends: the probe must not wait for it.
    async with ScriptedServer(lambda c, n, req: (answer(200, length=4096), HANG)) as srv:
        backend = Backend("openai.1", BackendConfig(api_url=srv.url()), env={})
        started = time.monotonic()
        r = await http_probe(backend, asyncio.get_running_loop(), "HEAD", "/models", 5.0)
        assert r.kind == OK and time.monotonic() - started < 4.0
        await srv.wait_ended(0)


def _notifier(url: str, timeout_s: float = 5.0) -> Notifier:
    return Notifier(outward=True, webhook_url=url, webhook_timeout_s=timeout_s)


@pytest.mark.parametrize("path", ["/hook?token=a%20b", ""])
async def test_webhook_sends_the_bytes_it_always_sent(path: str) -> None:
    async with ScriptedServer(lambda c, n, req: (answer(204), CLOSE)) as srv:
        n = _notifier(srv.url(path))
        assert await n._post(EVENT) is None
    ((_, _, sent),) = srv.requests
    hook = Backend("webhook", BackendConfig(type="openai", api_url=srv.url(path)), env={})
    assert sent == old_webhook_head(hook, EVENT) + EVENT


@pytest.mark.parametrize(
    ("response", "then", "result"),
    [
        (answer(200, b"ok"), CLOSE, None),
        (answer(500, b"no"), CLOSE, "HTTP 500"),
        (answer(301), CLOSE, "HTTP 301"),
        # A complete 2xx head then a reset: the receiver answered.
        (answer(200, b"o", length=10), CLOSE, None),
        # A 2xx head and a body still coming at the deadline: not known to be taken.
        (answer(200, b"o", length=10), HANG, "timeout after 0.3s"),
        (b"", HANG, "timeout after 0.3s"),
        (b"", CLOSE, "backend closed the connection before responding"),
    ],
)
async def test_webhook_outcomes(response: bytes, then: str, result: str | None) -> None:
    async with ScriptedServer(lambda c, n, req: (response, then)) as srv:
        assert await _notifier(srv.url("/hook"), timeout_s=0.3)._post(EVENT) == result
        await srv.wait_ended(0)


async def test_webhook_malformed_answer() -> None:
    async with ScriptedServer(lambda c, n, req: (b"garbage\r\n\r\n", CLOSE)) as srv:
        error = await _notifier(srv.url("/hook"))._post(EVENT)
    assert error is not None and error.startswith("malformed response from backend")


async def test_webhook_refused_connect() -> None:
    error = await _notifier(f"http://127.0.0.1:{_free_port()}/hook")._post(EVENT)
    assert error is not None and error.startswith("cannot connect to webhook: ")
