"""Anthropic dialect: ``/v1/messages`` (JSON and SSE) and ``/v1/messages/count_tokens``.

The stream follows the documented event order (``message_start``, ``content_block_start``,
``ping``, deltas, ``content_block_stop``, ``message_delta``, ``message_stop``), each with its
``event:`` line, so the official SDK's stream accumulator builds the same message as the JSON
answer. ``message_start`` carries the input and cache figures with ``output_tokens: 1``, and
``message_delta`` the final output count, exactly where a gateway looks for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from . import text
from .behaviour import DEFAULT_PLAN
from .dialect import anthropic_usage, begin, pick_tool
from .protocol import Reply
from .responder import (
    Ctx,
    StreamScript,
    error_reply,
    json_reply,
    parse_json_body,
    sse,
    stream_reply,
)

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_MALFORMED = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"unterminated\n\nthis line has no colon\n\n'
)


def _last_is_tool_result(messages: list[Any]) -> bool:
    if not messages or not isinstance(messages[-1], dict):
        return False
    content = messages[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _check(ctx: Ctx, body: dict[str, Any]) -> Reply | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_reply(ctx, DEFAULT_PLAN, 400, "messages: field required")
    return None


def count_tokens(ctx: Ctx) -> Reply:
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    _, plan = started
    bad = _check(ctx, body)
    if bad is not None:
        return bad
    tokens = text.prompt_tokens(body["messages"], body.get("system"))
    return json_reply(ctx, plan, 200, orjson.dumps({"input_tokens": tokens}))


def messages(ctx: Ctx) -> Reply:
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    model, plan = started
    bad = _check(ctx, body)
    if bad is not None:
        return bad
    msgs = body["messages"]
    prompt = text.prompt_tokens(msgs, body.get("system"))
    tool = pick_tool(body.get("tools"), body.get("tool_choice"), _last_is_tool_result(msgs))
    mid = ctx.new_id("msg_")
    stream = body.get("stream") is True

    if tool is not None:
        name, schema = tool
        arguments = text.sample_arguments(schema)
        fragments = text.argument_fragments(orjson.dumps(arguments).decode())
        tool_id = ctx.new_id("toolu_")
        usage = anthropic_usage(prompt, len(fragments), plan)
        if stream:
            block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            deltas = _events(b'{"type":"input_json_delta","partial_json":', fragments)
            return stream_reply(ctx, plan, _script(mid, model, usage, block, deltas, "tool_use"))
        content = [{"type": "tool_use", "id": tool_id, "name": name, "input": arguments}]
        return json_reply(ctx, plan, 200, _message(mid, model, content, "tool_use", usage))

    n_tokens, cut = plan.completion_tokens(body.get("max_tokens"))
    stop = "max_tokens" if cut else "end_turn"
    usage = anthropic_usage(prompt, n_tokens, plan)
    if stream:
        tokens = text.content_tokens(model, n_tokens, plan.event_bytes)
        block = {"type": "text", "text": ""}
        deltas = _events(b'{"type":"text_delta","text":', tokens)
        return stream_reply(ctx, plan, _script(mid, model, usage, block, deltas, stop))
    content = [{"type": "text", "text": text.content_text(model, n_tokens, plan.event_bytes)}]
    return json_reply(ctx, plan, 200, _message(mid, model, content, stop, usage))


def _message(
    mid: str, model: str, content: list[dict[str, Any]], stop: str, usage: dict[str, Any]
) -> bytes:
    return orjson.dumps(
        {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
    )


def _events(delta_prefix: bytes, pieces: Iterable[str]) -> Iterator[bytes]:
    prefix = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":' + delta_prefix
    )
    dumps = orjson.dumps
    for piece in pieces:
        yield prefix + dumps(piece) + b"}}\n\n"


def _script(
    mid: str,
    model: str,
    usage: dict[str, Any],
    block: dict[str, Any],
    deltas: Iterator[bytes],
    stop: str,
) -> StreamScript:
    start_usage = dict(usage, output_tokens=1)
    start_usage.pop("cost", None)
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    return StreamScript(
        preamble=[
            sse("message_start", {"type": "message_start", "message": message}),
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            _PING,
        ],
        content=deltas,
        terminal=[
            _BLOCK_STOP,
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": usage,
                },
            ),
            _STOP,
        ],
        malformed=_MALFORMED,
    )
