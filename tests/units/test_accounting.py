"""Completion accounting as plain objects: no gateway, no sockets, no event loop.

tests/dataplane/test_accounting.py checks the same numbers end to end through a gateway
(one path per dialect). Here each rule is pinned on its own: the estimate is of the
streamed text as one text whatever the event boundaries, tool names come from the one
event (or object) of each dialect that carries them, and after a client abort only the
tokens of bytes that left the process count.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastproxy._speedups import estimate_tokens
from fastproxy.dataplane.accounting import (
    CHECKPOINTS,
    StreamAccounting,
    json_completion_tokens,
    json_tool_names,
)

TEXT = "Rivers run through green valleys; naïve café owners count 1,234 tokens."


def chat_delta(**delta: Any) -> bytes:
    return orjson.dumps({"object": "chat.completion.chunk", "choices": [{"delta": delta}]})


def test_stream_estimate_is_of_the_whole_text_however_it_is_split() -> None:
    expected = estimate_tokens(TEXT)
    for size in (1, 3, 8, len(TEXT)):
        acct = StreamAccounting()
        acct.event(b"", chat_delta(role="assistant"))  # no text: counts nothing
        for i in range(0, len(TEXT), size):
            acct.event(b"", chat_delta(content=TEXT[i : i + size]))
        assert acct.tokens == expected, size


def test_stream_estimate_counts_tool_arguments_and_anthropic_text() -> None:
    args = '{"city": "Paris", "units": "metric"}'
    acct = StreamAccounting()
    for i in range(0, len(args), 8):  # arguments stream in fragments, as the APIs send them
        acct.event(
            b"", chat_delta(tool_calls=[{"index": 0, "function": {"arguments": args[i : i + 8]}}])
        )
    assert acct.tokens == estimate_tokens(args) > 0

    acct = StreamAccounting()
    for word in TEXT.split(" "):
        acct.event(
            b"content_block_delta",
            orjson.dumps(
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": word}}
            ),
        )
    assert acct.tokens == estimate_tokens("".join(TEXT.split(" "))) > 0


def test_stream_tool_names_from_each_dialect() -> None:
    acct = StreamAccounting()
    # Chat Completions: the first delta of each call names it; later ones carry arguments.
    acct.event(
        b"",
        chat_delta(
            tool_calls=[
                {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": ""}},
                {"index": 1, "id": "c2", "function": {"name": "get_time", "arguments": ""}},
            ]
        ),
    )
    acct.event(b"", chat_delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    # Anthropic: a tool_use content block start.
    acct.event(
        b"content_block_start",
        orjson.dumps(
            {
                "type": "content_block_start",
                "content_block": {"type": "tool_use", "id": "t", "name": "search", "input": {}},
            }
        ),
    )
    # Responses API: a function_call output item.
    acct.event(
        b"response.output_item.added",
        orjson.dumps(
            {
                "type": "response.output_item.added",
                "item": {"type": "function_call", "name": "lookup", "arguments": ""},
            }
        ),
    )
    # A "name" that is not a tool's (an Anthropic text block) adds nothing.
    acct.event(
        b"content_block_start",
        orjson.dumps(
            {"type": "content_block_start", "content_block": {"type": "text", "name": "x"}}
        ),
    )
    assert acct.tool_names == ["get_weather", "get_time", "search", "lookup"]


def test_a_long_tool_name_is_cut_and_a_bad_one_dropped() -> None:
    long_name = "n" * 500
    acct = StreamAccounting()
    acct.event(b"", chat_delta(tool_calls=[{"function": {"name": long_name}}]))
    acct.event(b"", chat_delta(tool_calls=[{"function": {"name": 7}}]))
    acct.event(b"", chat_delta(tool_calls=[{"function": {"name": ""}}]))
    assert acct.tool_names == [long_name[:128]]


def test_first_content_is_stamped_at_the_first_write_carrying_text() -> None:
    acct = StreamAccounting()
    acct.event(b"", chat_delta(role="assistant"))
    acct.wrote(100, 0)
    assert acct.first_content_at == 0.0  # the role chunk is not content
    acct.event(b"", chat_delta(content="Hi"))
    acct.wrote(200, 0)
    stamped = acct.first_content_at
    assert stamped > 0.0
    acct.event(b"", chat_delta(content=" there"))
    acct.wrote(300, 0)
    assert acct.first_content_at == stamped  # the first one only


def _written(acct: StreamAccounting, pieces: list[str], event_bytes: int) -> list[int]:
    """Feed one content event per piece, each written as ``event_bytes`` bytes; the
    token total after each write."""
    totals = []
    bytes_tx = 0
    for piece in pieces:
        acct.event(b"", chat_delta(content=piece))
        bytes_tx += event_bytes
        acct.wrote(bytes_tx, 0)
        totals.append(acct.tokens)
    return totals


def test_delivered_tokens_after_an_abort_stop_at_the_last_delivered_checkpoint() -> None:
    pieces = TEXT.split(" ")
    pieces = [p + " " for p in pieces[:-1]] + pieces[-1:]
    acct = StreamAccounting()
    totals = _written(acct, pieces, event_bytes=100)
    bytes_tx = 100 * len(pieces)
    assert acct.delivered_tokens(bytes_tx, aborted=False) == acct.tokens == totals[-1]
    # The last write left 250 bytes in the transport: events up to byte (bytes_tx - 250)
    # reached the client, i.e. all but the last three (the third partly, so not counted).
    acct.wrote(bytes_tx, 250)
    assert acct.delivered_tokens(bytes_tx, aborted=True) == totals[-4]
    # Nothing unsent: an abort after everything left counts everything.
    acct.wrote(bytes_tx, 0)
    assert acct.delivered_tokens(bytes_tx, aborted=True) == totals[-1]
    # More unsent than ever written: nothing reached the client.
    acct.wrote(bytes_tx, bytes_tx)
    assert acct.delivered_tokens(bytes_tx, aborted=True) == 0


@pytest.mark.parametrize("past_the_oldest", [False, True])
def test_checkpoints_are_bounded(past_the_oldest: bool) -> None:
    """Only the last CHECKPOINTS writes are remembered, so a million-event stream costs
    no more: an abort whose delivered bytes end before the oldest kept checkpoint counts
    nothing, one that ends exactly at it counts that checkpoint's tokens."""
    writes, size = CHECKPOINTS + 500, 10
    oldest_kept = writes - CHECKPOINTS + 1  # 1-based number of the oldest kept write
    delivered = size * oldest_kept - (1 if past_the_oldest else 0)
    acct = StreamAccounting()
    totals = []
    for n in range(1, writes + 1):
        acct.event(b"", chat_delta(content=" w"))
        # The last write leaves all but `delivered` bytes in the transport.
        acct.wrote(size * n, size * writes - delivered if n == writes else 0)
        totals.append(acct.tokens)
    expected = 0 if past_the_oldest else totals[oldest_kept - 1]
    assert acct.delivered_tokens(size * writes, aborted=True) == expected
    assert totals[oldest_kept - 1] > 0


