"""DeltaScanner, on both implementations."""

from __future__ import annotations

import json
from types import ModuleType

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .helpers import FUZZ, other_impl

OPENAI = b'{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}'
ANTHROPIC = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}'
RESPONSES = (
    b'{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"delta":"Hello"}'
)


def feed(mod: ModuleType, *events: bytes) -> tuple[list[int], ModuleType]:
    d = mod.DeltaScanner()
    return [d.feed_event(e) for e in events], d


def test_constants(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert (m.DELTA_USAGE, m.DELTA_NAME, m.DELTA_ERROR) == (1, 2, 4)


@pytest.mark.parametrize(
    "event", [OPENAI, ANTHROPIC, RESPONSES], ids=["openai", "anthropic", "responses"]
)
def test_dialects_feed_the_text(speedups_impl: ModuleType, event: bytes) -> None:
    flags, d = feed(speedups_impl, event)
    assert flags == [0]
    assert (d.text_bytes, d.tokens, d.events) == (5, 1, 1)


def test_text_keys(speedups_impl: ModuleType) -> None:
    for key in (
        "content",
        "text",
        "partial_json",
        "arguments",
        "thinking",
        "reasoning_content",
        "refusal",
    ):
        _, d = feed(speedups_impl, orjson.dumps({"x": [{key: "abc"}]}))
        assert d.text_bytes == 3, key
    _, d = feed(
        speedups_impl, b'{"type":"x","id":"abcdef","model":"gpt","role":"assistant","Content":"no"}'
    )
    assert d.text_bytes == 0


def test_delta_only_when_a_string(speedups_impl: ModuleType) -> None:
    _, d = feed(speedups_impl, b'{"delta":{"type":"input_json_delta","partial_json":"{\\"a"}}')
    assert d.text_bytes == len(b'{"a')
    _, d = feed(speedups_impl, b'{"delta":{"stop_reason":"end_turn"},"content":5,"text":null}')
    assert d.text_bytes == 0


def test_texts_accumulate_across_events(speedups_impl: ModuleType) -> None:
    pieces = ["Hel", "lo, wor", "ld! ", "こんにち", "は 🎉"]
    _, d = feed(
        speedups_impl, *(orjson.dumps({"choices": [{"delta": {"content": p}}]}) for p in pieces)
    )
    assert d.tokens == speedups_impl.estimate_tokens("".join(pieces))
    assert d.text_bytes == len("".join(pieces).encode())
    assert d.events == 5
    d.reset()
    assert (d.tokens, d.text_bytes, d.events) == (0, 0, 0)


def test_escapes_are_decoded(speedups_impl: ModuleType) -> None:
    event = (
        b'{"content":"q\\"b\\\\s\\/n\\nt\\tr\\rb\\bf\\f e\\u00e9 smile\\ud83d\\ude00 lone\\ud800x"}'
    )
    _, d = feed(speedups_impl, event)
    text = 'q"b\\s/n\nt\tr\rb\bf\f eé smile😀 lone\ufffdx'
    assert d.text_bytes == len(text.encode())
    assert d.tokens == speedups_impl.estimate_tokens(text)


def test_flags(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    flags, _ = feed(
        m,
        b'{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2}}',
        b'{"type":"message_start","message":{"usage":{"input_tokens":5}}}',
        b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get","arguments":""}}]}}]}',
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        b'{"usage":1,"name":"n","error":"e"}',
        OPENAI,  # "usage": null does not count: OpenAI sends it in every chunk
        b'{"usage":null,"name":null,"error":null}',
    )
    assert flags == [
        m.DELTA_USAGE,
        m.DELTA_USAGE,
        m.DELTA_NAME,
        m.DELTA_ERROR,
        m.DELTA_USAGE | m.DELTA_NAME | m.DELTA_ERROR,
        0,
        0,
    ]


def test_keys_inside_strings_do_not_count(speedups_impl: ModuleType) -> None:
    flags, d = feed(
        speedups_impl,
        b'{"content":"say \\"usage\\": 1, \\"error\\": {}"}',
        b'{"note":"\\"name\\":\\"x\\"","list":["usage","error"]}',
    )
    assert flags == [0, 0]
    assert d.text_bytes == len(b'say "usage": 1, "error": {}')


@pytest.mark.parametrize(
    "event",
    [
        b"[DONE]",
        b"",
        b"   ",
        b'{"content":"abc',  # truncated inside a string
        b'{"content":"abc"',  # truncated after a value
        b'{"a":1,}',
        b'{"a" 1}',
        b'{"a":}',
        b"{,}",
        b'{"a":1}}',
        b'{"a":1} x',
        b'{"a":[1,2}',
        b'{"content":"bad \\x escape"}',
        b'{"content":"bad \\u12g4"}',
        b'["a",]',
        b"[" * 300 + b"]" * 300,  # deeper than the walk allows
    ],
)
def test_malformed_returns_zero(speedups_impl: ModuleType, event: bytes) -> None:
    flags, d = feed(speedups_impl, b'{"usage":{"x":1}}' + event[:0], event)
    assert flags == [speedups_impl.DELTA_USAGE, 0]
    assert d.events == 2


def test_truncated_string_is_not_fed(speedups_impl: ModuleType) -> None:
    flags, d = feed(speedups_impl, b'{"choices":[{"delta":{"content":"Hello wor')
    assert flags == [0]
    assert (d.text_bytes, d.tokens) == (0, 0)
    # Complete strings before the break were decoded and stay counted.
    flags, d = feed(speedups_impl, b'{"text":"Hi","content":"unterminated')
    assert (flags, d.text_bytes) == ([0], 2)


def test_valid_json_shapes(speedups_impl: ModuleType) -> None:
    flags, d = feed(
        speedups_impl,
        b" { } ",
        b"[]",
        b'"just a string"',
        b"42",
        b'\n{"a" : [ 1 , -2.5e3 , true , false , null , { "text" : "x" } ] }\r\n',
    )
    assert flags == [0, 0, 0, 0, 0]
    assert d.text_bytes == 1


def test_buffer_types_and_errors(speedups_impl: ModuleType) -> None:
    d = speedups_impl.DeltaScanner()
    assert d.feed_event(bytearray(ANTHROPIC)) == 0
    assert d.feed_event(memoryview(b"#" + ANTHROPIC)[1:]) == 0
    assert d.text_bytes == 10
    with pytest.raises(TypeError):
        d.feed_event(ANTHROPIC.decode())


# ------------------------------------------------------------------ property-based

texts = st.text(max_size=60)


@FUZZ
@given(pieces=st.lists(texts, max_size=6), ascii_only=st.booleans())
def test_decoded_text_matches_source(
    speedups_impl: ModuleType, pieces: list[str], ascii_only: bool
) -> None:
    d = speedups_impl.DeltaScanner()
    for i, piece in enumerate(pieces):
        obj = {"id": "x", "choices": [{"index": 0, "delta": {"content": piece}}], "usage": None}
        if i % 2:
            obj = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": piece}}
        # ensure_ascii turns every non-ASCII character into \\u escapes (pairs above BMP).
        event = json.dumps(obj, ensure_ascii=True).encode() if ascii_only else orjson.dumps(obj)
        assert d.feed_event(event) == 0
    whole = "".join(pieces)
    assert d.text_bytes == len(whole.encode())
    assert d.tokens == speedups_impl.estimate_tokens(whole)


@FUZZ
@given(
    text=texts,
    data=st.data(),
)
def test_parity_on_mangled_events(
    speedups_impl: ModuleType, text: str, data: st.DataObject
) -> None:
    other = other_impl(speedups_impl)
    event = bytearray(
        orjson.dumps(
            {"choices": [{"delta": {"content": text, "name": "f"}}], "usage": {"n": [1, None]}}
        )
    )
    for _ in range(data.draw(st.integers(0, 3))):
        if not event:
            break
        i = data.draw(st.integers(0, len(event) - 1))
        op = data.draw(st.sampled_from(["del", "dup", "set"]))
        if op == "del":
            del event[i]
        elif op == "dup":
            event.insert(i, event[i])
        else:
            event[i] = data.draw(st.sampled_from(list(b'"\\{}[],: nu0')))
    a = speedups_impl.DeltaScanner()
    b = other.DeltaScanner()
    assert a.feed_event(bytes(event)) == b.feed_event(bytes(event))
    assert (a.tokens, a.text_bytes, a.events) == (b.tokens, b.text_bytes, b.events)
