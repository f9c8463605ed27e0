"""The breaker fed by live traffic: 5xx and connect errors open it, 4xx and 429 never do;
the switches (`circuit_breaker_enabled`, `health_check.enabled`) and operator reactivation."""

from __future__ import annotations

import socket

import httpx
import pytest

from fastproxy.core.seams import BreakerState
from tests.conftest import backend_for
from tests.support.waiting import wait_until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
QUIET_PROBES = {"ping": {"enabled": False}, "http": {"interval_seconds": 60}}


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def pair(gateway_factory, mock_factory):
    a, b = mock_factory(), mock_factory()

    def make(primary: dict | None = None, health: dict | None = None, threshold: int = 3):
        return gateway_factory(
            {
                "backends": {
                    "openai.1": primary or backend_for(a, models=["gpt-4o"]),
                    "openai.2": backend_for(b, models=["gpt-4o-mini"]),
                },
                "failover_routes": {"gpt-4o": ["openai.2:gpt-4o-mini"]},
                "health_check": {**QUIET_PROBES, **(health or {})},
                "circuit_breaker": {"failure_threshold": threshold, "open_cooldown_seconds": 60},
            }
        )

    return make, a, b


def chat(gw) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)


def test_500s_from_live_traffic_open_the_breaker_while_the_probe_is_fine(pair, server_loop) -> None:
    make, a, _ = pair
    gw = make()
    server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=500))
    # 500 is relayed, not failed over (docs/routing.md): the first three reach the client.
    for _ in range(3):
        r = chat(gw)
        assert r.status_code == 500 and r.headers["x-fastproxy-backend"] == "openai.1"
    health = gw.health
    assert health.circuit_state("openai.1") == "open"
    # the probe of the same endpoint is fine: the endpoint stays healthy
    assert health.endpoint_of["openai.1"].is_healthy
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.2"
    assert a.stats.requests_by_path["/v1/chat/completions"] == 3
    doc = httpx.get(gw.url + "/internal/health", timeout=5).json()
    be = next(x for x in doc["endpoint_health"]["backends"] if x["name"] == "openai.1")
    assert be["circuit_state"] == "open" and be["consecutive_failures"] == 3
    assert be["is_endpoint_healthy"] is True and be["last_failure"] == "HTTP 500"


@pytest.mark.parametrize("status", [400, 401, 404, 429])
def test_4xx_and_429_never_open_it(pair, server_loop, status: int) -> None:
    make, a, _ = pair
    gw = make(threshold=2)
    server_loop.call(
        lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=status, retry_after=0)
    )
    for _ in range(6):
        chat(gw)
    assert a.stats.requests_by_path["/v1/chat/completions"] == 6
    b = gw.health.breakers["openai.1"]
    assert b.state.public == "closed" and b.failures == 0


def test_success_resets_the_count(pair, server_loop) -> None:
    make, a, _ = pair
    gw = make(threshold=3)
    for _ in range(3):
        server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=503))
        for _ in range(2):
            r = chat(gw)  # 503 fails over: the client is served by openai.2
            assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.2"
        server_loop.call(a.clear_behaviour)
        assert chat(gw).headers["x-fastproxy-backend"] == "openai.1"
    assert gw.health.circuit_state("openai.1") == "closed"
    assert gw.health.breakers["openai.1"].failures == 0


def test_connect_errors_open_it_and_routing_stops_trying(pair) -> None:
    make, _, _ = pair
    gw = make(primary={"api_url": _dead_url(), "api_key": "k", "models": ["gpt-4o"]})
    for _ in range(6):
        r = chat(gw)
        assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.2"
    assert gw.plane.counters.upstream_errors.get("connect") == 3
    assert gw.health.circuit_state("openai.1") == "open"
    # the dead endpoint's probe failed at start-up too
    assert gw.health.endpoint_of["openai.1"].http_failures >= 1


