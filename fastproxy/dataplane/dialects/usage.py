"""Backend-reported usage parsed from each dialect into `BackendUsage` (core/records.py).

The normal form itself is described there: one form, so cost and stats code has one
formula, not one per provider.
"""

from __future__ import annotations

import math
from typing import Any

from ...core.records import BackendUsage

# A count or cost outside these bounds is a broken backend, not a request: it is treated
# as not reported (the record says null), so no sum, price or JSON encoding ever meets it.
MAX_TOKENS = 2**40


def _int(v: Any) -> int | None:
    # type() is: a bool is an int subclass and never a count (and it is the quick test).
    if type(v) is int and 0 <= v <= MAX_TOKENS:
        return v
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) and f >= 0 else None


def from_openai(usage: Any) -> BackendUsage | None:
    """Chat Completions, Responses API and embeddings ``usage`` objects."""
    if not isinstance(usage, dict):
        return None
    get = usage.get
    # The three counts every answer carries are tested inline (each an ``_int``):
    # this runs on the event loop for every request.
    prompt = get("prompt_tokens")
    if type(prompt) is not int or not 0 <= prompt <= MAX_TOKENS:
        prompt = _int(get("input_tokens"))
    completion = get("completion_tokens")
    if type(completion) is not int or not 0 <= completion <= MAX_TOKENS:
        completion = _int(get("output_tokens"))
    total = get("total_tokens")
    if type(total) is not int or not 0 <= total <= MAX_TOKENS:
        total = None
    cached = reasoning = None
    # The detail objects are optional and often absent: looked into only when there.
    pdet = get("prompt_tokens_details") or get("input_tokens_details")
    if isinstance(pdet, dict):
        cached = _int(pdet.get("cached_tokens"))
    cdet = get("completion_tokens_details") or get("output_tokens_details")
    if isinstance(cdet, dict):
        reasoning = _int(cdet.get("reasoning_tokens"))
    if total is None and prompt is not None:
        total = prompt + (completion or 0)
    cost = get("cost")
    return BackendUsage(
        prompt, completion, total, cached, None, reasoning, None if cost is None else _num(cost)
    )


def from_anthropic(usage: Any) -> BackendUsage | None:
    if not isinstance(usage, dict):
        return None
    inp = _int(usage.get("input_tokens"))
    out = _int(usage.get("output_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    prompt = None if inp is None else inp + (read or 0) + (write or 0)
    total = None if prompt is None or out is None else prompt + out
    return BackendUsage(prompt, out, total, read, write, None, _num(usage.get("cost")))
