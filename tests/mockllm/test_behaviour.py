"""Steering resolution without sockets: parsing, validation, precedence."""

from __future__ import annotations

import pytest

from fastproxy.mockllm.behaviour import (
    DEFAULT_PLAN,
    BehaviourTable,
    MockBehaviour,
    Plan,
    SteeringError,
    canonical_path,
    from_headers,
    parse_fault,
    resolve,
    split_model,
)


def test_split_model() -> None:
    assert split_model("gpt-4o") == ("gpt-4o", None)
    name, layer = split_model("gpt-4o@tokens=50,ttft_ms=100,fault=reset_after:3")
    assert name == "gpt-4o"
    assert layer == MockBehaviour(tokens=50, ttft_ms=100.0, fault="reset_after:3")
    assert split_model("m@")[1] == MockBehaviour()
    with pytest.raises(SteeringError, match="k=v"):
        split_model("m@tokens")
    with pytest.raises(SteeringError, match="unknown steering field"):
        split_model("m@speed=9")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"tokens": "x"}, "integer"),
        ({"tokens": -1}, ">= 0"),
        ({"ttfb_ms": "soon"}, "number"),
        ({"status": 700}, "HTTP status"),
        ({"tokens": True}, "number"),
        ({"fault": 3}, "string"),
        ({"fault": "explode"}, "unknown fault"),
        ({"fault": "reset_after"}, ":N"),
        ({"fault": "hang:3"}, "no argument"),
        ({"nope": 1}, "unknown steering field"),
    ],
)
def test_from_mapping_rejects(data: dict[str, object], match: str) -> None:
    with pytest.raises(SteeringError, match=match):
        MockBehaviour.from_mapping(data)


def test_from_headers_coerces_dashed_names() -> None:
    layer = from_headers(
        [("x-mock-ttfb-ms", "12.5"), ("x-mock-tokens", "3"), ("x-mock-retry-after", "2")]
    )
    assert layer == MockBehaviour(ttfb_ms=12.5, tokens=3, retry_after=2.0)
    assert from_headers([]) is None


def test_parse_fault() -> None:
    assert parse_fault("reset_after:0") == ("reset_after", 0)
    assert parse_fault("close_after:12") == ("close_after", 12)
    for kind in ("hang", "hang_after_headers", "malformed_sse", "trickle", "drop"):
        assert parse_fault(kind) == (kind, 0)


def test_resolve_precedence_header_over_model_over_persistent() -> None:
    assert resolve(None, None, None) is DEFAULT_PLAN
    plan = resolve(
        MockBehaviour(tokens=1, ttfb_ms=5, cost=0.1),
        MockBehaviour(tokens=2),
        MockBehaviour(tokens=3, fault="close_after:4"),
    )
    assert (plan.tokens, plan.ttfb, plan.cost) == (3, 0.005, 0.1)
    assert (plan.fault, plan.fault_after) == ("close_after", 4)
    assert not plan.immediate
    assert resolve(MockBehaviour(cost=1.0), None, None).immediate


def test_status_200_is_no_error() -> None:
    assert Plan(MockBehaviour(status=200)).status is None
    assert Plan(MockBehaviour(status=429)).status == 429


def test_completion_tokens_respects_max_only_for_default() -> None:
    assert DEFAULT_PLAN.completion_tokens(4) == (4, True)
    assert DEFAULT_PLAN.completion_tokens(100) == (16, False)
    assert DEFAULT_PLAN.completion_tokens(None) == (16, False)
    assert DEFAULT_PLAN.completion_tokens(True) == (16, False)
    assert Plan(MockBehaviour(tokens=50)).completion_tokens(4) == (50, False)


def test_table_layers_and_prefixes() -> None:
    table = BehaviourTable()
    assert table.lookup("/v1/models") is None
    table.set(None, {"tokens": 5, "cost": 0.2})
    table.set("/models", {"status": 503})
    table.set("/v1/chat", {"tokens": 7})
    table.set("/v1/chat/completions", {"tokens": 9})
    assert table.lookup("/v1/models") == MockBehaviour(tokens=5, cost=0.2, status=503)
    assert table.lookup("/v1/chat/completions") == MockBehaviour(tokens=9, cost=0.2)
    assert table.lookup("/v1/embeddings") == MockBehaviour(tokens=5, cost=0.2)
    table.set(None, {"cost": None, "ttfb_ms": 1})  # merge, and None unsets
    assert table.lookup("/v1/embeddings") == MockBehaviour(tokens=5, ttfb_ms=1.0)
    assert table.snapshot()["by_prefix"]["/v1/models"] == {"status": 503}
    with pytest.raises(SteeringError):
        table.set(None, {"tokens": "many"})
    table.clear()
    assert table.lookup("/v1/models") is None


def test_canonical_path() -> None:
    assert canonical_path("/chat/completions") == "/v1/chat/completions"
    assert canonical_path("/v1/models") == "/v1/models"
    assert canonical_path("models") == "/v1/models"
    assert canonical_path("/_mock/stats") == "/_mock/stats"