# --------------------------------------------------------------------------------------
# complete JSON responses


@pytest.mark.parametrize(
    "body",
    [
        {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": TEXT}}],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "text", "text": TEXT}]},
    ],
    ids=["openai", "anthropic"],
)
def test_json_completion_tokens_estimate_the_answer_text(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    assert json_completion_tokens(raw) == estimate_tokens(TEXT) > 0
    # The keys and the JSON around the text are not counted: a longer id changes nothing.
    assert json_completion_tokens(orjson.dumps({"id": "x" * 200, **body})) == estimate_tokens(TEXT)


def test_json_tool_names_of_each_dialect() -> None:
    chat = {
        "object": "chat.completion",
        "choices": [
            {
                "message": {
                    "tool_calls": [
                        {"type": "function", "function": {"name": "a", "arguments": "{}"}},
                        {"type": "function", "function": {"name": "b", "arguments": "{}"}},
                    ]
                }
            }
        ],
    }
    assert json_tool_names(chat) == ["a", "b"]
    message = {
        "type": "message",
        "content": [
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "name": "c", "input": {}},
            {"type": "server_tool_use", "name": "web_search", "input": {}},
        ],
    }
    assert json_tool_names(message) == ["c", "web_search"]
    response = {
        "object": "response",
        "output": [
            {"type": "message", "content": []},
            {"type": "function_call", "name": "d", "arguments": "{}"},
        ],
    }
    assert json_tool_names(response) == ["d"]


def test_json_tool_names_only_where_the_dialect_puts_them() -> None:
    # tool_use blocks count only in an Anthropic message, function_call items only in a
    # Responses object: the same shapes elsewhere are data, not calls.
    assert json_tool_names({"type": "other", "content": [{"type": "tool_use", "name": "x"}]}) == []
    assert (
        json_tool_names({"object": "list", "output": [{"type": "function_call", "name": "y"}]})
        == []
    )
    assert json_tool_names([{"name": "z"}]) == []
    assert json_tool_names({"choices": [{"message": None}, "junk"]}) == []


def test_an_open_stream_holds_little_memory() -> None:
    """Nothing is allocated before it is needed (no scanner until the first event, no
    checkpoint storage until the first write), and a write costs 16 bytes, not objects."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        accts = [StreamAccounting() for _ in range(200)]
        for acct in accts:
            for n in range(1, 31):  # a slow stream: 30 writes so far
                acct.wrote(100 * n, 0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / len(accts) < 1200, grown / len(accts)
    assert all(a.delta is None for a in accts)


def test_a_relayed_stream_is_counted_by_its_scanner_only() -> None:
    from fastproxy._speedups import PASS_OPENAI, SSEPass

    acct = StreamAccounting()
    scanner = SSEPass(1 << 20, PASS_OPENAI)
    acct.attach(scanner)
    scanner.feed(b"data: " + chat_delta(content=TEXT) + b"\n\n")
    assert acct.tokens == estimate_tokens(TEXT)
    with pytest.raises(TypeError):
        acct.event(b"", chat_delta(content="more"))
