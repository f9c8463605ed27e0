"""Failover: only before the first byte reaches the client; 4xx never retried."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import RunningGateway, backend_for

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connect is refused
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def pair(gateway_factory, mock_factory):
    a, b = mock_factory(), mock_factory()

    def make(primary: dict | None = None, **extra) -> RunningGateway:
        return gateway_factory({
            "backends": {"openai.1": primary or backend_for(a, models=["gpt-4o"]),
                         "openai.2": backend_for(b, models=["gpt-4o-mini"])},
            "failover_routes": {"gpt-4o": ["openai.2:gpt-4o-mini"]},
            **extra,
        })

    return make, a, b


@pytest.mark.parametrize("status", [429, 502, 503, 504, 529])
def test_transient_status_fails_over(pair, status: int) -> None:
    make, a, b = pair
    gw = make()
    a.set_behaviour(status=status)
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-fastproxy-backend"] == "openai.2"
    assert r.json()["model"] == "gpt-4o-mini"
    assert a.stats.requests_total == 1 and b.stats.requests_total == 1


def test_connect_error_fails_over(pair) -> None:
    make, _, _ = pair
    gw = make(primary={"api_url": _dead_url(), "api_key": "k", "models": ["gpt-4o"]})
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=10) as r:
        assert r.headers["x-fastproxy-backend"] == "openai.2"
        assert r.read().rstrip().endswith(b"[DONE]")
    assert gw.state.counters.upstream_errors.get("connect") == 1


def test_first_byte_timeout_fails_over(pair) -> None:
    make, a, _ = pair
    gw = make(primary=backend_for(a, models=["gpt-4o"], first_byte_timeout_s=0.3))
    a.set_behaviour(fault="hang")
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.2"


def test_all_candidates_down_gives_502_in_dialect(gateway_factory) -> None:
    gw = gateway_factory({"backends": {"openai.1": {"api_url": _dead_url(), "api_key": "k",
                                                    "models": ["gpt-4o"]}}})
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    gw2 = gateway_factory({"backends": {"anthropic.1": {"api_url": _dead_url(), "api_key": "k",
                                                        "models": ["claude-x"]}}})
    r = httpx.post(gw2.url + "/v1/messages", json={"model": "claude-x", "max_tokens": 5,
                                                   "messages": CHAT["messages"]}, timeout=10)
    assert r.status_code == 502 and r.json()["type"] == "error"


def test_last_candidate_timeout_gives_504(gateway_factory, mock_llm) -> None:
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm, models=["gpt-4o"],
                                                               first_byte_timeout_s=0.3)}})
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                   headers={"x-mock-fault": "hang"}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_429_on_last_candidate_honours_retry_after(gateway_factory, mock_llm) -> None:
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm, models=["gpt-4o"])}})
    # Every answer is 429 with Retry-After: 1; the gateway waits once, then relays the 429.
    mock_llm.set_behaviour(status=429, retry_after=1)
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 429
    assert r.headers.get("retry-after") == "1"
    assert mock_llm.stats.requests_total == 2
    # A long Retry-After is not waited for: relayed at once.
    mock_llm.set_behaviour(status=429, retry_after=60)
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 429 and mock_llm.stats.requests_total == 3


def test_no_failover_after_first_byte(pair) -> None:
    """Once the stream started, a cut is reported to the client, never retried elsewhere."""
    make, _, b = pair
    gw = make()
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      headers={"x-mock-fault": "reset_after:2"}, timeout=10) as r:
        body = r.read()
    assert b"stream_truncated" in body
    assert b.stats.requests_total == 0
