"""usage_row (the usage projector's glue: token points, timings, cost, record values,
dims key and row) on both implementations, bit for bit, and against the references it
must agree with: ``usage_schema.prepare_values`` for the row and ``costs.compute_cost``
for the cost."""

from __future__ import annotations

import math
import random
import time
from types import ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fastproxy.core.records import BackendUsage
from fastproxy.monitor.costs import BUILTIN_PRICES, PriceTable, compute_cost
from fastproxy.storage.usage_schema import prepare_values

from .helpers import FUZZ, core, other_impl, pure

PRICES = [None, BUILTIN_PRICES["gpt-4o"], BUILTIN_PRICES["claude-opus-4-5"], (2, 8, None, None)]
OUTCOMES = ["ok", "truncated", "client_aborted", "backend_error", None]


def _bits(v: Any) -> Any:
    """Floats by their bits (NaN included), everything else as it is, recursively."""
    if type(v) is float:
        return ("f", v.hex())
    if type(v) in (tuple, list):
        return (type(v).__name__, *map(_bits, v))
    if type(v) is dict:
        return ("d", *sorted((k, _bits(x)) for k, x in v.items()))
    return (type(v).__name__, v)


def random_frame(rng: random.Random) -> tuple[Any, ...]:
    def opt(make: Any, p: float = 0.3) -> Any:
        return None if rng.random() < p else make()

    def count() -> int:
        return rng.choice([0, 1, rng.randint(0, 5000), 2**41, -3])

    t0 = 1000.0 + rng.random() * 100
    times = [rng.choice([0.0, t0 + rng.random(), t0 - rng.random(), math.nan]) for _ in range(6)]

    def usage() -> tuple[Any, ...]:
        cost = opt(lambda: rng.choice([0.001, 0.0, math.inf, 12.5]), 0.7)
        return (*(opt(count, 0.4) for _ in range(6)), cost)

    return (
        1_790_000_000.0 + rng.random() * 1e6,
        t0,
        *times[:5],
        opt(lambda: "sess"),
        opt(lambda: "key"),
        rng.choice(["openai", "anthropic"]),
        rng.choice(["/v1/chat/completions", ""]),
        opt(lambda: "b.1"),
        opt(lambda: "openai"),
        opt(lambda: "gpt-4o"),
        opt(lambda: rng.choice(["gpt-4o", "claude-opus-4-5-20251101"])),
        rng.choice(OUTCOMES),
        opt(lambda: "u"),
        opt(lambda: "ua/1"),
        rng.random() < 0.5,
        rng.choice([0, 200, 204, 299, 300, 429, 500]),
        rng.randint(0, 3),
        rng.randint(0, 4),
        ["t"] * rng.randint(0, 2),
        opt(usage, 0.4),
        opt(count),
        opt(count),
        opt(lambda: {"from": "a", "to": "b"}, 0.8),
        None,
        opt(lambda: "ci-bot", 0.5),
        opt(lambda: "platform", 0.5),
    )


def _call(mod: ModuleType, frame: tuple[Any, ...], rng: random.Random) -> tuple[Any, ...]:
    ms = int(frame[0] * 1000)
    return mod.usage_row(
        frame,
        ms,
        "id",
        rng.choice(["chat", None, "embeddings"]),
        rng.choice([None, 0, 120, 2**41]),
        rng.choice([None, 0, 3]),
        rng.choice([None, "s"]),
        rng.random() < 0.5,
        rng.choice(PRICES),
    )


