"""Fixtures for the mock LLM server tests: one loop thread per module, one server per test.

The server runs on a uvloop loop in a background thread (``LoopThread``) so the tests can use
the blocking official SDKs against it without deadlocking. Unhandled exceptions on that loop
fail the test that caused them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.support.loop_thread import LoopThread


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    thread = LoopThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def server(lt: LoopThread) -> Iterator[MockLLMServer]:
    srv = MockLLMServer(host="127.0.0.1", port=0)
    lt.run(srv.start())
    yield srv
    lt.run(srv.close())
    errors, lt.errors[:] = list(lt.errors), []
    assert not errors, f"unhandled exceptions on the server loop: {errors}"
