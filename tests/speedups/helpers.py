"""Shared pieces of the _speedups tests: both implementations, fuzz settings, SSE oracle,
seeded byte mutations."""

from __future__ import annotations

import importlib
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, settings

from fastproxy._speedups import _pure

core: ModuleType | None
try:
    core = importlib.import_module("fastproxy._speedups._core")
    CORE_MISSING = ""
except ImportError as exc:
    if os.environ.get("FASTPROXY_REQUIRE_EXTENSIONS", "").lower() in {"1", "true", "yes"}:
        raise
    core = None
    CORE_MISSING = (
        f"fastproxy._speedups._core is not built ({exc}); run `python setup.py build_ext --inplace`"
    )

pure = _pure

# Applied per test (never as a global profile, which would change other suites):
# bounded so the whole directory stays well under a minute on a 2-core machine.
FUZZ = settings(
    max_examples=int(os.environ.get("SPEEDUPS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

IMPLS = [
    pytest.param(
        "cython", id="cython", marks=pytest.mark.skipif(core is None, reason=CORE_MISSING)
    ),
    pytest.param("python", id="python"),
]


def impl_module(name: str) -> ModuleType:
    if name == "python":
        return pure
    assert core is not None, CORE_MISSING
    return core


def other_impl(mod: ModuleType) -> ModuleType:
    """The other implementation, for side-by-side parity checks."""
    if core is None:
        pytest.skip(CORE_MISSING)
    return core if mod is pure else pure


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    prev = 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return pieces


_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


def sse_oracle(stream: bytes) -> tuple[list[tuple[int, bytes, bytes, bytes | None, bytes]], bytes]:
    """The SSE rules applied to a whole stream at once, written for clarity only.

    Returns the items as (kind, event, data, id, raw) tuples and the unterminated tail.
    No size limit: callers use a max_event_size larger than the input.
    """
    items: list[tuple[int, bytes, bytes, bytes | None, bytes]] = []
    item_start = 0
    fields = False
    data: list[bytes] = []
    event = b""
    id_: bytes | None = None
    pos = 0
    first = True
    for m in _LINE.finditer(stream):
        assert m.start() == pos
        pos = m.end()
        line = m.group(1)
        if first and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        first = False
        if not line:
            if fields:
                items.append((0, event, b"\n".join(data), id_, stream[item_start:pos]))
                item_start = pos
                fields, data, event, id_ = False, [], b"", None
            continue
        if line.startswith(b":"):
            value = line[1:]
            if value.startswith(b" "):
                value = value[1:]
            items.append((1, b"", value, None, stream[item_start:pos]))
            item_start = pos
            continue
        fields = True
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id" and b"\x00" not in value:
            id_ = value
    return items, stream[item_start:]


def as_tuples(items: list) -> list[tuple[int, bytes, bytes, bytes | None, bytes]]:
    return [(i.kind, i.event, i.data, i.id, i.raw) for i in items]


def mutations(
    seed: int, count: int, bases: Sequence[bytes], plant: Sequence[bytes], edits: int = 3
) -> list[bytes]:
    """``count`` seeded variants of ``bases``, each with 1 to ``edits`` random edits: a
    byte of ``plant`` inserted (four in ten), a byte deleted or a byte overwritten. The
    one-call parsers and scans are checked against their strict parsers on these."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, edits)):
            i = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.4:
                data[i:i] = rng.choice(plant)
            elif op < 0.7 and i < len(data):
                del data[i]
            elif i < len(data):
                data[i] = rng.randrange(256)
        out.append(bytes(data))
    return out


def agree_on_mutations(
    impl_parse: Callable[[bytes], Any],
    pure_parse: Callable[[bytes], Any],
    strict: Callable[[bytes], Any],
    expect: Callable[[Any, bytes], Any],
    inputs: Iterable[bytes],
) -> int:
    """How many ``inputs`` a one-call parser took; each must be parsed alike by both
    implementations and, when taken, by ``strict`` (httptools) as ``expect`` says
    (from the one-call result and the input). Raises on the first disagreement."""
    taken = 0
    for data in inputs:
        got = impl_parse(data)
        assert got == pure_parse(data), data
        if got is None:
            continue
        taken += 1
        try:
            seen = strict(data)
        except httptools.HttpParserError as exc:
            raise AssertionError(f"taken, but httptools refuses it ({exc}): {data!r}") from exc
        assert seen == expect(got, data), data
    return taken
