"""The policy's parts added for the wiring, sans I/O: the metrics document (the contract's
shape), its sliding minute, unique sessions, turns before return, the target-dialect
filter; the workers' remote side (answers, late answers, a lost primary); and what a
reload does to a running policy."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import msgspec
import pytest

from fastproxy.config import Config, load_config
from fastproxy.core.replacement import Decision, ReplacementPolicy, Rule
from fastproxy.gateway import reload_replacement
from fastproxy.workers.channel import Channel, Kind
from fastproxy.workers.replacing import RemoteReplacer, answer, turns

from .support import check_shape

RULE = Rule("sonnet", "local", "qwen3")


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, probability: float = 1.0, turn_count: int = 2) -> ReplacementPolicy:
    return ReplacementPolicy(
        [RULE], probability=probability, turn_count=turn_count, rng=random.Random(7), clock=clock
    )


def turn(p: ReplacementPolicy, sid: str | None, ok: bool = True, **kw: Any) -> Decision:
    d = p.decide(sid, "claude-sonnet-4", "anthropic", **kw)
    p.finished(sid, d, ok)
    return d


def test_document_has_the_contract_shape_and_counts() -> None:
    clock = Clock()
    p = policy(clock, turn_count=2)
    for _ in range(4):
        turn(p, "a")  # two replacements of two turns
    turn(p, "b")  # activated, one turn of two
    turn(p, "c", opt_out=True)
    turn(p, "c", opt_out=True)
    p.opt_out_session("b")  # b returns after one turn
    turn(p, "b")
    clock.now += 12.5
    doc = p.metrics_document()
    doc["effectiveness"] = []
    check_shape(doc)
    assert doc["elapsed_seconds"] == 12.5
    assert doc["activation_metrics"] == {
        "total_activations": 3,
        "activation_rate": 1.0,
        "activations_last_60s": 3,
        "unique_sessions_activated": 2,
    }
    assert doc["turn_count_metrics"] == {
        "total_turns_completed": 5,
        "average_turns_before_return": 5 / 3,
        "turn_count_distribution": {"1": 1, "2": 2},
    }
    assert doc["opt_out_metrics"] == {
        "total_opt_outs": 3,
        "header_opt_outs": 2,
        "session_opt_outs": 1,
        "opt_outs_last_60s": 3,
        "unique_sessions_opted_out": 2,
    }
    assert doc["probability_check_metrics"] == {
        "total_probability_checks": 3,
        "unique_sessions_checked": 2,
    }


def test_last_60s_slides_and_reset_starts_afresh() -> None:
    clock = Clock()
    p = policy(clock, turn_count=1)
    turn(p, "a")
    clock.now += 30
    turn(p, "b")
    assert p.metrics_document()["activation_metrics"]["activations_last_60s"] == 2
    clock.now += 31  # the first is now 61 s old
    assert p.metrics_document()["activation_metrics"]["activations_last_60s"] == 1
    clock.now += 60
    assert p.metrics_document()["activation_metrics"]["activations_last_60s"] == 0
    p.reset()
    doc = p.metrics_document()
    assert doc["elapsed_seconds"] == 0.0
    assert doc["activation_metrics"]["total_activations"] == 0
    assert doc["activation_metrics"]["unique_sessions_activated"] == 0
    # A session counted before the reset counts again after it (once).
    turn(p, "a")
    turn(p, "a")
    assert p.metrics_document()["activation_metrics"]["unique_sessions_activated"] == 1


def test_rate_is_activations_over_checks() -> None:
    p = policy(Clock(), probability=0.25, turn_count=1)
    for i in range(4000):
        turn(p, f"s{i}")
    doc = p.metrics_document()["activation_metrics"]
    assert doc["activation_rate"] == doc["total_activations"] / 4000
    assert 0.2 < doc["activation_rate"] < 0.3


def test_rule_does_not_match_requests_its_target_cannot_answer() -> None:
    # Bad input: an OpenAI-only target for an Anthropic Messages request. The rule does
    # not match it (no roll, no replacement); an OpenAI request it matches as before.
    p = policy(Clock())
    p.set_target_dialects({"local": frozenset({"openai"})})
    d = p.decide("s", "claude-sonnet-4", "anthropic", dialect="anthropic")
    assert (d.replaced, d.reason) == (False, "no_rule")
    assert p.probability_checks == 0
    d = p.decide("s", "claude-sonnet-4", "anthropic", dialect="openai")
    assert d.replaced and d.backend == "local"
    # The active replacement does not carry over to the other API either.
    d = p.decide("s", "claude-sonnet-4", "anthropic", dialect="anthropic")
    assert (d.replaced, d.reason) == (False, "no_rule")


def test_primary_answers_and_completes_turns_for_workers() -> None:
    # What the primary does with a worker's DECIDE and TURNS frames: the one policy.
    import orjson

    p = policy(Clock(), turn_count=1)
    question = orjson.dumps([[1, "s", "claude-sonnet-4", "anthropic", False, "anthropic"]])
    ((token, wire),) = orjson.loads(answer(p, memoryview(question)))
    assert token == 1 and wire[2] is True and wire[3] == "activated"
    turns(p, memoryview(orjson.dumps([["s", wire, True]])))
    assert p.turns_completed == 1 and p.sessions_replaced == 0
    # Replacement turned off by a reload while the question travelled: served as asked.
    ((_, wire),) = orjson.loads(answer(None, memoryview(question)))
    assert wire[2] is False


def test_remote_replacer_round_trip_timeout_and_lost_primary() -> None:
    # A worker's side over a real socketpair with a stand-in primary that answers only
    # when told to: matched requests wait for the answer; unmatched ones do not ask;
    # overdue ones and those pending when the channel closes are served as asked.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        here, there = socket.socketpair()
        asked: list[list[Any]] = []
        arrived = asyncio.Event()

        def on_question(kind: Kind, payload: memoryview) -> None:
            asked.append([kind, bytes(payload)])
            arrived.set()

        primary = await Channel.open(there, on_question, lambda: None)
        replacer = RemoteReplacer(
            await Channel.open(here, lambda k, p: replacer.decided(p), replacer_lost),
            loop,
        )
        cfg = msgspec.convert(
            {
                "replacement": {
                    "enabled": True,
                    "probability": 1.0,
                    "replacement_rules": [
                        {"from_pattern": "sonnet", "to_backend": "local", "to_model": "qwen3"}
                    ],
                },
            },
            Config,
        )
        replacer.configure(cfg, {"local": frozenset({"anthropic"})})
        got: list[Decision] = []
        answered = asyncio.Event()

        def resume(d: Decision) -> None:
            got.append(d)
            answered.set()

        # Unmatched: decided here, at once.
        d = replacer.decide("s", "gpt-4o", "openai", False, "openai", resume)
        assert d is not None and d.reason == "no_rule"
        # Matched: asked of the primary.
        assert replacer.decide("s", "claude-sonnet-4", "anth", False, "anthropic", resume) is None
        await asyncio.wait_for(arrived.wait(), 10)
        kind, payload = asked.pop()
        assert kind is Kind.DECIDE
        primary.send(Kind.DECIDED, answer(policy(Clock()), memoryview(payload)))
        await asyncio.wait_for(answered.wait(), 10)
        assert got.pop().reason == "activated"
        # Overdue: the worker's tick serves it as asked.
        assert replacer.decide("t", "claude-sonnet-4", "anth", False, "anthropic", resume) is None
        replacer.expire(loop.time() + 10**9)
        assert [d.reason for d in got] == ["unavailable"] and replacer.timeouts == 1
        got.clear()
        # Pending when the primary goes away.
        assert replacer.decide("u", "claude-sonnet-4", "anth", False, "anthropic", resume) is None
        replacer.abandon()
        assert [d.reason for d in got] == ["unavailable"] and replacer.waiting == 0
        primary.close()

    def replacer_lost() -> None:
        pass

    asyncio.run(scenario())


def _config(**replacement: Any) -> Config:
    tree = {
        "enabled": True,
        "probability": 1.0,
        "turn_count": 2,
        "replacement_rules": [{"from_pattern": "*", "to_backend": "demo", "to_model": "m"}],
        **replacement,
    }
    env = {"REPLACEMENT_RULES": msgspec.json.encode(tree.pop("replacement_rules")).decode()}
    env |= {f"REPLACEMENT_{k.upper()}": str(v) for k, v in tree.items()}
    return load_config(env=env, use_files=False).config


@pytest.mark.parametrize(
    ("change", "same_policy"),
    [
        ({"probability": 0.5}, True),
        ({"turn_count": 3}, True),
        (
            {"replacement_rules": [{"from_pattern": "x", "to_backend": "demo", "to_model": "n"}]},
            False,
        ),
        ({"enabled": False}, None),
    ],
)
def test_reload_keeps_the_policy_unless_rules_change(
    change: dict[str, Any], same_policy: bool | None
) -> None:
    old = _config()
    running = ReplacementPolicy.from_config(old.replacement)
    new = _config(**change)
    got = reload_replacement(running, old, new, {})
    if same_policy is None:
        assert got is None
    elif same_policy:
        assert got is running
        assert (got.probability, got.turn_count) == (
            new.replacement.probability,
            new.replacement.turn_count,
        )
    else:
        assert got is not None and got is not running
        assert got.rules[0].from_pattern == "x"
