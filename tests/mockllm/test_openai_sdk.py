"""The official ``openai`` SDK (sync and async) against the mock: every OpenAI-shaped endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import openai
import pytest

from fastproxy.mockllm import DEFAULT_MODELS, MockLLMServer
from fastproxy.mockllm.text import content_text, embedding_vector

HELLO = [{"role": "user", "content": "hello world!"}]  # 12 bytes: 12 // 4 + 4 = 7 tokens
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(server: MockLLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=10) as c:
        yield c


def test_chat_json(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-4o"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == content_text("gpt-4o", 16)
    assert len(choice.message.content.split()) == 16
    usage = resp.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 16, 23)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_is_deterministic_except_ids(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model="demo", messages=HELLO)  # type: ignore[arg-type]
    b = client.chat.completions.create(model="demo", messages=HELLO)  # type: ignore[arg-type]
    assert a.id != b.id
    assert a.choices[0].message.content == b.choices[0].message.content
    other = client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert other.choices[0].message.content != a.choices[0].message.content


def test_chat_usage_steering_fields(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={
            "x-mock-tokens": "5",
            "x-mock-cache-read": "100",
            "x-mock-cache-write": "20",
            "x-mock-reasoning-tokens": "8",
            "x-mock-cost": "0.0125",
        },
    )
    data = json.loads(raw.text)
    usage = data["usage"]
    assert usage["prompt_tokens"] == 7 + 100 + 20
    assert usage["prompt_tokens_details"]["cached_tokens"] == 100
    assert usage["completion_tokens"] == 5 + 8
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 8
    assert usage["total_tokens"] == 127 + 13
    assert usage["cost"] == pytest.approx(0.0125)
    assert data["choices"][0]["message"]["content"] == content_text("gpt-4o", 5)


def test_max_tokens_caps_default_but_not_steered_count(client: openai.OpenAI) -> None:
    capped = client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 4
    steered = client.chat.completions.create(
        model="gpt-4o@tokens=10",
        messages=HELLO,
        max_tokens=4,  # type: ignore[arg-type]
    )
    assert steered.usage is not None and steered.usage.completion_tokens == 10


def test_model_name_steering_echoes_plain_model(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4o@tokens=3", messages=HELLO)  # type: ignore[arg-type]
    assert resp.model == "gpt-4o"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert resp.choices[0].message.content == content_text("gpt-4o", 3)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(client: openai.OpenAI, include_usage: bool) -> None:
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(
        model="gpt-4o@tokens=12",
        messages=HELLO,
        stream=True,
        **kwargs,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 12  # one token per content event
    assert "".join(content) == content_text("gpt-4o", 12)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
        assert chunks[-1].choices == []
        assert usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.completion_tokens == 12
        assert usage_chunks[0].usage.prompt_tokens == 7
    else:
        assert usage_chunks == []


def test_chat_tool_call_json(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        tools=[WEATHER_TOOL],  # type: ignore[arg-type,list-item]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert args == {"city": "mock", "days": 1, "unit": "celsius"}


def test_chat_after_tool_result_answers_in_text(client: openai.OpenAI) -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=[WEATHER_TOOL],  # type: ignore[arg-type,list-item]
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content


def test_chat_tool_call_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        tools=[WEATHER_TOOL],
        stream=True,  # type: ignore[arg-type,list-item]
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id is not None and deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    fragments = [d.function.arguments for d in deltas[1:] if d.function]
    assert len(fragments) > 1 and all(d.id is None for d in deltas[1:])
    assert json.loads("".join(f or "" for f in fragments))["city"] == "mock"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_responses_json(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model="gpt-4o@tokens=6", input="hello world!", instructions="be brief"
    )
    assert resp.model == "gpt-4o" and resp.status == "completed"
    assert resp.output_text == content_text("gpt-4o", 6)
    assert resp.usage is not None
    # "hello world!" (12 B) + "be brief" (8 B) = 20 B // 4 = 5, + 4 for the one message.
    assert resp.usage.input_tokens == 9
    assert resp.usage.output_tokens == 6
    assert resp.usage.total_tokens == 15
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="gpt-4o@tokens=5",
            input=[{"role": "user", "content": "hello world!"}],
            stream=True,
        )
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in types
    assert types.count("response.output_text.delta") == 5
    assert types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == content_text("gpt-4o", 5)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage.output_tokens == 5 and final.usage.input_tokens == 7
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt-4o@tokens=4", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == content_text("gpt-4o", 4)


def test_responses_tool_call(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    resp = client.responses.create(model="gpt-4o", input="find", tools=[tool])  # type: ignore[list-item]
    call = resp.output[0]
    assert call.type == "function_call"
    assert call.name == "lookup" and json.loads(call.arguments) == {"q": "mock"}
    events = list(
        client.responses.create(
            model="gpt-4o",
            input="find",
            tools=[tool],  # type: ignore[list-item]
            stream=True,
        )
    )
    args = "".join(
        e.delta
        for e in events  # type: ignore[union-attr]
        if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(args) == {"q": "mock"}
    assert events[-1].type == "response.completed"


def test_embeddings_base64_default_and_float(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == 1536
    expected = embedding_vector("alpha", 1536)
    assert resp.data[0].embedding == pytest.approx(expected, abs=1e-6)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 2
    small = client.embeddings.create(
        model="m", input="alpha", dimensions=8, encoding_format="float"
    )
    assert small.data[0].embedding == pytest.approx(embedding_vector("alpha", 8))
    norm = sum(x * x for x in small.data[0].embedding)
    assert norm == pytest.approx(1.0, abs=1e-4)


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == list(DEFAULT_MODELS)
    assert all(m.object == "model" and m.owned_by == "mock" for m in models.data)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_custom_models_list(lt, server: MockLLMServer) -> None:  # type: ignore[no-untyped-def]
    custom = MockLLMServer(port=0, models=["a", "b"])
    lt.run(custom.start())
    try:
        with openai.OpenAI(base_url=custom.url, api_key="test", max_retries=0) as c:
            assert [m.id for m in c.models.list().data] == ["a", "b"]
    finally:
        lt.run(custom.close())


def test_async_client_concurrent(server: MockLLMServer) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0) as c:

            async def one(i: int) -> str:
                stream = await c.chat.completions.create(
                    model=f"gpt-4o@tokens={i + 1}",
                    messages=HELLO,
                    stream=True,  # type: ignore[arg-type]
                )
                return "".join(
                    [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
                )

            plain = await c.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
            assert plain.choices[0].message.content == content_text("gpt-4o", 16)
            return await asyncio.gather(*(one(i) for i in range(8)))

    texts = asyncio.run(main())
    assert texts == [content_text("gpt-4o", i + 1) for i in range(8)]


def test_openai_error_dialect(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-mock-status": "401"},
        )
    body = info.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
