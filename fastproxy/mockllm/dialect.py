"""Request-side pieces the three API modules share: model + plan resolution, tool choice, usage.

Usage figures follow the providers' own accounting, so a gateway computing costs from them
meets the same conventions as in production:

* the visible prompt (``text.prompt_tokens``) is the *uncached* input; ``cache_read`` and
  ``cache_write`` come on top of it;
* OpenAI-style ``prompt_tokens``/``input_tokens`` include cached and cache-write tokens
  (``cached_tokens`` says how many were cache reads); Anthropic's ``input_tokens`` excludes
  them and reports them in ``cache_read_input_tokens``/``cache_creation_input_tokens``;
* reasoning tokens are part of the completion/output count, as all three APIs report them.
"""

from __future__ import annotations

from typing import Any

from .behaviour import DEFAULT_PLAN, Plan, SteeringError, split_model
from .protocol import Reply
from .responder import Ctx, error_reply


def begin(ctx: Ctx, body: dict[str, Any]) -> tuple[str, Plan] | Reply:
    """(echoed model, resolved plan), or the error reply that ends the request here."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error_reply(ctx, DEFAULT_PLAN, 400, "you must provide a model parameter", "model")
    try:
        name, layer = split_model(model)
        plan = ctx.plan(layer)
    except SteeringError as exc:
        return error_reply(ctx, DEFAULT_PLAN, 400, str(exc), "model")
    if plan.status is not None:
        return error_reply(ctx, plan, plan.status)
    return name, plan


def tool_spec(tool: Any) -> tuple[str, Any] | None:
    """(name, JSON schema) of a tool in any dialect's shape, or None if it is not a function."""
    if not isinstance(tool, dict):
        return None
    fn = tool["function"] if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    return name, fn.get("parameters") or fn.get("input_schema") or {}


def pick_tool(tools: Any, choice: Any, last_was_tool_result: bool) -> tuple[str, Any] | None:
    """The tool the mock "decides" to call: the named one, else the first; None for text.

    After a tool result the mock answers in text unless a tool is forced, so an agent loop
    driven by the mock ends instead of calling tools forever.
    """
    if not isinstance(tools, list) or not tools:
        return None
    specs = [s for t in tools if (s := tool_spec(t)) is not None]
    if not specs:
        return None
    forced_name: str | None = None
    forced = False
    if isinstance(choice, str):
        if choice == "none":
            return None
        forced = choice in ("required", "any")
    elif isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "none":
            return None
        fn = choice.get("function")
        forced_name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        forced = kind in ("any", "tool", "function") or forced_name is not None
    if last_was_tool_result and not forced:
        return None
    if forced_name:
        for spec in specs:
            if spec[0] == forced_name:
                return spec
    return specs[0]


def openai_usage(prompt: int, completion: int, plan: Plan) -> dict[str, Any]:
    """Chat Completions ``usage`` (also the shape OpenRouter extends with ``cost``)."""
    total_prompt = prompt + plan.cache_read + plan.cache_write
    out_tokens = completion + plan.reasoning_tokens
    details: dict[str, Any] = {"cached_tokens": plan.cache_read, "audio_tokens": 0}
    if plan.cache_write:
        details["cache_write_tokens"] = plan.cache_write
    usage: dict[str, Any] = {
        "prompt_tokens": total_prompt,
        "completion_tokens": out_tokens,
        "total_tokens": total_prompt + out_tokens,
        "prompt_tokens_details": details,
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if plan.cost is not None:
        usage["cost"] = plan.cost
    return usage


def responses_usage(prompt: int, completion: int, plan: Plan) -> dict[str, Any]:
    total_prompt = prompt + plan.cache_read + plan.cache_write
    out_tokens = completion + plan.reasoning_tokens
    usage: dict[str, Any] = {
        "input_tokens": total_prompt,
        "input_tokens_details": {"cached_tokens": plan.cache_read},
        "output_tokens": out_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": total_prompt + out_tokens,
    }
    if plan.cost is not None:
        usage["cost"] = plan.cost
    return usage


def anthropic_usage(prompt: int, completion: int, plan: Plan) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "output_tokens": completion + plan.reasoning_tokens,
        "cache_read_input_tokens": plan.cache_read,
        "cache_creation_input_tokens": plan.cache_write,
    }
    if plan.cost is not None:
        usage["cost"] = plan.cost
    return usage
