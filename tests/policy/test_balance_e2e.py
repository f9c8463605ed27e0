"""Load balancing end to end, one process: the official OpenAI and Anthropic SDKs → a
real gateway → two mock LLM servers on 127.0.0.1, one per backend, so "which backend
served" is read where the request arrived (the mock's own request count) as well as from
``x-fastproxy-backend``."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

from .e2e import MSGS, Mocks


def tree(a: MockLLMServer, b: MockLLMServer, **extra: Any) -> dict[str, Any]:
    """openai.1 on ``a``, openai.2 on ``b``, both serving gpt-4o; anthropic.1/.2 likewise
    for claude-sonnet-4-5."""
    return {
        "backends": {
            "openai.1": backend_for(a, "openai", models=["gpt-4o"]),
            "openai.2": backend_for(b, "openai", models=["gpt-4o"]),
            "anthropic.1": backend_for(a, "anthropic", models=["claude-sonnet-4-5"]),
            "anthropic.2": backend_for(b, "anthropic", models=["claude-sonnet-4-5"]),
        },
        "default_backend": "openai.1",
        "health_check": {"enabled": False},
        "usage_tracking": {"enabled": False},
        **extra,
    }


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)


def ant(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0)


def served(client: openai.OpenAI, model: str = "gpt-4o", **headers: str) -> str:
    """One JSON chat call; the backend that served it."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MSGS, max_tokens=2, extra_headers=headers
    )
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-fastproxy-backend"])


def api_calls(mock: MockLLMServer) -> int:
    return sum(
        1
        for r in mock.stats.requests
        if r.method == "POST" and r.path.endswith(("/chat/completions", "/messages"))
    )


def in_flight(gw: RunningGateway, backend: str) -> int:
    return int(gw.lt.call(lambda: gw.plane.policy.stats.in_flight(backend)))


