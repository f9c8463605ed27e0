"""Micro-benchmarks of fastproxy._speedups: compiled core vs pure twin, side by side.

Run:  .venv/bin/pytest bench/micro --benchmark-only -p no:cacheprovider -o testpaths=bench
Each group holds one benchmark per implementation; the ratio of their means is the
speed-up figure quoted in docs/speedups.md.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from fastproxy._speedups import _pure

from .impls import IMPLS
from .impls import core as _core


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _pure if request.param == "python" else _core  # type: ignore[return-value]


# ------------------------------------------------------------------ SSE stream

_TEXT = (
    "The gateway relays every byte of the stream while it counts tokens and records usage "
    "for each request so that operators can see latency cost and errors per backend in real "
    "time without slowing the hot path down"
)
_WORDS = _TEXT.split()


def openai_stream(n_events: int = 200, seed: int = 7) -> bytes:
    """A chat.completion.chunk stream as OpenAI sends it (role, deltas, finish, usage)."""
    rng = random.Random(seed)
    base = {
        "id": "chatcmpl-AbC123xYz456DeF789gHi012JkL",
        "object": "chat.completion.chunk",
        "created": 1733000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
    }
    events = []

    def emit(choices: list, usage: dict | None = None) -> None:
        events.append(
            b"data: " + orjson.dumps({**base, "choices": choices, "usage": usage}) + b"\n\n"
        )

    emit(
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
    )
    for _ in range(n_events - 3):
        text = "".join(" " + rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
        emit([{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
    emit([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    emit([], {"prompt_tokens": 812, "completion_tokens": 642, "total_tokens": 1454})
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def random_chunks(data: bytes, seed: int = 11, lo: int = 16, hi: int = 1024) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(lo, hi)
        out.append(data[i : i + n])
        i += n
    return out


SSE_STREAM = openai_stream()
SSE_CHUNKS = random_chunks(SSE_STREAM)


@pytest.mark.benchmark(group="sse-scan")
def test_sse_scan(benchmark, impl: ModuleType) -> None:
    chunks = SSE_CHUNKS

    def run() -> int:
        scanner = impl.SSEScanner()
        feed = scanner.feed
        n = 0
        for chunk in chunks:
            n += len(feed(chunk))
        scanner.finish()
        return n

    assert benchmark(run) == 201  # 199 chunks + usage + [DONE]
    benchmark.extra_info["stream_bytes"] = len(SSE_STREAM)
    benchmark.extra_info["chunks"] = len(chunks)


# ------------------------------------------------------------------ counters


@pytest.mark.benchmark(group="counter-add")
def test_counter_add(benchmark, impl: ModuleType) -> None:
    block = impl.CounterBlock(16)
    add = block.add

    def run() -> None:
        # 100 calls per round so the timer's own overhead stays out of the figure.
        for _ in range(100):
            add(3, 1500)

    benchmark(run)
    assert block.get(3) > 0
    benchmark.extra_info["calls_per_round"] = 100


# ------------------------------------------------------------------ tokens

# The English prose of tests/speedups/corpus (its en_* samples, joined by blank lines),
# copied here so that the suite does not need tests/; the same bytes, so the
# estimate-tokens figures in docs/speedups.md stay comparable with earlier runs.
_ENGLISH = Path(__file__).resolve().parent / "corpus" / "english.txt"


def english_text(size: int = 65536) -> bytes:
    prose = _ENGLISH.read_bytes()
    return (prose * (size // len(prose) + 1))[:size]


ENGLISH_64K = english_text()


@pytest.mark.benchmark(group="estimate-tokens")
def test_estimate_tokens(benchmark, impl: ModuleType) -> None:
    result = benchmark(impl.estimate_tokens, ENGLISH_64K)
    assert result > 10_000
    # With --benchmark-disable the function runs once, untimed, and there are no stats
    # to turn into a throughput.
    if benchmark.stats is not None:
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["MB_per_s"] = round(len(ENGLISH_64K) / mean / 1e6, 1)


# ------------------------------------------------------------------ deltas

DELTA_EVENTS = [
    item.data for item in _pure.SSEScanner().feed(SSE_STREAM) if item.data.startswith(b"{")
]


@pytest.mark.benchmark(group="delta-scan")
def test_delta_scan(benchmark, impl: ModuleType) -> None:
    events = DELTA_EVENTS

    def run() -> int:
        scanner = impl.DeltaScanner()
        feed = scanner.feed_event
        for data in events:
            feed(data)
        return scanner.tokens

    assert benchmark(run) > 0
    benchmark.extra_info["events_per_round"] = len(events)
