"""``httpclient.fetch`` over real sockets: the mock LLM server, or a scripted server that
answers exactly as a test needs (late, never, half, or by closing)."""

from __future__ import annotations

import ast
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from fastproxy.config import BackendConfig
from fastproxy.core.errors import UpstreamError
from fastproxy.httpclient.backend import Backend
from fastproxy.httpclient.fetch import fetch
from fastproxy.httpclient.pool import UpstreamPool
from fastproxy.httpclient.request import request_head
from fastproxy.mockllm import MockLLMServer
from tests.httpclient.scripted import CLOSE, HANG, KEEP, ScriptedServer, answer
from tests.support.waiting import async_wait_until

OK_JSON = answer(200, b'{"ok":true}', b"content-type: application/json\r\n")


def _backend(url: str, api_key: str | None = None, extra: dict[str, str] | None = None) -> Backend:
    cfg = BackendConfig(api_url=url, api_key=api_key, extra_headers=extra or {})
    return Backend("openai.t", cfg, env={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_models_from_the_mock_llm() -> None:
    mock = MockLLMServer(host="127.0.0.1", port=0, models=["m-1", "m-2"])
    await mock.start()
    try:
        backend = _backend(mock.url, api_key="sk-x")
        r = await fetch(
            backend,
            b"GET",
            backend.upstream_path(b"/v1/models"),
            timeout_s=5.0,
            loop=asyncio.get_running_loop(),
        )
        assert r.status == 200 and r.complete and r.body_error is None
        assert (r.header(b"content-type") or b"").startswith(b"application/json")
        assert [m["id"] for m in orjson.loads(r.body)["data"]] == ["m-1", "m-2"]
        (recorded,) = mock.stats.requests
        assert (recorded.method, recorded.path) == ("GET", "/v1/models")
        sent = dict(recorded.headers)
        assert sent["authorization"] == "Bearer sk-x" and sent["accept-encoding"] == "identity"
        # A Backend gets a one-shot connection.
        assert sent["connection"] == "close"
    finally:
        await mock.close()


async def test_the_bytes_on_the_wire_are_the_builders() -> None:
    async with ScriptedServer(lambda c, n, req: (OK_JSON, CLOSE)) as srv:
        backend = _backend(srv.url(), api_key="k", extra={"x-team": "t"})
        body = b'{"a":1}'
        hdrs = [(b"x-trace", b"abc")]
        loop = asyncio.get_running_loop()
        await fetch(backend, b"POST", b"/v1/x", timeout_s=5.0, loop=loop, body=body, headers=hdrs)
        await fetch(backend, b"POST", b"/v1/empty", timeout_s=5.0, loop=loop)
        await fetch(backend, b"GET", b"/v1/g", timeout_s=5.0, loop=loop, user_agent=b"ua/1")
    sent = [req for _, _, req in srv.requests]
    assert (
        sent[0]
        == request_head(backend, b"POST", b"/v1/x", content_length=7, headers=hdrs, close=True)
        + body
    )
    assert b"content-length: 0\r\n" in sent[1]  # an empty POST still says so
    assert sent[2] == request_head(backend, b"GET", b"/v1/g", user_agent=b"ua/1", close=True)
    assert b"content-length" not in sent[2]


async def test_a_shared_pool_keeps_the_connection_alive() -> None:
    async with ScriptedServer(lambda c, n, req: (OK_JSON, KEEP)) as srv:
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(_backend(srv.url()), loop)
        try:
            for _ in range(3):
                r = await fetch(pool, b"GET", b"/v1/models", timeout_s=5.0, loop=loop)
                assert r.status == 200 and r.complete
            assert pool.connects == 1 and pool.idle_connections == 1
            assert srv.connections == 1 and len(srv.requests) == 3
            assert b"connection: close" not in srv.requests[0][2]
        finally:
            pool.close()


async def test_a_reused_connection_the_backend_closed_is_retried_on_a_fresh_one() -> None:
    # Each connection answers its first request and closes at its second without a
    # byte: what a keep-alive socket the backend closed while idle looks like.
    def script(conn: int, n: int, req: bytes) -> tuple[bytes, str]:
        return (OK_JSON, KEEP) if n == 0 else (b"", CLOSE)

    async with ScriptedServer(script) as srv:
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(_backend(srv.url()), loop)
        try:
            await fetch(pool, b"GET", b"/v1/a", timeout_s=5.0, loop=loop)
            r = await fetch(pool, b"GET", b"/v1/b", timeout_s=5.0, loop=loop)
            assert r.status == 200
            assert [(c, n) for c, n, _ in srv.requests] == [(0, 0), (0, 1), (1, 0)]
            assert pool.connects == 2
        finally:
            pool.close()


@pytest.mark.parametrize("shared", [False, True], ids=["backend", "pool"])
async def test_no_answer_is_a_timeout_and_the_connection_is_closed(shared: bool) -> None:
    async with ScriptedServer(lambda c, n, req: (b"", HANG)) as srv:
        loop = asyncio.get_running_loop()
        backend = _backend(srv.url())
        pool = UpstreamPool(backend, loop)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as err:
            await fetch(pool if shared else backend, b"GET", b"/", timeout_s=0.2, loop=loop)
        elapsed = time.monotonic() - started
        assert err.value.kind == "timeout" and str(err.value) == "no answer within 0.2s"
        assert err.value.status == 504
        assert 0.19 <= elapsed < 2.0
        await srv.wait_ended(0)  # the client closed it: observed, not assumed
        assert pool.open_connections == 0
        pool.close()


async def test_a_refused_connect_is_a_connect_error() -> None:
    port = _free_port()
    with pytest.raises(UpstreamError) as err:
        await fetch(
            _backend(f"http://127.0.0.1:{port}/v1"),
            b"GET",
            b"/",
            timeout_s=2.0,
            loop=asyncio.get_running_loop(),
        )
    assert err.value.kind == "connect" and err.value.sent_nothing
    assert str(err.value).startswith("cannot connect to openai.t:")


async def test_head_does_not_wait_for_the_body_its_answer_announces() -> None:
    async with ScriptedServer(lambda c, n, req: (answer(200, length=1000), HANG)) as srv:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        r = await fetch(_backend(srv.url()), b"HEAD", b"/v1/models", timeout_s=5.0, loop=loop)
        assert time.monotonic() - started < 4.0  # returned at the head, not at the deadline
        assert r.status == 200 and r.header(b"content-length") == b"1000"
        assert r.complete is False and r.body_error is None and r.body == b""
        await srv.wait_ended(0)


@pytest.mark.parametrize("need_body", [True, False])
async def test_a_body_that_stops_coming(need_body: bool) -> None:
    partial = answer(200, b"0123456789", length=100)
    async with ScriptedServer(lambda c, n, req: (partial, HANG)) as srv:
        call = fetch(
            _backend(srv.url()),
            b"GET",
            b"/",
            timeout_s=0.3,
            loop=asyncio.get_running_loop(),
            need_body=need_body,
        )
        if need_body:
            with pytest.raises(UpstreamError) as err:
                await call
            assert err.value.kind == "timeout"
            assert str(err.value) == "answer not complete within 0.3s"
        else:
            r = await call
            assert r.status == 200 and r.body == b"0123456789" and not r.complete
            assert r.body_error is not None and r.body_error.kind == "timeout"
        await srv.wait_ended(0)


@pytest.mark.parametrize("need_body", [True, False])
async def test_a_body_cut_by_a_close(need_body: bool) -> None:
    partial = answer(200, b"0123456789", length=100)
    async with ScriptedServer(lambda c, n, req: (partial, CLOSE)) as srv:
        call = fetch(
            _backend(srv.url()),
            b"GET",
            b"/",
            timeout_s=5.0,
            loop=asyncio.get_running_loop(),
            need_body=need_body,
        )
        if need_body:
            with pytest.raises(UpstreamError) as err:
                await call
            assert err.value.kind == "reset"
        else:
            r = await call
            assert r.status == 200 and not r.complete
            assert r.body_error is not None and r.body_error.kind == "reset"


async def test_a_malformed_answer_is_a_protocol_error() -> None:
    async with ScriptedServer(lambda c, n, req: (b"NOT HTTP\r\n\r\n", HANG)) as srv:
        with pytest.raises(UpstreamError) as err:
            await fetch(
                _backend(srv.url()),
                b"GET",
                b"/",
                timeout_s=5.0,
                loop=asyncio.get_running_loop(),
            )
        assert err.value.kind == "protocol"


async def test_cancelling_the_caller_closes_the_connection() -> None:
    async with ScriptedServer(lambda c, n, req: (b"", HANG)) as srv:
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(_backend(srv.url()), loop)
        task = loop.create_task(fetch(pool, b"GET", b"/", timeout_s=30.0, loop=loop))
        # The request is out; the answer never comes.
        await async_wait_until(lambda: srv.requests, within=5.0, what="the request sent")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await srv.wait_ended(0)
        assert pool.open_connections == 0


def test_httpclient_imports_only_core_config_and_itself() -> None:
    # Statically: every fastproxy import in the package's modules. The compiled core
    # (`_speedups`, its one-call response parser) is a leaf that imports nothing back.
    allowed = (
        "fastproxy.core",
        "fastproxy.config",
        "fastproxy.httpclient",
        "fastproxy._speedups",
    )
    pkg = Path(__file__).parents[2] / "fastproxy" / "httpclient"
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ["fastproxy", "httpclient"][: 2 - (node.level - 1)]
                    name = ".".join([*base, *(node.module or "").split(".")]).rstrip(".")
                else:
                    name = node.module or ""
                names = [name]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("fastproxy"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
    # And at run time, transitively: importing the package loads none of the planes.
    code = (
        "import sys, fastproxy.httpclient.fetch, fastproxy.httpclient.request;"
        "print([m for m in sys.modules if m.startswith(("
        "'fastproxy.dataplane', 'fastproxy.admin', 'fastproxy.monitor'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
