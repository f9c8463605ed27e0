"""What a request cost, in USD: the backend's own figure first, else a price table.

Rules (docs/usage-tracking.md explains each):

1. A backend that reports a cost (OpenRouter-style ``usage.cost``) is believed:
   ``cost_source = "backend"``.
2. Otherwise the model's price comes from ``usage_tracking.pricing`` (config), else the
   built-in table below. A model matches a key exactly, or as that key plus a snapshot
   suffix (``-2024-08-06``, ``-20250929``, ``-latest``, Bedrock's ``-v1:0``); the
   longest such key wins. Nothing looser: ``o3-pro`` costs ten times ``o3``, so a bare
   prefix match would be a guess, and an unknown model gets no cost at all.
3. Tokens are in the normal form of ``dialects/usage.py``: ``prompt`` includes cache
   reads (``cached``) and cache writes (``cache_write``); ``completion`` includes
   reasoning. So one formula serves both providers::

       cost = ((prompt - cached - cache_write) * input + cached * cached_input
               + cache_write * cache_write_price + completion * output) / 1e6

   ``cached_input`` and ``cache_write`` default to ``input`` when a price lacks them.
4. Without backend usage, the same formula runs on the proxy's own counts (prompt as
   sent to the backend, completion as received from it), with ``cost_source`` still
   ``"price_table"``: the record's ``usage_source`` says the tokens were counted or
   estimated. Requests that got no successful answer and no usage are not billed by
   providers, so they get no cost.

Pure functions and immutable data: the table is built once per service and only read
(apart from a memo of its answers per model name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from ..core.records import BackendUsage

__all__ = ["BUILTIN_PRICES", "TABLE_DATE", "Price", "PriceTable", "compute_cost"]


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


# Public list prices, standard tier (no batch or flex discount, no long-context tier:
# Sonnet's prompts over 200k tokens cost more than this), as OpenAI and Anthropic
# published them up to this date (written from those figures, not fetched: re-check them
# when moving the date). Config `usage_tracking.pricing` overrides any entry. Anthropic
# cache writes are the 5-minute TTL price (1.25x input); OpenAI has no cache-write charge,
# so its entries leave it to default to the input price (OpenAI never reports them anyway).
TABLE_DATE = "2025-11-30"
BUILTIN_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # OpenAI: input, output, cached input
        "gpt-5": Price(1.25, 10.00, 0.125),
        "gpt-5-mini": Price(0.25, 2.00, 0.025),
        "gpt-5-nano": Price(0.05, 0.40, 0.005),
        "gpt-4.1": Price(2.00, 8.00, 0.50),
        "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
        "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
        "gpt-4o": Price(2.50, 10.00, 1.25),
        "gpt-4o-mini": Price(0.15, 0.60, 0.075),
        "chatgpt-4o-latest": Price(5.00, 15.00),
        "gpt-4-turbo": Price(10.00, 30.00),
        "gpt-4": Price(30.00, 60.00),
        "gpt-3.5-turbo": Price(0.50, 1.50),
        "o1": Price(15.00, 60.00, 7.50),
        "o3": Price(2.00, 8.00, 0.50),
        "o3-mini": Price(1.10, 4.40, 0.55),
        "o4-mini": Price(1.10, 4.40, 0.275),
        "text-embedding-3-small": Price(0.02, 0.0),
        "text-embedding-3-large": Price(0.13, 0.0),
        "text-embedding-ada-002": Price(0.10, 0.0),
        # Anthropic: input, output, cache read, cache write (5 min)
        "claude-opus-4-5": Price(5.00, 25.00, 0.50, 6.25),
        "claude-opus-4-1": Price(15.00, 75.00, 1.50, 18.75),
        "claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
        "claude-opus-4-0": Price(15.00, 75.00, 1.50, 18.75),
        "claude-sonnet-4-5": Price(3.00, 15.00, 0.30, 3.75),
        "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
        "claude-sonnet-4-0": Price(3.00, 15.00, 0.30, 3.75),
        "claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
        "claude-3-5-sonnet": Price(3.00, 15.00, 0.30, 3.75),
        "claude-haiku-4-5": Price(1.00, 5.00, 0.10, 1.25),
        "claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
        "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
        "claude-3-opus": Price(15.00, 75.00, 1.50, 18.75),
    }
)

# What may follow a known model name and still be that model: a dated snapshot, an
# alias for the newest one, and a provider revision tag.
MEMO_MODELS = 4096  # model names whose lookup a PriceTable keeps
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)(?:-v\d+(?::\d+)?)?|-v\d+(?::\d+)?")


class PriceTable:
    """Config prices over the built-in ones; lookups by exact name or snapshot suffix."""

    __slots__ = ("_memo", "_prices")

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        prices = dict(BUILTIN_PRICES)
        for model, entry in (overrides or {}).items():
            prices[model] = Price(entry.input, entry.output, entry.cached_input, entry.cache_write)
        self._prices: Mapping[str, Price] = MappingProxyType(prices)
        # A snapshot name ("claude-3-5-sonnet-20241022") is no key, and matching it walks
        # every key: ~4 µs per usage record on the recorder. A deployment sees a handful
        # of model names, so each answer is kept; the bound only stops a client that
        # makes up names from growing it.
        self._memo: dict[str, Price | None] = {}

    def lookup(self, model: str | None) -> Price | None:
        if not model:
            return None
        memo = self._memo
        try:
            return memo[model]
        except KeyError:
            pass
        price = self._match(model)
        if len(memo) < MEMO_MODELS:
            memo[model] = price
        return price

    def _match(self, model: str) -> Price | None:
        prices = self._prices
        price = prices.get(model)
        if price is not None:
            return price
        # Longest key first, so "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o
        # (gpt-4o + "-mini-..." is not a snapshot suffix anyway; this is belt and braces).
        best: str | None = None
        for key in prices:
            if (
                model.startswith(key)
                and _SNAPSHOT.fullmatch(model, len(key))
                and (best is None or len(key) > len(best))
            ):
                best = key
        return prices[best] if best is not None else None

    def __contains__(self, model: str) -> bool:
        return self.lookup(model) is not None


def price_cost(
    price: Price, prompt: int, completion: int, cached: int = 0, cache_write: int = 0
) -> float:
    """Rule 3: USD for normal-form token counts (prompt includes cached and cache_write)."""
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    uncached = max(0, prompt - cached - cache_write)
    return (
        uncached * price.input
        + cached * cached_price
        + cache_write * write_price
        + completion * price.output
    ) / 1e6


def compute_cost(
    usage: BackendUsage | None,
    model: str | None,
    table: PriceTable,
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    answered: bool = True,
) -> tuple[float | None, str | None]:
    """(cost, cost_source) for one request.

    ``usage`` is what the backend reported (None when nothing); ``prompt_tokens`` and
    ``completion_tokens`` are the proxy's own counts, used for whatever the backend did
    not report. ``answered`` is False when no backend gave a successful answer: without
    usage such a request is not priced.
    """
    if usage is not None and usage.cost is not None:
        return usage.cost, "backend"
    has_usage = usage is not None and (usage.prompt is not None or usage.completion is not None)
    if not has_usage and not answered:
        return None, None
    price = table.lookup(model)
    if price is None:
        return None, None
    prompt = usage.prompt if usage is not None and usage.prompt is not None else prompt_tokens
    completion = (
        usage.completion
        if usage is not None and usage.completion is not None
        else completion_tokens
    )
    if prompt is None and completion is None:
        return None, None
    cached = (usage.cached or 0) if usage is not None else 0
    cache_write = (usage.cache_write or 0) if usage is not None else 0
    return price_cost(price, prompt or 0, completion or 0, cached, cache_write), "price_table"
