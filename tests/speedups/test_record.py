"""pack_exchange / unpack_exchanges (the usage recorder's frames), on both implementations,
and across them (a frame packed by one is read by the other)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy.core.records import BackendUsage, ExchangeRecord

from .helpers import FUZZ, other_impl

TEXTS = (
    "session_id",
    "client_key_id",
    "frontend",
    "path",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "outcome",
    "proxy_user",
    "user_agent",
)
TIMES = (
    "wall_started_at",
    "started_at",
    "ended_at",
    "upstream_sent_at",
    "backend_ttfb_at",
    "upstream_done_at",
    "first_content_at",
)


def full_record() -> ExchangeRecord:
    rec = ExchangeRecord(7, 3, 100.25)
    rec.wall_started_at = 1_790_000_000.123
    rec.ended_at, rec.upstream_sent_at, rec.backend_ttfb_at = 101.5, 100.3, 100.4
    rec.upstream_done_at, rec.first_content_at = 101.4, 100.45
    rec.session_id, rec.client_key_id = "sess-1", "key-a"
    rec.frontend, rec.path = "anthropic", "/v1/messages"
    rec.backend, rec.backend_type = "anthropic.1", "anthropic"
    rec.model_requested, rec.model_used = "claude-x", "claude-x-2025"
    rec.outcome, rec.proxy_user, rec.user_agent = "ok", "ülrich", "sdk/1.0 (日本語)"
    rec.streaming, rec.status, rec.attempts = True, 200, 2
    rec.tool_call_count, rec.tool_names = 2, ["get_weather", "lookup_ß"]
    rec.usage = BackendUsage(prompt=120, completion=30, total=150, cached=100, cost=0.0125)
    rec.btp_completion_est, rec.ptc_completion_est = 31, 29
    rec.replacement = {"from": "gpt-4", "to": "gpt-4o"}
    rec.key_name, rec.team = "ci-bot", "plätform"
    return rec


def expected(rec: ExchangeRecord, body: bytes | bytearray | None) -> tuple[Any, ...]:
    u = rec.usage
    usage = (
        None
        if u is None
        else (u.prompt, u.completion, u.total, u.cached, u.cache_write, u.reasoning, u.cost)
    )
    return (
        *(getattr(rec, t) for t in TIMES),
        *(getattr(rec, t) for t in TEXTS),
        rec.streaming,
        rec.status,
        rec.attempts,
        rec.tool_call_count,
        list(rec.tool_names),
        usage,
        rec.btp_completion_est,
        rec.ptc_completion_est,
        rec.replacement,
        None if body is None else bytes(body),
        rec.key_name,
        rec.team,
    )


def roundtrip(mod: ModuleType, rec: ExchangeRecord, body: bytes | bytearray | None) -> Any:
    out = bytearray(b"prefix")
    n = mod.pack_exchange(rec, body, out)
    assert n == len(out) - 6
    frames, consumed = mod.unpack_exchanges(out, 6)
    assert consumed == len(out)
    (frame,) = frames
    return frame


def test_fields_are_named_in_frame_order(speedups_impl: ModuleType) -> None:
    assert (
        *TIMES,
        *TEXTS,
        "streaming",
        "status",
        "attempts",
        "tool_call_count",
        "tool_names",
        "usage",
        "btp_est",
        "ptc_est",
        "replacement",
        "body",
        "key_name",
        "team",
    ) == speedups_impl.EXCHANGE_FIELDS
    assert speedups_impl.EXCHANGE_USAGE[-1] == "cost"


def test_full_record_round_trip(speedups_impl: ModuleType) -> None:
    rec = full_record()
    body = b'{"model": "claude-x", "messages": [{"role": "user", "content": "hi \xc3\xa9"}]}'
    assert roundtrip(speedups_impl, rec, body) == expected(rec, body)


def test_none_fields_and_no_body(speedups_impl: ModuleType) -> None:
    rec = ExchangeRecord(1, 1, 5.0)  # every optional field at its default (None / 0 / "")
    frame = roundtrip(speedups_impl, rec, None)
    assert frame == expected(rec, None)
    assert frame[27] is None and frame[23] is None and frame[26] is None
    assert frame[28] is None and frame[29] is None  # no named key


def test_partial_usage_and_empty_body(speedups_impl: ModuleType) -> None:
    rec = full_record()
    rec.usage = BackendUsage(completion=5)
    rec.btp_completion_est = None
    rec.replacement = {}
    frame = roundtrip(speedups_impl, rec, bytearray())
    assert frame == expected(rec, b"")
    assert frame[23] == (None, 5, None, None, None, None, None)


def test_large_body_and_surrogates(speedups_impl: ModuleType) -> None:
    rec = full_record()
    rec.user_agent = "bad \udc80 surrogate"
    body = bytes(range(256)) * 40_000  # 10 MB, every byte value
    frame = roundtrip(speedups_impl, rec, memoryview(body))
    assert frame == expected(rec, body)


def test_out_of_range_counts_travel_as_absent(speedups_impl: ModuleType) -> None:
    rec = full_record()
    rec.usage = BackendUsage(prompt=1 << 70, completion=True, cost=float("inf"))
    rec.btp_completion_est = -(1 << 64)
    frame = roundtrip(speedups_impl, rec, None)
    assert frame[23] == (None, None, None, None, None, None, float("inf"))
    assert frame[24] is None


def test_a_bad_field_leaves_the_buffer_as_it_was(speedups_impl: ModuleType) -> None:
    rec = full_record()
    rec.model_used = 42  # type: ignore[assignment]
    out = bytearray(b"abc")
    with pytest.raises(TypeError):
        speedups_impl.pack_exchange(rec, b"{}", out)
    assert out == b"abc"


def test_partial_frames_wait_and_many_frames_stream(speedups_impl: ModuleType) -> None:
    out = bytearray()
    recs = []
    for i in range(50):
        rec = full_record()
        rec.status = 200 + i
        recs.append(rec)
        speedups_impl.pack_exchange(rec, b"x" * i if i % 3 else None, out)
    got: list[Any] = []
    buf = bytearray()
    for i in range(0, len(out), 97):  # fed in odd-sized pieces, as a socket delivers
        buf += out[i : i + 97]
        frames, consumed = speedups_impl.unpack_exchanges(buf)
        got += frames
        del buf[:consumed]
    assert not buf
    assert [f[19] for f in got] == [200 + i for i in range(50)]
    assert [f[27] for f in got] == [b"x" * i if i % 3 else None for i in range(50)]


def test_malformed_frames_are_refused(speedups_impl: ModuleType) -> None:
    out = bytearray()
    speedups_impl.pack_exchange(full_record(), b"body", out)
    bad_kind = bytearray(out)
    bad_kind[4] = 9
    with pytest.raises(ValueError):
        speedups_impl.unpack_exchanges(bad_kind)
    short = bytearray(out)
    short[0:4] = (len(out) - 10).to_bytes(4, "little")  # the length cuts into the fields
    with pytest.raises(ValueError):
        speedups_impl.unpack_exchanges(short)


def test_both_implementations_write_the_same_bytes(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    a, b = bytearray(), bytearray()
    for body in (None, b"{}", b"x" * 5000):
        speedups_impl.pack_exchange(full_record(), body, a)
        other.pack_exchange(full_record(), body, b)
    assert a == b
    assert other.unpack_exchanges(a) == speedups_impl.unpack_exchanges(a)


_text = st.none() | st.text(max_size=40)


@FUZZ
@given(
    texts=st.lists(_text, min_size=len(TEXTS), max_size=len(TEXTS)),
    names=st.lists(st.text(max_size=20), max_size=5),
    replacement=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=10)),
    body=st.none() | st.binary(max_size=300),
    status=st.integers(-(1 << 63), (1 << 63) - 1),
    times=st.lists(st.floats(allow_nan=False), min_size=7, max_size=7),
)
def test_fuzz_round_trip(
    speedups_impl: ModuleType,
    texts: list[str | None],
    names: list[str],
    replacement: dict[str, str] | None,
    body: bytes | None,
    status: int,
    times: list[float],
) -> None:
    rec = ExchangeRecord(1, 1, 0.0)
    for name, value in zip(TEXTS, texts, strict=True):
        setattr(rec, name, value)
    for name, value in zip(TIMES, times, strict=True):
        setattr(rec, name, value)
    rec.tool_names, rec.replacement, rec.status = names, replacement, status
    assert roundtrip(speedups_impl, rec, body) == expected(rec, body)


def test_a_deferred_body_is_sent_by_the_caller(speedups_impl: ModuleType) -> None:
    rec = full_record()
    body = bytearray(b"y" * 100_000)
    whole, head = bytearray(), bytearray()
    n = speedups_impl.pack_exchange(rec, body, whole)
    m = speedups_impl.pack_exchange(rec, body, head, True)
    assert (n, m) == (len(whole), len(head)) and m == n - len(body)
    assert speedups_impl.unpack_exchanges(head) == ([], 0)  # the body is still to come
    head += body
    assert head == whole
    frames, _ = speedups_impl.unpack_exchanges(head)
    assert frames == [expected(rec, body)]
    empty = bytearray()
    assert speedups_impl.pack_exchange(rec, None, empty, True) == len(empty)
