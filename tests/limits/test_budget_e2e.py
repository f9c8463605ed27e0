"""Budgets end to end, one process: the official SDKs → a real gateway with named keys,
usage tracking and a price for gpt-4o → the mock LLM, whose reported usage therefore
costs money. A real webhook receiver on 127.0.0.1 and the health event stream hear the
80% and 100% crossings; a restart on the same usage database keeps refusing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.monitor.test_health_events import SSEReader, WebhookReceiver
from tests.support.waiting import wait_until

from .conftest import Clients
from .e2e import ALICE, BOB, MSGS, key, tree

# "Name a prime number." is 9 prompt tokens to the mock: at $1000 per 1M input tokens
# (output free) each request costs $0.009, so a $0.04 budget crosses 80% on the 4th
# request ($0.036) and 100% on the 5th ($0.045).
PRICING = {
    "gpt-4o": {"input": 1000.0, "output": 0.0},
    "claude-sonnet-4-5": {"input": 1000.0, "output": 0.0},
}


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def budget_tree(
    mock: MockLLMServer, db: Path, hook: str, keys: list[dict[str, Any]], **auth: Any
) -> dict[str, Any]:
    return tree(
        mock,
        keys,
        auth=auth,
        usage_tracking={"enabled": True, "persistence_path": str(db), "pricing": PRICING},
        health_check={"enabled": False, "webhook_url": hook},
    )


def chat(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2).choices


def budget_events(hook: WebhookReceiver, subject: str) -> list[dict[str, Any]]:
    return [
        b for b in hook.bodies if b.get("event") == "budget_threshold" and b["subject"] == subject
    ]


def is_budget(subject: str, percent: int) -> Callable[[str, dict[str, Any]], bool]:
    return lambda kind, e: (
        kind == "budget" and e["subject"] == subject and e["threshold_percent"] == percent
    )


def test_a_key_budget_crossed_is_announced_refused_and_stays_refused_after_a_restart(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    webhook: WebhookReceiver,
    tmp_path: Path,
    sdk: Clients,
) -> None:
    db = tmp_path / "usage.db"
    config = budget_tree(
        mock_llm, db, webhook.url, [key("alice", ALICE, budget={"usd": 0.04, "period": "day"})]
    )
    gw = gateway_factory(config)
    sse = SSEReader(f"http://127.0.0.1:{gw.gateway.admin_port}")
    try:
        client = sdk.oai(gw.url, ALICE)
        for _ in range(3):
            chat(client)
        assert budget_events(webhook, "key:alice") == []
        chat(client)  # $0.036: 80%
        eighty = sse.next(is_budget("key:alice", 80))
        assert eighty["fraction"] == 0.8 and eighty["period"] == "day"
        assert eighty["budget"] == 0.04 and eighty["spent"] == pytest.approx(0.036)
        assert eighty["resets_at"].endswith("T00:00:00Z")
        chat(client)  # $0.045: 100%, admitted (it started below the budget)
        full = sse.next(is_budget("key:alice", 100))
        assert full["fraction"] == 1.0
        wait_until(
            lambda: len(budget_events(webhook, "key:alice")) == 2, timeout=10, what="webhook"
        )
        assert [e["threshold_percent"] for e in budget_events(webhook, "key:alice")] == [80, 100]
    finally:
        sse.close()
    sent = len(mock_llm.stats.requests)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    err = caught.value
    assert err.code == "insufficient_quota"
    assert err.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "Budget exceeded for key 'alice'" in err.message and "daily" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert int(err.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError) as a_caught:
        sdk.ant(gw.url, ALICE).messages.create(
            model="claude-sonnet-4-5", max_tokens=2, messages=MSGS
        )
    assert a_caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "Budget exceeded" in a_caught.value.message
    assert len(mock_llm.stats.requests) == sent  # never reached the backend

    # A restart on the same usage database: seeded from it, still refused, and the
    # crossings (announced by the process that saw them) are not announced again.
    gw.stop()
    again = gateway_factory(config)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(sdk.oai(again.url, ALICE))
    assert caught.value.code == "insufficient_quota"
    assert again.health.notifier.counters["published"] == 0
    assert len(budget_events(webhook, "key:alice")) == 2


def test_a_team_budget_is_shared_by_its_keys(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    webhook: WebhookReceiver,
    tmp_path: Path,
    sdk: Clients,
) -> None:
    gw = gateway_factory(
        budget_tree(
            mock_llm,
            tmp_path / "usage.db",
            webhook.url,
            [key("alice", ALICE, team="ml"), key("bob", BOB, team="ml")],
            teams={"ml": {"budget": {"usd": 0.04, "period": "month"}}},
        )
    )
    alice, bob = sdk.oai(gw.url, ALICE), sdk.oai(gw.url, BOB)
    for client in (alice, bob, alice, bob, alice):  # $0.045 between them
        chat(client)
    for client in (alice, bob):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client)
        assert "Budget exceeded for team 'ml'" in caught.value.message
        assert "monthly" in caught.value.message
    wait_until(lambda: len(budget_events(webhook, "team:ml")) == 2, timeout=10, what="webhook")
    assert [e["threshold_percent"] for e in budget_events(webhook, "team:ml")] == [80, 100]
