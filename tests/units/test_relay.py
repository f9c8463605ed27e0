"""`SSERelay` without sockets: upstream chunks in, bytes on a recording transport out.

The relay runs inside the upstream protocol's body callback, so it can be driven by
calling it with chunks. The chunks here are cut where a network cuts them: inside the
``data:`` prefix, between the two newlines that end an event, in the middle of a UTF-8
character, one byte at a time. Whatever the cuts, the client must get the same bytes
(minus only the usage chunk the gateway asked for itself), and the relay must find the
same usage and terminal event.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import orjson
import pytest

from fastproxy._speedups import estimate_tokens
from fastproxy.dataplane.accounting import StreamAccounting
from fastproxy.dataplane.dialects import anthropic, openai
from fastproxy.dataplane.relay import SSERelay
from tests.speedups.helpers import IMPLS, impl_module
from tests.support.fake_transport import FakeTransport, fake_clock_loop

WORDS = ["Über", " the", " river", " 🌊", " a", " quiet", " morning."]
USAGE = {"prompt_tokens": 11, "completion_tokens": len(WORDS), "total_tokens": 11 + len(WORDS)}


def chat_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_stream(usage_chunk: bool = True) -> tuple[list[bytes], bytes]:
    """An OpenAI chat stream as a list of events, and the usage-only event alone."""
    head = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
    events = [chat_event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    events += [
        chat_event({**head, "choices": [{"index": 0, "delta": {"content": w}}]}) for w in WORDS
    ]
    events.append(
        chat_event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    usage_event = chat_event({**head, "choices": [], "usage": USAGE})
    if usage_chunk:
        events.append(usage_event)
    events.append(b"data: [DONE]\n\n")
    return events, usage_event


def anthropic_stream(output_tokens: int) -> list[bytes]:
    def ev(name: str, obj: Any) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    start_usage = {"input_tokens": 30, "cache_read_input_tokens": 70, "output_tokens": 1}
    return [
        ev("message_start", {"type": "message_start", "message": {"usage": start_usage}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0}),
        ev("ping", {"type": "ping"}),
        *[
            ev(
                "content_block_delta",
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": w}},
            )
            for w in WORDS
        ],
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev(
            "message_delta",
            {"type": "message_delta", "usage": {"output_tokens": output_tokens}},
        ),
        ev("message_stop", {"type": "message_stop"}),
    ]


def cuts(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """The same bytes in chunks cut at awkward places (and once whole)."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for marker in (b"data", b"\n\n", b"\xc3", b"\xf0\x9f", b"[DONE", b"event:"):
        at = data.find(marker)
        if at >= 0:
            mid = at + max(1, len(marker) // 2)
            yield f"inside {marker!r}", [data[:mid], data[mid:]]
    yield "sevens", [data[i : i + 7] for i in range(0, len(data), 7)]


@pytest.fixture
def transport() -> Iterator[FakeTransport]:
    # The loop is never run: the relay writes synchronously; the transport only reads
    # the loop's clock when it records a write.
    with fake_clock_loop() as loop:
        yield FakeTransport(loop)


def relay_all(
    transport: FakeTransport, dialect: ModuleType, chunks: list[bytes], **kw: Any
) -> SSERelay:
    relay = SSERelay(transport, dialect, chunked=False, **kw)
    for chunk in chunks:
        relay(chunk)
    return relay


def all_cuts() -> list[tuple[str, list[bytes]]]:
    events, _ = chat_stream()
    return list(cuts(b"".join(events)))


@pytest.mark.parametrize(("how", "chunks"), all_cuts(), ids=[c[0] for c in all_cuts()])
def test_bytes_forwarded_exactly_whatever_the_cuts(
    transport: FakeTransport, how: str, chunks: list[bytes]
) -> None:
    data = b"".join(chunks)
    relay = relay_all(transport, openai, chunks, strip_usage=False)
    assert bytes(transport.written) == data
    assert relay.bytes_tx == len(data)
    assert relay.events == data.count(b"\n\n")
    assert relay.terminal
    assert relay.usage is not None
    assert (relay.usage.prompt, relay.usage.completion) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
    )
    assert relay.finish() == b""  # nothing left over


@pytest.mark.parametrize(("how", "chunks"), all_cuts(), ids=[c[0] for c in all_cuts()])
def test_the_injected_usage_chunk_is_removed_whatever_the_cuts(
    transport: FakeTransport, how: str, chunks: list[bytes]
) -> None:
    _, usage_event = chat_stream()
    data = b"".join(chunks)
    relay = relay_all(transport, openai, chunks, strip_usage=True)
    # Exactly that one event is missing; every other byte is forwarded in order.
    assert bytes(transport.written) == data.replace(usage_event, b"")
    assert relay.usage is not None and relay.usage.completion == USAGE["completion_tokens"]
    assert relay.terminal


def test_an_incomplete_event_is_held_until_its_end_arrives(transport: FakeTransport) -> None:
    events, _ = chat_stream()
    first, second = events[0], events[1]
    relay = SSERelay(transport, openai, strip_usage=False, chunked=False)
    relay(first + second[:-1])  # the second event lacks its last newline
    assert bytes(transport.written) == first
    relay(second[-1:])
    assert bytes(transport.written) == first + second
    assert not relay.terminal


def test_a_stream_cut_before_the_end_is_not_terminal(transport: FakeTransport) -> None:
    events, _ = chat_stream()
    partial = b"".join(events[:4]) + events[4][:10]
    relay = relay_all(transport, openai, [partial], strip_usage=False)
    assert not relay.terminal and relay.usage is None
    assert bytes(transport.written) == b"".join(events[:4])
    assert relay.finish() == events[4][:10]  # the caller discards the torn event


def test_chunked_framing_wraps_each_write(transport: FakeTransport) -> None:
    events, usage_event = chat_stream()
    data = b"".join(events)
    relay = SSERelay(transport, openai, strip_usage=True, chunked=True)
    for piece in (data[:100], data[100:101], data[101:]):
        relay(piece)
    # Decode HTTP/1.1 chunked framing: size in hex, CRLF, payload, CRLF.
    out, rest = bytearray(), bytes(transport.written)
    writes = 0
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        assert size > 0  # a zero-size chunk would end the response early
        out += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
        writes += 1
    assert bytes(out) == data.replace(usage_event, b"")
    assert relay.bytes_tx == len(out)  # payload bytes, framing not counted
    assert writes == transport.writes


@pytest.mark.parametrize("strip", [False, True])
def test_anthropic_usage_merged_and_never_stripped(transport: FakeTransport, strip: bool) -> None:
    output = 42
    data = b"".join(anthropic_stream(output))
    relay = relay_all(
        transport, anthropic, [data[i : i + 13] for i in range(0, len(data), 13)], strip_usage=strip
    )
    assert bytes(transport.written) == data
    assert relay.terminal
    assert relay.usage is not None
    assert relay.usage.prompt == 30 + 70 and relay.usage.cached == 70
    assert relay.usage.completion == output  # message_delta's figure replaced the placeholder


def test_an_oversized_event_ends_the_relay(transport: FakeTransport) -> None:
    events, _ = chat_stream()
    limit = max(len(e) for e in events[:3]) + 10
    huge = chat_event({"choices": [{"delta": {"content": "x" * (2 * limit)}}]})
    reasons: list[str] = []
    relay = SSERelay(
        transport,
        openai,
        strip_usage=False,
        chunked=False,
        max_event_bytes=limit,
        on_overflow=reasons.append,
    )
    relay(b"".join(events[:3]) + huge[: limit // 2])
    assert not relay.overflow  # a partial event under the limit is just waiting
    relay(huge[limit // 2 :] + events[3])
    # The events before the oversized one went out; it and everything after did not.
    assert bytes(transport.written) == b"".join(events[:3])
    assert relay.overflow and len(reasons) == 1 and str(limit) in reasons[0]
    relay(b"".join(events[4:]))  # the backend keeps sending: ignored
    assert bytes(transport.written) == b"".join(events[:3])
    assert len(reasons) == 1 and not relay.terminal


class CountingEntry:
    """Stands for the activity entry: records the (received, sent) byte pairs."""

    def __init__(self) -> None:
        self.rx = 0
        self.tx = 0

    def count(self, rx: int, tx: int) -> None:
        self.rx += rx
        self.tx += tx


def test_activity_and_accounting_see_what_moved(transport: FakeTransport) -> None:
    events, usage_event = chat_stream()
    data = b"".join(events)
    entry = CountingEntry()
    acct = StreamAccounting()
    relay = SSERelay(
        transport, openai, strip_usage=True, accounting=acct, activity_entry=entry, chunked=False
    )
    for i in range(0, len(data), 5):
        relay(data[i : i + 5])
    assert entry.rx == len(data)
    assert entry.tx == len(data) - len(usage_event) == len(transport.written)
    # The completion estimate is of the streamed text, as one text.
    assert acct.tokens == estimate_tokens("".join(WORDS)) > 0
    assert acct.delivered_tokens(relay.bytes_tx, aborted=False) == acct.tokens


# --------------------------------------------------------------------------------------
# the pass-through: both scanner implementations, one write per chunk


def scanner(impl: ModuleType, dialect: ModuleType) -> Any:
    code = impl.PASS_OPENAI if dialect is openai else impl.PASS_ANTHROPIC
    return impl.SSEPass(1 << 20, code)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return impl_module(request.param)


class RecordingTransport:
    """Keeps each object written, to check what the relay hands the transport."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def test_an_aligned_chunk_is_written_as_the_same_object(impl: ModuleType) -> None:
    events, _ = chat_stream()
    transport = RecordingTransport()
    acct = StreamAccounting()
    relay = SSERelay(
        transport,  # type: ignore[arg-type]
        openai,
        True,
        acct,
        chunked=False,
        scanner=scanner(impl, openai),
    )
    content = events[1:4]
    for e in content:
        relay(e)
    assert len(transport.chunks) == 3
    assert all(w is e for w, e in zip(transport.chunks, content, strict=True))
    several = b"".join(events[4:7])
    relay(several)
    assert transport.chunks[-1] is several
    assert acct.first_content_at > 0 and acct.tokens > 0


def test_a_chunk_with_a_torn_event_is_one_write_of_the_complete_ones(impl: ModuleType) -> None:
    events, _ = chat_stream()
    transport = RecordingTransport()
    relay = SSERelay(
        transport,  # type: ignore[arg-type]
        openai,
        False,
        chunked=False,
        scanner=scanner(impl, openai),
    )
    relay(events[0] + events[1] + events[2][:9])
    relay(events[2][9:] + events[3])
    assert transport.chunks == [events[0] + events[1], events[2] + events[3]]
    assert relay.events == 4


@pytest.mark.parametrize("strip", [False, True])
def test_both_scanners_relay_the_same_stream(impl: ModuleType, strip: bool) -> None:
    """Bytes, usage, terminal and accounting agree with the default relay for every cut."""
    for dialect, data in (
        (openai, b"".join(chat_stream()[0])),
        (anthropic, b"".join(anthropic_stream(9))),
    ):
        for how, chunks in cuts(data):
            results = []
            for sc in (None, scanner(impl, dialect)):
                with fake_clock_loop() as loop:
                    transport = FakeTransport(loop)
                    acct = StreamAccounting()
                    kw: dict[str, Any] = {} if sc is None else {"scanner": sc}
                    relay = SSERelay(transport, dialect, strip, acct, chunked=True, **kw)
                    for chunk in chunks:
                        relay(chunk)
                    results.append(
                        (
                            bytes(transport.written),
                            relay.terminal,
                            repr(relay.usage),  # BackendUsage compares by identity
                            relay.bytes_tx,
                            acct.tokens,
                            acct.tool_names,
                        )
                    )
            assert results[0] == results[1], (dialect.name, how)


def test_accounting_through_the_relay_equals_accounting_per_event(
    transport: FakeTransport,
) -> None:
    """The relay's scanner counts what StreamAccounting.event counts, event by event, and
    the checkpoints give the same delivered tokens at a client abort."""
    events, _ = chat_stream()
    tool = chat_event(
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "function": {"name": "get_weather", "arguments": ""}}
                        ]
                    }
                }
            ]
        }
    )
    args = chat_event(
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"city":"Oslo"}'}}]}}]}
    )
    events = [*events[:3], tool, args, *events[3:]]
    via_relay = StreamAccounting()
    relay = SSERelay(transport, openai, True, via_relay, chunked=False)
    per_event = StreamAccounting()
    bytes_tx = 0
    for e in events:
        relay(e)
        per_event.event(b"", e[6:-2])
        if e != chat_stream()[1]:  # the stripped usage chunk is not written
            bytes_tx += len(e)
            per_event.wrote(bytes_tx, 0)
    assert relay.bytes_tx == bytes_tx
    assert via_relay.tokens == per_event.tokens > 0
    assert via_relay.tool_names == per_event.tool_names == ["get_weather"]
    for acct in (via_relay, per_event):
        acct.wrote(bytes_tx, 300)  # the client aborted with 300 bytes unread
    assert via_relay.delivered_tokens(bytes_tx, aborted=True) == per_event.delivered_tokens(
        bytes_tx, aborted=True
    )


def test_responses_api_stream_ends_on_its_final_event_with_its_usage(
    transport: FakeTransport,
) -> None:
    def ev(name: str, obj: Any) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    data = b"".join(
        [
            ev("response.created", {"type": "response.created", "response": {"usage": None}}),
            ev("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
            ev("response.completed", {"type": "response.completed", "response": {"usage": usage}}),
        ]
    )
    acct = StreamAccounting()
    relay = relay_all(transport, openai, [data[:50], data[50:]], strip_usage=True, accounting=acct)
    assert bytes(transport.written) == data  # never stripped: the final event carries it
    assert relay.terminal
    assert relay.usage is not None and (relay.usage.prompt, relay.usage.completion) == (5, 2)
    assert acct.tokens == estimate_tokens("Hi")


def test_backend_error_events_are_counted_and_forwarded(transport: FakeTransport) -> None:
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    stream = anthropic_stream(3)
    data = b"".join(stream[:4]) + error
    relay = relay_all(transport, anthropic, [data], strip_usage=False)
    assert bytes(transport.written) == data
    assert relay.backend_errors == 1 and not relay.terminal


class CustomDialect:
    """A dialect the scanner has no code for: its own is_terminal decides."""

    name = "custom"
    stream_usage = staticmethod(openai.stream_usage)

    @staticmethod
    def is_terminal(event: bytes, data: bytes) -> bool:
        return event == b"end"


def test_an_unknown_dialect_is_asked_about_every_event(transport: FakeTransport) -> None:
    events, usage_event = chat_stream()
    data = b"".join(events[:-1]) + b"event: end\ndata: {}\n\n"
    relay = relay_all(
        transport,
        CustomDialect,
        [data[i : i + 64] for i in range(0, len(data), 64)],
        strip_usage=True,
    )  # type: ignore[arg-type]
    assert relay.terminal
    assert relay.usage is not None and relay.usage.completion == USAGE["completion_tokens"]
    assert bytes(transport.written) == data.replace(usage_event, b"")
