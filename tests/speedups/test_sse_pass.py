"""SSEPass, the relay's pass-through scanner, on both implementations.

What it must do per chunk: return the bytes up to the last complete event (the chunk
object itself when it ends on a boundary and nothing was held), hold only the torn
tail, estimate the streamed text like a DeltaScanner fed each event, say in flags
whether content, the dialect's final event or an overflow came by, and list only the
events the caller must parse. Parity: the two implementations give the same outputs,
flags, notable events and counts for every corpus stream however it is cut.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .helpers import FUZZ, other_impl, split_at

CORPUS = Path(__file__).parent / "corpus"
HEAD = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}


def sse(obj: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def chat(text_pieces: list[str], usage_null: bool = True) -> list[bytes]:
    extra = {"usage": None} if usage_null else {}
    events = [sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant"}}], **extra})]
    events += [
        sse({**HEAD, "choices": [{"index": 0, "delta": {"content": p}}], **extra})
        for p in text_pieces
    ]
    events.append(
        sse({**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    )
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    events.append(sse({**HEAD, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic(text_pieces: list[str]) -> list[bytes]:
    usage = {"input_tokens": 5, "output_tokens": 1}
    events = [
        sse({"type": "message_start", "message": {"usage": usage}}, "message_start"),
        sse({"type": "content_block_start", "index": 0}, "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]
    events += [
        sse(
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": p}},
            "content_block_delta",
        )
        for p in text_pieces
    ]
    events.append(
        sse(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "name": "lookup", "input": {}},
            },
            "content_block_start",
        )
    )
    events.append(
        sse(
            {"type": "message_delta", "usage": {"output_tokens": len(text_pieces)}},
            "message_delta",
        )
    )
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return events


def responses(text_pieces: list[str], end: str = "response.completed") -> list[bytes]:
    events = [sse({"type": "response.created", "response": {"usage": None}}, "response.created")]
    events += [
        sse({"type": "response.output_text.delta", "delta": p}, "response.output_text.delta")
        for p in text_pieces
    ]
    usage = {"input_tokens": 4, "output_tokens": 7, "total_tokens": 11}
    events.append(sse({"type": end, "response": {"usage": usage}}, end))
    return events


def pieces(text: str, size: int = 9) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(mod: ModuleType, chunks: list[bytes], dialect: int, max_size: int = 1 << 20) -> list:
    """Everything observable after each feed, then finish()."""
    s = mod.SSEPass(max_size, dialect)
    seen: list[Any] = []
    for chunk in chunks:
        out = s.feed(chunk)
        seen.append((out, s.flags, s.take_notable(), s.buffered, s.events, s.tokens, s.text_bytes))
    seen.append((s.finish(), s.overflowed))
    return seen


def deltas(mod: ModuleType, events: list[bytes]) -> Any:
    """A DeltaScanner fed each event's data: what SSEPass must count."""
    d = mod.DeltaScanner()
    for e in events:
        data = b"\n".join(line[6:] for line in e.split(b"\n") if line.startswith(b"data: "))
        d.feed_event(data)
    return d


# ------------------------------------------------------------------ pass-through


