"""The usual request runs in callbacks: no asyncio Task is made for it.

A keep-alive client, an idle pooled upstream connection and a JSON or SSE answer go from
the client protocol's callbacks through the request cycle to the upstream connection's
callbacks and back (docs/dataplane.md, "No task per request"). Tasks are made only where
waiting is the point, such as connecting a new upstream connection. The server loop's
task factory counts the tasks whose coroutine is data-plane code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import RunningGateway
from tests.support.loop_thread import LoopThread

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
_PLANE_CODE = ("/fastproxy/dataplane/", "/fastproxy/httpclient/")


def _count_plane_tasks(server_loop: LoopThread) -> list[str]:
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        code = getattr(coro, "cr_code", None)
        if code is not None and any(part in code.co_filename for part in _PLANE_CODE):
            made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    def install() -> None:
        asyncio.get_running_loop().set_task_factory(factory)

    server_loop.call(install)
    return made


def test_keep_alive_json_and_stream_requests_make_no_task(
    gateway: RunningGateway, mock_llm: Any, server_loop: LoopThread
) -> None:
    made = _count_plane_tasks(server_loop)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        # The first request connects upstream: that one waits in a task.
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert made == ["UpstreamPool.acquire"], made
        made.clear()
        for i in range(40):
            stream = i % 2 == 1
            r = client.post(
                "/v1/chat/completions",
                json={**CHAT, "stream": stream},
                headers={"x-mock-tokens": "3"},
            )
            assert r.status_code == 200
            if stream:
                assert "data: [DONE]" in r.text
            else:
                assert r.json()["choices"][0]["message"]["content"]
    assert made == [], f"tasks made for requests on a warm connection: {made}"
    assert mock_llm.stats.connections_opened == 1
