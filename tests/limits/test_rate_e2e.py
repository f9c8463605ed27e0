"""Rate limits end to end, one process: the official OpenAI and Anthropic SDKs → a real
gateway with named keys → the mock LLM. A 3-second window (``rate_limits.window_seconds``)
so "admitted again after the window" takes seconds, not a minute."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from fastproxy.config import load_config
from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

from .conftest import Clients
from .e2e import ALICE, BOB, MSGS, key, tree

WINDOW = 3.0


def chat(client: openai.OpenAI, model: str = "gpt-4o") -> dict[str, str]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS, max_tokens=2)
    assert raw.parse().choices[0].message.content
    return dict(raw.headers)


def api_calls(mock: MockLLMServer) -> int:
    return sum(
        1
        for r in mock.stats.requests
        if r.method == "POST" and r.path.endswith(("/chat/completions", "/messages"))
    )


def test_rpm_429_in_both_dialects_with_headers_then_admitted_after_the_window(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    gw = gateway_factory(
        tree(
            mock_llm,
            [key("alice", ALICE, limits={"rpm": 3}), key("bob", BOB)],
            rate_limits={"window_seconds": WINDOW},
        )
    )
    client = sdk.oai(gw.url, ALICE)
    first = chat(client)
    assert first["x-ratelimit-limit-requests"] == "3"
    assert first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in first  # tokens are not limited here
    chat(client)
    chat(client)
    sent = api_calls(mock_llm)
    records: list[Any] = []
    gw.observe(records.append)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    err = caught.value
    h = err.response.headers
    # Recorded like any answered request: the usage store sees the 429.
    rec = wait_until(lambda: records and records[0], what="the refused request's record")
    assert (rec.status, rec.outcome, rec.key_name, rec.backend) == (429, "rejected", "alice", None)
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.body["type"] == "requests"  # type: ignore[index]
    assert "key:alice" in err.message and "3 requests" in err.message
    assert 1 <= int(h["retry-after"]) <= WINDOW
    assert h["x-ratelimit-limit-requests"] == "3"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    # The gateway's own 429: the backend never saw it.
    assert api_calls(mock_llm) == sent
    # The same key through the Anthropic SDK: the limit is the key's, whatever dialect.
    with pytest.raises(anthropic.RateLimitError) as a_caught:
        sdk.ant(gw.url, ALICE).messages.create(
            model="claude-sonnet-4-5", max_tokens=2, messages=MSGS
        )
    a_err = a_caught.value
    assert a_err.status_code == 429
    assert a_err.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert a_err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(a_err.response.headers["retry-after"]) >= 1
    # After the window: admitted again (polled; the refusals told us when).
    time.sleep(float(h["retry-after"]))
    wait_until(lambda: _admitted(client), timeout=WINDOW + 2, interval=0.2, what="admitted")
    # Another key has no limit of its own and names no limited model: no headers.
    headers = chat(sdk.oai(gw.url, BOB))
    assert not [h for h in headers if h.startswith("x-ratelimit")]


def _admitted(client: openai.OpenAI) -> bool:
    try:
        chat(client)
    except openai.RateLimitError:
        return False
    return True


def test_no_limits_configured_no_headers_and_no_admission(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    gw = gateway_factory(tree(mock_llm, [key("alice", ALICE)]))
    assert gw.plane.admission is None  # the request path makes one `is None` test
    client = sdk.oai(gw.url, ALICE)
    for _ in range(5):
        assert not [h for h in chat(client) if h.startswith("x-ratelimit")]


def test_tpm_charged_from_the_estimate_and_corrected_by_the_backends_usage(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    gw = gateway_factory(
        tree(
            mock_llm,
            [key("alice", ALICE, limits={"tpm": 1000})],
            rate_limits={"window_seconds": WINDOW},
        )
    )
    # The prompt estimate is about 30 tokens (body / 4); the backend reports 600 (cache
    # reads count as prompt): once that is settled, the key is over its 1000 tokens.
    gw.lt.call(lambda: mock_llm.set_behaviour(cache_read=600))
    client = sdk.oai(gw.url, ALICE)
    first = chat(client)
    assert first["x-ratelimit-limit-tokens"] == "1000"
    assert "x-ratelimit-limit-requests" not in first
    chat(client)  # 600 used + ~30 held: tokens are left, so admitted (a soft limit)
    sent = api_calls(mock_llm)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    err = caught.value
    assert err.body["type"] == "tokens"  # type: ignore[index]
    assert err.response.headers["x-ratelimit-limit-tokens"] == "1000"
    assert err.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(err.response.headers["retry-after"]) >= 1
    assert api_calls(mock_llm) == sent
    # Without the correction the estimates alone (~30 each) would have admitted 30 more.
    gw.lt.call(mock_llm.clear_behaviour)
    time.sleep(float(err.response.headers["retry-after"]))
    wait_until(lambda: _admitted(client), timeout=WINDOW + 2, interval=0.2, what="admitted")


def test_a_model_limit_is_shared_by_every_key_and_both_scopes_apply(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    gw = gateway_factory(
        tree(
            mock_llm,
            [key("alice", ALICE, limits={"rpm": 100}), key("bob", BOB)],
            rate_limits={"window_seconds": 30, "models": {"gpt-4o": {"rpm": 4}}},
        )
    )
    alice, bob = sdk.oai(gw.url, ALICE), sdk.oai(gw.url, BOB)
    chat(alice)
    chat(bob)
    chat(alice)
    last = chat(bob)
    assert last["x-ratelimit-limit-requests"] == "4"  # the tightest scope is reported
    assert last["x-ratelimit-remaining-requests"] == "0"
    for client in (alice, bob):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
        assert "model:gpt-4o" in caught.value.message
    # Another model is not limited by gpt-4o's limit; alice's own limit still counts it.
    with sdk.ant(gw.url, ALICE) as a:
        raw = a.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=2, messages=MSGS
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "100"
        assert raw.headers["x-ratelimit-remaining-requests"] == "97"


def test_a_stream_carries_the_headers_and_is_settled_at_its_end(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    gw = gateway_factory(
        tree(
            mock_llm,
            [key("alice", ALICE, limits={"rpm": 50, "tpm": 100000})],
            rate_limits={"window_seconds": WINDOW},
        )
    )
    records: list[object] = []
    gw.observe(records.append)
    with sdk.oai(gw.url, ALICE).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MSGS, max_tokens=4, stream=True
    ) as resp:
        assert resp.headers["x-ratelimit-limit-tokens"] == "100000"
        assert list(resp.iter_lines())
    rec = wait_until(lambda: records and records[0], what="the stream's record")
    total = rec.usage.total  # type: ignore[attr-defined]
    assert total and total != 0

    # Settled with the stream's reported usage (include_usage is injected): once the
    # limiter has reported, the ledger counts what the backend reported.
    def counted() -> int:
        adm, ledger = gw.plane.admission, gw.gateway.ledger
        return int(gw.lt.call(lambda: (adm.tick(), ledger.usage("key:alice")[1])[1]))

    wait_until(lambda: counted() == total, timeout=5, interval=0.2, what="tokens reported")


def test_reload_applies_new_limits_and_budgets_and_keeps_the_counts(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, sdk: Clients
) -> None:
    tree_ = tree(
        mock_llm,
        [key("alice", ALICE, limits={"rpm": 3}), key("bob", BOB)],
        rate_limits={"window_seconds": 30},
    )
    gw = gateway_factory(tree_)
    client = sdk.oai(gw.url, ALICE)
    chat(client)
    chat(client)
    path = gw.gateway.config.state_dir + "/config.yaml"

    def reload() -> None:
        Path(path).write_text(yaml.safe_dump(tree_))
        assert gw.lt.run(gw.gateway.reload(load_config({}, config_file=path, env={})))

    # A new limit for the same key: its two requests still count.
    tree_["auth"]["keys"][0]["limits"] = {"rpm": 4}
    reload()
    headers = chat(client)
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    # A budget added by a reload applies at once; limits removed: no headers.
    tree_["auth"]["keys"][0].pop("limits")
    tree_["auth"]["keys"][1]["budget"] = {"usd": 5.0}
    reload()
    assert gw.plane.admission is not None and gw.plane.admission.limiter is None
    assert not [h for h in chat(client) if h.startswith("x-ratelimit")]
    # A model limit added by a reload (rate_limits reloads too) binds bob at once.
    tree_["auth"]["keys"][1].pop("budget")
    tree_["rate_limits"]["models"] = {"gpt-4o": {"rpm": 1}}
    reload()
    bob = sdk.oai(gw.url, BOB)
    assert chat(bob)["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError):
        chat(bob)
    tree_["rate_limits"].pop("models")
    reload()
    assert gw.plane.admission is None
