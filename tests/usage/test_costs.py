"""Cost rules (fastproxy/monitor/costs.py), one test per rule, figures computed by hand."""

from __future__ import annotations

import pytest

from fastproxy.config.schema import PriceEntry
from fastproxy.dataplane.dialects.usage import BackendUsage, from_anthropic, from_openai
from fastproxy.monitor.costs import BUILTIN_PRICES, PriceTable, compute_cost

TABLE = PriceTable()


def test_openai_prompt_includes_cached_tokens() -> None:
    # gpt-4o: $2.50 in, $1.25 cached in, $10 out per 1M.
    usage = from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 400},
        }
    )
    # 600 uncached * 2.50 + 400 cached * 1.25 + 200 * 10 = 1500 + 500 + 2000 = 4000 / 1e6
    assert compute_cost(usage, "gpt-4o", TABLE) == (pytest.approx(0.004), "price_table")


def test_anthropic_input_excludes_cache_reads_and_writes() -> None:
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out.
    usage = from_anthropic(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 1000,
            "output_tokens": 50,
        }
    )
    assert usage is not None and usage.prompt == 3100  # normalised: cache included
    # 100 * 3 + 2000 * 0.30 + 1000 * 3.75 + 50 * 15 = 300 + 600 + 3750 + 750 = 5400 / 1e6
    assert compute_cost(usage, "claude-sonnet-4-5", TABLE) == (pytest.approx(0.0054), "price_table")


def test_reasoning_tokens_are_inside_completion() -> None:
    # o3: $2 in, $8 out. 400 of the 500 completion tokens are reasoning: billed once.
    usage = from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 500,
            "completion_tokens_details": {"reasoning_tokens": 400},
        }
    )
    assert usage is not None and usage.reasoning == 400
    # 100 * 2 + 500 * 8 = 4200 / 1e6 (not (500 + 400) * 8)
    assert compute_cost(usage, "o3", TABLE) == (pytest.approx(0.0042), "price_table")


def test_config_prices_override_and_extend_the_table() -> None:
    table = PriceTable(
        {
            "gpt-4o": PriceEntry(input=1.0, output=2.0),
            "my-local-model": PriceEntry(input=0.5, output=0.5, cached_input=0.1),
        }
    )
    usage = BackendUsage(prompt=1000, completion=200, cached=400)
    # cached_input absent: cached tokens cost the input price. 1000 * 1 + 200 * 2 = 1400
    assert compute_cost(usage, "gpt-4o", table) == (pytest.approx(0.0014), "price_table")
    # 600 * 0.5 + 400 * 0.1 + 200 * 0.5 = 300 + 40 + 100 = 440
    assert compute_cost(usage, "my-local-model", table) == (pytest.approx(0.00044), "price_table")
    assert BUILTIN_PRICES["gpt-4o"].input == 2.50  # the built-in table is untouched


def test_unknown_model_has_no_cost() -> None:
    usage = BackendUsage(prompt=1000, completion=200)
    assert compute_cost(usage, "some-unlisted-model", TABLE) == (None, None)
    assert compute_cost(usage, None, TABLE) == (None, None)


def test_backend_reported_cost_wins() -> None:
    usage = from_openai({"prompt_tokens": 1000, "completion_tokens": 200, "cost": 0.0042})
    assert compute_cost(usage, "gpt-4o", TABLE) == (0.0042, "backend")
    assert compute_cost(usage, "unknown", TABLE) == (0.0042, "backend")


def test_snapshot_names_match_their_model_and_nothing_looser() -> None:
    assert TABLE.lookup("gpt-4o-2024-08-06") == BUILTIN_PRICES["gpt-4o"]
    assert TABLE.lookup("gpt-4o-mini-2024-07-18") == BUILTIN_PRICES["gpt-4o-mini"]
    assert TABLE.lookup("gpt-4.1-nano-2025-04-14") == BUILTIN_PRICES["gpt-4.1-nano"]
    assert TABLE.lookup("claude-sonnet-4-5-20250929") == BUILTIN_PRICES["claude-sonnet-4-5"]
    assert TABLE.lookup("claude-opus-4-5-20251101") == BUILTIN_PRICES["claude-opus-4-5"]
    assert TABLE.lookup("claude-3-5-sonnet-latest") == BUILTIN_PRICES["claude-3-5-sonnet"]
    assert TABLE.lookup("o3-2025-04-16") == BUILTIN_PRICES["o3"]
    # Different models sharing a prefix are not priced as the shorter one.
    assert TABLE.lookup("o3-pro") is None
    assert TABLE.lookup("gpt-4.5-preview") is None
    assert TABLE.lookup("gpt-4o-audio-preview") is None
    # claude-sonnet-4-5 at $3 + one snapshot: 1000 in, 100 out = 3000 + 1500 = 4500
    usage = BackendUsage(prompt=1000, completion=100)
    assert compute_cost(usage, "claude-sonnet-4-5-20250929", TABLE) == (
        pytest.approx(0.0045),
        "price_table",
    )


def test_without_backend_usage_the_proxy_counts_are_priced() -> None:
    # gpt-4o-mini: $0.15 in, $0.60 out. 2000 * 0.15 + 500 * 0.60 = 300 + 300 = 600
    assert compute_cost(None, "gpt-4o-mini", TABLE, prompt_tokens=2000, completion_tokens=500) == (
        pytest.approx(0.0006),
        "price_table",
    )
    # A request no backend answered successfully, with no usage, is not billed.
    assert compute_cost(
        None, "gpt-4o-mini", TABLE, prompt_tokens=2000, completion_tokens=None, answered=False
    ) == (None, None)
    assert compute_cost(None, "gpt-4o-mini", TABLE) == (None, None)
