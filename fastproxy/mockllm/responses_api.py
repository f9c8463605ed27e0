"""OpenAI Responses API: ``POST /v1/responses`` as JSON and as its typed SSE event stream.

The done events (``response.output_text.done``, ``content_part.done``, ``output_item.done``,
``response.completed``) repeat the whole text, as the real API does. For a huge stream that
text would be the one thing held in memory, so those events are written in pieces: the JSON
around the text is rendered once with a placeholder, and the text is regenerated lazily
(it is deterministic) and escaped token by token between the two halves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from . import text
from .behaviour import DEFAULT_PLAN
from .dialect import begin, pick_tool, responses_usage
from .protocol import Reply
from .responder import (
    Ctx,
    StreamScript,
    error_reply,
    json_reply,
    parse_json_body,
    stream_reply,
)

_PLACEHOLDER = "\x00mock-text\x00"
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)
_PIECE_BYTES = 16 * 1024
_MALFORMED = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"unterminated\n\nthis line has no colon\n\n'
)


def _last_is_tool_result(items: Any) -> bool:
    return (
        isinstance(items, list)
        and bool(items)
        and isinstance(items[-1], dict)
        and items[-1].get("type") == "function_call_output"
    )


def responses(ctx: Ctx) -> Reply:
    body = parse_json_body(ctx)
    if not isinstance(body, dict):
        return body
    started = begin(ctx, body)
    if not isinstance(started, tuple):
        return started
    model, plan = started
    items = body.get("input")
    if not isinstance(items, (str, list)) or not items:
        return error_reply(
            ctx, DEFAULT_PLAN, 400, "input must be a non-empty string or array", "input"
        )
    prompt = text.prompt_tokens(items, body.get("instructions"))
    tool = pick_tool(body.get("tools"), body.get("tool_choice"), _last_is_tool_result(items))
    rid = ctx.new_id("resp_")
    created = int(time.time())
    stream = body.get("stream") is True
    base = _base(rid, created, model, body)

    if tool is not None:
        name, schema = tool
        arguments = orjson.dumps(text.sample_arguments(schema)).decode()
        fragments = text.argument_fragments(arguments)
        call = {
            "id": ctx.new_id("fc_"),
            "type": "function_call",
            "status": "completed",
            "call_id": ctx.new_id("call_"),
            "name": name,
            "arguments": arguments,
        }
        usage = responses_usage(prompt, len(fragments), plan)
        if stream:
            return stream_reply(ctx, plan, _tool_script(base, call, fragments, usage))
        return json_reply(
            ctx, plan, 200, orjson.dumps(dict(base, status="completed", output=[call], usage=usage))
        )

    n_tokens, cut = plan.completion_tokens(body.get("max_output_tokens"))
    usage = responses_usage(prompt, n_tokens, plan)
    item_id = ctx.new_id("msg_")
    if stream:

        def tokens() -> Iterator[str]:
            return text.content_tokens(model, n_tokens, plan.event_bytes)

        return stream_reply(ctx, plan, _text_script(base, item_id, tokens, usage, cut))
    final = dict(
        base,
        output=[
            _message_item(
                item_id, text.content_text(model, n_tokens, plan.event_bytes), "completed"
            )
        ],
        usage=usage,
    )
    if cut:
        final.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    return json_reply(ctx, plan, 200, orjson.dumps(final))


def _base(rid: str, created: int, model: str, body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools if isinstance(tools, list) else [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }


def _message_item(item_id: str, content: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": content, "annotations": []}],
    }


class _Seq:
    """Numbers events in order (``sequence_number``) and renders them as SSE bytes."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def event(self, payload: dict[str, Any]) -> bytes:
        kind: str = payload["type"]
        payload["sequence_number"] = self.n
        self.n += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _with_text(rendered: bytes, tokens: Callable[[], Iterator[str]]) -> Iterator[bytes]:
    """Yield ``rendered`` with its placeholder string replaced by the lazily escaped text."""
    before, _, after = rendered.partition(_PLACEHOLDER_JSON)
    dumps = orjson.dumps
    buf = [before, b'"']
    size = 0
    for tok in tokens():
        piece = dumps(tok)[1:-1]
        buf.append(piece)
        size += len(piece)
        if size >= _PIECE_BYTES:
            yield b"".join(buf)
            buf = []
            size = 0
    buf.append(b'"')
    buf.append(after)
    yield b"".join(buf)


