"""Deterministic content and counting, without sockets."""

from __future__ import annotations

import array
import base64
import json

from fastproxy.mockllm.text import (
    VOCABULARY,
    argument_fragments,
    content_text,
    content_tokens,
    embedding_base64,
    embedding_input_tokens,
    embedding_vector,
    prompt_tokens,
    sample_arguments,
)


def test_tokens_are_deterministic_words_seeded_by_model_and_count() -> None:
    a = list(content_tokens("gpt-4o", 30))
    assert a == list(content_tokens("gpt-4o", 30))
    assert len(a) == 30
    assert a != list(content_tokens("demo", 30))
    assert list(content_tokens("gpt-4o", 29)) != a[:29]  # the count is part of the seed
    assert a[0][0].isupper() and not a[0].startswith(" ")
    assert all(t.startswith(" ") for t in a[1:]) and a[-1].endswith(".")
    assert {t.strip(" .").lower() for t in a} <= set(VOCABULARY)
    assert content_text("gpt-4o", 30) == "".join(a)
    assert list(content_tokens("m", 0)) == []


def test_event_bytes_padding_keeps_count() -> None:
    padded = list(content_tokens("m", 20, event_bytes=500))
    assert len(padded) == 20 and all(len(t) == 500 for t in padded)
    plain = list(content_tokens("m", 20))
    assert all(p.startswith(t) for p, t in zip(padded, plain, strict=True))


def test_prompt_tokens_formula() -> None:
    assert prompt_tokens([{"role": "user", "content": "hello world!"}]) == 3 + 4
    assert prompt_tokens([]) == 1  # never zero
    assert prompt_tokens("abcdefgh") == 2 + 4  # a plain string is one message
    assert prompt_tokens([{"role": "user", "content": "é" * 8}]) == 4 + 4  # UTF-8 bytes
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "x" * 99}},
            ],
        }
    ]
    assert prompt_tokens(parts) == 1 + 4  # only text counts
    anthropic = [
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "text", "text": "abcdabcd"}],
                }
            ],
        }
    ]
    assert prompt_tokens(anthropic, "system!!") == (8 + 8) // 4 + 4
    system_blocks = [{"type": "text", "text": "abcd"}]
    assert prompt_tokens([{"role": "user", "content": "abcd"}], system_blocks) == 2 + 4
    responses = [
        {"type": "function_call_output", "call_id": "c", "output": "abcdabcd"},
        {"role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
    ]
    assert prompt_tokens(responses) == 3 + 8
    tool_calls = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        }
    ]
    assert prompt_tokens(tool_calls) == 7 // 4 + 4


def test_embeddings() -> None:
    v = embedding_vector("alpha", 16)
    assert v == embedding_vector("alpha", 16) and v != embedding_vector("beta", 16)
    assert abs(sum(x * x for x in v) - 1.0) < 1e-4
    decoded = array.array("f", base64.b64decode(embedding_base64(v)))
    assert [round(x, 5) for x in decoded] == [round(x, 5) for x in v]
    assert embedding_input_tokens("abcdefgh") == 2
    assert embedding_input_tokens(["a", "abcdefgh"]) == 1 + 2
    assert embedding_input_tokens([1, 2, 3]) == 3


def test_tool_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "e": {"enum": ["x", "y"]},
            "a": {"type": "array", "items": {"type": "integer"}},
            "o": {"type": "object", "properties": {"z": {"type": ["null", "string"]}}},
        },
    }
    assert sample_arguments(schema) == {
        "s": "mock",
        "i": 1,
        "n": 1.5,
        "b": True,
        "e": "x",
        "a": [1],
        "o": {"z": "mock"},
    }
    assert sample_arguments({}) == "mock"
    args = json.dumps(sample_arguments(schema))
    frags = argument_fragments(args)
    assert "".join(frags) == args and len(frags) > 1
    assert argument_fragments("") == [""]