def test_both_implementations_agree_bit_for_bit(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    for seed in range(3000):
        frame = random_frame(random.Random(seed))
        mine = _call(speedups_impl, frame, random.Random(seed))
        theirs = _call(other, frame, random.Random(seed))
        assert _bits(mine) == _bits(theirs), seed


def test_the_row_is_what_prepare_values_makes_of_the_values(speedups_impl: ModuleType) -> None:
    for seed in range(2000):
        frame = random_frame(random.Random(seed))
        values, key, hour, row = _call(speedups_impl, frame, random.Random(seed))
        want = prepare_values(values, values[1])
        assert _bits((key, hour, row)) == _bits(want[:3]), seed


def test_the_cost_is_compute_cost(speedups_impl: ModuleType) -> None:
    table = PriceTable()
    for seed in range(2000):
        rng = random.Random(seed)
        frame = random_frame(rng)
        usage = None if frame[23] is None else BackendUsage(*frame[23])
        model = frame[14]
        values = speedups_impl.usage_row(
            frame, 0, "id", None, rng.choice([None, 40]), None, None, False, table.lookup(model)
        )[0]
        ptb, btp = values[16], values[17]
        want = compute_cost(
            usage,
            model,
            table,
            prompt_tokens=ptb,
            completion_tokens=btp,
            answered=200 <= frame[19] < 300,
        )
        assert _bits(values[26:28]) == _bits(want), seed


def test_token_points_and_timings_of_a_finished_stream(speedups_impl: ModuleType) -> None:
    frame = list(random_frame(random.Random(1)))
    frame[1:7] = [100.0, 101.5, 100.25, 100.5, 101.25, 100.75]  # started .. first content
    frame[15], frame[18], frame[19] = "client_aborted", True, 200
    frame[23] = (120, 1, 121, 100, None, None, None)  # Anthropic's placeholder completion
    frame[24], frame[25] = 40, 30
    frame[28], frame[29] = "ci-bot", None  # a named key without a team
    values, key, hour, row = speedups_impl.usage_row(
        tuple(frame), 1_790_000_000_123, "id", "messages", 118, 2, "s", True, None
    )
    assert values[15:19] == (118, 120, 40, 30)  # ctp, ptb, btp (what arrived), ptc
    assert values[20] == "backend"
    assert values[21:26] == (750.0, 250.0, 1500.0, 500.0, round(40 / 0.75, 3))
    assert key[-4:] == ("messages", "client_aborted", "ci-bot", None)
    assert values[-2:] == ("ci-bot", None) and row[-2:] == ("ci-bot", None)
    assert hour == 1_790_000_000_123 // 3_600_000 and row[0] == 1_790_000_000.123


frames = st.builds(lambda seed: random_frame(random.Random(seed)), st.integers(0, 2**32))


@FUZZ
@given(frame=frames, seed=st.integers(0, 2**32))
def test_both_agree_on_any_frame(frame: tuple[Any, ...], seed: int) -> None:
    if core is None:
        return
    assert _bits(_call(core, frame, random.Random(seed))) == _bits(
        _call(pure, frame, random.Random(seed))
    )


def test_timings_round_like_python_at_ties_and_edges(speedups_impl: ModuleType) -> None:
    """Durations whose milliseconds sit at or near a half of the third decimal, tiny and
    negative overheads, and huge values: the same rounding as Python's round(x, 3)."""
    other = other_impl(speedups_impl)
    rng = random.Random(11)
    base = list(random_frame(random.Random(2)))
    base[18], base[19] = True, 200
    for i in range(20000):
        k = rng.randint(0, 10**7)
        d = rng.choice(
            [
                (k + 0.5) / 1e6,
                (2 * k + 1) / 2e6,
                k / 1e6,
                rng.random() * 1e-6,
                rng.random() * 5e3,
                rng.random() * 1e7,
            ]
        )
        started = rng.choice([1.0, 1000.25, 1.7e9])
        frame = list(base)
        # ttft: first - started; overhead: (sent - started) + (ended - done), may be -0.0
        frame[1], frame[6] = started, started + d
        sent = started + rng.choice([d / 3, -d / 5, -rng.random() * 1e-6])
        frame[3], frame[5], frame[2] = sent, started + d, started + d + rng.choice([0.0, d / 7])
        frame[23], frame[24] = None, rng.choice([1, 7, 10**6])
        args = (tuple(frame), 1_790_000_000_000 + i, "id", None, None, None, None, False, None)
        assert _bits(speedups_impl.usage_row(*args)) == _bits(other.usage_row(*args)), (i, d)


def test_the_hour_and_weekday_of_any_time(speedups_impl: ModuleType) -> None:
    frame = random_frame(random.Random(3))
    for ms in (0, 999, 86_399_999, 1_790_000_000_123, 253_402_300_799_999, -1, -86_400_001):
        row = speedups_impl.usage_row(frame, ms, "id", None, None, None, None, False, None)[3]
        tm = time.gmtime(ms // 1000)
        assert row[2:4] == (tm.tm_wday, tm.tm_hour), ms
