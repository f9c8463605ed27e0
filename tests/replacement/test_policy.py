"""The replacement policy as a plain object: a seeded (or scripted) random source and a
hand-moved clock, no gateway. The contract's replacement semantics are what is pinned
here; the wiring (routing, workers, the admin API) is tested end to end in test_e2e.py
and test_workers.py.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest

from fastproxy.config.schema import ReplacementConfig, ReplacementRule
from fastproxy.core.replacement import Decision, ReplacementPolicy, Rule

SONNET_TO_LOCAL = Rule("sonnet", "local", "qwen3")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted(random.Random):
    """random() returns the given values in order: each roll's outcome is chosen."""

    def __init__(self, values: Iterable[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def policy(
    probability: float = 1.0,
    turn_count: int = 1,
    rules: Iterable[Rule] = (SONNET_TO_LOCAL,),
    rng: random.Random | None = None,
    clock: Clock | None = None,
    idle_seconds: float = 3600.0,
    max_sessions: int = 100_000,
) -> ReplacementPolicy:
    return ReplacementPolicy(
        rules,
        probability=probability,
        turn_count=turn_count,
        rng=rng if rng is not None else random.Random(1),
        clock=clock if clock is not None else Clock(),
        idle_seconds=idle_seconds,
        max_sessions=max_sessions,
    )


def turn(p: ReplacementPolicy, sid: str | None, ok: bool = True, **kw: bool) -> Decision:
    d = p.decide(sid, "claude-sonnet-4", "anthropic", **kw)
    p.finished(sid, d, ok)
    return d


# -- probability ---------------------------------------------------------------------


def test_probability_zero_never_replaces() -> None:
    p = policy(probability=0.0)
    assert not any(turn(p, f"s{i}").replaced for i in range(2000))
    assert not any(turn(p, None).replaced for _ in range(2000))
    assert p.snapshot()["activations"] == 0


def test_probability_one_always_replaces() -> None:
    p = policy(probability=1.0)
    for i in range(2000):
        d = turn(p, f"s{i}")
        assert d.replaced and (d.backend, d.model) == ("local", "qwen3")
        assert (d.original_backend, d.original_model) == ("anthropic", "claude-sonnet-4")
    assert all(turn(p, None).replaced for _ in range(100))


def test_probability_point_three_within_four_sigma_over_10000_sessions() -> None:
    n, prob = 10_000, 0.3
    p = policy(probability=prob, rng=random.Random(20250101))
    hits = sum(p.decide(f"s{i}", "claude-sonnet-4", "anthropic").replaced for i in range(n))
    sigma = math.sqrt(n * prob * (1 - prob))
    assert abs(hits - n * prob) <= 4 * sigma
    snap = p.snapshot()
    assert snap["probability_checks"] == n
    assert snap["activations"] == hits == snap["sessions_replaced"]


def test_roll_is_once_per_eligible_turn_not_per_retry() -> None:
    # A failed roll is held until its turn completes, so retrying a failed request does
    # not roll again (that would raise the rate above the probability).
    p = policy(probability=0.5, rng=Scripted([0.9, 0.1]))
    assert turn(p, "s", ok=False).reason == "rolled_original"
    assert turn(p, "s", ok=False).reason == "held"
    assert turn(p, "s").reason == "held"  # this one completes the turn
    assert p.probability_checks == 1
    assert turn(p, "s").reason == "activated"  # the next turn rolls (0.1 < 0.5)
    assert p.probability_checks == 2


def test_requests_without_a_session_roll_every_time_and_are_not_tracked() -> None:
    p = policy(probability=0.5, rng=Scripted([0.1, 0.9, 0.1]))
    assert [turn(p, None).replaced for _ in range(3)] == [True, False, True]
    assert p.probability_checks == 3
    assert p.sessions_tracked == 0 and p.sessions_replaced == 0


# -- stickiness ----------------------------------------------------------------------


def test_sticky_for_exactly_turn_count_completed_turns_then_original_then_new_roll() -> None:
    # rolls: first succeeds, the one after the return fails, the next succeeds
    p = policy(probability=0.5, turn_count=3, rng=Scripted([0.1, 0.9, 0.2]))
    first = turn(p, "s")
    assert first.replaced and first.reason == "activated"
    assert [turn(p, "s").reason for _ in range(2)] == ["sticky", "sticky"]
    assert p.sessions_replaced == 0 and p.returns_to_original == 1
    assert p.turns_completed == 3

    back = turn(p, "s")  # back to the original: a new roll, which fails
    assert not back.replaced and back.reason == "rolled_original"
    again = turn(p, "s")  # the next turn rolls again and succeeds
    assert again.reason == "activated" and again.activation == 2
    assert p.probability_checks == 3 and p.activations == 2
    assert p.sessions_replaced == 1


def test_errors_and_aborts_do_not_consume_turns() -> None:
    p = policy(probability=1.0, turn_count=2)
    assert turn(p, "s").reason == "activated"  # 1 of 2
    for _ in range(5):  # errors and client aborts: the same turn again and again
        assert turn(p, "s", ok=False).reason == "sticky"
    assert p.turns_completed == 1 and p.sessions_replaced == 1
    assert turn(p, "s").reason == "sticky"  # 2 of 2
    assert p.sessions_replaced == 0 and p.returns_to_original == 1


def test_a_stream_completes_its_turn_when_finished_not_when_decided() -> None:
    p = policy(probability=1.0, turn_count=1)
    streaming = p.decide("s", "claude-sonnet-4", "anthropic")
    # While the stream runs, a concurrent request of the session is still replaced.
    concurrent = p.decide("s", "claude-sonnet-4", "anthropic")
    assert concurrent.reason == "sticky"
    p.finished("s", streaming, ok=True)  # the stream's end
    assert p.sessions_replaced == 0
    p.finished("s", concurrent, ok=True)  # ended replacement: consumes nothing new
    assert p.turns_completed == 1


def test_a_late_finish_from_an_old_replacement_does_not_consume_a_new_one() -> None:
    p = policy(probability=1.0, turn_count=1)
    old = p.decide("s", "claude-sonnet-4", "anthropic")
    stale = p.decide("s", "claude-sonnet-4", "anthropic")
    p.finished("s", old, ok=True)
    new = p.decide("s", "claude-sonnet-4", "anthropic")
    assert new.reason == "activated" and new.activation == 2
    p.finished("s", stale, ok=True)  # belongs to activation 1
    assert p.sessions_replaced == 1


def test_a_request_the_active_rule_does_not_match_is_served_as_asked() -> None:
    rules = [SONNET_TO_LOCAL, Rule("haiku", "cheap", "tiny")]
    p = policy(probability=1.0, turn_count=2, rules=rules)
    assert turn(p, "s").reason == "activated"
    d = p.decide("s", "claude-haiku-4", "anthropic")
    assert (d.replaced, d.reason, d.model) == (False, "no_rule", "claude-haiku-4")
    p.finished("s", d, ok=True)
    assert p.turns_completed == 1 and p.sessions_replaced == 1


# -- opt-outs ------------------------------------------------------------------------


def test_opt_outs_are_counted_by_kind() -> None:
    p = policy(probability=1.0, turn_count=5)
    d = turn(p, "a", opt_out=True)
    assert (d.replaced, d.reason) == (False, "opt_out_header")
    assert not turn(p, None, opt_out=True).replaced

    p.opt_out_session("b")
    assert p.is_opted_out("b")
    assert [turn(p, "b").reason for _ in range(3)] == ["opt_out_session"] * 3

    snap = p.snapshot()
    assert snap["opt_outs"] == {"total": 5, "header": 2, "session": 3}
    assert snap["probability_checks"] == 0 and snap["activations"] == 0

    p.opt_in_session("b")
    assert turn(p, "b").reason == "activated"


def test_header_opt_out_during_a_replacement_serves_the_original_and_keeps_the_turns() -> None:
    p = policy(probability=1.0, turn_count=2)
    turn(p, "s")
    assert turn(p, "s", opt_out=True).reason == "opt_out_header"
    assert p.turns_completed == 1 and p.sessions_replaced == 1
    assert turn(p, "s").reason == "sticky"
    assert p.returns_to_original == 1


def test_opting_a_replaced_session_out_ends_its_replacement() -> None:
    p = policy(probability=1.0, turn_count=5)
    turn(p, "s")
    p.opt_out_session("s")
    assert p.sessions_replaced == 0 and p.returns_to_original == 1
    assert turn(p, "s").reason == "opt_out_session"


def test_an_unmatched_request_is_not_an_opt_out() -> None:
    p = policy(probability=1.0)
    d = p.decide("s", "gpt-4o", "openai", opt_out=True)
    assert d.reason == "no_rule"
    assert p.snapshot()["opt_outs"]["total"] == 0
    assert p.sessions_tracked == 0  # unmatched traffic is not tracked


# -- rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "backend", "model", "matches"),
    [
        ("*", "any", "whatever", True),
        ("openai:gpt-4o", "openai", "gpt-4o", True),
        ("openai:gpt-4o", "azure", "gpt-4o", False),  # exact: the backend counts
        ("openai:gpt-4", "openai", "gpt-4o", False),  # exact: not a prefix
        ("sonnet", "anthropic", "claude-sonnet-4", True),  # substring
        ("Sonnet", "anthropic", "claude-sonnet-4", False),  # case-sensitive
        ("anthropic", "anthropic", "claude-sonnet-4", False),  # substring of the model only
        ("llama3:8b", "ollama", "llama3:8b-instruct", True),  # a colon in a model name
    ],
)
def test_rule_matching(pattern: str, backend: str, model: str, matches: bool) -> None:
    assert Rule(pattern, "x", "y").matches(backend, model) is matches


def test_first_matching_rule_wins() -> None:
    rules = [
        Rule("anthropic:claude-sonnet-4", "first", "m1"),
        Rule("sonnet", "second", "m2"),
        Rule("*", "third", "m3"),
    ]
    p = policy(probability=1.0, rules=rules)
    assert p.decide(None, "claude-sonnet-4", "anthropic").backend == "first"
    assert p.decide(None, "claude-sonnet-4", "bedrock").backend == "second"
    assert p.decide(None, "gpt-4o", "openai").backend == "third"
    snap = p.snapshot()
    assert [r["activations"] for r in snap["rules"]] == [1, 1, 1]
    assert snap["rules"][1] == {
        "from": "sonnet",
        "to": "second:m2",
        "activations": 1,
        "replaced_requests": 1,
    }


def test_no_rule_no_roll() -> None:
    p = policy(probability=1.0)
    d = p.decide("s", "gpt-4o", "openai")
    assert (d.replaced, d.reason, d.backend, d.model) == (False, "no_rule", "openai", "gpt-4o")
    assert p.probability_checks == 0 and p.decisions == 1


def test_replacements_are_counted_per_rule() -> None:
    rules = [SONNET_TO_LOCAL, Rule("haiku", "cheap", "tiny")]
    p = policy(probability=1.0, turn_count=3, rules=rules)
    for _ in range(3):
        turn(p, "a")
    p.decide("b", "claude-haiku-4", "anthropic")
    per_rule = [(r["activations"], r["replaced_requests"]) for r in p.snapshot()["rules"]]
    assert per_rule == [(1, 3), (1, 1)]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        policy(rules=[Rule("", "x", "y")])
    with pytest.raises(ValueError):
        policy(probability=1.5)
    with pytest.raises(ValueError):
        policy(turn_count=0)
    with pytest.raises(ValueError):
        policy(max_sessions=0)


def test_from_config() -> None:
    config = ReplacementConfig(
        probability=1.0,
        turn_count=2,
        replacement_rules=(ReplacementRule(from_pattern="*", to_backend="b", to_model="m"),),
    )
    p = ReplacementPolicy.from_config(config, rng=random.Random(0), clock=Clock())
    assert p.rules == (Rule("*", "b", "m"),) and p.turn_count == 2
    assert p.decide("s", "anything", "any").backend == "b"


# -- memory bounds -------------------------------------------------------------------


def test_idle_sessions_expire_with_the_injected_clock() -> None:
    clock = Clock()
    p = policy(probability=1.0, turn_count=5, clock=clock, idle_seconds=60.0)
    turn(p, "s")
    p.opt_out_session("o")
    clock.now += 59.0
    turn(p, "s")  # use keeps it alive
    assert p.sessions_tracked == 2
    clock.now += 30.0  # "o" idle 89 s, "s" 30 s
    assert not p.is_opted_out("o")
    assert p.sessions_tracked == 1 and p.sessions_expired == 1
    clock.now += 60.0
    d = p.decide("s", "claude-sonnet-4", "anthropic")
    assert d.reason == "activated" and d.activation == 1  # a fresh session
    assert p.sessions_expired == 2 and p.sessions_replaced == 1


def test_at_most_max_sessions_are_tracked_oldest_dropped_first() -> None:
    p = policy(probability=1.0, turn_count=10, max_sessions=3)
    for sid in ("a", "b", "c"):
        turn(p, sid)
    turn(p, "a")  # "a" used last: "b" is now the least recently used
    turn(p, "d")
    assert p.sessions_tracked == 3 and p.sessions_dropped == 1
    assert p.sessions_replaced == 3
    assert turn(p, "a").reason == "sticky"
    assert turn(p, "b").reason == "activated"  # forgotten: starts afresh
    assert p.sessions_dropped == 2


def test_reset_zeroes_counters_but_keeps_replacements() -> None:
    p = policy(probability=1.0, turn_count=2)
    turn(p, "s")
    turn(p, "x", opt_out=True)
    p.reset()
    snap = p.snapshot()
    assert snap["decisions"] == snap["activations"] == snap["opt_outs"]["total"] == 0
    assert snap["rules"][0]["activations"] == 0
    assert snap["sessions_replaced"] == 1  # a gauge of state, not a counter
    assert turn(p, "s").reason == "sticky"
    assert p.returns_to_original == 1
