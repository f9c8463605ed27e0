"""Load balancing as plain objects: a seeded random source and a hand-moved clock, no
gateway. The distributions the issue asks for are shown here on the sans-I/O level; the
end-to-end ones come with the wiring.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.core.balance import (
    STRATEGIES,
    Affinity,
    BackendStats,
    Balancer,
    Strategy,
    make_balancer,
    validate_balancing,
)


@dataclass(frozen=True)
class B:
    """Stands in for httpclient.Backend: the balancer reads only ``name``."""

    name: str


Cand = tuple[B, str]


def cands(*names: str, model: str = "m") -> list[Cand]:
    return [(B(n), model) for n in names]


def names(order: list[Cand]) -> list[str]:
    return [c[0].name for c in order]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(
    strategy: Strategy,
    *,
    seed: int = 7,
    clock: Clock | None = None,
    affinity: bool = False,
    **kw: object,
) -> tuple[Balancer, BackendStats, Clock]:
    clock = clock or Clock()
    stats = BackendStats(clock=clock)
    aff = Affinity(clock=clock) if affinity else None
    rng = random.Random(seed)
    b = Balancer(strategy, name="pool", stats=stats, affinity=aff, rng=rng, **kw)  # type: ignore[arg-type]
    return b, stats, clock


def first_counts(b: Balancer, cs: list[Cand], n: int, **kw: object) -> Counter[str]:
    return Counter(b.order(cs, **kw)[0][0].name for _ in range(n))  # type: ignore[arg-type]


# -- ordered ---------------------------------------------------------------------------


def test_ordered_without_affinity_is_skipped_entirely() -> None:
    assert make_balancer("ordered") is None
    assert make_balancer("ordered", affinity=Affinity()) is not None
    assert make_balancer("weighted", weights={"a": 1}) is not None


def test_ordered_keeps_config_order() -> None:
    b, _, _ = balancer("ordered")
    cs = cands("a", "b", "c")
    for _ in range(20):
        assert names(b.order(cs)) == ["a", "b", "c"]


# -- weighted --------------------------------------------------------------------------


def test_weighted_3_to_1_over_1000_picks_within_5_points() -> None:
    b, _, _ = balancer("weighted", seed=1234, weights={"a": 3, "b": 1})
    counts = first_counts(b, cands("a", "b"), 1000)
    share = counts["a"] / 1000
    assert 0.70 <= share <= 0.80, counts


def test_weighted_3_to_1_holds_over_many_seeds() -> None:
    # 200 seeds x 1,000 picks: the share's sd is 1.4 points, so ±5 points is 3.6 sd;
    # allow a few outliers (expected about 0.06 of 200) but not a biased pick.
    outside = 0
    shares = []
    for seed in range(200):
        b, _, _ = balancer("weighted", seed=seed, weights={"a": 3, "b": 1})
        share = first_counts(b, cands("a", "b"), 1000)["a"] / 1000
        shares.append(share)
        outside += not (0.70 <= share <= 0.80)
    assert outside <= 2
    assert abs(sum(shares) / len(shares) - 0.75) < 0.005


def test_weighted_rest_follow_in_config_order() -> None:
    b, _, _ = balancer("weighted", weights={"a": 1, "b": 1, "c": 1})
    seen = set()
    for _ in range(200):
        order = names(b.order(cands("a", "b", "c")))
        seen.add(order[0])
        rest = [n for n in ["a", "b", "c"] if n != order[0]]
        assert order[1:] == rest
    assert seen == {"a", "b", "c"}


def test_weighted_zero_weight_never_first_but_stays_for_failover() -> None:
    b, _, _ = balancer("weighted", weights={"a": 0, "b": 1})
    for _ in range(200):
        assert names(b.order(cands("a", "b"))) == ["b", "a"]


def test_weighted_open_backend_share_goes_to_the_live_ones() -> None:
    b, _, _ = balancer("weighted", seed=3, weights={"a": 2, "b": 1, "c": 1})
    counts = first_counts(b, cands("a", "b", "c"), 1000, unavailable={"a"})
    assert "a" not in counts
    assert 0.45 <= counts["b"] / 1000 <= 0.55, counts


def test_member_weights_win_over_backend_weights() -> None:
    # A group that lists one backend with two models weighs them apart.
    b, _, _ = balancer(
        "weighted", seed=5, weights={"a": 1}, member_weights={("a", "big"): 0, ("a", "small"): 1}
    )
    cs = [(B("a"), "big"), (B("a"), "small")]
    for _ in range(100):
        assert b.order(cs)[0][1] == "small"


# -- least_busy ------------------------------------------------------------------------


def test_least_busy_sends_new_work_away_from_slow_streams() -> None:
    b, stats, _ = balancer("least_busy")
    for _ in range(5):
        stats.started("a")  # five slow streams held open on a
    for _ in range(1000):
        first = b.order(cands("a", "b"))[0][0].name
        assert first == "b"
        stats.started(first)
        stats.finished(first)  # b answers at once


def test_least_busy_simulated_slow_and_fast_backend() -> None:
    # Requests arrive every 10 ms; a holds each for 2 s, b for 50 ms. Under least_busy
    # b serves the large majority, ordered would have sent all 1,000 to a.
    b, stats, clock = balancer("least_busy", seed=11)
    hold = {"a": 2.0, "b": 0.05}
    ends: list[tuple[float, str]] = []
    served: Counter[str] = Counter()
    for _ in range(1000):
        clock.now += 0.01
        for end, name in [e for e in ends if e[0] <= clock.now]:
            stats.finished(name)
            ends.remove((end, name))
        first = b.order(cands("a", "b"))[0][0].name
        served[first] += 1
        stats.started(first)
        ends.append((clock.now + hold[first], first))
    assert served["b"] >= 900, served


def test_least_busy_ties_are_random_not_config_order() -> None:
    b, _, _ = balancer("least_busy", seed=2)
    counts = first_counts(b, cands("a", "b", "c"), 3000)
    for n in "abc":
        assert 900 <= counts[n] <= 1100, counts
    two = first_counts(b, cands("a", "b"), 1000)
    assert 450 <= two["a"] <= 550, two
    # Only the tied lowest share first place: the busiest stays last.
    b.order(cands("a", "b", "c"))
    b._stats.started("c")  # type: ignore[union-attr]
    for _ in range(100):
        order = names(b.order(cands("a", "b", "c")))
        assert order[2] == "c"
        assert sorted(order[:2]) == ["a", "b"]


def test_least_busy_rest_sorted_by_load() -> None:
    b, stats, _ = balancer("least_busy")
    for name, k in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(k):
            stats.started(name)
    assert names(b.order(cands("a", "b", "c"))) == ["b", "c", "a"]


def test_finished_never_goes_below_zero() -> None:
    stats = BackendStats()
    stats.finished("a")
    stats.started("b")
    stats.finished("b")
    stats.finished("b")
    assert stats.in_flight("a") == 0
    assert stats.in_flight("b") == 0


def test_forget_drops_a_removed_backends_state() -> None:
    stats = BackendStats()
    stats.started("gone")
    stats.observed("gone", 1.0)
    stats.forget("gone")
    assert stats.in_flight("gone") == 0
    assert stats.latency("gone") is None


# -- latency ---------------------------------------------------------------------------


def run_latency(
    b: Balancer, stats: BackendStats, clock: Clock, ttft: dict[str, float], n: int
) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(n):
        clock.now += 0.01
        first = b.order(cands("a", "b"))[0][0].name
        served[first] += 1
        stats.observed(first, ttft[first])
    return served


def test_latency_prefers_the_faster_backend() -> None:
    b, stats, clock = balancer("latency")
    served = run_latency(b, stats, clock, {"a": 0.5, "b": 0.1}, 1000)
    # One probe of a when it had no sample; 10 s of traffic is short of a re-probe.
    assert served == Counter({"b": 999, "a": 1})
    assert stats.latency("a") == pytest.approx(0.5)
    assert stats.latency("b") == pytest.approx(0.1)


def test_latency_unsampled_backends_are_probed_one_request_each() -> None:
    b, stats, _ = balancer("latency")
    # No samples yet: the first request probes a, the second b, then config order
    # while both probes are in flight (not a second probe each).
    assert names(b.order(cands("a", "b"))) == ["a", "b"]
    assert names(b.order(cands("a", "b"))) == ["b", "a"]
    assert names(b.order(cands("a", "b"))) == ["a", "b"]
    stats.observed("b", 0.2)
    assert names(b.order(cands("a", "b"))) == ["b", "a"]


def test_latency_reprobes_a_backend_that_recovers() -> None:
    b, stats, clock = balancer("latency")
    run_latency(b, stats, clock, {"a": 2.0, "b": 0.3}, 100)
    assert b.order(cands("a", "b"))[0][0].name == "b"
    # a recovers. Within reprobe_seconds of its last probe it gets nothing...
    clock.now += stats.reprobe_seconds - 5
    assert run_latency(b, stats, clock, {"a": 0.05, "b": 0.3}, 100)["a"] == 0
    # ...then exactly one probe, whose fresh sample replaces the stale average.
    clock.now += 5
    served = run_latency(b, stats, clock, {"a": 0.05, "b": 0.3}, 100)
    assert served["a"] == 100
    assert stats.latency("a") == pytest.approx(0.05)


def test_latency_slow_backend_stays_slow_after_reprobe() -> None:
    b, stats, clock = balancer("latency")
    run_latency(b, stats, clock, {"a": 2.0, "b": 0.3}, 10)
    clock.now += stats.reprobe_seconds
    served = run_latency(b, stats, clock, {"a": 2.0, "b": 0.3}, 100)
    assert served["a"] == 1  # the probe only


def test_latency_moving_average_blends_recent_samples() -> None:
    clock = Clock()
    stats = BackendStats(alpha=0.5, clock=clock)
    stats.observed("a", 1.0)
    stats.observed("a", 0.0)
    assert stats.latency("a") == pytest.approx(0.5)
    stats.observed("a", float("nan"))  # ignored, not a poisoned average
    stats.observed("a", -1.0)
    assert stats.latency("a") == pytest.approx(0.5)


# -- affinity --------------------------------------------------------------------------


def test_affinity_keeps_a_session_until_it_fails_over_then_sticks() -> None:
    b, _, _ = balancer("weighted", affinity=True, weights={"a": 1, "b": 1, "c": 1})
    cs = cands("a", "b", "c")
    home = b.order(cs, session_id="s1")[0][0].name
    for _ in range(200):
        assert b.order(cs, session_id="s1")[0][0].name == home
    # Its backend's breaker opens: the session moves...
    moved = b.order(cs, session_id="s1", unavailable={home})[0][0].name
    assert moved != home
    # ...and sticks to the new one, also once the old one is back.
    for _ in range(200):
        assert b.order(cs, session_id="s1")[0][0].name == moved


def test_affinity_rebinds_to_the_backend_that_served_after_failover() -> None:
    b, _, _ = balancer("least_busy", affinity=True)
    cs = cands("a", "b")
    home = b.order(cs, session_id="s")[0][0].name
    other = "b" if home == "a" else "a"
    b.served("s", other)  # home answered 503, the failover candidate served
    for _ in range(50):
        assert b.order(cs, session_id="s")[0][0].name == other


def test_affinity_spreads_sessions_and_is_per_pool() -> None:
    clock = Clock()
    aff = Affinity(clock=clock)
    one = Balancer("weighted", name="one", affinity=aff, rng=random.Random(1))
    two = Balancer("weighted", name="two", affinity=aff, rng=random.Random(2))
    cs = cands("a", "b")
    homes = Counter(one.order(cs, session_id=f"s{i}")[0][0].name for i in range(400))
    assert 150 <= homes["a"] <= 250, homes
    two.order(cs, session_id="s0")
    one.served("s0", "a")
    two.served("s0", "b")
    assert one.order(cs, session_id="s0")[0][0].name == "a"
    assert two.order(cs, session_id="s0")[0][0].name == "b"


def test_served_moves_a_bound_session_but_binds_no_new_one() -> None:
    b, _, _ = balancer("ordered", affinity=True)
    cs = cands("a", "b")
    b.served("new", "b")
    assert names(b.order(cs, session_id="new")) == ["a", "b"]  # bound to a only now
    b.served("new", "b")
    assert names(b.order(cs, session_id="new")) == ["b", "a"]


def test_latency_probe_does_not_bind_the_session() -> None:
    b, stats, clock = balancer("latency", affinity=True)
    cs = cands("a", "b")
    stats.observed("a", 0.1)
    clock.now += 0.01
    # b has no sample: this session's first request probes it, and is not bound to it.
    assert names(b.order(cs, session_id="s")) == ["b", "a"]
    b.served("s", "b")
    stats.observed("b", 3.0)
    for _ in range(50):
        assert names(b.order(cs, session_id="s")) == ["a", "b"]
    # Bound to a now: a later probe of b goes to a session-less request or a new
    # session, not to this one.
    clock.now += stats.reprobe_seconds
    stats.observed("a", 0.1)  # a keeps serving; b has been silent for reprobe_seconds
    assert names(b.order(cs, session_id="s")) == ["a", "b"]
    assert names(b.order(cs, session_id="other")) == ["b", "a"]
    assert names(b.order(cs, session_id="s")) == ["a", "b"]


def test_weighted_affinity_spreads_new_sessions_by_weight() -> None:
    b, _, _ = balancer("weighted", affinity=True, weights={"a": 3, "b": 1})
    homes = Counter(b.order(cands("a", "b"), session_id=f"s{i}")[0][0].name for i in range(1000))
    assert 0.70 <= homes["a"] / 1000 <= 0.80, homes


def test_weighted_affinity_agrees_across_processes() -> None:
    # Two workers: separate balancers, separate random sources, no shared state. A
    # session starts on the same backend in both, and moves to the same one when its
    # backend's breaker opens.
    w1, _, _ = balancer("weighted", seed=1, affinity=True, weights={"a": 1, "b": 1, "c": 1})
    w2, _, _ = balancer("weighted", seed=2, affinity=True, weights={"a": 1, "b": 1, "c": 1})
    cs = cands("a", "b", "c")
    homes = set()
    for i in range(300):
        sid = f"session-{i}"
        home = w1.order(cs, session_id=sid)[0][0].name
        homes.add(home)
        assert w2.order(cs, session_id=sid)[0][0].name == home
    assert homes == {"a", "b", "c"}
    for i in range(300, 400):
        sid = f"session-{i}"
        home = w1.order(cs, session_id=sid)[0][0].name
        moved = w1.order(cs, session_id=sid, unavailable={home})[0][0].name
        assert w2.order(cs, session_id=sid, unavailable={home})[0][0].name == moved != home


def test_affinity_idle_expiry_and_lru_cap() -> None:
    clock = Clock()
    aff = Affinity(idle_seconds=60, max_sessions=2, clock=clock)
    aff.bind("p", "s1", "a")
    aff.bind("p", "s2", "b")
    assert aff.lookup("p", "s1") == "a"  # s1 is now the most recently used
    aff.bind("p", "s3", "c")  # over the cap: s2, the least recently used, goes
    assert aff.lookup("p", "s2") is None
    assert aff.dropped == 1
    assert len(aff) == 2
    clock.now += 59
    assert aff.lookup("p", "s3") == "c"
    clock.now += 1  # s1 idle 60 s: forgotten; s3 was seen 1 s ago
    assert aff.lookup("p", "s1") is None
    assert aff.lookup("p", "s3") == "c"
    assert aff.expired == 1


def test_requests_without_a_session_remember_nothing() -> None:
    clock = Clock()
    aff = Affinity(clock=clock)
    b = Balancer("weighted", name="p", affinity=aff, rng=random.Random(0))
    for _ in range(50):
        b.order(cands("a", "b"))
    assert len(aff) == 0


def test_affinity_only_binds_within_the_pool() -> None:
    b, _, _ = balancer("ordered", affinity=True)
    cs = cands("a", "b", "fallback")
    b.served("s", "fallback")  # a failover route outside the pool served it
    assert names(b.order(cs, session_id="s", pool=2)) == ["a", "b", "fallback"]


# -- health and failover ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("affinity", [False, True])
def test_an_open_backend_is_never_chosen(strategy: Strategy, affinity: bool) -> None:
    b, stats, clock = balancer(strategy, affinity=affinity, weights={"a": 100, "b": 1})
    stats.observed("b", 5.0)  # a is both fastest-looking and heaviest, and idle
    for _ in range(3):
        stats.started("b")
    cs = cands("a", "b", "c")
    for i in range(300):
        clock.now += 1
        order = names(b.order(cs, session_id=f"s{i % 7}", unavailable={"a"}))
        assert "a" not in order
        assert sorted(order) == ["b", "c"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_candidate_open_returns_the_plan_unchanged(strategy: Strategy) -> None:
    # routing.py's rule: with nothing routable, the original plan is tried anyway.
    b, _, _ = balancer(strategy, affinity=True)
    cs = cands("a", "b")
    assert b.order(cs, session_id="s", unavailable={"a", "b"}) == cs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_failover_routes_stay_after_the_pool(strategy: Strategy) -> None:
    b, stats, _ = balancer(strategy, weights={"a": 1, "b": 5})
    stats.started("a")
    stats.observed("a", 9.0)
    cs = [*cands("a", "b"), (B("x"), "other-model"), (B("y"), "other-model")]
    for _ in range(50):
        order = names(b.order(cs, pool=2))
        assert sorted(order[:2]) == ["a", "b"]
        assert order[2:] == ["x", "y"]
    # A pool member that is open shrinks the pool, not the failover part.
    assert names(b.order(cs, pool=2, unavailable={"b"})) == ["a", "x", "y"]
    assert names(b.order(cs, pool=2, unavailable={"a", "b"})) == ["x", "y"]
    # Open members before and after a live one: the failover route is still not balanced
    # into the pool.
    wide = [*cands("a", "b", "c"), (B("x"), "other-model")]
    for _ in range(50):
        assert names(b.order(wide, pool=3, unavailable={"a", "c"})) == ["b", "x"]


def test_order_returns_a_new_list() -> None:
    b, _, _ = balancer("weighted")
    cs = cands("a")
    out = b.order(cs)
    assert out == cs
    assert out is not cs


# -- properties ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    n=st.integers(1, 6),
    down=st.sets(st.integers(0, 5)),
    busy=st.lists(st.integers(0, 4), min_size=6, max_size=6),
    lat=st.lists(st.none() | st.floats(0, 10), min_size=6, max_size=6),
    pool=st.none() | st.integers(0, 6),
    session=st.none() | st.sampled_from(["s1", "s2"]),
    seed=st.integers(0, 2**32),
)
def test_order_is_a_permutation_of_the_live_candidates(
    strategy: Strategy,
    n: int,
    down: set[int],
    busy: list[int],
    lat: list[float | None],
    pool: int | None,
    session: str | None,
    seed: int,
) -> None:
    b, stats, clock = balancer(
        strategy, seed=seed, affinity=True, weights={f"b{i}": i % 3 for i in range(6)}
    )
    for i in range(6):
        for _ in range(busy[i]):
            stats.started(f"b{i}")
        if lat[i] is not None:
            stats.observed(f"b{i}", lat[i])  # type: ignore[arg-type]
    cs = cands(*(f"b{i}" for i in range(n)))
    unavailable = {f"b{i}" for i in down}
    for _ in range(3):
        clock.now += 10
        out = b.order(cs, session_id=session, unavailable=unavailable, pool=pool)
        live = [c for c in cs if c[0].name not in unavailable]
        if not live:
            assert out == cs
            continue
        assert sorted(names(out)) == sorted(names(live))
        k = len([c for c in cs[: n if pool is None else pool] if c not in live])
        head = (n if pool is None else min(pool, n)) - k
        assert out[head:] == live[head:]  # the failover part keeps its order


# -- validation ------------------------------------------------------------------------


def test_validate_balancing_names_the_key_and_value() -> None:
    assert validate_balancing("load_balancing", "weighted", {"a": 3, "b": 1}, {"a", "b"}) == []
    errors = validate_balancing("load_balancing.models['gpt-4o']", "fastest", None)
    assert errors == [
        "load_balancing.models['gpt-4o'].strategy: got 'fastest'; "
        "allowed: ordered, weighted, least_busy, latency"
    ]
    errors = validate_balancing("lb", "weighted", {"a": -1, "b": True, "c": 2}, {"a", "b"})
    assert errors == [
        "lb.weights['a']: got -1; allowed: a number >= 0",
        "lb.weights['b']: got True; allowed: a number >= 0",
        "lb.weights['c']: no such backend; configured: a, b",
    ]
    assert validate_balancing("lb", "weighted", {"a": 0}) == [
        "lb.weights: every weight is 0; at least one must be positive"
    ]


def test_constructors_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        Balancer("fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the BackendStats"):
        Balancer("least_busy")
    with pytest.raises(ValueError, match="weight of 'a'"):
        Balancer("weighted", weights={"a": -1})
    with pytest.raises(ValueError, match="alpha"):
        BackendStats(alpha=0)
    with pytest.raises(ValueError, match="reprobe_seconds"):
        BackendStats(reprobe_seconds=0)
    with pytest.raises(ValueError, match="max_sessions"):
        Affinity(max_sessions=0)
    with pytest.raises(ValueError, match="idle_seconds"):
        Affinity(idle_seconds=0)
