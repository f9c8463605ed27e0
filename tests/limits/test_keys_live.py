"""GET /v1/keys shows what the gateway enforces now, beside the store's spend: each
limited key's and model's window as the ledger counts it, and each budget's spend as the
budget book holds it (seeded from the store, then charged by every finished request)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

from .conftest import Clients
from .e2e import ALICE, BOB, key
from .test_budget_e2e import budget_tree, chat


def keys_doc(gw: RunningGateway) -> dict[str, Any]:
    port = gw.gateway.admin_port
    assert port is not None
    r = httpx.get(f"http://127.0.0.1:{port}/v1/keys", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_keys_show_the_live_window_and_budget_state(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    sdk: Clients,
    tmp_path: Path,
) -> None:
    """alice (rpm 50, a $0.04 budget) makes 3 requests at $0.009 each; bob, with no limit
    or budget of his own, makes 1 under the model's limit."""
    gw = gateway_factory(
        budget_tree(
            mock_llm,
            tmp_path / "usage.db",
            "http://127.0.0.1:9/hook",
            [
                key("alice", ALICE, limits={"rpm": 50}, budget={"usd": 0.04, "period": "day"}),
                key("bob", BOB),
            ],
        )
        | {"rate_limits": {"models": {"gpt-4o": {"rpm": 1000}}}}
    )
    alice, bob = sdk.oai(gw.url, ALICE), sdk.oai(gw.url, BOB)
    for _ in range(3):
        chat(alice)
    chat(bob)

    def doc() -> dict[str, Any]:
        return keys_doc(gw)

    def by_name(d: dict[str, Any]) -> dict[str, Any]:
        return {k["name"]: k for k in d["keys"]}

    # The ledger hears of used permits when the limiter reports (about once a second).
    wait_until(
        lambda: (by_name(doc())["alice"]["rate"] or {}).get("requests") == 3,
        timeout=10,
        interval=0.2,
        what="alice's 3 requests counted in the window",
    )
    d = doc()
    alice_row, bob_row = by_name(d)["alice"], by_name(d)["bob"]
    assert alice_row["rate"]["window_seconds"] == 60
    assert alice_row["rate"]["tokens"] >= 0 and alice_row["rate"]["leased_requests"] >= 0
    state = alice_row["budget_state"]
    assert abs(state["spent_usd"] - 0.027) < 1e-9, state
    assert abs(state["fraction"] - 0.675) < 1e-6 and state["over_budget"] is False
    assert state["resets_at"].endswith("T00:00:00Z")
    # No limit and no budget of his own: nothing to show, not zeros.
    assert bob_row["rate"] is None and bob_row["budget_state"] is None
    wait_until(
        lambda: doc()["models"]["gpt-4o"]["rate"]["requests"] == 4,
        timeout=10,
        interval=0.2,
        what="the model's 4 requests counted",
    )
    assert doc()["models"]["gpt-4o"]["limits"] == {"rpm": 1000, "tpm": None}
    # Two more cross the budget: the state says so before the store's rollup could.
    chat(alice)
    chat(alice)
    wait_until(
        lambda: by_name(doc())["alice"]["budget_state"]["over_budget"] is True,
        timeout=10,
        interval=0.2,
        what="alice over budget",
    )
