"""Upstream connection reuse and the no-leak soak (the reference project leaks here)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from tests.conftest import RunningGateway
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_1000_sequential_requests_reuse_a_handful_of_connections(
    gateway: RunningGateway, mock_llm
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for i in range(1000):
            stream = i % 2 == 1
            r = client.post(
                "/v1/chat/completions",
                json={**CHAT, "stream": stream},
                headers={"x-mock-tokens": "3"},
            )
            assert r.status_code == 200
    assert mock_llm.stats.requests_total == 1000
    assert mock_llm.stats.connections_opened <= 3, mock_llm.stats.connections_opened
    assert gateway.plane.pools["openai.1"].connects == mock_llm.stats.connections_opened


@pytest.mark.slow
def test_soak_2000_streams_no_leaks(tmp_path: Path, mock_factory) -> None:
    """2,000 streams at concurrency 50, with client aborts and backend resets mixed in:
    afterwards no upstream socket is in CLOSE-WAIT, none is open beyond the pool, and the
    gateway's fd count returns to where it started once idle connections expire."""
    mock = mock_factory()
    config = {
        "port": 0,
        "state_dir": str(tmp_path),
        "admin": {"enabled": False},
        "usage_tracking": {"enabled": False},
        "backends": {
            "openai.1": {
                "api_url": mock.url,
                "api_key": "sk-x",
                "models": ["gpt-4o"],
                "max_connections": 64,
                "pool_idle_timeout_s": 1.0,
            }
        },
        "default_backend": "openai.1",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    gw = GatewayProcess(["--config", str(tmp_path / "c.yaml")])
    try:
        port = gw.wait_ready()
        base_fds = gw.fd_count()
        rng = random.Random(7)
        outcomes = {"ok": 0, "aborted": 0, "reset": 0}

        async def one(client: httpx.AsyncClient, i: int) -> None:
            kind = rng.choices(["ok", "aborted", "reset"], [0.8, 0.1, 0.1])[0]
            headers = {"x-mock-tokens": "20"}
            if kind == "reset":
                headers["x-mock-fault"] = "reset_after:5"
            async with client.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
            ) as r:
                assert r.status_code == 200
                n = 0
                async for _ in r.aiter_bytes():
                    n += 1
                    if kind == "aborted" and n >= 2:
                        break  # leaves the stream unread: httpx closes the connection
            outcomes[kind] += 1

        async def main() -> None:
            limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
            ) as client:
                sem = asyncio.Semaphore(50)

                async def guarded(i: int) -> None:
                    async with sem:
                        await one(client, i)

                await asyncio.gather(*(guarded(i) for i in range(2000)))

        asyncio.run(main())
        assert sum(outcomes.values()) == 2000
        assert outcomes["aborted"] > 50 and outcomes["reset"] > 50
        # A peer's FIN is processed within moments; a CLOSE_WAIT that persists is a leak.
        wait_until(
            lambda: gw.tcp_states().get("CLOSE_WAIT", 0) == 0,
            timeout=5,
            what="no socket left in CLOSE_WAIT",
        )
        states = gw.tcp_states()
        # Nothing open beyond the pool (64) plus the listener.
        assert states.get("ESTABLISHED", 0) <= 64, states
        # Idle upstream connections expire after 1 s; then we are back where we began.
        wait_until(
            lambda: gw.fd_count() <= base_fds, timeout=15, what=f"gateway fds back to {base_fds}"
        )
        print(
            f"\nsoak: outcomes={outcomes} fds start={base_fds} end={gw.fd_count()} "
            f"tcp states after load={states} mock connections={mock.stats.connections_opened}"
        )
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200 and orjson.loads(r.content)["choices"]
        wait_until(
            lambda: gw.tcp_states().get("CLOSE_WAIT", 0) == 0,
            timeout=5,
            what="no socket left in CLOSE_WAIT",
        )
    finally:
        rc = gw.stop()
    assert rc == 0, gw.output()
