"""Routing without I/O: the model string, the backends and the breakers in, the ordered
candidates out (fastproxy/dataplane/routing.py, rules in docs/routing.md).

Also the breaker seam routing asks through: ``HealthService.breaker_state`` never moves a
breaker (asking about a half-open backend three times leaves it half-open and free), and
the half-open trial is claimed only by ``attempt_started``, when a request is actually
sent there. Before the seams, routing claimed the trial while planning, for candidates
that were never tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fastproxy.config import BackendConfig, load_config
from fastproxy.core.errors import RoutingError
from fastproxy.core.seams import BreakerState
from fastproxy.dataplane.routing import Plans, plan
from fastproxy.httpclient.backend import Backend
from fastproxy.monitor.breaker import Event, State
from fastproxy.monitor.health import HealthService


def backend(name: str, models: list[str] | None, kind: str = "openai") -> Backend:
    cfg = BackendConfig(type=kind, api_url=f"http://127.0.0.1:1/{name}", models=models)
    return Backend(name, cfg, env={})


BACKENDS = {
    "openai.1": backend("openai.1", ["gpt-4o", "gpt-4o-mini"]),
    "openai.2": backend("openai.2", ["gpt-4o"]),
    "anthropic.1": backend("anthropic.1", ["claude-3"], "anthropic"),
}


def names(cands: list[tuple[Backend, str]]) -> list[tuple[str, str]]:
    return [(b.name, m) for b, m in cands]


class Breakers:
    """A BreakerView with fixed answers."""

    def __init__(self, states: dict[str, BreakerState]) -> None:
        self.states = states
        self.asked: list[str] = []

    def breaker_state(self, backend: str) -> BreakerState:
        self.asked.append(backend)
        return self.states.get(backend, BreakerState.CLOSED)


CASES = [
    ("gpt-4o", "openai", None, {}),
    ("openai.2:gpt-4o", "openai", None, {}),
    ("gpt-4o-mini", "openai", None, {"gpt-4o-mini": ["gpt-4o"]}),
    ("some-new-model", "openai", "openai.2", {}),
    ("claude-3", "anthropic", None, {}),
]


@pytest.mark.parametrize(("model", "dialect", "default", "routes"), CASES)
def test_cached_plans_are_the_plans(
    model: str, dialect: str, default: str | None, routes: dict[str, list[str]]
) -> None:
    """Plans gives what plan gives, the first time and from its cache, and a new list
    each time (the cycle keeps the one it is given)."""
    plans = Plans()
    want = names(plan(model, dialect, BACKENDS, default, routes))
    first = plans.plan(model, dialect, BACKENDS, default, routes)
    second = plans.plan(model, dialect, BACKENDS, default, routes)
    assert names(first) == names(second) == want
    assert first is not second
    first.clear()  # a caller's change does not reach the cache
    assert names(plans.plan(model, dialect, BACKENDS, default, routes)) == want


def test_a_cached_plan_still_asks_the_breakers_each_time() -> None:
    plans = Plans()
    closed = Breakers({})
    assert names(plans.plan("gpt-4o", "openai", BACKENDS, None, {}, closed))[0][0] == "openai.1"
    opened = Breakers({"openai.1": BreakerState.OPEN})
    got = plans.plan("gpt-4o", "openai", BACKENDS, None, {}, opened)
    assert names(got) == [("openai.2", "gpt-4o")]
    assert opened.asked == ["openai.1", "openai.2"]


def test_a_new_routing_generation_is_planned_afresh() -> None:
    """A reload replaces the backends mapping or the routes (and may change the
    default): the cache is not used across them."""
    plans = Plans()
    assert len(plans.plan("gpt-4o", "openai", BACKENDS, None, {})) == 2
    reloaded = {"openai.2": backend("openai.2", ["gpt-4o"])}
    assert names(plans.plan("gpt-4o", "openai", reloaded, None, {})) == [("openai.2", "gpt-4o")]
    routes = {"gpt-4o": ["claude-3"]}
    both = {**reloaded, "anthropic.1": BACKENDS["anthropic.1"]}
    assert len(plans.plan("gpt-4o", "openai", both, None, routes)) == 1
    assert names(plans.plan("x", "openai", both, "openai.2", routes)) == [("openai.2", "x")]
    with pytest.raises(RoutingError):
        plans.plan("x", "openai", both, None, routes)  # no default any more


def test_refused_names_are_not_kept_and_the_cache_is_bounded() -> None:
    plans = Plans()
    with pytest.raises(RoutingError):
        plans.plan("nobody-serves-this", "openai", BACKENDS, None, {})
    assert len(plans._plans) == 0
    for i in range(Plans.MAX + 5):  # any name goes to the default backend
        plans.plan(f"model-{i}", "openai", BACKENDS, "openai.1", {})
    assert 0 < len(plans._plans) <= Plans.MAX


def test_every_backend_listing_the_model_in_config_order() -> None:
    got = plan("gpt-4o", "openai", BACKENDS, None, {})
    assert names(got) == [("openai.1", "gpt-4o"), ("openai.2", "gpt-4o")]


def test_explicit_backend_prefix_and_a_model_with_colons() -> None:
    assert names(plan("openai.2:gpt-4o", "openai", BACKENDS, None, {})) == [("openai.2", "gpt-4o")]
    # "ft" is no backend: the whole string is the model, served by the default.
    assert names(plan("ft:gpt-4o:org", "openai", BACKENDS, "openai.1", {})) == [
        ("openai.1", "ft:gpt-4o:org")
    ]


def test_failover_routes_follow_and_duplicates_are_dropped() -> None:
    routes = {"gpt-4o-mini": ["openai.2:gpt-4o", "gpt-4o"]}
    got = plan("gpt-4o-mini", "openai", BACKENDS, None, routes)
    assert names(got) == [
        ("openai.1", "gpt-4o-mini"),
        ("openai.2", "gpt-4o"),
        ("openai.1", "gpt-4o"),
    ]


def test_unknown_model_and_wrong_dialect_are_routing_errors() -> None:
    with pytest.raises(RoutingError) as missing:
        plan("nope", "openai", BACKENDS, None, {})
    assert (missing.value.status, missing.value.code) == (404, "model_not_found")
    # An explicit Anthropic backend asked through the OpenAI API.
    with pytest.raises(RoutingError) as mismatch:
        plan("anthropic.1:claude-3", "openai", BACKENDS, None, {})
    assert (mismatch.value.status, mismatch.value.code) == (400, "backend_dialect_mismatch")


@pytest.mark.parametrize(
    ("state", "kept"),
    [
        (BreakerState.CLOSED, True),
        (BreakerState.HALF_OPEN, True),  # its trial is still free
        (BreakerState.OPEN, False),
        (BreakerState.BUSY, False),  # half-open, trial already in flight
    ],
)
def test_breakers_move_unroutable_backends_out(state: BreakerState, kept: bool) -> None:
    breakers = Breakers({"openai.1": state})
    got = names(plan("gpt-4o", "openai", BACKENDS, None, {}, breakers))
    assert (("openai.1", "gpt-4o") in got) is kept
    assert ("openai.2", "gpt-4o") in got


def test_all_open_still_tries_the_original_plan() -> None:
    breakers = Breakers({"openai.1": BreakerState.OPEN, "openai.2": BreakerState.OPEN})
    got = names(plan("gpt-4o", "openai", BACKENDS, None, {}, breakers))
    assert got == [("openai.1", "gpt-4o"), ("openai.2", "gpt-4o")]


# -- the breaker seam -----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Never run: the service only arms its breaker timers on it."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def health(loop: asyncio.AbstractEventLoop, clock: Clock, enabled: bool = True) -> HealthService:
    cfg = load_config(
        {
            "health_check.enabled": False,
            "health_check.circuit_breaker_enabled": enabled,
            "circuit_breaker.failure_threshold": 1,
            "circuit_breaker.open_cooldown_seconds": 10,
        },
        env={},
        use_files=False,
    ).config
    return HealthService(cfg, BACKENDS, loop, clock=clock)


def test_asking_never_moves_a_breaker_and_only_an_attempt_claims_the_trial(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    svc = health(loop, clock)
    b = svc.breakers["openai.1"]
    b.feed(Event.LIVE_FAILURE, clock.now, "HTTP 503")
    assert b.state is State.OPEN
    assert svc.breaker_state("openai.1") is BreakerState.OPEN
    clock.now += 11  # the cooldown is over: routable again, as half-open
    for _ in range(3):
        assert svc.breaker_state("openai.1") is BreakerState.HALF_OPEN
    assert b.state is State.OPEN  # asking applied nothing (the timer would)
    assert svc.circuit_state("openai.1") == "half_open"  # what a GET shows
    assert b.state is State.OPEN
    svc.attempt_started("openai.1")  # the request goes there: it is the trial
    assert b.state is State.TRIAL
    assert svc.breaker_state("openai.1") is BreakerState.BUSY
    svc.attempt_finished("openai.1", 200, None)
    assert b.state is State.CLOSED
    assert svc.breaker_state("openai.1") is BreakerState.CLOSED


def test_with_breakers_disabled_every_backend_is_routable(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    svc = health(loop, clock, enabled=False)
    svc.breakers["openai.1"].feed(Event.LIVE_FAILURE, clock.now, "HTTP 503")
    assert svc.breaker_state("openai.1") is BreakerState.CLOSED
    assert svc.circuit_state("openai.1") == "open"  # the bookkeeping is still shown