def test_all_open_falls_back_to_the_original_plan(gateway_factory) -> None:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": {"api_url": _dead_url(), "api_key": "k", "models": ["gpt-4o"]}
            },
            "health_check": QUIET_PROBES,
            "circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 60},
        }
    )
    assert chat(gw).status_code == 502
    assert gw.health.circuit_state("openai.1") == "open"
    chat(gw)  # still tried: an excluded-everything plan is the original plan
    assert gw.plane.counters.upstream_errors.get("connect") == 2


def test_breaker_disabled_tracks_state_but_never_refuses(pair, server_loop) -> None:
    make, a, _ = pair
    gw = make(health={"circuit_breaker_enabled": False}, threshold=2)
    server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=500))
    for _ in range(4):
        assert chat(gw).headers["x-fastproxy-backend"] == "openai.1"
    health = gw.health
    assert health.circuit_state("openai.1") == "open"
    assert health.breaker_state("openai.1") is BreakerState.CLOSED  # routing never refused
    doc = httpx.get(gw.url + "/internal/health", timeout=5).json()
    assert doc["endpoint_health"]["circuit_breaker_enabled"] is False


def test_probing_disabled_keeps_the_live_breaker(pair, server_loop) -> None:
    make, a, b = pair
    gw = make(health={"enabled": False}, threshold=2)
    doc = httpx.get(gw.url + "/internal/health", timeout=5).json()
    eh = doc["endpoint_health"]
    assert eh["enabled"] is False
    assert {e["ping_status"] for e in eh["endpoints"]} == {"disabled"}
    assert {e["http_status"] for e in eh["endpoints"]} == {"disabled"}
    assert eh["summary"]["healthy_endpoints"] == 2
    server_loop.call(lambda: a.set_behaviour(status=502))
    for _ in range(3):
        assert chat(gw).headers["x-fastproxy-backend"] == "openai.2"
    assert gw.health.circuit_state("openai.1") == "open"
    assert "/v1/models" not in a.stats.requests_by_path  # no probe ever ran
    assert "/v1/models" not in b.stats.requests_by_path


def test_reactivate_forces_closed(pair, server_loop) -> None:
    make, a, _ = pair
    gw = make(threshold=1)
    server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=500))
    chat(gw)
    health = gw.health
    assert health.circuit_state("openai.1") == "open"
    server_loop.call(a.clear_behaviour)
    assert server_loop.call(lambda: health.reactivate("openai.1")) is True
    assert server_loop.call(lambda: health.reactivate("nope")) is False
    assert health.circuit_state("openai.1") == "closed"
    assert chat(gw).headers["x-fastproxy-backend"] == "openai.1"


def test_half_open_lets_exactly_one_trial_through(
    gateway_factory, mock_factory, server_loop
) -> None:
    a = mock_factory()
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(a, models=["gpt-4o"])},
            "health_check": QUIET_PROBES,
            "circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 0.3},
        }
    )
    health = gw.health
    server_loop.call(lambda: a.set_behaviour(path_prefix="/v1/chat/completions", status=500))
    chat(gw)
    wait_until(
        lambda: health.circuit_state("openai.1") == "half_open", timeout=5, what="cooldown elapsed"
    )
    # Routing's view, asked on the loop as routing does: asking is free of side effects,
    # so any number of questions leave the trial unclaimed.
    answers = server_loop.call(lambda: [health.breaker_state("openai.1") for _ in range(3)])
    assert answers == [BreakerState.HALF_OPEN] * 3

    def claim() -> list[BreakerState]:
        # The request cycle tells the sinks before it sends: that request is the trial,
        # and every caller after it is refused until its outcome arrives.
        health.attempt_started("openai.1")
        return [health.breaker_state("openai.1") for _ in range(2)]

    assert server_loop.call(claim) == [BreakerState.BUSY, BreakerState.BUSY]
    assert not BreakerState.BUSY.routable and BreakerState.HALF_OPEN.routable
    assert health.circuit_state("openai.1") == "half_open"  # a trial in flight, publicly
    server_loop.call(lambda: health.attempt_finished("openai.1", 200, None))
    assert health.circuit_state("openai.1") == "closed"
    assert server_loop.call(lambda: health.breaker_state("openai.1")) is BreakerState.CLOSED
