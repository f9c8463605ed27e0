"""OpenAI dialect: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/embeddings``.

Shapes follow api.openai.com closely enough for the official SDK to parse every field a
gateway reads. Stream content events are built from a per-stream byte prefix and suffix around
``orjson.dumps(token)``: a million-token stream then costs one small concatenation per event
instead of one full ``dumps`` of a nested dict.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from . import text
from .behaviour import DEFAULT_PLAN
from .dialect import begin, openai_usage, pick_tool
from .protocol import Reply
from .responder import (
    Ctx,
    StreamScript,
    error_reply,
    json_reply,
    parse_json_body,
    stream_reply,
)

MODEL_CREATED = 1_700_000_000  # a fixed "created" so the models list is byte-identical each run
DEFAULT_EMBEDDING_DIMS = 1536  # text-embedding-3-small's size
_DONE = b"data: [DONE]\n\n"
_NO_COLON = b"this line has no colon\n\n"


def models_body(models: list[str]) -> bytes:
    return orjson.dumps({"object": "list", "data": [_model_entry(m) for m in models]})


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "mock"}


def list_models(ctx: Ctx, body: bytes) -> Reply:
    plan = ctx.plan()
    if plan.status is not None:
        return error_reply(ctx, plan, plan.status)
    return json_reply(ctx, plan, 200, body)


def get_model(ctx: Ctx, models: list[str], model: str) -> Reply:
    plan = ctx.plan()
    if plan.status is not None:
        return error_reply(ctx, plan, plan.status)
    if model not in models:
        return error_reply(ctx, DEFAULT_PLAN, 404, f"The model '{model}' does not exist", "model")
    return json_reply(ctx, plan, 200, orjson.dumps(_model_entry(model)))


def _last_is_tool_result(messages: list[Any]) -> bool:
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def chat_completions(ctx: Ctx) -> Reply:
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    model, plan = started
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_reply(ctx, DEFAULT_PLAN, 400, "messages must be a non-empty array", "messages")
    prompt = text.prompt_tokens(messages)
    tool = pick_tool(body.get("tools"), body.get("tool_choice"), _last_is_tool_result(messages))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    n_tokens, cut = plan.completion_tokens(limit)
    cid = ctx.new_id("chatcmpl-")
    created = int(time.time())
    stream = body.get("stream") is True

    if tool is not None:
        name, schema = tool
        arguments = orjson.dumps(text.sample_arguments(schema)).decode()
        fragments = text.argument_fragments(arguments)
        call_id = ctx.new_id("call_")
        usage = openai_usage(prompt, len(fragments), plan)
        if stream:
            return stream_reply(
                ctx,
                plan,
                _tool_script(
                    cid, created, model, call_id, name, fragments, usage, _include_usage(body)
                ),
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        }
        return json_reply(
            ctx, plan, 200, _completion(cid, created, model, message, "tool_calls", usage)
        )

    finish = "length" if cut else "stop"
    usage = openai_usage(prompt, n_tokens, plan)
    if stream:
        tokens = text.content_tokens(model, n_tokens, plan.event_bytes)
        return stream_reply(
            ctx,
            plan,
            _text_script(cid, created, model, tokens, finish, usage, _include_usage(body)),
        )
    message = {
        "role": "assistant",
        "content": text.content_text(model, n_tokens, plan.event_bytes),
        "refusal": None,
    }
    return json_reply(ctx, plan, 200, _completion(cid, created, model, message, finish, usage))


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def _completion(
    cid: str, created: int, model: str, message: dict[str, Any], finish: str, usage: dict[str, Any]
) -> bytes:
    return orjson.dumps(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
            "system_fingerprint": "fp_mock",
        }
    )


def _chunk_head(cid: str, created: int, model: str) -> bytes:
    return (
        b'data: {"id":'
        + orjson.dumps(cid)
        + b',"object":"chat.completion.chunk","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"system_fingerprint":"fp_mock","choices":'
    )


def _chunk(head: bytes, delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return head + orjson.dumps([choice]) + b"}\n\n"


def _events(prefix: bytes, pieces: Iterable[str], suffix: bytes) -> Iterator[bytes]:
    dumps = orjson.dumps
    for piece in pieces:
        yield prefix + dumps(piece) + suffix


def _terminal(head: bytes, finish: str, usage: dict[str, Any], include_usage: bool) -> list[bytes]:
    out = [_chunk(head, {}, finish)]
    if include_usage:
        out.append(head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    out.append(_DONE)
    return out


def _malformed(head: bytes) -> bytes:
    return head + b'[{"index":0,"delta":{"content":"unterminated\n\n' + _NO_COLON


def _text_script(
    cid: str,
    created: int,
    model: str,
    tokens: Iterable[str],
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
) -> StreamScript:
    head = _chunk_head(cid, created, model)
    return StreamScript(
        preamble=[_chunk(head, {"role": "assistant", "content": "", "refusal": None}, None)],
        content=_events(
            head + b'[{"index":0,"delta":{"content":',
            tokens,
            b'},"logprobs":null,"finish_reason":null}]}\n\n',
        ),
        terminal=_terminal(head, finish, usage, include_usage),
        malformed=_malformed(head),
    )


def _tool_script(
    cid: str,
    created: int,
    model: str,
    call_id: str,
    name: str,
    fragments: list[str],
    usage: dict[str, Any],
    include_usage: bool,
) -> StreamScript:
    head = _chunk_head(cid, created, model)
    first = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
        ],
    }
    return StreamScript(
        preamble=[_chunk(head, first, None)],
        content=_events(
            head + b'[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":',
            fragments,
            b'}}]},"logprobs":null,"finish_reason":null}]}\n\n',
        ),
        terminal=_terminal(head, "tool_calls", usage, include_usage),
        malformed=_malformed(head),
    )


def embeddings(ctx: Ctx) -> Reply:
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    model, plan = started
    raw = body.get("input")
    if raw is None or raw == "" or raw == []:
        return error_reply(
            ctx, DEFAULT_PLAN, 400, "input must be a non-empty string or array", "input"
        )
    dims = body.get("dimensions", DEFAULT_EMBEDDING_DIMS)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192:
        return error_reply(
            ctx, DEFAULT_PLAN, 400, "dimensions must be an integer in 1..8192", "dimensions"
        )
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(text.embedding_inputs(raw)):
        vector = text.embedding_vector(item, dims)
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": text.embedding_base64(vector) if as_base64 else vector,
            }
        )
    tokens = text.embedding_input_tokens(raw)
    usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if plan.cost is not None:
        usage["cost"] = plan.cost
    return json_reply(
        ctx,
        plan,
        200,
        orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage}),
    )


def legacy_completions(ctx: Ctx) -> Reply:
    """Legacy ``POST /v1/completions`` (text_completion), JSON only: many OpenAI-compatible
    clients still send it, so the gateway must relay it and the mock must answer it."""
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    model, plan = started
    prompt_raw = body.get("prompt")
    if not isinstance(prompt_raw, str | list) or not prompt_raw:
        return error_reply(ctx, DEFAULT_PLAN, 400, "prompt must be a non-empty string", "prompt")
    if body.get("stream") is True:
        return error_reply(
            ctx, DEFAULT_PLAN, 400, "the mock serves legacy completions as JSON only", "stream"
        )
    prompt_text = prompt_raw if isinstance(prompt_raw, str) else " ".join(map(str, prompt_raw))
    prompt = text.prompt_tokens([{"role": "user", "content": prompt_text}])
    n_tokens, cut = plan.completion_tokens(body.get("max_tokens"))
    usage = openai_usage(prompt, n_tokens, plan)
    return json_reply(
        ctx,
        plan,
        200,
        orjson.dumps(
            {
                "id": ctx.new_id("cmpl-"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": text.content_text(model, n_tokens, plan.event_bytes),
                        "logprobs": None,
                        "finish_reason": "length" if cut else "stop",
                    }
                ],
                "usage": usage,
            }
        ),
    )
