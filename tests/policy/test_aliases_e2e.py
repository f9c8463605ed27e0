"""Model aliases and groups end to end, one process: the official OpenAI and Anthropic
SDKs → a real gateway → two mock LLM servers on 127.0.0.1. Which backend and model served
is read where the request arrived (the mock's request log) and from
``x-fastproxy-backend``; the usage record keeps the name the client asked for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

from .e2e import MSGS, Mocks


def tree(a: MockLLMServer, b: MockLLMServer, **extra: Any) -> dict[str, Any]:
    return {
        "backends": {
            "openai.1": backend_for(a, "openai", models=["gpt-4o"]),
            "openai.2": backend_for(b, "openai", models=["gpt-4o-mini"]),
            "anthropic.1": backend_for(a, "anthropic", models=["claude-sonnet-4-5"]),
            "anthropic.2": backend_for(b, "anthropic", models=["claude-haiku-4-5"]),
        },
        "default_backend": "openai.1",
        "health_check": {"enabled": False},
        "usage_tracking": {"flush_interval_seconds": 0.05},
        "model_aliases": [
            {"pattern": r"claude-(.*)-latest", "target": r"anthropic.2:claude-\1"},
            {"pattern": r"(?i)GPT-4O", "target": "gpt-4o"},
            {"pattern": r"cheap-.*", "target": "fast"},
        ],
        "groups": {
            "fast": {
                "strategy": "weighted",
                "members": [
                    {"backend": "openai.1", "model": "gpt-4o", "weight": 3},
                    {"backend": "openai.2", "model": "gpt-4o-mini", "weight": 1},
                ],
            },
            "safe": {
                "members": [
                    {"backend": "openai.2", "model": "gpt-4o-mini"},
                    {"backend": "openai.1", "model": "gpt-4o", "weight": 0},
                ],
            },
            "claude": {
                "strategy": "least_busy",
                "members": [
                    {"backend": "openai.1", "model": "gpt-4o"},  # not for Anthropic clients
                    {"backend": "anthropic.1", "model": "claude-sonnet-4-5"},
                    {"backend": "anthropic.2", "model": "claude-haiku-4-5"},
                ],
            },
        },
        **extra,
    }


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], mocks: Mocks) -> RunningGateway:
    return gateway_factory(tree(*mocks))


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)


def ant(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0)


def chat(client: openai.OpenAI, model: str) -> str:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS, max_tokens=2)
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-fastproxy-backend"])


def models_seen(mock: MockLLMServer) -> list[str]:
    return [
        orjson.loads(r.body)["model"]
        for r in mock.stats.requests
        if r.method == "POST" and r.path.endswith(("/chat/completions", "/messages"))
    ]


def recent(gw: RunningGateway, count: int) -> list[dict[str, Any]]:
    def page() -> Any:
        r = httpx.get(gw.url + "/v1/usage/recent", params={"limit": 1000}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    got = wait_until(lambda: (p := page())["total"] >= count and p, what="usage records")
    return list(reversed(got["records"]))


def test_alias_back_reference_routes_to_the_backend_and_model(
    gw: RunningGateway, mocks: Mocks
) -> None:
    with ant(gw) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5-latest", max_tokens=4, messages=MSGS
        )
        assert raw.parse().content
        assert raw.headers["x-fastproxy-backend"] == "anthropic.2"
        with client.messages.with_streaming_response.create(
            model="claude-haiku-4-5-latest", max_tokens=4, messages=MSGS, stream=True
        ) as resp:
            assert [e.type for e in resp.parse()][-1] == "message_stop"
            assert resp.headers["x-fastproxy-backend"] == "anthropic.2"
    assert models_seen(mocks[1]) == ["claude-haiku-4-5"] * 2
    assert models_seen(mocks[0]) == []
    with oai(gw) as client:
        assert chat(client, "GPT-4o") == "openai.1"  # the case-insensitive rule
    assert models_seen(mocks[0]) == ["gpt-4o"]
    # The usage record keeps the name the client asked for, and what served it.
    recs = recent(gw, 3)
    assert [r["model_requested"] for r in recs] == ["claude-haiku-4-5-latest"] * 2 + ["GPT-4o"]
    assert [r["model_used"] for r in recs] == ["claude-haiku-4-5"] * 2 + ["gpt-4o"]


def test_group_maps_one_name_to_members_under_its_strategy(
    gw: RunningGateway, mocks: Mocks
) -> None:
    with oai(gw) as client:
        counts = Counter(chat(client, "fast") for _ in range(300))
        # An alias may name a group.
        counts.update(chat(client, "cheap-anything") for _ in range(100))
    share = counts["openai.1"] / 400
    # weighted 3:1 over 400 requests: the standard deviation is 2.2 points.
    assert 0.66 <= share <= 0.84, counts
    assert Counter(models_seen(mocks[0])) == {"gpt-4o": counts["openai.1"]}
    assert Counter(models_seen(mocks[1])) == {"gpt-4o-mini": counts["openai.2"]}


def test_group_member_of_weight_0_is_only_a_failover(
    server_loop: Any, gw: RunningGateway, mocks: Mocks
) -> None:
    # "safe" is ordered: its first member serves, the second only when the first fails.
    with oai(gw) as client:
        assert {chat(client, "safe") for _ in range(10)} == {"openai.2"}
        server_loop.call(lambda: mocks[1].set_behaviour(status=503))
        assert chat(client, "safe") == "openai.1"
    assert models_seen(mocks[0]) == ["gpt-4o"]


def test_group_members_are_filtered_by_dialect(gw: RunningGateway, mocks: Mocks) -> None:
    served: Counter[str] = Counter()
    with ant(gw) as client:
        for _ in range(40):
            raw = client.messages.with_raw_response.create(
                model="claude", max_tokens=4, messages=MSGS
            )
            assert raw.parse().content
            served[raw.headers["x-fastproxy-backend"]] += 1
    # least_busy at rest breaks ties at random: both Anthropic members, never openai.1.
    assert set(served) == {"anthropic.1", "anthropic.2"}, served
    assert set(models_seen(mocks[0])) == {"claude-sonnet-4-5"}
    assert set(models_seen(mocks[1])) == {"claude-haiku-4-5"}


def test_unknown_name_still_goes_to_the_default_backend(gw: RunningGateway) -> None:
    with oai(gw) as client:
        assert chat(client, "some-model") == "openai.1"
