"""SSEScanner and SSEEvent, on both implementations."""

from __future__ import annotations

import time
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .helpers import FUZZ, as_tuples, other_impl, split_at, sse_oracle


def scan(mod: ModuleType, *chunks: bytes, max_event_size: int = 1 << 20) -> list:
    scanner = mod.SSEScanner(max_event_size)
    items = []
    for chunk in chunks:
        items += scanner.feed(chunk)
    return items


def ev(mod: ModuleType, data: bytes, raw: bytes, event: bytes = b"", id_: bytes | None = None):
    return mod.SSEEvent(mod.SSE_EVENT, event, data, id_, raw)


def comment(mod: ModuleType, data: bytes, raw: bytes):
    return mod.SSEEvent(mod.SSE_COMMENT, b"", data, None, raw)


# ---------------------------------------------------------------- line endings


def test_constants(speedups_impl: ModuleType) -> None:
    assert (speedups_impl.SSE_EVENT, speedups_impl.SSE_COMMENT, speedups_impl.SSE_ERROR) == (
        0,
        1,
        2,
    )


def test_single_event_lf(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"data: hello\n\n"
    assert scan(m, raw) == [ev(m, b"hello", raw)]


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_each_line_ending(speedups_impl: ModuleType, nl: bytes) -> None:
    m = speedups_impl
    raw = b"event: delta" + nl + b"data: a" + nl + b"data: b" + nl + nl
    assert scan(m, raw) == [ev(m, b"a\nb", raw, event=b"delta")]


def test_mixed_line_endings(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    first = b"data: 1\r\ndata: 2\rdata: 3\n\r\n"
    second = b"id: 9\r\r"
    third = b"data: x\n\n"
    assert scan(m, first + second + third) == [
        ev(m, b"1\n2\n3", first),
        ev(m, b"", second, id_=b"9"),
        ev(m, b"x", third),
    ]


def test_cr_at_chunk_end_ends_the_line(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    assert s.feed(b": ping\r") == [comment(m, b"ping", b": ping\r")]
    assert s.feed(b"data: a\r") == []
    # The blank line's CR dispatches at once, before the LF that may follow.
    assert s.feed(b"\r") == [ev(m, b"a", b"data: a\r\r")]


def test_lf_completing_split_crlf_is_not_a_blank_line(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    assert s.feed(b"data: a\r") == []
    # Were this LF a line of its own, it would dispatch the event here.
    assert s.feed(b"\n") == []
    assert s.buffered == len(b"data: a\r\n")
    assert s.feed(b"data: b\r") == []
    assert s.feed(b"\n\r") == [ev(m, b"a\nb", b"data: a\r\ndata: b\r\n\r")]
    # After a dispatch at a chunk-final CR the LF leads the next item's raw.
    assert s.feed(b"\n: c\n") == [comment(m, b"c", b"\n: c\n")]
    assert s.finish() == b""


def test_byte_at_a_time_equals_whole(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    stream = (
        b": open\n\nevent: a\ndata: 1\r\ndata:2\r\n\r\nid: 5\rdata\r\r"
        b"retry: 10\nfoo\n\n: bye\ndata: tail"
    )
    whole = m.SSEScanner()
    expected = whole.feed(stream)
    s = m.SSEScanner()
    got = []
    for i in range(len(stream)):
        got += s.feed(stream[i : i + 1])
    # Byte-wise, a CRLF is always split: only raw boundaries may differ.
    assert [(i.kind, i.event, i.data, i.id) for i in got] == [
        (i.kind, i.event, i.data, i.id) for i in expected
    ]
    assert b"".join(i.raw for i in got) + s.finish() == stream
    assert whole.finish() == b"data: tail"


# ---------------------------------------------------------------- comments


def test_comment_forms(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert scan(m, b": keep-alive\n") == [comment(m, b"keep-alive", b": keep-alive\n")]
    assert scan(m, b":\n") == [comment(m, b"", b":\n")]
    assert scan(m, b":no-space\r\n") == [comment(m, b"no-space", b":no-space\r\n")]
    assert scan(m, b":  two\n") == [comment(m, b" two", b":  two\n")]
    assert scan(m, b":a: b\n") == [comment(m, b"a: b", b":a: b\n")]


def test_comment_is_immediate_and_takes_preceding_blank_lines(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    assert s.feed(b"data: x\n\n") == [ev(m, b"x", b"data: x\n\n")]
    assert s.feed(b"\n\r\n") == []
    assert s.buffered == 3
    assert s.feed(b": ka\n") == [comment(m, b"ka", b"\n\r\n: ka\n")]
    assert s.buffered == 0
    assert s.events_seen == 1


def test_comment_inside_a_block(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    items = s.feed(b"event: e\ndata: a\nid: 1\n: mid\ndata: b\n")
    assert items == [comment(m, b"mid", b"event: e\ndata: a\nid: 1\n: mid\n")]
    items = s.feed(b": again\ndata: c\n\n")
    # The block's fields survive the comments; raw stays in stream order.
    assert items == [
        comment(m, b"again", b"data: b\n: again\n"),
        ev(m, b"a\nb\nc", b"data: c\n\n", event=b"e", id_=b"1"),
    ]


def test_comment_inside_a_block_later_fields_win(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    items = scan(m, b"event: a\nid: 1\n:c\nevent: b\nid: 2\n\n")
    assert items[-1] == ev(m, b"", b"event: b\nid: 2\n\n", event=b"b", id_=b"2")
    items = scan(m, b"event: a\nid: 1\n:c\ndata: z\n\n")
    assert items[-1] == ev(m, b"z", b"data: z\n\n", event=b"a", id_=b"1")


# ---------------------------------------------------------------- fields


def test_data_lines_join_with_lf(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"data: a\ndata:b\ndata\ndata:  c\ndata:\n\n"
    assert scan(m, raw) == [ev(m, b"a\nb\n\n c\n", raw)]


def test_field_without_colon(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert scan(m, b"data\n\n") == [ev(m, b"", b"data\n\n")]
    assert scan(m, b"event\n\n") == [ev(m, b"", b"event\n\n")]
    assert scan(m, b"id\n\n") == [ev(m, b"", b"id\n\n", id_=b"")]


def test_empty_data_still_an_event(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert scan(m, b"data:\n\n") == [ev(m, b"", b"data:\n\n")]
    assert scan(m, b"data: \n\n") == [ev(m, b"", b"data: \n\n")]


def test_event_and_id_last_wins(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"id: 1\nevent: a\ndata: x\nevent: b\nid: 2\n\n"
    assert scan(m, raw) == [ev(m, b"x", raw, event=b"b", id_=b"2")]


def test_id_with_nul_is_ignored(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"id: 7\nid: a\x00b\ndata: x\n\n"
    assert scan(m, raw) == [ev(m, b"x", raw, id_=b"7")]
    raw = b"id: a\x00b\n\n"
    assert scan(m, raw) == [ev(m, b"", raw)]


def test_id_is_per_block(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    items = scan(m, b"id: 1\ndata: a\n\ndata: b\n\n")
    assert [i.id for i in items] == [b"1", None]


def test_unknown_and_retry_fields_make_an_event(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert scan(m, b"retry: 100\n\n") == [ev(m, b"", b"retry: 100\n\n")]
    assert scan(m, b"Data: x\nfoo:bar\n\n") == [ev(m, b"", b"Data: x\nfoo:bar\n\n")]


def test_blank_lines_alone_produce_nothing(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    assert s.feed(b"\n\r\n\r\n\n") == []
    assert s.events_seen == 0
    assert s.feed(b"data: x\n\n") == [ev(m, b"x", b"\n\r\n\r\n\ndata: x\n\n")]


def test_leading_bom_is_skipped_once(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"\xef\xbb\xbfdata: x\n\n"
    assert scan(m, raw[:2], raw[2:]) == [ev(m, b"x", raw)]
    raw2 = b"\xef\xbb\xbfdata: y\n\n"
    items = scan(m, raw + raw2)
    assert items[1] == ev(m, b"", raw2)  # not at the stream start: an unknown field
    assert scan(m, b"\xef\xbb\xbf: c\n") == [comment(m, b"c", b"\xef\xbb\xbf: c\n")]


def test_realistic_openai_stream(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = [
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" there"}}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    items = scan(m, stream[:50], stream[50:51], stream[51:170], stream[170:])
    assert [i.raw for i in items] == events
    assert [i.data for i in items] == [e[6:-2] for e in events]


# ---------------------------------------------------------------- limits and errors


def error(m: ModuleType):
    return m.SSEEvent(m.SSE_ERROR, b"", b"event exceeds max_event_size", None, b"")


@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_oversized_event_then_recovery(speedups_impl: ModuleType, piece: int) -> None:
    m = speedups_impl
    big = b"data: " + b"x" * 100 + b"\ndata: more\n\n"
    ok = b"data: ok\n\n"
    stream = b"data: a\n\n" + big + ok
    s = m.SSEScanner(64)
    items = []
    for i in range(0, len(stream), piece):
        items += s.feed(stream[i : i + piece])
        assert s.buffered <= 64 + piece
    assert items == [ev(m, b"a", b"data: a\n\n"), error(m), ev(m, b"ok", ok)]
    assert s.events_seen == 2
    assert s.finish() == b""


def test_oversize_discards_until_blank_line_across_chunks(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner(16)
    assert s.feed(b"data: " + b"y" * 40) == [error(m)]
    assert s.buffered == 0
    # The rest of that line, its other lines and a comment are all discarded.
    assert s.feed(b"yyy\r") == []
    assert s.feed(b"\n: not seen\ndata: nor this\n") == []
    assert s.feed(b"\r") == []  # the blank line that ends the discarded event
    assert s.feed(b"\ndata: z\n\n") == [ev(m, b"z", b"\ndata: z\n\n")]


def test_oversize_within_one_chunk(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    stream = b": hi\n" + b"data: " + b"q" * 50 + b"\n\ndata: 1\n\n"
    assert scan(m, stream, max_event_size=20) == [
        comment(m, b"hi", b": hi\n"),
        error(m),
        ev(m, b"1", b"data: 1\n\n"),
    ]


def test_oversize_counts_bytes_already_sent_in_comment_raw(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    stream = b"data: 0123456789\n: c\ndata: 0123456789\n\ndata: ok\n\n"
    items = scan(m, stream, max_event_size=30)
    assert items == [
        comment(m, b"c", b"data: 0123456789\n: c\n"),
        error(m),
        ev(m, b"ok", b"data: ok\n\n"),
    ]


def test_event_exactly_at_the_limit_passes(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"data: 0123456789\n\n"  # 16 bytes before the dispatching blank line
    assert scan(m, raw, max_event_size=16) == [ev(m, b"0123456789", raw)]
    assert scan(m, raw, max_event_size=15) == [error(m)]


def test_endless_blank_lines_stay_bounded(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner(100)
    items = []
    for _ in range(50):
        items += s.feed(b"\n" * 10)
        assert s.buffered <= 110
    assert items and all(i == error(m) for i in items)


def test_bad_arguments(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    with pytest.raises(ValueError):
        m.SSEScanner(0)
    with pytest.raises(TypeError):
        m.SSEScanner(1.5)
    s = m.SSEScanner()
    with pytest.raises(TypeError):
        s.feed("data: x\n\n")
    with pytest.raises(TypeError):
        s.feed(5)
    assert s.feed(b"") == []


def test_buffer_types(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    raw = b"data: x\n\n"
    for chunk in (bytearray(raw), memoryview(raw), memoryview(b"#" + raw)[1:]):
        assert scan(m, chunk) == [ev(m, b"x", raw)]
    strided = memoryview(bytes(b for c in raw for b in (c, 0)))[::2]
    assert scan(m, strided) == [ev(m, b"x", raw)]


# ---------------------------------------------------------------- finish and properties


def test_finish_without_tail(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    s.feed(b"data: a\n\n: c\n")
    assert s.buffered == 0
    assert s.finish() == b""


def test_finish_returns_tail_and_resets(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    assert s.feed(b"data: a\n\n\ndata: b\nda") == [ev(m, b"a", b"data: a\n\n")]
    assert s.buffered == len(b"\ndata: b\nda")
    assert s.events_seen == 1
    assert s.finish() == b"\ndata: b\nda"
    assert (s.buffered, s.events_seen) == (0, 0)
    # Reusable from a clean state: the old partial block is gone.
    assert s.feed(b"ta: c\n\n") == [ev(m, b"", b"ta: c\n\n")]


def test_finish_resets_split_crlf_state(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner()
    s.feed(b"data: a\r")
    assert s.finish() == b"data: a\r"
    assert s.feed(b"\ndata: b\n\n") == [ev(m, b"b", b"\ndata: b\n\n")]


def test_finish_after_discard(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner(8)
    assert s.feed(b"data: 0123456789") == [error(m)]
    assert s.finish() == b""
    assert s.feed(b"data: 1\n\n") == [ev(m, b"1", b"data: 1\n\n")]


def test_events_seen_counts_only_events(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEScanner(10)
    s.feed(b": c\n\ndata: 1\n\ndata: 22222222222\n\ndata: 3\n\n")
    assert s.events_seen == 2


def test_linear_time_byte_at_a_time(speedups_impl: ModuleType) -> None:
    # A rescan-from-start design is quadratic here (~10**11 byte visits for the long
    # line) and would take minutes; linear code takes well under the bound.
    m = speedups_impl
    s = m.SSEScanner(1 << 20)
    long_line = b"data: " + b"x" * 400_000
    events = b"data: {}\n\n" * 20_000
    t0 = time.perf_counter()
    feed = s.feed
    for i in range(len(long_line)):
        feed(long_line[i : i + 1])
    assert s.buffered == len(long_line)
    assert len(feed(b"\n\n")) == 1
    n = 0
    for i in range(len(events)):
        n += len(feed(events[i : i + 1]))
    assert n == 20_000
    assert time.perf_counter() - t0 < 20


# ---------------------------------------------------------------- SSEEvent


def test_sse_event_value_semantics(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    a = m.SSEEvent(0, b"e", b"d", b"1", b"raw")
    assert (a.kind, a.event, a.data, a.id, a.raw) == (0, b"e", b"d", b"1", b"raw")
    assert a == m.SSEEvent(0, b"e", b"d", b"1", b"raw")
    assert a != m.SSEEvent(0, b"e", b"d", None, b"raw")
    assert a != m.SSEEvent(1, b"e", b"d", b"1", b"raw")
    assert a != m.SSEEvent(0, b"e", b"d", b"1", b"raw2")
    assert a != (0, b"e", b"d", b"1", b"raw")
    assert hash(a) == hash(m.SSEEvent(0, b"e", b"d", b"1", b"raw"))
    assert repr(a) == "SSEEvent(kind=0, event=b'e', data=b'd', id=b'1', raw=b'raw')"
    for name in ("kind", "event", "data", "id", "raw"):
        with pytest.raises(AttributeError):
            setattr(a, name, None)
    with pytest.raises(TypeError):
        m.SSEEvent(0, "e", b"d", None, b"")
    with pytest.raises(TypeError):
        m.SSEEvent(0, b"e", b"d", "1", b"")


def test_sse_event_equal_across_implementations(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    a = speedups_impl.SSEEvent(0, b"e", b"d", None, b"r")
    assert a == other.SSEEvent(0, b"e", b"d", None, b"r")
    assert a != other.SSEEvent(0, b"e", b"x", None, b"r")
    assert repr(a) == repr(other.SSEEvent(0, b"e", b"d", None, b"r"))


# ---------------------------------------------------------------- property-based

_bodies = st.one_of(
    st.sampled_from(
        [
            b"data: x",
            b"data:y",
            b"data",
            b"data:",
            b"data:  two",
            b"event: e",
            b"event",
            b"id: 1",
            b"id",
            b"id: a\x00b",
            b": c",
            b":",
            b"retry: 5",
            b"foo: bar",
            b"",
            b"",
            b"",
            b"\xef\xbb\xbfdata: bom",
            b'data: {"choices":[{"delta":{"content":"hi"}}]}',
        ]
    ),
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_terms = st.sampled_from([b"\n", b"\r\n", b"\r"])
_structured = st.builds(
    lambda lines, tail: b"".join(b + t for b, t in lines) + tail,
    st.lists(st.tuples(_bodies, _terms), max_size=30),
    st.sampled_from([b"", b"data: par", b":x", b"\r"]),
)
_noise = st.lists(st.sampled_from(list(b"da:\r\n x\x00")), max_size=80).map(bytes)
streams = st.one_of(_structured, _noise)
cuts = st.lists(st.integers(0, 4000), max_size=12)


def feed_all(mod: ModuleType, pieces: list[bytes], max_event_size: int = 1 << 20):
    s = mod.SSEScanner(max_event_size)
    items = []
    trace = []
    for p in pieces:
        items += s.feed(p)
        trace.append((s.buffered, s.events_seen))
    return items, trace, s.finish()


@FUZZ
@given(stream=streams, cut=cuts)
def test_matches_oracle_for_any_split(
    speedups_impl: ModuleType, stream: bytes, cut: list[int]
) -> None:
    pieces = split_at(stream, cut)
    items, _, tail = feed_all(speedups_impl, pieces)
    expected, expected_tail = sse_oracle(stream)
    assert [t[:4] for t in as_tuples(items)] == [t[:4] for t in expected]
    # raw invariant: the items' raw, in order, then the tail, is exactly the input.
    assert b"".join(i.raw for i in items) + tail == stream
    split_crlf = any(p.endswith(b"\r") for p in pieces[:-1])
    if not split_crlf:
        assert as_tuples(items) == expected
        assert tail == expected_tail


@FUZZ
@given(stream=streams, cut=cuts, limit=st.integers(1, 60))
def test_parity_with_other_implementation(
    speedups_impl: ModuleType, stream: bytes, cut: list[int], limit: int
) -> None:
    other = other_impl(speedups_impl)
    pieces = split_at(stream, cut)
    mine = feed_all(speedups_impl, pieces, limit)
    theirs = feed_all(other, pieces, limit)
    assert as_tuples(mine[0]) == as_tuples(theirs[0])
    assert mine[1:] == theirs[1:]


@FUZZ
@given(stream=streams, cut=cuts, limit=st.integers(1, 60))
def test_limit_bounds_buffer_and_raw_stays_ordered(
    speedups_impl: ModuleType, stream: bytes, cut: list[int], limit: int
) -> None:
    pieces = split_at(stream, cut)
    s = speedups_impl.SSEScanner(limit)
    seen = b""
    out = b""
    for p in pieces:
        seen += p
        for item in s.feed(p):
            if item.kind == speedups_impl.SSE_ERROR:
                assert item.raw == b""
            else:
                out += item.raw
        assert s.buffered <= limit + len(p) + 2
    # Emitted raw is always a subsequence-free prefix walk: each raw is found in order.
    assert out == b"" or _is_ordered_subsequence(out, seen)


def _is_ordered_subsequence(needle: bytes, hay: bytes) -> bool:
    it = iter(hay)
    return all(b in it for b in needle)


@pytest.mark.parametrize("then", [b"data: 0123456789\n\n", b": note\ndata: 0123456789\n\n"])
def test_a_crlf_cut_between_chunks_does_not_count_toward_the_next_event(
    speedups_impl: ModuleType, then: bytes
) -> None:
    """An event ends with CRLF CRLF and the chunk is cut between the last CR and LF; the
    next event is exactly at max_event_size (16). The stray LF is not a byte of that
    event: cut or not, no error (found by the split-invariance fuzzer)."""
    m = speedups_impl
    stream = b"data: a\r\n\r\n" + then
    whole = scan(m, stream, max_event_size=16)
    cut = scan(m, stream[:10], stream[10:], max_event_size=16)
    assert [i.kind for i in cut] == [i.kind for i in whole]
    assert m.SSE_ERROR not in [i.kind for i in cut]
    assert [i.data for i in cut] == [i.data for i in whole]
    assert b"".join(i.raw for i in cut) == b"".join(i.raw for i in whole) == stream
