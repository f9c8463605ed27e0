"""The dialect modules as plain functions: error bodies, stream usage, usage normal form.

tests/reliability/test_fuzz_dialects.py already proves the invariants on arbitrary input
(never raising, the error *shape*, prompt/total arithmetic, framing of error events).
These are the worked examples it does not pin: which error ``type`` each status gets (an
SDK picks its exception class and retry policy from it), where cached and reasoning
tokens come from in each API's usage object, and how one Anthropic stream's two usage
reports merge into one record.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastproxy.dataplane.dialects import anthropic, from_anthropic, from_openai, openai

# --------------------------------------------------------------------------------------
# error bodies


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        # Anthropic has a not-found type; OpenAI reports an unknown model as a bad request.
        (404, "invalid_request_error", "not_found_error"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "server_error", "api_error"),
        # Anthropic's SDK retries overloaded_error; a 503/529 must be one.
        (503, "server_error", "overloaded_error"),
        (529, "server_error", "overloaded_error"),
        (504, "server_error", "timeout_error"),
        # Statuses with no entry fall back by class: 4xx a request error, 5xx a server one.
        (418, "invalid_request_error", "invalid_request_error"),
        (599, "server_error", "api_error"),
    ],
)
def test_error_type_by_status(status: int, openai_type: str, anthropic_type: str) -> None:
    o = orjson.loads(openai.error_body(status, "m"))
    a = orjson.loads(anthropic.error_body(status, "m"))
    assert o["error"]["type"] == openai_type
    assert a["error"]["type"] == anthropic_type


def test_error_bodies_carry_message_code_and_param() -> None:
    message, code, param = 'model "x" not found\nline two', "model_not_found", "model"
    assert orjson.loads(openai.error_body(404, message, code, param)) == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }
    # Anthropic's error object has no code or param: they are dropped, not invented.
    assert orjson.loads(anthropic.error_body(404, message, code, param)) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": message},
    }


def test_stream_error_events() -> None:
    # OpenAI streams have no event names: a bare data event, which is not [DONE], so a
    # client cannot take a cut stream for a finished one.
    raw = openai.stream_error_event("cut", "stream_truncated")
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    body = orjson.loads(raw[len(b"data: ") : -2])
    assert body["error"]["code"] == "stream_truncated" and body["error"]["message"] == "cut"
    assert not openai.is_terminal(b"", raw[6:-2])
    # Anthropic names the event "error", as its API does mid-stream.
    raw = anthropic.stream_error_event("cut", "stream_truncated")
    head, data = raw.split(b"\n", 1)
    assert head == b"event: error"
    assert orjson.loads(data.removeprefix(b"data: ").rstrip(b"\n")) == {
        "type": "error",
        "error": {"type": "api_error", "message": "cut"},
    }
    assert not anthropic.is_terminal(b"error", data)


# --------------------------------------------------------------------------------------
# usage parsing: where each figure comes from


def test_from_openai_chat_usage() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 128},
        "cost": 0.0042,
    }
    u = from_openai(usage)
    assert u is not None
    assert u.as_dict() == {
        "prompt": 1200,
        "completion": 300,
        "total": 1500,
        "cached": 1024,
        "cache_write": None,  # OpenAI never reports cache writes
        "reasoning": 128,  # inside completion, not added to it
        "cost": 0.0042,
    }


def test_from_openai_responses_usage_uses_the_input_output_names() -> None:
    usage = {
        "input_tokens": 50,
        "output_tokens": 70,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens_details": {"reasoning_tokens": 30},
    }
    u = from_openai(usage)
    assert u is not None
    assert (u.prompt, u.completion, u.cached, u.reasoning) == (50, 70, 20, 30)
    # No total_tokens sent: derived from the two parts.
    assert u.total == usage["input_tokens"] + usage["output_tokens"]


def test_from_openai_embeddings_usage_has_no_completion() -> None:
    u = from_openai({"prompt_tokens": 8, "total_tokens": 8})
    assert u is not None
    assert (u.prompt, u.completion, u.total) == (8, None, 8)


def test_from_anthropic_prompt_includes_cache_reads_and_writes() -> None:
    usage = {
        "input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 1000,
        "output_tokens": 50,
    }
    u = from_anthropic(usage)
    assert u is not None
    prompt = (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    assert u.prompt == prompt
    assert u.cached == usage["cache_read_input_tokens"]
    assert u.cache_write == usage["cache_creation_input_tokens"]
    assert u.completion == usage["output_tokens"]
    assert u.total == prompt + usage["output_tokens"]


@pytest.mark.parametrize(
    "bad",
    [True, -1, 1.5, "12", None, 2**40 + 1],
    ids=["bool", "negative", "float", "string", "null", "too-large"],
)
def test_a_count_that_is_not_a_count_is_not_reported(bad: Any) -> None:
    # A broken figure becomes "not reported", never a wrong number in the record.
    u = from_openai({"prompt_tokens": 5, "completion_tokens": bad})
    assert u is not None and u.prompt == 5 and u.completion is None and u.total == 5
    a = from_anthropic({"input_tokens": bad, "output_tokens": 3})
    assert a is not None and a.prompt is None and a.total is None and a.completion == 3


# --------------------------------------------------------------------------------------
# usage in stream events


def _j(obj: Any) -> bytes:
    return orjson.dumps(obj)


def test_openai_usage_only_chunk_is_marked_strippable() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    u, usage_only = openai.stream_usage(b"", _j({"choices": [], "usage": usage}))
    assert usage_only is True
    assert u is not None and (u.prompt, u.completion, u.total) == (7, 3, 10)
    # The same usage on a chunk that also carries a choice is content: never stripped.
    choice = {"index": 0, "delta": {"content": "x"}}
    u, usage_only = openai.stream_usage(b"", _j({"choices": [choice], "usage": usage}))
    assert usage_only is False and u is not None and u.completion == 3
    # "usage": null (sent on every chunk once usage is on) is no usage at all.
    assert openai.stream_usage(b"", _j({"choices": [choice], "usage": None})) == (None, False)


def test_openai_responses_usage_is_inside_the_response_object() -> None:
    data = _j(
        {
            "type": "response.completed",
            "response": {"status": "completed", "usage": {"input_tokens": 9, "output_tokens": 4}},
        }
    )
    u, usage_only = openai.stream_usage(b"response.completed", data)
    assert usage_only is False  # a terminal event: never removed
    assert u is not None and (u.prompt, u.completion, u.total) == (9, 4, 13)
    assert openai.is_terminal(b"response.completed", data)


def test_anthropic_stream_usage_merges_start_and_delta() -> None:
    """message_start carries the input figures and a placeholder output of 1;
    message_delta carries the real output. Merged, they are the request's usage."""
    start_usage = {
        "input_tokens": 40,
        "cache_read_input_tokens": 500,
        "cache_creation_input_tokens": 0,
        "output_tokens": 1,
    }
    start = _j({"type": "message_start", "message": {"id": "m", "usage": start_usage}})
    delta = _j(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 25},
        }
    )
    first, strip1 = anthropic.stream_usage(b"message_start", start)
    later, strip2 = anthropic.stream_usage(b"message_delta", delta)
    assert strip1 is strip2 is False  # Anthropic's usage events are never removed
    assert first is not None and later is not None
    assert (first.prompt, first.completion) == (540, 1)
    first.merge(later)
    assert first.prompt == 540 and first.cached == 500  # kept: the delta lacks them
    assert first.completion == 25
    assert first.total == 540 + 25  # recomputed from the merged parts
    assert anthropic.is_terminal(b"message_stop", b'{"type":"message_stop"}')
    assert not anthropic.is_terminal(b"message_delta", delta)
