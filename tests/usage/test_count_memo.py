"""The projector's memo of counts: a text counted before is not counted again, and the
record is exactly what counting every text gives."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson
import pytest

from bench.usage.recorder_rate import make_records
from fastproxy._speedups import estimate_tokens
from fastproxy.monitor import usage_projection
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import (
    SEEN_MIN_CHARS,
    ExactCounter,
    Projector,
    analyse_prompt,
    count_prompt,
)
from fastproxy.monitor.usage_service import UsageCapture


class Tally:
    """A counter that says which texts it was asked to count."""

    def __init__(self, count: Callable[[str], int]) -> None:
        self.count = count
        self.asked: list[int] = []

    def __call__(self, text: str) -> int:
        self.asked.append(len(text))
        return self.count(text)


def _projector(tally: Tally) -> Projector:
    return Projector(PriceTable(), ExactCounter({"o200k_base": tally, "cl100k_base": tally}))


def _chat(system: str, turns: list[str]) -> bytes:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return orjson.dumps({"model": "gpt-4o", "messages": msgs})


def _capture(body: bytes) -> UsageCapture:
    rec = make_records(1)[0]
    rec.request_body = body
    return UsageCapture.take(rec, True)


def test_a_conversation_counts_each_text_once() -> None:
    rng = random.Random(4)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 300))) for _ in range(9)]
    system = "You are terse. " * 10
    tally = Tally(estimate_tokens)
    projector = _projector(tally)
    plain = Tally(estimate_tokens)
    fresh = Projector(PriceTable(), ExactCounter({"o200k_base": plain, "cl100k_base": plain}))
    for turn in range(1, len(texts) + 1, 2):
        body = _chat(system, texts[:turn])
        got = projector.values(_capture(body), 0)
        want = fresh.values(_capture(body), 0)
        assert got[1:] == want[1:]  # all but the random id
        fresh._seen.clear()  # the reference counts every text, every turn
    # Each distinct text once (the system prompt and every message), however many turns.
    assert sorted(tally.asked) == sorted([len(system), *map(len, texts[:9])])
    assert len(plain.asked) == sum(1 + t for t in range(1, len(texts) + 1, 2))


def test_short_texts_are_counted_every_time_and_the_memo_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(usage_projection, "SEEN_ENTRIES", 4)
    short = "x" * (SEEN_MIN_CHARS - 1)
    longs = [f"{i} " + "y" * SEEN_MIN_CHARS for i in range(6)]
    tally = Tally(estimate_tokens)
    seen: dict[tuple[object, int, int], int] = {}
    facts = analyse_prompt({"messages": [{"role": "user", "content": t} for t in [short, *longs]]})
    want = count_prompt(facts, estimate_tokens, False)
    assert count_prompt(facts, tally, False, seen) == want
    assert count_prompt(facts, tally, False, seen) == want
    assert tally.asked.count(len(short)) == 2
    assert len(seen) <= 4  # cleared when full, then filled again


def test_memoized_records_equal_counted_ones_on_the_bench_mix() -> None:
    exact = ExactCounter.load()
    if exact is None:
        pytest.skip("quicktok-v1 is not installed")
    memo, plain = Projector(PriceTable(), exact), Projector(PriceTable(), exact)
    recs = make_records(300)
    for rec in recs + recs:  # the second pass is served from the memo
        got = memo.values(UsageCapture.take(rec, True), 0)
        want = plain.values(UsageCapture.take(rec, True), 0)
        plain._seen.clear()
        assert got[1:] == want[1:]
