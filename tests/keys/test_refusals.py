"""What a key may not do, answered in the caller's dialect: a wrong key is 401, a model
outside the key's list 403 model_not_allowed, through each official SDK. And GET
/v1/keys with usage tracking off: the keys are configuration, so they are still listed,
with spend null and the reason said."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from fastproxy.core.keys import ClientKey
from fastproxy.dataplane import models
from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

from .e2e import CI_MODELS, CI_SECRET, CI_SHA256, MSGS, PLAIN_SECRET, admin, ci_key, keyed_tree


def test_a_wrong_key_is_401_in_each_dialect(keyed: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as oai_err,
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
    assert oai_err.value.status_code == 401
    assert oai_err.value.code == "invalid_api_key"
    # The digest configured for a key is not a key: presenting it opens nothing.
    with (
        anthropic.Anthropic(base_url=keyed.url, api_key=CI_SHA256, max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError) as ant_err,
    ):
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=MSGS,  # type: ignore[arg-type]
        )
    assert ant_err.value.status_code == 401
    body = ant_err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_a_model_outside_the_keys_list_is_403_in_each_dialect(keyed: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=keyed.url + "/v1", api_key=CI_SECRET, max_retries=0) as client,
        pytest.raises(openai.PermissionDeniedError) as oai_err,
    ):
        client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=MSGS,  # type: ignore[arg-type]
        )
    assert oai_err.value.status_code == 403 and oai_err.value.code == "model_not_allowed"
    assert "ci-bot" in oai_err.value.message and "claude-sonnet-4-5" in oai_err.value.message
    with (
        anthropic.Anthropic(base_url=keyed.url, api_key=CI_SECRET, max_retries=0) as client,
        pytest.raises(anthropic.PermissionDeniedError) as ant_err,
    ):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=16,
            messages=MSGS,  # type: ignore[arg-type]
        )
    assert ant_err.value.status_code == 403
    body = ant_err.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "permission_error"
    assert "claude-sonnet-4-5" in body["error"]["message"]
    # The same key may use what its globs name; the plain list's key may use anything.
    with anthropic.Anthropic(base_url=keyed.url, api_key=CI_SECRET, max_retries=0) as client:
        ok = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=MSGS,  # type: ignore[arg-type]
        )
        assert ok.content
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key=PLAIN_SECRET, max_retries=0) as c:
        assert c.chat.completions.create(model="claude-sonnet-4-5", messages=MSGS).choices  # type: ignore[arg-type]


def test_keys_are_listed_with_usage_tracking_off(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    gw = gateway_factory(keyed_tree(mock_llm, [ci_key()], tracked=False))
    doc = admin(gw, "/v1/keys")
    assert doc["spend_unavailable"] == "usage tracking is disabled (usage_tracking.enabled=false)"
    (key,) = doc["keys"]
    assert key["name"] == "ci-bot" and key["key_id"] == CI_SHA256[:12]
    assert key["spend"] is None
    assert doc["teams"] == [
        {
            "name": "platform",
            "keys": ["ci-bot"],
            "budget": None,
            "spend": None,
            "budget_state": None,
        }
    ]
    # The data port serves it too, to a client holding a key, like the usage routes.
    on_data_port = httpx.get(
        gw.url + "/v1/keys", headers={"authorization": f"Bearer {PLAIN_SECRET}"}, timeout=10
    )
    assert on_data_port.status_code == 200 and on_data_port.json() == doc
    assert httpx.get(gw.url + "/v1/keys", timeout=10).status_code == 401


def test_keys_are_listed_when_the_database_cannot_be_read(keyed: RunningGateway) -> None:
    usage = keyed.gateway.usage
    assert usage is not None
    for suffix in ("", "-wal", "-shm"):
        Path(str(usage.path) + suffix).unlink(missing_ok=True)
    doc = admin(keyed, "/v1/keys")
    assert doc["spend_unavailable"].startswith("usage database unavailable: ")
    assert [k["name"] for k in doc["keys"]] == ["ci-bot", "notebook"]
    assert all(k["spend"] is None for k in doc["keys"])


class _Backend:
    def __init__(self, name: str, model_names: list[str], dialects: frozenset[str]) -> None:
        self.name = name
        self.models: frozenset[str] | None = frozenset(model_names)
        self.dialects = dialects


def test_the_model_list_shows_a_limited_key_only_its_models() -> None:
    both = frozenset({"openai", "anthropic"})
    backends = [
        _Backend("openai.1", ["gpt-4o", "gpt-4o-mini", "o3"], frozenset({"openai"})),
        _Backend("anthropic.1", ["claude-haiku-4-5", "claude-sonnet-4-5"], both),
    ]
    limited = ClientKey("abc", "ci-bot", "platform", ("gpt-4o*", "anthropic.1:*"))
    ids = [m["id"] for m in models.openai_list(backends, limited)["data"]]
    assert ids == [
        "gpt-4o",
        "gpt-4o-mini",
        "anthropic.1:claude-haiku-4-5",
        "anthropic.1:claude-sonnet-4-5",
    ]
    assert len(models.openai_list(backends)["data"]) == 10  # no key: everything
    unlimited = ClientKey("def", "notebook", None, ())
    assert len(models.openai_list(backends, unlimited)["data"]) == 10
    page = models.anthropic_page(backends, {}, limited)
    assert [m["id"] for m in page["data"]] == [
        "anthropic.1:claude-haiku-4-5",
        "anthropic.1:claude-sonnet-4-5",
    ]
    # Hidden from the list, not found by id either; allowed ones are.
    assert models.entry(backends, "o3", False, limited) is None
    assert models.entry(backends, "o3", False) is not None
    assert models.entry(backends, "gpt-4o-mini", False, limited) is not None


def test_keys_show_their_limits_and_budgets_and_the_budget_periods_spend(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    tree = keyed_tree(
        mock_llm,
        [ci_key(limits={"rpm": 600}, budget={"usd": 100, "period": "day"})],
    )
    tree["auth"]["teams"] = {"platform": {"budget": {"usd": 500}}}
    gw = gateway_factory(tree)
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=CI_SECRET, max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
    wait_until(
        lambda: admin(gw, "/v1/usage/stats", key="ci-bot")["request_count"] == 1,
        what="the record",
    )
    doc = admin(gw, "/v1/keys")
    (key,) = doc["keys"]
    assert key["limits"] == {"rpm": 600, "tpm": None}
    assert key["budget"] == {"usd": 100.0, "period": "day"}
    stats = admin(
        gw, "/v1/usage/stats", key="ci-bot", start_date=time.strftime("%Y-%m-%d", time.gmtime())
    )
    spent = key["spend"][key["budget"]["period"]]
    assert (spent["requests"], spent["spend_usd"]) == (1, stats["total_cost"])
    assert stats["total_cost"] > 0
    (team,) = doc["teams"]
    assert team["budget"] == {"usd": 500.0, "period": "month"}
    assert team["spend"]["month"]["spend_usd"] == stats["total_cost"]


def test_the_model_list_over_http_shows_a_limited_key_only_its_models(
    keyed: RunningGateway,
) -> None:
    """The same listing through the SDKs: ci-bot sees exactly the ids its globs match and
    cannot retrieve another by id; the plain list's key sees the whole union."""

    def allowed(model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, g) for g in CI_MODELS)

    with openai.OpenAI(base_url=keyed.url + "/v1", api_key=PLAIN_SECRET, max_retries=0) as c:
        everything = {m.id for m in c.models.list()}
    hidden = sorted(m for m in everything if not allowed(m))
    assert hidden and len(hidden) < len(everything), everything  # the fixture serves both
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key=CI_SECRET, max_retries=0) as c:
        assert {m.id for m in c.models.list()} == {m for m in everything if allowed(m)}
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve(hidden[0])
    with anthropic.Anthropic(base_url=keyed.url, api_key=CI_SECRET, max_retries=0) as client:
        listed = {m.id for m in client.models.list()}
    assert listed and all(allowed(m) for m in listed)