def test_weighted_3_to_1_over_1000_requests(
    gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    gw = gateway_factory(
        tree(*mocks, load_balancing={"strategy": "weighted", "weights": {"openai.1": 3}})
    )
    with oai(gw) as client:
        counts = Counter(served(client) for _ in range(1000))
    share = counts["openai.1"] / 1000
    # Binomial(1000, 0.75): the standard deviation is 1.4 points; ±5 is over 3.6 of them.
    assert 0.70 <= share <= 0.80, counts
    assert counts["openai.1"] + counts["openai.2"] == 1000
    # Where the requests arrived, not only what the header says.
    assert api_calls(mocks[0]) == counts["openai.1"]
    assert api_calls(mocks[1]) == counts["openai.2"]
    # Every attempt that started has finished.
    assert in_flight(gw, "openai.1") == in_flight(gw, "openai.2") == 0


def test_weighted_anthropic_sdk_streams(
    gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    # weight 0: never first while openai.2/anthropic.2 answers.
    gw = gateway_factory(
        tree(
            *mocks,
            load_balancing={
                "strategy": "weighted",
                "weights": {"anthropic.1": 0, "anthropic.2": 1},
            },
        ),
    )
    with ant(gw) as client:
        for _ in range(20):
            with client.messages.with_streaming_response.create(
                model="claude-sonnet-4-5", max_tokens=4, messages=MSGS, stream=True
            ) as resp:
                assert [e.type for e in resp.parse()][-1] == "message_stop"
                assert resp.headers["x-fastproxy-backend"] == "anthropic.2"
    assert api_calls(mocks[0]) == 0 and api_calls(mocks[1]) == 20
    assert in_flight(gw, "anthropic.2") == 0


def test_least_busy_sends_new_work_away_from_slow_streams(
    gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    gw = gateway_factory(tree(*mocks, load_balancing={"strategy": "least_busy"}))
    with oai(gw) as client, contextlib.ExitStack() as held:
        # Three streams held open on openai.1 (named explicitly: the counts are per
        # backend, whatever pool a request came through); the mock waits before its
        # first event until the client leaves.
        for _ in range(3):
            held.enter_context(
                client.chat.completions.with_streaming_response.create(
                    model="openai.1:gpt-4o",
                    messages=MSGS,
                    stream=True,
                    extra_headers={"x-mock-ttft-ms": "30000"},
                )
            )
        assert in_flight(gw, "openai.1") == 3
        counts = Counter(served(client) for _ in range(50))
        assert counts == {"openai.2": 50}
    # The streams' attempts end with them (the client closed them).
    wait_until(lambda: in_flight(gw, "openai.1") == 0, what="the held streams to end")
    with oai(gw) as client:
        # Idle again: ties are broken at random, so both backends get work.
        counts = Counter(served(client) for _ in range(100))
    assert counts["openai.1"] > 20 and counts["openai.2"] > 20, counts


def test_latency_prefers_the_faster_backend(
    server_loop: Any, gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    slow, fast = mocks
    server_loop.call(lambda: slow.set_behaviour(ttfb_ms=40))
    gw = gateway_factory(tree(slow, fast, load_balancing={"strategy": "latency"}))
    with oai(gw) as client:
        counts = Counter(served(client) for _ in range(100))
    # Each backend gets one probe at first; then the faster one takes the rest (the
    # slow one is probed again only after reprobe_seconds, 30 by default).
    assert counts["openai.1"] == 1, counts
    assert counts["openai.2"] == 99, counts
    stats = gw.plane.policy.stats
    # The mock's 40 ms is a loop timer, which may fire a little early against the
    # gateway's clock (39.6 ms seen once in CI): the averages must be far apart, not
    # exactly on either side of 40 ms.
    slow_s = gw.lt.call(lambda: stats.latency("openai.1"))
    fast_s = gw.lt.call(lambda: stats.latency("openai.2"))
    assert slow_s >= 0.035 and fast_s < slow_s / 2, (slow_s, fast_s)


def test_latency_measures_streams_at_their_first_event(
    server_loop: Any, gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    slow, fast = mocks
    # The head goes out at once; only the first event is late.
    server_loop.call(lambda: slow.set_behaviour(ttft_ms=40))
    gw = gateway_factory(tree(slow, fast, load_balancing={"strategy": "latency"}))
    with ant(gw) as client:
        seen = Counter()
        for _ in range(20):
            with client.messages.with_streaming_response.create(
                model="claude-sonnet-4-5", max_tokens=4, messages=MSGS, stream=True
            ) as resp:
                list(resp.parse())
                seen[resp.headers["x-fastproxy-backend"]] += 1
    assert seen == {"anthropic.1": 1, "anthropic.2": 19}, seen


@pytest.mark.parametrize("strategy", ["weighted", "least_busy"])
def test_affinity_keeps_a_session_until_it_fails_over(
    server_loop: Any,
    gateway_factory: Callable[..., RunningGateway],
    mocks: Mocks,
    strategy: str,
) -> None:
    gw = gateway_factory(
        tree(*mocks, load_balancing={"strategy": strategy, "affinity": {"enabled": True}})
    )
    mock_of = {"openai.1": mocks[0], "openai.2": mocks[1]}
    with oai(gw) as client:
        first = served(client, **{"x-session-id": "sess-1"})
        for _ in range(30):
            assert served(client, **{"x-session-id": "sess-1"}) == first
        other = "openai.2" if first == "openai.1" else "openai.1"
        # The session's backend fails (503): the request fails over, and the session
        # moves to the backend that answered ...
        server_loop.call(lambda: mock_of[first].set_behaviour(status=503))
        assert served(client, **{"x-session-id": "sess-1"}) == other
        # ... and stays there after the old one recovers (its cache is warm now).
        server_loop.call(lambda: mock_of[first].set_behaviour(status=None))
        for _ in range(30):
            assert served(client, **{"x-session-id": "sess-1"}) == other
        # Requests without a session are still balanced over both.
        counts = Counter(served(client) for _ in range(100))
    assert len(counts) == 2, counts


def test_workers_balance_a_group_and_apply_a_reload(tmp_path: Any, mocks: Mocks) -> None:
    """``workers: 2``: each worker builds the policy from the config the primary sends,
    and a SIGHUP's new weights reach every worker."""
    import signal

    import yaml

    from tests.support.proc import GatewayProcess

    base = tree(*mocks)
    cfg: dict[str, Any] = {
        **base,
        "port": 0,
        "admin": {"port": 0},
        "workers": 2,
        "model_aliases": [{"pattern": "pub-(.*)", "target": r"\1"}],
        "groups": {
            "pair": {
                "strategy": "weighted",
                "members": [
                    {"backend": "openai.1", "model": "gpt-4o", "weight": 1},
                    {"backend": "openai.2", "model": "gpt-4o", "weight": 1},
                ],
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = GatewayProcess(["--config", str(path)], cwd=str(tmp_path))
    try:
        port = gw.wait_ready()
        url = f"http://127.0.0.1:{port}"

        def spread(n: int) -> Counter[str]:
            out: Counter[str] = Counter()
            for _ in range(n):
                # A new connection each time: the kernel spreads them over both workers.
                with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
                    out[served(c, model="pub-pair")] += 1
            return out

        first = spread(60)
        assert first["openai.1"] > 10 and first["openai.2"] > 10, first
        cfg["groups"]["pair"]["members"][0]["weight"] = 0
        path.write_text(yaml.safe_dump(cfg))
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any("reload: config re-read" in line for line in gw.lines),
            what="the reload",
        )
        # Each worker swaps the generation when the primary's message arrives.
        wait_until(lambda: spread(10) == {"openai.2": 10}, what="the new weights")
        assert spread(40) == {"openai.2": 40}
    finally:
        gw.stop()


def test_an_open_breaker_is_never_chosen_whatever_its_weight(
    server_loop: Any, gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    gw = gateway_factory(
        tree(
            *mocks,
            load_balancing={"strategy": "weighted", "weights": {"openai.1": 100, "openai.2": 1}},
            circuit_breaker={"failure_threshold": 2, "open_cooldown_seconds": 600},
        )
    )
    server_loop.call(lambda: mocks[0].set_behaviour(status=503))
    with oai(gw) as client:
        # openai.1 fails, each request fails over to openai.2, until the breaker opens.
        for _ in range(10):
            assert served(client) == "openai.2"
        state = gw.lt.call(lambda: gw.health.breaker_state("openai.1"))
        assert not state.routable, state
        server_loop.call(lambda: mocks[0].set_behaviour(status=None))
        before = api_calls(mocks[0])
        counts = Counter(served(client) for _ in range(50))
    assert counts == {"openai.2": 50}
    assert api_calls(mocks[0]) == before  # not even tried


def test_replacement_matches_the_first_candidate_after_balancing(
    gateway_factory: Callable[..., RunningGateway], mocks: Mocks
) -> None:
    # Config order puts openai.1 first; the weights put openai.2 first, and the rule
    # names openai.2: it applies only because the decision sees the balanced plan.
    gw = gateway_factory(
        tree(
            *mocks,
            load_balancing={"strategy": "weighted", "weights": {"openai.1": 0, "openai.2": 1}},
            replacement={
                "enabled": True,
                "probability": 1.0,
                "replacement_rules": [
                    {"from_pattern": "openai.2:gpt-4o", "to_backend": "openai.1", "to_model": "m2"}
                ],
            },
        )
    )
    with oai(gw) as client:
        for i in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MSGS, extra_headers={"x-session-id": f"s{i}"}
            )
            assert raw.headers["x-fastproxy-backend"] == "openai.1"
            assert raw.headers["x-fastproxy-replaced-from"] == "openai.2:gpt-4o"
    assert api_calls(mocks[0]) == 5 and api_calls(mocks[1]) == 0
