"""The official ``anthropic`` SDK against the mock's Messages API (JSON, stream, tools, errors)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.mockllm.text import content_text

# The SDK warns (an error under filterwarnings=error) for claude-sonnet-4-5, deprecated in its
# model table, so these tests use claude-haiku-4-5.
HELLO = [{"role": "user", "content": "hello world!"}]
SYSTEM = "be brief"  # 8 bytes: with the 12-byte message, 20 // 4 + 4 = 9 input tokens
TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def client(server: MockLLMServer) -> Iterator[anthropic.Anthropic]:
    # The SDK appends /v1 itself, so it gets the root URL.
    with anthropic.Anthropic(
        base_url=server.root_url, api_key="test", max_retries=0, timeout=10
    ) as c:
        yield c


def test_messages_json(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, system=SYSTEM, messages=HELLO
    )  # type: ignore[arg-type]
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-haiku-4-5"
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == content_text("claude-haiku-4-5", 16)
    assert msg.usage.input_tokens == 9
    assert msg.usage.output_tokens == 16
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation_input_tokens == 0


def test_messages_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=HELLO)  # type: ignore[arg-type]
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 3


def test_messages_stream_text_and_final_usage(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        system=SYSTEM,
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={
            "x-mock-tokens": "20",
            "x-mock-cache-read": "1000",
            "x-mock-cache-write": "50",
        },
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 20
    assert "".join(pieces) == content_text("claude-haiku-4-5", 20)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 9  # Anthropic excludes cache reads/writes from input
    assert final.usage.output_tokens == 20
    assert final.usage.cache_read_input_tokens == 1000
    assert final.usage.cache_creation_input_tokens == 50


def test_messages_raw_stream_event_order(server: MockLLMServer) -> None:
    # httpx, not the SDK: the SDK swallows ``ping``, whose place in the order we check.
    body = {
        "model": "claude-haiku-4-5@tokens=2",
        "max_tokens": 100,
        "messages": HELLO,
        "stream": True,
    }
    resp = httpx.post(server.root_url + "/v1/messages", json=body, timeout=10)
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in resp.text.split("\n\n") if b]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks]
    assert [d["type"] for d in data] == names
    start = data[0]["message"]
    assert start["model"] == "claude-haiku-4-5"
    assert start["usage"] == {
        "input_tokens": 7,
        "output_tokens": 1,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert data[6]["delta"]["stop_reason"] == "end_turn"
    assert data[6]["usage"]["output_tokens"] == 2


def test_tool_use_json_and_stream(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=HELLO,  # type: ignore[arg-type]
        tools=[TOOL],
    )  # type: ignore[list-item]
    assert msg.stop_reason == "tool_use"
    block = msg.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "mock"}
    assert block.id.startswith("toolu_")

    raw = list(
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=HELLO,  # type: ignore[arg-type]
            tools=[TOOL],
            stream=True,
        )
    )  # type: ignore[list-item]
    partial = [
        e.delta.partial_json
        for e in raw  # type: ignore[union-attr]
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partial) > 1 and json.loads("".join(partial)) == {"city": "mock"}
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=HELLO,  # type: ignore[arg-type]
        tools=[TOOL],
    ) as stream:  # type: ignore[list-item]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "mock"}


def test_tool_result_turn_answers_text(client: anthropic.Anthropic) -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    msg = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=messages,  # type: ignore[arg-type]
        tools=[TOOL],
    )  # type: ignore[list-item]
    assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"


def test_count_tokens(client: anthropic.Anthropic) -> None:
    result = client.messages.count_tokens(model="claude-haiku-4-5", system=SYSTEM, messages=HELLO)  # type: ignore[arg-type]
    assert result.input_tokens == 9


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_error_dialect(
    client: anthropic.Anthropic, status: int, exc: type[Exception], kind: str
) -> None:
    with pytest.raises(exc) as info:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-mock-status": str(status)},
        )
    err = info.value
    assert isinstance(err, anthropic.APIStatusError) and err.status_code == status
    assert err.body == {
        "type": "error",
        "error": {"type": kind, "message": err.body["error"]["message"]},
    }  # type: ignore[index]


def test_async_stream(server: MockLLMServer) -> None:
    async def main() -> tuple[str, int]:
        c = anthropic.AsyncAnthropic(base_url=server.root_url, api_key="test", max_retries=0)
        async with (
            c,
            c.messages.stream(model="demo@tokens=7", max_tokens=50, messages=HELLO) as stream,
        ):  # type: ignore[arg-type]
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        return text, final.usage.output_tokens

    text, output_tokens = asyncio.run(main())
    assert text == content_text("demo", 7) and output_tokens == 7
