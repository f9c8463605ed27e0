"""The official SDKs through the gateway against the mock LLM: content and usage intact."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RunningGateway

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
MSGS = [{"role": "user", "content": "Say something about the weather in Paris."}]


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)


def ant(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)


def direct_text(mock_url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(mock_url.rstrip("/") + path, json=body, timeout=10)


def test_openai_chat_json(gateway: RunningGateway, mock_llm) -> None:
    with oai(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MSGS, extra_headers={"x-mock-tokens": "12"}
        )
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 12
    assert resp.model == "gpt-4o"
    assert raw.headers["x-fastproxy-backend"] == "openai.1"
    assert int(raw.headers["x-usage-completion-tokens"]) == 12
    assert int(raw.headers["x-usage-prompt-tokens"]) == resp.usage.prompt_tokens
    assert int(raw.headers["x-usage-total-tokens"]) == resp.usage.total_tokens
    # The backend saw its own key, never the client's.
    seen = mock_llm.stats.requests[-1]
    headers = dict(seen.headers)
    assert headers["authorization"] == "Bearer sk-backend-openai-secret"
    assert "client-key" not in repr(seen.headers)
    assert headers["x-fastproxy-hop"] == "1"
    # Identical to what the mock gives directly (content is deterministic).
    direct = direct_text(
        mock_llm.url, "/chat/completions", {"model": "gpt-4o", "messages": MSGS, "max_tokens": 12}
    ).json()
    assert direct["choices"][0]["message"]["content"] == resp.choices[0].message.content


def test_openai_chat_stream_usage_injected_and_stripped(gateway: RunningGateway, mock_llm) -> None:
    with oai(gateway) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, extra_headers={"x-mock-tokens": "20"}
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: the gateway asked the backend and stripped the
    # usage-only chunk from what the client receives.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    sent = mock_llm.stats.requests[-1].body
    assert b'"include_usage":true' in sent


def test_openai_chat_stream_client_asked_for_usage(gateway: RunningGateway) -> None:
    with oai(gateway) as client:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=MSGS,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-tokens": "7"},
        )
        chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 7


async def test_openai_async_stream_and_json(gateway: RunningGateway) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as c:
        resp = await c.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        assert resp.choices[0].message.content
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
        pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
    assert "".join(pieces).strip() == resp.choices[0].message.content.strip()


def test_openai_tool_calls_json_and_stream(gateway: RunningGateway) -> None:
    with oai(gateway) as client:
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS, tools=TOOLS)
        call = resp.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MSGS, tools=TOOLS, stream=True
        )
        name, args = "", ""
        for ch in stream:
            for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
    assert name == "get_weather"
    assert args == call.function.arguments


def test_openai_responses_and_embeddings(gateway: RunningGateway) -> None:
    with oai(gateway) as client:
        r = client.responses.create(model="gpt-4o", input="hello there")
        assert r.output_text and r.usage.output_tokens > 0
        with client.responses.stream(model="gpt-4o", input="hello there") as s:
            streamed = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            final = s.get_final_response()
        assert streamed == r.output_text
        assert final.usage.output_tokens == r.usage.output_tokens
        emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(emb.data) == 2 and emb.usage.prompt_tokens > 0
        models = {m.id for m in client.models.list()}
    assert {"gpt-4o", "openai.1:gpt-4o", "anthropic.1:claude-sonnet-4-5"} <= models


def test_anthropic_messages_json_and_stream(gateway: RunningGateway, mock_llm) -> None:
    with ant(gateway) as client:
        msg = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=MSGS,
            extra_headers={"x-mock-cache-read": "30", "x-mock-cache-write": "5"},
        )
        assert msg.content[0].text
        assert msg.usage.cache_read_input_tokens == 30
        assert msg.usage.cache_creation_input_tokens == 5
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=MSGS,
            extra_headers={"x-mock-cache-read": "30"},
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == msg.content[0].text
    assert final.usage.output_tokens == msg.usage.output_tokens
    assert final.usage.cache_read_input_tokens == 30
    seen = dict(mock_llm.stats.requests[-1].headers)
    assert seen["x-api-key"] == "sk-backend-anthropic-secret"
    assert "authorization" not in seen
    assert seen["anthropic-version"]


async def test_anthropic_async_and_tool_use(gateway: RunningGateway) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "w",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="k", max_retries=0) as c:
        msg = await c.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MSGS, tools=tools
        )
        blocks = [b for b in msg.content if b.type == "tool_use"]
        assert blocks and blocks[0].name == "get_weather"
        async with c.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=MSGS, tools=tools
        ) as s:
            final = await s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert streamed and streamed[0].name == "get_weather"
    assert streamed[0].input == blocks[0].input


def test_explicit_backend_model_selection(gateway: RunningGateway, mock_llm) -> None:
    with oai(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="openai.1:gpt-4o-mini", messages=MSGS
        )
    assert raw.headers["x-fastproxy-backend"] == "openai.1"
    assert raw.parse().model == "gpt-4o-mini"  # the backend got the bare model name
    assert b'"model":"gpt-4o-mini"' in mock_llm.stats.requests[-1].body


def test_models_retrieve_and_legacy_paths(gateway: RunningGateway) -> None:
    with oai(gateway) as client:
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
        assert client.models.retrieve("openai.1:gpt-4o").owned_by == "openai.1"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
        legacy = client.completions.create(model="gpt-4o", prompt="Say hi")
    assert legacy.usage.completion_tokens > 0
    with ant(gateway) as c:
        count = c.messages.count_tokens(model="claude-haiku-4-5", messages=MSGS)
    assert count.input_tokens > 0
