"""Fuzz: the SSE scanners against a reference, with the size limit in play, split any way.

tests/speedups/test_sse.py already fuzzes the scanner: ``test_matches_oracle_for_any_split``
(both implementations against ``sse_oracle``, with no size limit),
``test_parity_with_other_implementation`` (compiled vs pure, same split, limits 1-60)
and ``test_limit_bounds_buffer_and_raw_stays_ordered``. This module does not repeat them;
it adds what they leave out:

* a reference for the **size limit** (`reference`): which items an oversized event, an
  oversized comment, a run of blank lines or a block with a comment inside turn into,
  written from docs/speedups.md for clarity only, and both implementations compared to
  it for any split, with streams whose events straddle the limit;
* **split invariance** within one implementation: any split gives the same items as
  one feed (kind, event, data, id always; raw too unless a CRLF was split, which the
  documentation allows to move the LF into the next item's raw);
* compiled and pure side by side on the same streams and splits, events_seen included.

The compiled core is skipped (with the reason) when it is not built, as in
tests/speedups. Bounded in CI; ``HYPOTHESIS_PROFILE=long`` runs it longer.
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.speedups.helpers import CORE_MISSING, IMPLS, core, impl_module, pure, split_at

from .fuzz_settings import fuzz

Item = tuple[int, bytes, bytes, bytes | None, bytes]
EVENT, COMMENT, ERROR = 0, 1, 2
ERROR_ITEM: Item = (ERROR, b"", b"event exceeds max_event_size", None, b"")
BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


def reference(stream: bytes, limit: int) -> tuple[list[Item], bytes]:
    """The documented rules, whole stream at once; returns the items and the tail.

    Size of the pending item, checked at each line: the bytes since the last item
    (blank lines before a block included), plus block lines that already went out in a
    comment's raw, plus the current line without its terminator. A blank line ends a
    block and is not counted; a blank line with nothing pending counts only what came
    before it. Over the limit: one error item, the pending bytes are dropped and, unless
    the line was blank, everything up to and including the next blank line.
    """
    items: list[Item] = []
    start = 0  # where the pending raw begins
    carried = 0  # block bytes already sent out in a comment's raw
    fields = False
    data: list[bytes] = []
    event = b""
    id_: bytes | None = None
    discarding = False
    first = True
    pos = 0

    def reset_block() -> None:
        nonlocal carried, fields, data, event, id_
        carried, fields, data, event, id_ = 0, False, [], b"", None

    for m in _LINE.finditer(stream):
        line_start, pos = m.start(), m.end()
        content = m.group(1)
        bom = 3 if first and content.startswith(BOM) else 0
        first = False
        if discarding:
            if not content:
                discarding = False
            start = pos
            continue
        size = carried + (line_start - start) + len(content)
        if len(content) == bom:  # a blank line
            if fields:
                items.append((EVENT, event, b"\n".join(data), id_, stream[start:pos]))
                start = pos
                reset_block()
            elif size > limit:
                items.append(ERROR_ITEM)
                start = pos
                reset_block()
            continue
        if size > limit:
            items.append(ERROR_ITEM)
            start = pos
            reset_block()
            discarding = True
            continue
        text = content[bom:]
        if text.startswith(b":"):
            value = text[1:]
            if value.startswith(b" "):
                value = value[1:]
            if fields:
                carried += line_start - start
            items.append((COMMENT, b"", value, None, stream[start:pos]))
            start = pos
            continue
        fields = True
        name, _, value = text.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id" and b"\x00" not in value:
            id_ = value
    if discarding:
        return items, b""
    # An unterminated last line is refused as soon as the pending bytes pass the limit.
    partial = stream[pos:]
    if partial and carried + (pos - start) + len(partial) > limit:
        return [*items, ERROR_ITEM], b""
    return items, stream[start:]


# --------------------------------------------------------------------------------------
# streams: lines around the limit


def _text_line(n: int) -> bytes:
    return b"x" * n


line_bodies = st.one_of(
    st.sampled_from(
        [
            b"data: x",
            b"data:y",
            b"data",
            b"event: e",
            b"id: 7",
            b"id: a\x00b",
            b": c",
            b":",
            b"retry: 5",
            b"foo: bar",
            b"",
            b"",
            b"",
            BOM + b"data: b",
        ]
    ),
    st.integers(0, 90).map(lambda n: b"data: " + _text_line(n)),
    st.integers(0, 90).map(lambda n: b": " + _text_line(n)),
    st.integers(0, 40).map(lambda n: b"event: " + _text_line(n)),
)
terminators = st.sampled_from([b"\n", b"\r\n", b"\r"])
streams = st.builds(
    lambda lines, tail: b"".join(body + term for body, term in lines) + tail,
    st.lists(st.tuples(line_bodies, terminators), max_size=25),
    st.sampled_from([b"", b"data: partial", b": partial", b"\r", b"data: " + b"z" * 80]),
)
limits = st.one_of(st.integers(1, 40), st.integers(40, 120), st.just(1 << 20))
cut_points = st.lists(st.integers(0, 3000), max_size=12)


def scan(mod: ModuleType, pieces: list[bytes], limit: int) -> tuple[list[Item], bytes, int]:
    scanner = mod.SSEScanner(limit)
    items: list[Item] = []
    for piece in pieces:
        items += [(i.kind, i.event, i.data, i.id, i.raw) for i in scanner.feed(piece)]
    seen = scanner.events_seen
    return items, scanner.finish(), seen


def fields_of(items: list[Item]) -> list[tuple[int, bytes, bytes, bytes | None]]:
    return [i[:4] for i in items]


def crlf_split(pieces: list[bytes]) -> bool:
    return any(p.endswith(b"\r") for p in pieces[:-1])


@pytest.fixture(params=IMPLS, scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return impl_module(request.param)


# --------------------------------------------------------------------------------------
# properties

_EXACT = b"data: 0123456789\n\n"  # 16 bytes before its blank line


@fuzz(ci=200)
@given(stream=streams, cuts=cut_points, limit=limits)
@example(stream=_EXACT, cuts=[], limit=16).via("an event exactly at the limit passes")
@example(stream=_EXACT, cuts=[], limit=15).via("one byte over fails")
@example(
    stream=b"data: 0123456789\n: c\ndata: 0123456789\n\ndata: ok\n\n", cuts=[3, 19], limit=30
).via("a comment inside a block carries the block's size")
@example(stream=b"\n" * 30 + b"data: a\n\n", cuts=[7], limit=10).via("blank lines alone")
@example(stream=b"\n" * 11, cuts=[], limit=10).via("blank lines exactly at the limit")
@example(stream=b"\n" * 12, cuts=[5], limit=10).via("blank lines one over")
@example(stream=b"data: 0123456789", cuts=[4], limit=16).via("a partial line at the limit")
@example(stream=b"data: 0123456789", cuts=[4], limit=15).via("a partial line one over")
def test_matches_the_reference_with_limits_for_any_split(
    impl: ModuleType, stream: bytes, cuts: list[int], limit: int
) -> None:
    pieces = split_at(stream, cuts)
    items, tail, seen = scan(impl, pieces, limit)
    expected, expected_tail = reference(stream, limit)
    assert fields_of(items) == fields_of(expected), (pieces, limit)
    assert seen == sum(1 for i in items if i[0] == EVENT)
    if not crlf_split(pieces):
        assert items == expected, (pieces, limit)
        assert tail == expected_tail, (pieces, limit)
    if ERROR not in (i[0] for i in items):
        # Nothing discarded: the raw of the items, then the tail, is the input.
        assert b"".join(i[4] for i in items) + tail == stream


@fuzz(ci=200)
@given(stream=streams, cuts=cut_points, limit=limits)
@example(stream=b"data: a\r\n\r\ndata: 0123456789\n\n", cuts=[10], limit=16).via(
    "a CRLF split before an event exactly at the limit"
)
def test_any_split_gives_the_items_of_one_feed(
    impl: ModuleType, stream: bytes, cuts: list[int], limit: int
) -> None:
    pieces = split_at(stream, cuts)
    whole = scan(impl, [stream], limit)
    split = scan(impl, pieces, limit)
    assert fields_of(split[0]) == fields_of(whole[0]), (pieces, limit)
    assert split[2] == whole[2]  # events_seen
    if not crlf_split(pieces):
        assert split == whole, (pieces, limit)


@fuzz(ci=200)
@given(stream=streams, cuts=cut_points, limit=limits, bytewise=st.booleans())
def test_compiled_and_pure_agree_with_the_limit(
    stream: bytes, cuts: list[int], limit: int, bytewise: bool
) -> None:
    if core is None:
        pytest.skip(CORE_MISSING)
    pieces = [stream[i : i + 1] for i in range(len(stream))] if bytewise else split_at(stream, cuts)
    assert scan(core, pieces, limit) == scan(pure, pieces, limit), (pieces, limit)
