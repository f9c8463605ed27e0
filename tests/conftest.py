"""Shared fixtures: servers run in a background uvloop thread, tests talk over sockets.

`gateway_factory` builds a real Config (port 0, no files, an explicit env) and starts a
real Gateway; `mock_llm` is the real mock LLM server on 127.0.0.1. Nothing in between is
faked. Unhandled exceptions on the server loop fail the test (uvloop's _testbase habit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastproxy.config import load_config
from fastproxy.core.seams import Reporter
from fastproxy.gateway import Gateway
from fastproxy.mockllm import MockLLMServer
from tests.support.loop_thread import LoopThread

# Mock servers started in a test, by server loop, so a gateway start can reset their stats.
_MOCKS: dict[int, list[MockLLMServer]] = {}


@pytest.fixture
def server_loop() -> Iterator[LoopThread]:
    lt = LoopThread().start()
    yield lt
    _MOCKS.pop(id(lt), None)
    lt.stop()
    errors = [e for e in lt.errors if not _benign(e)]
    assert not errors, f"unhandled exceptions on the server loop: {errors}"


def _benign(context: dict[str, Any]) -> bool:
    exc = context.get("exception")
    return isinstance(exc, ConnectionResetError | BrokenPipeError)


class RunningGateway:
    def __init__(self, gateway: Gateway, lt: LoopThread) -> None:
        self.gateway = gateway
        self.lt = lt

    @property
    def port(self) -> int:
        assert self.gateway.port is not None
        return self.gateway.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plane(self) -> Any:
        """The data plane (what connections share: connections, counters, pools)."""
        return self.gateway.plane

    @property
    def health(self) -> Any:
        return self.gateway.health

    def observe(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(record)`` for every finished request, after the gateway's own
        sinks: the test adds one sink to the plane's fixed fan-out (on the server loop)."""

        class _Sink:
            def on_exchange(self, record: Any) -> None:
                callback(record)

        def add() -> None:
            plane = self.gateway.plane
            assert plane is not None
            plane.reporter = Reporter(plane.reporter.attempts, (*plane.reporter.exchanges, _Sink()))

        self.lt.call(add)

    def stop(self) -> None:
        self.lt.run(self.gateway.stop())


@pytest.fixture
def mock_llm(server_loop: LoopThread) -> Iterator[MockLLMServer]:
    server = MockLLMServer(host="127.0.0.1", port=0)
    server_loop.run(server.start())
    _MOCKS.setdefault(id(server_loop), []).append(server)
    yield server
    server_loop.run(server.close())


@pytest.fixture
def mock_factory(server_loop: LoopThread) -> Iterator[Callable[..., MockLLMServer]]:
    started: list[MockLLMServer] = []

    def make(**kwargs: Any) -> MockLLMServer:
        server = MockLLMServer(host="127.0.0.1", port=0, **kwargs)
        server_loop.run(server.start())
        started.append(server)
        _MOCKS.setdefault(id(server_loop), []).append(server)
        return server

    yield make
    for s in started:
        server_loop.run(s.close())


def backend_for(mock: MockLLMServer, kind: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "api_url": mock.url, "api_key": f"sk-backend-{kind}-secret", **extra}


@pytest.fixture
def gateway_factory(
    server_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunningGateway]]:
    running: list[RunningGateway] = []

    def make(
        tree: dict[str, Any] | None = None, env: dict[str, str] | None = None, **cli: Any
    ) -> RunningGateway:
        import yaml

        tree = dict(tree or {})
        tree.setdefault("port", 0)
        tree.setdefault("admin", {}).setdefault("port", 0)
        tmpdir = str(tmp_path_factory.mktemp("gateway"))
        tree.setdefault("state_dir", tmpdir)
        path = f"{tmpdir}/config.yaml"
        with open(path, "w") as fh:
            yaml.safe_dump(tree, fh)
        loaded = load_config(cli, config_file=path, env=env or {})
        gw = Gateway(loaded.config, env=env or {})

        async def _start() -> None:
            await gw.start()

        server_loop.run(_start())
        # Start-up model discovery is not the test's traffic: count from zero.
        for mock in _MOCKS.get(id(server_loop), []):
            server_loop.call(mock.reset_stats)
        rg = RunningGateway(gw, server_loop)
        running.append(rg)
        return rg

    yield make
    for rg in running:
        try:
            server_loop.run(rg.gateway.stop(), timeout=40)
        except (asyncio.CancelledError, RuntimeError):
            pass


@pytest.fixture
def gateway(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> RunningGateway:
    """A gateway with one OpenAI-type and one Anthropic-type backend on the same mock."""
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            "default_backend": "openai.1",
        }
    )


@pytest.fixture
def raw_backend(server_loop: LoopThread) -> Iterator[Callable[[bytes], str]]:
    """A backend that answers every request with the given raw bytes, then closes."""
    servers: list[asyncio.AbstractServer] = []

    def make(response: bytes) -> str:
        return _raw_backend(server_loop, response, servers)

    yield make

    async def close_all() -> None:
        for s in servers:
            s.close()
            await s.wait_closed()

    server_loop.run(close_all())


def _raw_backend(
    server_loop: LoopThread, response: bytes, servers: list[asyncio.AbstractServer]
) -> str:

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    async def start() -> int:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    port = server_loop.run(start())
    return f"http://127.0.0.1:{port}/v1"
