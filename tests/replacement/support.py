"""What the replacement end-to-end tests share: two mock LLM servers (the original
backends on one, the replacement targets on the other, so "which backend served it" is
read where the request arrived), a gateway config naming them, and readers for the
metrics and usage endpoints."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.support.waiting import wait_until

OPENAI_FROM = "openai.1:gpt-4o"
OPENAI_TO = "openai.2:gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
ANTHROPIC_TO = "anthropic.2:claude-haiku-4-5"
MSGS = [{"role": "user", "content": "Name a prime number."}]

# Every key of the contract's /v1/replacement/metrics shape, section by section.
SHAPE: dict[str, tuple[str, ...]] = {
    "activation_metrics": (
        "total_activations",
        "activation_rate",
        "activations_last_60s",
        "unique_sessions_activated",
    ),
    "turn_count_metrics": (
        "total_turns_completed",
        "average_turns_before_return",
        "turn_count_distribution",
    ),
    "opt_out_metrics": (
        "total_opt_outs",
        "header_opt_outs",
        "session_opt_outs",
        "opt_outs_last_60s",
        "unique_sessions_opted_out",
    ),
    "probability_check_metrics": ("total_probability_checks", "unique_sessions_checked"),
}
EFFECTIVENESS_KEYS = (
    "from",
    "to",
    "activations",
    "replaced_requests",
    "error_rate",
    "avg_duration_ms",
    "avg_ttft_ms",
    "avg_cost",
)


def tree(
    orig: MockLLMServer,
    target: MockLLMServer,
    probability: float = 1.0,
    turn_count: int = 2,
    **extra: Any,
) -> dict[str, Any]:
    """Originals on ``orig``, targets on ``target``; each backend lists its one model,
    so routing never reaches the other mock on its own."""
    return {
        "backends": {
            "openai.1": backend_for(orig, "openai", models=["gpt-4o"]),
            "anthropic.1": backend_for(orig, "anthropic", models=[ANTHROPIC_MODEL]),
            "openai.2": backend_for(target, "openai", models=["gpt-4o-mini"]),
            "anthropic.2": backend_for(target, "anthropic", models=["claude-haiku-4-5"]),
        },
        "default_backend": "openai.1",
        "health_check": {"enabled": False},
        "usage_tracking": {"flush_interval_seconds": 0.05},
        "replacement": {
            "enabled": True,
            "probability": probability,
            "turn_count": turn_count,
            "replacement_rules": [
                {"from_pattern": OPENAI_FROM, "to_backend": "openai.2", "to_model": "gpt-4o-mini"},
                # A substring rule: every model with "claude-sonnet" in its name.
                {
                    "from_pattern": "claude-sonnet",
                    "to_backend": "anthropic.2",
                    "to_model": "claude-haiku-4-5",
                },
            ],
        },
        **extra,
    }


def metrics(base_url: str) -> dict[str, Any]:
    r = httpx.get(base_url + "/v1/replacement/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return orjson.loads(r.content)  # type: ignore[no-any-return]


def check_shape(doc: dict[str, Any]) -> None:
    """Every field of the contract's shape, with its JSON type."""
    assert isinstance(doc["enabled"], bool)
    assert isinstance(doc["elapsed_seconds"], int | float)
    for section, keys in SHAPE.items():
        assert set(keys) <= set(doc[section]), (section, doc[section])
        for key in keys:
            value = doc[section][key]
            if key == "turn_count_distribution":
                assert isinstance(value, dict)
                assert all(k.isdigit() and isinstance(n, int) for k, n in value.items())
            elif key in ("activation_rate", "average_turns_before_return"):
                assert isinstance(value, int | float)
            else:
                assert isinstance(value, int) and not isinstance(value, bool), (key, value)
    assert isinstance(doc["effectiveness"], list)
    for entry in doc["effectiveness"]:
        assert set(EFFECTIVENESS_KEYS) <= set(entry), entry
        for key in ("error_rate", "avg_duration_ms", "avg_ttft_ms", "avg_cost"):
            assert entry[key] is None or isinstance(entry[key], int | float)


def models_seen(mock: MockLLMServer) -> list[str]:
    """The model of every API request ``mock`` received, in order."""
    return [
        orjson.loads(r.body)["model"]
        for r in mock.stats.requests
        if r.method == "POST" and r.path.endswith(("/chat/completions", "/messages"))
    ]


def records(base_url: str, count: int) -> list[dict[str, Any]]:
    """The usage records, oldest first, once ``count`` of them are stored."""

    def page() -> dict[str, Any]:
        r = httpx.get(base_url + "/v1/usage/recent", params={"limit": 1000}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    got = wait_until(lambda: (p := page())["total"] >= count and p, what=f"{count} usage records")
    assert got["total"] == count, [r["replacement"] for r in got["records"]]
    return list(reversed(got["records"]))
