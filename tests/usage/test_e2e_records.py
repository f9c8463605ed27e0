"""One record per request, end to end: official SDKs → real gateway → mock LLM → the store,
read back through /v1/usage/recent on the data port."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from fastproxy._speedups import estimate_tokens
from fastproxy.cli import _cli_overrides, build_parser
from fastproxy.mockllm import MockLLMServer
from fastproxy.mockllm.text import prompt_tokens
from fastproxy.monitor.usage_projection import ExactCounter, analyse_prompt, count_prompt
from fastproxy.monitor.usage_service import UsageService
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

MSGS = [{"role": "user", "content": "How far is the moon?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a fact up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
FAST_FLUSH = {"flush_interval_seconds": 0.05}
SENTINEL = "usage-test-sentinel"


def tracked_tree(backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": backends, "usage_tracking": dict(FAST_FLUSH), **extra}


@pytest.fixture
def tracked(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> RunningGateway:
    return gateway_factory(
        tracked_tree(
            {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            default_backend="openai.1",
        )
    )


def recent(gw: RunningGateway, **params: Any) -> dict[str, Any]:
    r = httpx.get(gw.url + "/v1/usage/recent", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def only_record(gw: RunningGateway, before: int = 0) -> dict[str, Any]:
    """The one record the test's request left. A sentinel request after it proves there
    is no second one: the writer is FIFO, so once the sentinel is visible, all is."""
    wait_until(lambda: recent(gw)["total"] > before, what="the usage record")
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        timeout=10,
        headers={"x-proxy-user": SENTINEL, "x-mock-tokens": "1"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "."}]},
    )
    assert r.status_code == 200
    page = wait_until(
        lambda: (p := recent(gw)) and p["records"][0]["proxy_user"] == SENTINEL and p,
        what="the sentinel record",
    )
    assert page["total"] == before + 2, page["records"]
    return page["records"][1]  # type: ignore[no-any-return]


def expected_ctp(body: dict[str, Any], model: str) -> int:
    """What the gateway's counter gives for this body (exact for OpenAI models when
    quicktok is installed; the formula itself is unit-tested)."""
    exact = ExactCounter.load()
    count = exact.counter_for(model) if exact is not None else None
    return count_prompt(analyse_prompt(body), count or estimate_tokens, embeddings=False)


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)


def test_openai_stream(tracked: RunningGateway) -> None:
    with oai(tracked) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, extra_headers={"x-mock-tokens": "40"}
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    rec = only_record(tracked)
    mock_prompt = prompt_tokens(MSGS)
    assert rec["streaming"] is True and rec["outcome"] == "ok" and rec["http_status_code"] == 200
    assert rec["frontend_type"] == "openai" and rec["backend"] == "openai.1"
    assert rec["model_requested"] == rec["model_used"] == "gpt-4o" and rec["attempts"] == 1
    assert rec["usage_source"] == "backend"
    assert rec["backend_reported_usage"]["prompt"] == mock_prompt
    assert rec["backend_reported_usage"]["completion"] == 40
    assert rec["ctp_prompt_tokens"] == expected_ctp({"messages": MSGS}, "gpt-4o")
    assert rec["ptb_prompt_tokens"] == mock_prompt
    assert rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == 40
    assert estimate_tokens(text) > 0
    # gpt-4o: prompt * 2.50 + 40 * 10 per 1M
    assert rec["cost"] == pytest.approx((mock_prompt * 2.5 + 400) / 1e6)
    assert rec["cost_source"] == "price_table"
    assert rec["ttft_ms"] > 0 and rec["stream_tps"] > 0
    assert rec["total_duration_ms"] >= rec["ttft_ms"]
    assert rec["backend_ttfb_ms"] >= 0 and rec["proxy_overhead_ms"] >= 0
    assert rec["turn_number"] == 1 and len(rec["session_id"]) == 16
    assert rec["user_agent"].startswith("OpenAI/Python")


def test_anthropic_stream_with_cache_tokens(tracked: RunningGateway) -> None:
    with (
        anthropic.Anthropic(base_url=tracked.url, api_key="sk-client", max_retries=0) as c,
        c.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=64,
            system="Be brief.",
            messages=MSGS,
            extra_headers={
                "x-mock-tokens": "20",
                "x-mock-cache-read": "1024",
                "x-mock-cache-write": "256",
                "x-session-id": "s-42",
            },
        ) as s,
    ):
        final = s.get_final_message()
    u = final.usage
    rec = only_record(tracked)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (1024, 256)
    visible = u.input_tokens  # Anthropic input excludes the cache
    assert visible == prompt_tokens(MSGS, "Be brief.")
    assert rec["frontend_type"] == "anthropic" and rec["backend"] == "anthropic.1"
    assert rec["session_id"] == "s-42"
    assert rec["backend_reported_usage"] == {
        "prompt": visible + 1280,
        "completion": 20,
        "total": visible + 1280 + 20,
        "cached": 1024,
        "cache_write": 256,
        "reasoning": None,
        "cost": None,
    }
    assert rec["ptb_prompt_tokens"] == visible + 1280
    assert rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == 20
    body = {"system": "Be brief.", "messages": MSGS}
    assert rec["ctp_prompt_tokens"] == expected_ctp(body, "claude-haiku-4-5")
    # claude-haiku-4-5: visible * 1 + 1024 * 0.10 + 256 * 1.25 + 20 * 5 per 1M
    assert rec["cost"] == pytest.approx((visible + 102.4 + 320 + 100) / 1e6)


def test_tool_call_response(tracked: RunningGateway) -> None:
    with oai(tracked) as client:
        resp = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, tools=TOOLS)
    assert resp.choices[0].message.tool_calls[0].function.name == "lookup"
    rec = only_record(tracked)
    assert rec["tool_call_count"] == 1 and rec["tool_names"] == ["lookup"]
    assert rec["streaming"] is False and rec["ttft_ms"] is None and rec["stream_tps"] is None
    assert rec["btp_completion_tokens"] == resp.usage.completion_tokens
    assert rec["ptb_prompt_tokens"] == resp.usage.prompt_tokens
    assert rec["ctp_prompt_tokens"] == expected_ctp(
        {"messages": MSGS, "tools": TOOLS}, "gpt-4o-mini"
    )
    blob = orjson.dumps(rec)
    assert b"Look a fact up" not in blob and b"moon" not in blob


def test_failover_is_one_record(gateway_factory, mock_factory) -> None:
    a, b = mock_factory(), mock_factory()
    gw = gateway_factory(
        tracked_tree(
            {
                "openai.1": backend_for(a, models=["gpt-4o"]),
                "openai.2": backend_for(b, models=["gpt-4o-mini"]),
            },
            failover_routes={"gpt-4o": ["openai.2:gpt-4o-mini"]},
        )
    )
    a.set_behaviour(path_prefix="/v1/chat", status=503)
    with oai(gw) as client:
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    b_usage = resp.usage
    rec = only_record(gw)
    assert rec["attempts"] == 2 and rec["backend"] == "openai.2"
    assert rec["model_requested"] == "gpt-4o" and rec["model_used"] == "gpt-4o-mini"
    assert rec["outcome"] == "ok" and rec["http_status_code"] == 200
    assert rec["ptb_prompt_tokens"] == b_usage.prompt_tokens
    assert rec["btp_completion_tokens"] == b_usage.completion_tokens
    # priced as the model that answered: gpt-4o-mini at $0.15 / $0.60
    assert rec["cost"] == pytest.approx(
        (b_usage.prompt_tokens * 0.15 + b_usage.completion_tokens * 0.60) / 1e6
    )


def test_client_abort_mid_stream(tracked: RunningGateway) -> None:
    """The client stops reading, the gateway's write buffer fills, the client leaves:
    the record says less reached the client (ptc) than left the backend (btp)."""
    body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": MSGS})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", tracked.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-mock-tokens: 100000\r\nx-mock-event-bytes: 2000\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )

    def client_buffer_full() -> bool:
        conns = [c for c in tracked.plane.connections if c.current is not None]
        return bool(conns) and conns[0].flow.write_paused

    wait_until(lambda: tracked.lt.call(client_buffer_full), what="gateway paused by the client")
    sock.close()
    rec = only_record(tracked)
    assert rec["outcome"] == "client_aborted" and rec["streaming"] is True
    assert rec["backend_reported_usage"] is None
    assert rec["usage_source"] in ("counted", "estimated")
    assert 0 < rec["ptc_completion_tokens"] < rec["btp_completion_tokens"]
    assert rec["ctp_prompt_tokens"] == rec["ptb_prompt_tokens"] > 0


def test_backend_reset_mid_stream(tracked: RunningGateway) -> None:
    got: list[str] = []
    with oai(tracked) as client, pytest.raises(openai.APIError):
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=MSGS,
            stream=True,
            extra_headers={"x-mock-tokens": "20", "x-mock-fault": "reset_after:3"},
        )
        for ch in stream:
            if ch.choices:
                got.append(ch.choices[0].delta.content or "")  # noqa: PERF401 (kept up to the error)
    rec = only_record(tracked)
    assert rec["outcome"] == "truncated" and rec["http_status_code"] == 200
    assert rec["backend_reported_usage"] is None
    assert (
        rec["btp_completion_tokens"]
        == rec["ptc_completion_tokens"]
        == estimate_tokens("".join(got))
    )
    assert rec["usage_source"] == ("counted" if ExactCounter.load() else "estimated")
    assert rec["cost_source"] == "price_table"  # a cut stream is still billed


def test_rate_limited(tracked: RunningGateway) -> None:
    with oai(tracked) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o",
            messages=MSGS,
            extra_headers={"x-mock-status": "429", "x-mock-retry-after": "30"},
        )
    rec = only_record(tracked)
    assert rec["http_status_code"] == 429 and rec["outcome"] == "rejected"
    assert rec["attempts"] == 1 and rec["backend_reported_usage"] is None
    assert rec["btp_completion_tokens"] is None and rec["cost"] is None
    assert rec["ptb_prompt_tokens"] == rec["ctp_prompt_tokens"]


def test_embeddings(tracked: RunningGateway) -> None:
    with oai(tracked) as client:
        resp = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    rec = only_record(tracked)
    assert rec["ptb_prompt_tokens"] == resp.usage.prompt_tokens
    assert rec["turn_number"] == 0 and rec["session_id"] is None
    assert rec["cost"] == pytest.approx(resp.usage.prompt_tokens * 0.02 / 1e6)


def test_disabled_records_nothing(gateway_factory, mock_llm: MockLLMServer) -> None:
    ns = build_parser().parse_args(["run", "--disable-usage-tracking"])
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)}}, **_cli_overrides(ns))
    assert gw.gateway.usage is None and gw.plane.accounting is False
    assert not any(isinstance(s, UsageService) for s in gw.plane.reporter.exchanges)
    with oai(gw) as client:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
        list(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    for path in ("/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export"):
        r = httpx.get(gw.url + path, timeout=10)
        assert r.status_code == 503
        assert r.json() == {"detail": "usage tracking is disabled (usage_tracking.enabled=false)"}
    assert not any(p.name.startswith("usage") for p in Path(gw.gateway.config.state_dir).iterdir())