def _deltas(seq: _Seq, prefix: bytes, pieces: Iterable[str], suffix: bytes) -> Iterator[bytes]:
    dumps = orjson.dumps
    for piece in pieces:
        n = seq.n
        seq.n += 1
        yield prefix + str(n).encode() + b',"delta":' + dumps(piece) + suffix


def _text_script(
    base: dict[str, Any],
    item_id: str,
    tokens: Callable[[], Iterator[str]],
    usage: dict[str, Any],
    cut: bool,
) -> StreamScript:
    seq = _Seq()
    running = dict(base, status="in_progress")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    preamble = [
        seq.event({"type": "response.created", "response": running}),
        seq.event({"type": "response.in_progress", "response": running}),
        seq.event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": dict(_message_item(item_id, "", "in_progress"), content=[]),
            }
        ),
        seq.event(
            dict(
                where,
                type="response.content_part.added",
                part={"type": "output_text", "text": "", "annotations": []},
            )
        ),
    ]
    prefix = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"item_id":' + orjson.dumps(item_id) + b',"output_index":0,"content_index":0,'
        b'"logprobs":[],"sequence_number":'
    )
    content = _deltas(seq, prefix, tokens(), b"}\n\n")

    def terminal() -> Iterator[bytes]:
        # Rendered only after the deltas, so the sequence numbers continue from theirs.
        part = {"type": "output_text", "text": _PLACEHOLDER, "annotations": []}
        yield from _with_text(
            seq.event(
                dict(where, type="response.output_text.done", text=_PLACEHOLDER, logprobs=[])
            ),
            tokens,
        )
        yield from _with_text(
            seq.event(dict(where, type="response.content_part.done", part=part)), tokens
        )
        item = _message_item(item_id, _PLACEHOLDER, "completed")
        yield from _with_text(
            seq.event({"type": "response.output_item.done", "output_index": 0, "item": item}),
            tokens,
        )
        final = dict(base, output=[item], usage=usage)
        kind = "response.completed"
        if cut:
            kind = "response.incomplete"
            final.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
        yield from _with_text(seq.event({"type": kind, "response": final}), tokens)

    return StreamScript(preamble, content, terminal(), _MALFORMED)


def _tool_script(
    base: dict[str, Any], call: dict[str, Any], fragments: list[str], usage: dict[str, Any]
) -> StreamScript:
    seq = _Seq()
    running = dict(base, status="in_progress")
    preamble = [
        seq.event({"type": "response.created", "response": running}),
        seq.event({"type": "response.in_progress", "response": running}),
        seq.event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": dict(call, arguments="", status="in_progress"),
            }
        ),
    ]
    prefix = (
        b'event: response.function_call_arguments.delta\ndata: {"type":'
        b'"response.function_call_arguments.delta","item_id":'
        + orjson.dumps(call["id"])
        + b',"output_index":0,"sequence_number":'
    )
    content = _deltas(seq, prefix, fragments, b"}\n\n")

    def terminal() -> Iterator[bytes]:
        yield seq.event(
            {
                "type": "response.function_call_arguments.done",
                "item_id": call["id"],
                "output_index": 0,
                "arguments": call["arguments"],
            }
        )
        yield seq.event({"type": "response.output_item.done", "output_index": 0, "item": call})
        yield seq.event(
            {"type": "response.completed", "response": dict(base, output=[call], usage=usage)}
        )

    return StreamScript(preamble, content, terminal(), _MALFORMED)
