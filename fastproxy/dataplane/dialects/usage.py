"""Backend-reported usage, normalised across dialects.

Normal form: ``prompt`` counts every prompt token the backend processed, cached ones
included (OpenAI's convention). Anthropic reports ``input_tokens`` *excluding* cache reads
and writes, so its prompt is ``input + cache_read + cache_write``; ``cached`` and
``cache_write`` then say how many of those were cache reads and writes. ``reasoning`` is
inside ``completion`` in both dialects. One normal form means cost and stats code has
one formula, not one per provider.
"""

from __future__ import annotations

import math
from typing import Any


class BackendUsage:
    __slots__ = ("cache_write", "cached", "completion", "cost", "prompt", "reasoning", "total")

    def __init__(
        self,
        prompt: int | None = None,
        completion: int | None = None,
        total: int | None = None,
        cached: int | None = None,
        cache_write: int | None = None,
        reasoning: int | None = None,
        cost: float | None = None,
    ) -> None:
        self.prompt = prompt
        self.completion = completion
        self.total = total
        self.cached = cached
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.cost = cost

    def merge(self, other: BackendUsage) -> None:
        """Fill fields from a later report (Anthropic sends input at start, output at end)."""
        for name in self.__slots__:
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        if other.total is None and self.prompt is not None and self.completion is not None:
            self.total = self.prompt + self.completion

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}

    def as_row(self) -> tuple[int | float | None, ...]:
        """The values in ``__slots__`` order (sorted, as ``as_dict``): the stored form."""
        return (
            self.cache_write,
            self.cached,
            self.completion,
            self.cost,
            self.prompt,
            self.reasoning,
            self.total,
        )

    def __repr__(self) -> str:
        return f"BackendUsage({self.as_dict()})"


# A count or cost outside these bounds is a broken backend, not a request: it is treated
# as not reported (the record says null), so no sum, price or JSON encoding ever meets it.
MAX_TOKENS = 2**40


def _int(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS:
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
    prompt = _int(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion is None:
        completion = _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    pdet = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cdet = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = _int(pdet.get("cached_tokens")) if isinstance(pdet, dict) else None
    reasoning = _int(cdet.get("reasoning_tokens")) if isinstance(cdet, dict) else None
    if total is None and prompt is not None:
        total = prompt + (completion or 0)
    return BackendUsage(prompt, completion, total, cached, None, reasoning, _num(usage.get("cost")))


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
