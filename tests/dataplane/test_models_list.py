"""GET /v1/models answers each SDK in its own shape (fastproxy/dataplane/models.py)."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import openai
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for

OPENAI_MODELS = ["gpt-4o", "gpt-4o-mini"]
CLAUDE_MODELS = ["claude-haiku-4-5", "claude-sonnet-4-5"]
CLAUDE_IDS = [*CLAUDE_MODELS, *(f"anthropic.1:{m}" for m in CLAUDE_MODELS)]


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai", models=OPENAI_MODELS),
                "anthropic.1": backend_for(mock_llm, "anthropic", models=CLAUDE_MODELS),
            }
        }
    )


def test_the_anthropic_sdk_lists_the_anthropic_models_in_its_shape(gw: RunningGateway) -> None:
    """Anthropic's SDK `models.list()` (pages of 2, so it follows has_more/last_id) gets
    only the models it can call, each with type, display_name and created_at parsed."""
    with anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0) as client:
        listed = list(client.models.list(limit=2))
        assert sorted(m.id for m in listed) == sorted(CLAUDE_IDS)
        assert len(listed) == len(CLAUDE_IDS)  # no page repeated
        for m in listed:
            assert m.type == "model" and m.display_name == m.id
            assert m.created_at.year == 1970
        page = client.models.list(limit=2)
        assert page.has_more is True and page.first_id == listed[0].id
        assert page.last_id == listed[1].id
        one = client.models.retrieve("claude-haiku-4-5")
        assert one.id == "claude-haiku-4-5" and one.type == "model"
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("gpt-4o")  # not an Anthropic backend's model


def test_the_openai_sdk_still_gets_every_model_in_its_shape(gw: RunningGateway) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
        ids = sorted(m.id for m in client.models.list())
        assert ids == sorted(
            [*OPENAI_MODELS, *(f"openai.1:{m}" for m in OPENAI_MODELS), *CLAUDE_IDS]
        )
        assert client.models.retrieve("gpt-4o").owned_by == "openai.1"


def test_a_bad_page_query_is_refused_in_the_anthropic_dialect(gw: RunningGateway) -> None:
    """Sends `limit=0`, `limit=x`, an unknown `after_id`, and both `after_id` and
    `before_id`: 400 with Anthropic's error shape naming the parameter."""
    headers = {"anthropic-version": "2023-06-01"}
    for query, name in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("after_id=nope", "after_id"),
        ("after_id=claude-haiku-4-5&before_id=claude-sonnet-4-5", "before_id"),
    ]:
        r = httpx.get(f"{gw.url}/v1/models?{query}", headers=headers, timeout=10)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert name in body["error"]["message"]


def test_before_id_pages_backwards(gw: RunningGateway) -> None:
    headers = {"anthropic-version": "2023-06-01"}
    last = CLAUDE_IDS[-1]
    r = httpx.get(f"{gw.url}/v1/models?limit=2&before_id={last}", headers=headers, timeout=10)
    page = r.json()
    ids = [m["id"] for m in page["data"]]
    assert len(ids) == 2 and last not in ids and page["last_id"] == ids[-1]