def test_constants(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert (m.PASS_GENERIC, m.PASS_OPENAI, m.PASS_ANTHROPIC) == (0, 1, 2)
    assert (m.PASS_CONTENT, m.PASS_TERMINAL, m.PASS_NOTABLE, m.PASS_OVERFLOW) == (1, 2, 4, 8)
    assert (m.NOTE_USAGE, m.NOTE_NAME, m.NOTE_ERROR, m.NOTE_TERMINAL) == (1, 2, 4, 8)
    assert (m.NOTE_USAGE, m.NOTE_NAME, m.NOTE_ERROR) == (m.DELTA_USAGE, m.DELTA_NAME, m.DELTA_ERROR)


def test_bad_arguments(speedups_impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        speedups_impl.SSEPass(0)
    with pytest.raises(ValueError):
        speedups_impl.SSEPass(100, 3)
    with pytest.raises(TypeError):
        speedups_impl.SSEPass(1.5)


def test_content_chunks_go_out_as_the_same_object_with_nothing_to_see(
    speedups_impl: ModuleType,
) -> None:
    m = speedups_impl
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    events = chat(["Hello", " world", "!"])
    one = events[1]
    assert s.feed(events[0]) is events[0]
    assert s.flags == 0  # the role chunk: no text, "usage":null is not usage
    assert s.feed(one) is one
    assert s.flags == m.PASS_CONTENT and s.take_notable() == []
    several = b"".join(events[2:4])
    assert s.feed(several) is several
    assert s.flags == m.PASS_CONTENT and s.take_notable() == []
    assert s.events == 4 and s.buffered == 0


def test_counts_like_a_delta_scanner_per_event(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    text = (CORPUS / "en_essay_latency.txt").read_text(encoding="utf-8")[:2000]
    for events, code in (
        (chat(pieces(text)), m.PASS_OPENAI),
        (anthropic(pieces(text)), m.PASS_ANTHROPIC),
        (responses(pieces(text)), m.PASS_OPENAI),
    ):
        s = m.SSEPass(1 << 20, code)
        stream = b"".join(events)
        for i in range(0, len(stream), 50):
            s.feed(stream[i : i + 50])
        d = deltas(m, events)
        assert (s.tokens, s.text_bytes, s.events) == (d.tokens, d.text_bytes, len(events))
        assert s.tokens == m.estimate_tokens(text.encode())


def test_a_split_event_is_held_and_goes_out_whole(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = chat(["Hello", " world"])
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    first, second = events[1], events[2]
    assert s.feed(first + second[:10]) == first
    assert s.buffered == 10 and s.flags == m.PASS_CONTENT
    assert s.feed(second[10:-1]) == b""  # still no blank line
    assert s.flags == 0 and s.buffered == len(second) - 1
    assert s.feed(second[-1:]) == second
    assert s.flags == m.PASS_CONTENT and s.buffered == 0
    # The next chunk is aligned again and goes out as it is.
    third = events[3]
    assert s.feed(third) is third


def test_finish_returns_the_torn_tail(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    s.feed(b'data: {"choices":[]}\n\ndata: {"cho')
    assert s.finish() == b'data: {"cho'
    assert s.buffered == 0


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_line_endings_and_split_crlf(speedups_impl: ModuleType, nl: bytes) -> None:
    m = speedups_impl
    events = [e.replace(b"\n", nl) for e in chat(["a", "b"])]
    stream = b"".join(events)
    out = []
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    terminal = False
    for i in range(len(stream)):
        out.append(s.feed(stream[i : i + 1]))
        terminal = terminal or bool(s.flags & m.PASS_TERMINAL)
    assert b"".join(out) + s.finish() == stream
    assert terminal and s.events == len(events)
    # Every event went out as soon as its blank line's first byte arrived.
    boundaries = {len(b"".join(events[: k + 1])) for k in range(len(events))}
    emitted = {sum(len(o) for o in out[: i + 1]) for i in range(len(out)) if out[i]}
    if nl == b"\r\n":
        # The LF of the final CRLF arrives after the event went out: it goes out alone.
        assert boundaries <= {e + 1 for e in emitted} | emitted
    else:
        assert boundaries == emitted


def test_comments_between_events_pass_and_inside_an_event_are_held(
    speedups_impl: ModuleType,
) -> None:
    m = speedups_impl
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    ping = b": ping\n"
    assert s.feed(ping) is ping
    torn = b'data: {"choices":[{"delta":{"content":"x"}}]}\n: keep-alive\n'
    assert s.feed(torn) == b""
    assert s.feed(b"\n") == torn + b"\n"
    assert s.events == 1 and s.text_bytes == 1


def test_a_leading_bom_is_not_part_of_the_field_name(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEPass(1 << 20, m.PASS_ANTHROPIC)
    stream = b"\xef\xbb\xbfevent: message_stop\ndata: {}\n\n"
    assert s.feed(stream) is stream
    assert s.flags & m.PASS_TERMINAL


def test_multi_line_data_is_joined_before_the_walk(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    stream = b'data: {"usage":\ndata: {"prompt_tokens": 1}}\n\n'
    assert s.feed(stream) is stream
    assert s.take_notable() == [
        (m.NOTE_USAGE, b"", b'{"usage":\n{"prompt_tokens": 1}}', 0, len(stream))
    ]


def test_bytearray_and_memoryview_input(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    stream = b"".join(chat(["x"]))
    for kind in (bytearray, memoryview):
        s = m.SSEPass(1 << 20, m.PASS_OPENAI)
        out = s.feed(kind(stream))
        assert type(out) is bytes and out == stream and s.flags & m.PASS_TERMINAL


# ------------------------------------------------------------------ terminal events


@pytest.mark.parametrize(
    ("dialect", "events", "final"),
    [
        ("openai", chat(["a"]), b"data: [DONE]\n\n"),
        ("openai", responses(["a"]), None),
        ("openai", responses(["a"], "response.failed"), None),
        ("openai", responses(["a"], "response.incomplete"), None),
        ("anthropic", anthropic(["a"]), None),
    ],
    ids=["chat", "responses-completed", "responses-failed", "responses-incomplete", "anthropic"],
)
def test_terminal_event_of_each_dialect(
    speedups_impl: ModuleType, dialect: str, events: list[bytes], final: bytes | None
) -> None:
    m = speedups_impl
    code = m.PASS_OPENAI if dialect == "openai" else m.PASS_ANTHROPIC
    s = m.SSEPass(1 << 20, code)
    for e in events[:-1]:
        s.feed(e)
        assert not s.flags & m.PASS_TERMINAL, e
    s.feed(events[-1])
    assert s.flags & m.PASS_TERMINAL
    if final is not None:
        assert events[-1] == final
    # The other dialect's final event is data to this one.
    other = m.SSEPass(1 << 20, m.PASS_ANTHROPIC if code == m.PASS_OPENAI else m.PASS_OPENAI)
    for e in events:
        other.feed(e)
        assert not other.flags & m.PASS_TERMINAL


def test_generic_dialect_shows_every_event(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = chat(["a", "b"])
    stream = b"".join(events)
    s = m.SSEPass(1 << 20, m.PASS_GENERIC)
    assert s.feed(stream) is stream
    notable = s.take_notable()
    assert s.flags & m.PASS_NOTABLE and not s.flags & m.PASS_TERMINAL
    assert [stream[a:b] for _, _, _, a, b in notable] == events
    assert notable[-1][2] == b"[DONE]" and not notable[-1][0] & m.NOTE_TERMINAL


# ------------------------------------------------------------------ notable events


def test_usage_events_are_notable_with_their_offsets(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = chat(["Hi", " there"])
    stream = b"".join(events)
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    cut = len(stream) - 5  # inside [DONE]
    first = s.feed(stream[:cut])
    assert s.flags & m.PASS_NOTABLE
    [(note, event, data, start, end)] = s.take_notable()
    assert note == m.NOTE_USAGE and event == b""
    assert first[start:end] == events[-2] and data == events[-2][6:-2]
    assert s.take_notable() == []  # taken: gone
    s.feed(stream[cut:])
    assert s.flags == m.PASS_TERMINAL and s.take_notable() == []


def test_usage_split_across_chunks_is_reported_in_the_chunk_that_completes_it(
    speedups_impl: ModuleType,
) -> None:
    m = speedups_impl
    events = chat(["Hi"])
    usage_event = events[-2]
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    s.feed(b"".join(events[:-2]) + usage_event[:20])
    assert not s.flags & m.PASS_NOTABLE
    out = s.feed(usage_event[20:] + events[-1])
    [(note, _, _, start, end)] = s.take_notable()
    assert note == m.NOTE_USAGE
    assert out[start:end] == usage_event and (start, end) == (0, len(usage_event))
    assert s.flags == m.PASS_NOTABLE | m.PASS_TERMINAL


def test_tool_names_errors_and_anthropic_usage(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = anthropic(["a"])
    stream = b"".join(events)
    s = m.SSEPass(1 << 20, m.PASS_ANTHROPIC)
    s.feed(stream)
    notes = [(n, e) for n, e, _, _, _ in s.take_notable()]
    assert notes == [
        (m.NOTE_USAGE, b"message_start"),
        (m.NOTE_NAME, b"content_block_start"),
        (m.NOTE_USAGE, b"message_delta"),
    ]
    s = m.SSEPass(1 << 20, m.PASS_ANTHROPIC)
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    s.feed(error)
    assert s.take_notable() == [(m.NOTE_ERROR, b"error", error[19:-2], 0, len(error))]
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    chat_error = b'data: {"error":{"message":"boom"}}\n\n'
    s.feed(chat_error)
    assert [n for n, *_ in s.take_notable()] == [m.NOTE_ERROR]
    # Responses API: the final event carries the usage, and is both.
    s = m.SSEPass(1 << 20, m.PASS_OPENAI)
    s.feed(b"".join(responses(["a"])))
    assert [(n, e) for n, e, *_ in s.take_notable()] == [
        (m.NOTE_USAGE | m.NOTE_TERMINAL, b"response.completed")
    ]


# ------------------------------------------------------------------ overflow


def test_overflow_stops_after_the_events_before_it(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    events = chat(["a", "b"])
    limit = max(len(e) for e in events) + 5
    huge = sse({"choices": [{"delta": {"content": "x" * (2 * limit)}}]})
    stream = b"".join(events[:2]) + huge + b"".join(events[2:])
    for size in (len(stream), 7, 1):
        s = m.SSEPass(limit, m.PASS_OPENAI)
        out = []
        flags = 0
        for i in range(0, len(stream), size):
            out.append(s.feed(stream[i : i + size]))
            flags |= s.flags
            if s.flags & m.PASS_OVERFLOW:
                break
        assert flags & m.PASS_OVERFLOW and s.overflowed, size
        assert b"".join(out) == b"".join(events[:2]), size
        assert s.feed(events[-1]) == b"" and s.flags == 0  # stopped for good
        assert s.finish() == b""


def test_an_event_of_exactly_the_limit_passes(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    event = b'data: {"choices":[]}\n\n'
    s = m.SSEPass(len(event) - 1, m.PASS_OPENAI)  # the blank line is not counted
    assert s.feed(event) is event and not s.overflowed
    s = m.SSEPass(len(event) - 2, m.PASS_OPENAI)
    assert s.feed(event) == b"" and s.flags == m.PASS_OVERFLOW


def test_a_long_torn_line_overflows_without_rescanning(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    s = m.SSEPass(200_000, m.PASS_OPENAI)
    s.feed(b'data: {"choices":[{"delta":{"content":"')
    for _ in range(100):
        assert s.feed(b"y" * 1000) == b"" and s.flags == 0
    s.feed(b"y" * 200_000)
    assert s.flags == m.PASS_OVERFLOW


# ------------------------------------------------------------------ parity


def corpus_streams() -> list[tuple[str, int, bytes]]:
    """Each corpus text streamed in each dialect, plus the corpus's own Anthropic stream."""
    out = []
    for path in sorted(CORPUS.iterdir()):
        text = path.read_text(encoding="utf-8")
        if path.name == "json_anthropic_stream_events.txt":
            out.append((path.name, 2, text.encode()))
            continue
        text = text[:600]
        out.append((path.name + ":chat", 1, b"".join(chat(pieces(text, 7)))))
        out.append((path.name + ":anthropic", 2, b"".join(anthropic(pieces(text, 11)))))
        out.append(
            (
                path.name + ":responses-crlf",
                1,
                b"".join(responses(pieces(text, 5))).replace(b"\n", b"\r\n"),
            )
        )
    return out


def test_corpus_parity_at_random_cuts(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    rng = random.Random(20261204)
    for name, code, stream in corpus_streams():
        for _ in range(4):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 60)))
            chunks = split_at(stream, cuts)
            ours = run(speedups_impl, chunks, code)
            assert ours == run(other, chunks, code), name
            assert b"".join(s[0] for s in ours[:-1]) + ours[-1][0] == stream
        # Whole, the stream goes out in one piece with the whole-stream counts.
        whole = run(speedups_impl, [stream], code)
        assert whole[0][0] == stream and whole[0][1] & speedups_impl.PASS_TERMINAL, name
        assert whole[0][5] == ours[-2][5]  # tokens do not depend on the cuts


def test_parity_at_every_byte_boundary(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    for code, events in ((1, chat(["Über", " 🌊", " the river"])), (2, anthropic(["a", "é"]))):
        stream = b"".join(events)
        for cut in range(len(stream) + 1):
            chunks = [stream[:cut], stream[cut:]]
            ours = run(speedups_impl, chunks, code)
            assert ours == run(other, chunks, code), cut
            # The same notable events and counts wherever the cut falls.
            notes = [n[:3] for step in ours[:-1] for n in step[2]]
            assert notes == [n[:3] for n in run(speedups_impl, [stream], code)[0][2]], cut


_SSE_BYTES = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"event: ",
            b"error",
            b"message_stop",
            b"[DONE]",
            b":",
            b" ",
            b"\n",
            b"\r",
            b"\r\n",
            b'{"usage":{"a":1}}',
            b'{"choices":[{"delta":{"content":"hi"}}]}',
            b'{"name":"t"}',
            b"x",
            b"\xef\xbb\xbf",
            b"id: 1",
        ]
    ),
    max_size=60,
).map(b"".join)


@FUZZ
@given(
    stream=_SSE_BYTES,
    cut=st.lists(st.integers(0, 10_000), max_size=8),
    code=st.sampled_from([0, 1, 2]),
    max_size=st.sampled_from([8, 40, 1 << 20]),
)
def test_fuzz_parity(
    speedups_impl: ModuleType, stream: bytes, cut: list[int], code: int, max_size: int
) -> None:
    other = other_impl(speedups_impl)
    chunks = split_at(stream, cut)
    ours = run(speedups_impl, chunks, code, max_size)
    assert ours == run(other, chunks, code, max_size)
    if not ours[-1][1]:  # no overflow: every byte went out or is the torn tail
        assert b"".join(s[0] for s in ours[:-1]) + ours[-1][0] == stream
