"""The access log names the real method, path, status and outcome of every request on the
data port: API calls, monitoring paths, listings, refusals."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from fastproxy.logs import configure_logging
from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    configure_logging("INFO")


def _fields(line: str) -> dict[str, str]:
    # The access line sits inside msg="...": its own fields are key=value, quotes escaped.
    msg = re.search(r'msg="(.*)"', line)
    assert msg, line
    return dict(re.findall(r"(\w+)=(\S+)", msg.group(1)))


def _lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [
        _fields(line)
        for line in stream.getvalue().splitlines()
        if "logger=fastproxy.access" in line
    ]


@pytest.mark.parametrize(
    ("method", "path", "status", "outcome"),
    [
        ("GET", "/v1/usage/stats", "200", "ok"),
        ("GET", "/v1/usage/recent", "200", "ok"),
        ("GET", "/internal/health", "200", "ok"),
        ("GET", "/v1/diagnostics/activity", "200", "ok"),
        ("POST", "/v1/diagnostics/backends/openai.1/reactivate", "200", "ok"),
        ("GET", "/v1/models", "200", "ok"),
        ("HEAD", "/v1/models", "200", "ok"),
        ("GET", "/v1/models/gpt-4o", "200", "ok"),
        ("GET", "/v1/models/no-such-model", "404", "rejected"),
        ("GET", "/v1/chat/completions", "405", "rejected"),
        ("DELETE", "/v1/usage/stats", "405", "rejected"),
        ("GET", "/no/such/path", "404", "rejected"),
    ],
)
def test_every_request_on_the_data_port_is_logged_as_it_was(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    log: io.StringIO,
    method: str,
    path: str,
    status: str,
    outcome: str,
) -> None:
    """Sends one request (a monitoring path, a listing, a wrong method, an unknown path)
    with the access log on: exactly one line naming that method, path and status."""
    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm, models=["gpt-4o"])}, "access_log": True}
    )
    r = httpx.request(method, gw.url + path, timeout=10)
    assert str(r.status_code) == status
    lines = wait_until(lambda: _lines(log), what="the access line")
    assert len(lines) == 1, lines
    f = lines[0]
    assert (f["method"], f["path"], f["status"]) == (method, path, status), f
    assert f["outcome"] == outcome, f


def test_an_api_call_and_a_refusal_from_the_head_are_logged(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, log: io.StringIO
) -> None:
    """Sends a chat completion with the key, then one without (401 from the head)."""
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm, models=["gpt-4o"])},
            "access_log": True,
            "auth": {"api_keys": ["k-1"]},
        }
    )
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        httpx.post(
            gw.url + "/v1/chat/completions", json=body, headers={"x-api-key": "k-1"}, timeout=10
        ).status_code
        == 200
    )
    assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code == 401
    lines = wait_until(lambda: len(_lines(log)) == 2 and _lines(log), what="two access lines")
    assert [(f["method"], f["path"], f["status"], f["outcome"]) for f in lines] == [
        ("POST", "/v1/chat/completions", "200", "ok"),
        ("POST", "/v1/chat/completions", "401", "rejected"),
    ]
