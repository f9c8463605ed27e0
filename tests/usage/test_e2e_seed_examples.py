"""The seed document's usage examples, run as written (curl | jq against the data port),
after known traffic from the official SDKs: contract shapes, and the numbers the mock
reported."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until
from tests.usage.test_e2e_records import FAST_FLUSH, MSGS, recent
from tests.usage.test_record_projection import RECORD_FIELDS

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None,
    reason="curl and jq are needed to run the seed's examples",
)
STATS_KEYS = {
    "request_count",
    "unique_sessions",
    "total_prompt_tokens",
    "total_completion_tokens",
    "total_tokens",
    "backend_reported_prompt_tokens",
    "backend_reported_completion_tokens",
    "backend_reported_total_tokens",
    "total_cost",
    "cost_record_count",
    "total_tool_calls",
    "status_code_counts",
    "completion_tokens_per_second",
    "time_window_seconds",
    "ttft_stats",
    "duration_stats",
    "proxy_overhead_stats",
    "stream_tps_stats",
    "by_backend",
    "by_model",
    "filters",
    "outcome_counts",
    "by_api",
    "by_key",
    "by_team",
}
PCT_KEYS = {"count", "min_ms", "max_ms", "avg_ms", "p50_ms", "p95_ms", "p99_ms"}


def sh(cmd: str) -> Any:
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.fixture
def traffic(gateway_factory, mock_llm) -> tuple[RunningGateway, dict[str, Any]]:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai", models=["gpt-4", "gpt-4o"]),
                "anthropic.1": backend_for(mock_llm, "anthropic", models=["claude-3-5-sonnet"]),
            },
            "default_backend": "openai.1",
            "usage_tracking": dict(FAST_FLUSH),
        }
    )
    seen: dict[str, Any] = {"gpt-4": [], "claude": []}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as c:
        chunks = list(
            c.chat.completions.create(
                model="gpt-4",
                messages=MSGS,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-tokens": "30"},
            )
        )
        seen["gpt-4"].append(chunks[-1].usage)
        seen["gpt-4"].append(
            c.chat.completions.create(
                model="gpt-4", messages=MSGS, extra_headers={"x-mock-tokens": "10"}
            ).usage
        )
        c.chat.completions.create(
            model="gpt-4o", messages=MSGS, extra_headers={"x-mock-tokens": "5"}
        )
    with anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as a:
        with a.messages.stream(
            model="claude-3-5-sonnet",
            max_tokens=64,
            messages=MSGS,
            extra_headers={"x-mock-tokens": "20", "x-mock-cache-read": "500"},
        ) as s:
            seen["claude"].append(s.get_final_message().usage)
        seen["claude"].append(
            a.messages.create(
                model="claude-3-5-sonnet",
                max_tokens=64,
                messages=MSGS,
                extra_headers={"x-mock-tokens": "8"},
            ).usage
        )
    wait_until(lambda: recent(gw)["total"] == 5, what="five records")
    return gw, seen


def test_stats_by_backend_type_and_model(traffic) -> None:
    gw, seen = traffic
    base = gw.url
    full = sh(f'curl -s "{base}/v1/usage/stats?backend_type=openai&model=gpt-4"')
    assert set(full) == STATS_KEYS
    assert full["filters"] == {"backend_type": "openai", "model": "gpt-4"}
    prompt = sum(u.prompt_tokens for u in seen["gpt-4"])
    completion = sum(u.completion_tokens for u in seen["gpt-4"])
    assert completion == 40
    assert full["request_count"] == 2 and full["status_code_counts"] == {"200": 2}
    assert (full["total_prompt_tokens"], full["total_completion_tokens"]) == (prompt, completion)
    assert full["total_tokens"] == full["backend_reported_total_tokens"] == prompt + completion
    # gpt-4 list price: $30 in, $60 out per 1M tokens
    assert full["total_cost"] == pytest.approx((prompt * 30 + completion * 60) / 1e6)
    assert full["cost_record_count"] == 2
    assert set(full["by_model"]) == {"gpt-4"} and set(full["by_backend"]) == {"openai.1"}
    later = sh(
        f'curl -s "{base}/v1/usage/stats?backend_type=anthropic&model=claude-3-5-sonnet'
        f'&start_date=2025-12-01T00:00:00Z"'
    )
    assert later["request_count"] == 2


def test_recent_and_export(traffic) -> None:
    gw, _ = traffic
    base = gw.url
    page = sh(f'curl -s "{base}/v1/usage/recent?limit=50"')
    assert (page["total"], page["limit"], page["offset"], len(page["records"])) == (5, 50, 0, 5)
    assert all(list(r) == RECORD_FIELDS for r in page["records"])
    stamps = [r["timestamp"] for r in page["records"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    # The seed's literal window (December 2025), and one around today: oldest first.
    seed = sh(
        f'curl -s "{base}/v1/usage/export?start_date=2025-12-01T00:00:00Z'
        f'&end_date=2025-12-31T23:59:59Z"'
    )
    assert seed["version"] == 1 and seed["record_count"] == len(seed["records"])
    assert seed["record_count"] == sum(s.startswith("2025-12") for s in stamps)
    today = datetime.now(UTC).date().isoformat()
    now = sh(
        f'curl -s "{base}/v1/usage/export?start_date={today}T00:00:00Z&end_date={today}T23:59:59Z"'
    )
    assert set(now) == {"version", "exported_at", "record_count", "filters", "records"}
    assert now["record_count"] == 5
    assert [r["timestamp"] for r in now["records"]] == sorted(stamps)


def test_ttft_and_duration_stats(traffic) -> None:
    gw, _ = traffic
    ttft, duration = [
        json.loads(line)
        for line in subprocess.run(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f'curl -s "{gw.url}/v1/usage/stats" | jq -c ".ttft_stats, .duration_stats"',
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
    ]
    records = recent(gw)["records"]
    assert set(ttft) == set(duration) == PCT_KEYS
    ttfts = sorted(r["ttft_ms"] for r in records if r["ttft_ms"] is not None)
    assert ttft["count"] == len(ttfts) == 2  # the two streams
    assert (ttft["min_ms"], ttft["max_ms"]) == (pytest.approx(ttfts[0]), pytest.approx(ttfts[-1]))
    assert duration["count"] == 5
    for s in (ttft, duration):
        assert s["min_ms"] <= s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_billing_reconciliation_and_cost_per_request(traffic) -> None:
    gw, seen = traffic
    base = gw.url
    reconcile = (
        f'curl -s "{base}/v1/usage/stats?backend_type=openai" | jq \'{{'
        "proxy_tokens: .total_tokens, backend_tokens: .backend_reported_total_tokens, "
        "difference: (.total_tokens - .backend_reported_total_tokens)}'"
    )
    first = sh(reconcile)
    assert first["difference"] == 0 and first["proxy_tokens"] > 0  # every answer had usage
    # A stream the backend cut has no backend usage: it is the whole difference.
    with httpx.stream(
        "POST",
        base + "/v1/chat/completions",
        timeout=10,
        headers={"x-mock-tokens": "20", "x-mock-fault": "reset_after:4"},
        json={"model": "gpt-4o", "stream": True, "messages": MSGS},
    ) as r:
        r.read()
    wait_until(lambda: recent(gw)["total"] == 6, what="the cut stream's record")
    cut = recent(gw)["records"][0]
    assert cut["outcome"] == "truncated" and cut["backend_reported_usage"] is None
    second = sh(reconcile)
    assert second["difference"] == cut["ptb_prompt_tokens"] + cut["btp_completion_tokens"] > 0
    assert second["backend_tokens"] == first["backend_tokens"]

    costs = sh(
        f'curl -s "{base}/v1/usage/stats?backend_type=anthropic" | jq \'{{'
        "total_cost: .total_cost, requests: .request_count, "
        "cost_per_request: (.total_cost / .request_count)}'"
    )
    # claude-3-5-sonnet: $3 in, $0.30 cache read, $15 out (Anthropic input excludes the cache)
    expected = (
        sum(
            u.input_tokens * 3 + (u.cache_read_input_tokens or 0) * 0.30 + u.output_tokens * 15
            for u in seen["claude"]
        )
        / 1e6
    )
    assert seen["claude"][0].cache_read_input_tokens == 500
    assert costs["requests"] == 2
    assert costs["total_cost"] == pytest.approx(expected)
    assert costs["cost_per_request"] == pytest.approx(expected / 2)
