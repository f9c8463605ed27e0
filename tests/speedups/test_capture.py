"""redact_flags and append_capture_frame: the loop's part of wire capture, on both builds.

redact_flags may only ever say too much, never too little: a rule it leaves out is not
run, so a missed trigger would let a credential into a capture file. The tests plant
each trigger in every case spelling and position and compare both builds on random
bytes (the pure twin's substring tests are the reference)."""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy.storage.capture_writer import pack_event

from .helpers import FUZZ, other_impl

H, J, S, Q, L = 1, 2, 4, 8, 16

TRIGGERS = [
    (b"x-api-key: abc", H),
    (b"Authorization: Bearer abc", H),
    (b"cookie: a=b", H),
    (b'{"api_key": "abc"}', H | J),
    (b'{"access_token": "abc"}', J),
    (b'{"client_secret": "abc"}', J),
    (b'{"password": "abc"}', J),
    (b'{"authorization": "abc"}', H | J),
    (b"a sk-abcdefghijklmnopqrstuv b", S),
    (b"AIzaSyD0123456789", S),
    (b"GET /v1/x?key=abc", H | Q),
    (b"GET /v1/x?access_token=abc", Q),
]


def test_flag_values_are_shared(speedups_impl: ModuleType) -> None:
    m = speedups_impl
    assert (m.REDACT_HEADER, m.REDACT_JSON, m.REDACT_SHAPE, m.REDACT_QUERY) == (H, J, S, Q)
    assert m.REDACT_LITERAL == L


@pytest.mark.parametrize(("text", "flags"), TRIGGERS)
def test_each_trigger_in_any_case(speedups_impl: ModuleType, text: bytes, flags: int) -> None:
    for variant in (text, text.upper() if b"sk-" not in text else text, text.swapcase()):
        if b"sk-" in text and variant != text:
            continue  # provider keys are matched case-sensitively
        want = flags
        got = speedups_impl.redact_flags(b"...." + variant + b"....")
        assert got & want == want, (variant, got)
        # At the very start and the very end of the data, too.
        assert speedups_impl.redact_flags(variant) & want == want
        assert speedups_impl.redact_flags(bytearray(b"\x00" + variant)) & want == want


def test_ordinary_pieces_need_no_rule(speedups_impl: ModuleType) -> None:
    """The pieces of a usual exchange (heads, a chat body, a usage block) trigger nothing:
    that is what keeps capture cheap."""
    pieces = [
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n"
        b"host: 127.0.0.1:18080\r\ncontent-length: 62\r\nconnection: keep-alive\r\n\r\n"
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
        b'{"usage":{"prompt_tokens":7,"completion_tokens":16,"total_tokens":23}}',
        b"HTTP/1.1 200 OK\r\nx-usage-total-tokens: 23\r\n\r\n",
        b"",
    ]
    for piece in pieces:
        assert speedups_impl.redact_flags(piece) == 0, piece


def test_near_misses(speedups_impl: ModuleType) -> None:
    f = speedups_impl.redact_flags
    assert f(b"ke") == 0 and f(b"toke") == 0 and f(b"authorizatio") == 0 and f(b"cooki") == 0
    assert f(b"Sk-abc") == 0  # case-sensitive
    assert f(b"s") == 0 and f(b"sk") == 0 and f(b"aiz") == 0
    assert f(b'secret "') == 0 and f(b"passwords") == 0
    assert f(b"key") == H  # the end of the data: no quote, no '='


def test_literal_secrets_and_extra_headers(speedups_impl: ModuleType) -> None:
    f = speedups_impl.redact_flags
    secret = b"Zq9-literal-secret"
    assert f(b"prefix " + secret, (secret,)) == L
    assert f(b"prefix " + secret.lower(), (secret,)) == 0  # byte for byte
    assert f(b"nothing here", (b"other-secret", secret)) == 0
    assert f(b"X-Team-Token: 1", (), (b"x-team-token",)) & H
    assert f(b"x-team-tok", (), (b"x-team-token",)) == 0


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=24),
            st.sampled_from(
                [
                    b"key",
                    b"KEY",
                    b'"',
                    b"=",
                    b"token",
                    b"Authorization",
                    b"cookie",
                    b"sk-",
                    b"AIZA",
                    b"secret",
                    b"password",
                    b"team",
                    b"s",
                    b"k",
                    b"-",
                ]
            ),
        ),
        max_size=12,
    ),
    st.lists(st.binary(min_size=1, max_size=6), max_size=2),
    st.lists(st.sampled_from([b"team", b"x-t", b"zz"]), max_size=2),
)
def test_builds_agree(
    speedups_impl: ModuleType, parts: list[bytes], secrets: list[bytes], extras: list[bytes]
) -> None:
    data = b"".join(parts)
    other = other_impl(speedups_impl)
    assert speedups_impl.redact_flags(data, tuple(secrets), tuple(extras)) == other.redact_flags(
        data, tuple(secrets), tuple(extras)
    )


def test_frame_is_the_writers_layout(speedups_impl: ModuleType) -> None:
    out = bytearray(b"before")
    speedups_impl.append_capture_frame(out, 1733370000.25, 42, 3, b'{"rid":1}', memoryview(b"xy"))
    speedups_impl.append_capture_frame(out, 2.0, 43, 1, b"", b"")
    assert bytes(out) == (
        b"before"
        + pack_event(1733370000.25, 42, 3, b'{"rid":1}', b"xy")
        + pack_event(2.0, 43, 1, b"", b"")
    )
    length, ts, seq, direction, mlen = struct.unpack_from("<IdQBI", out, 6)
    assert (length, ts, seq, direction, mlen) == (21 + 9 + 2, 1733370000.25, 42, 3, 9)


def test_frame_refuses_bad_input(speedups_impl: ModuleType) -> None:
    out = bytearray()
    with pytest.raises(ValueError):
        speedups_impl.append_capture_frame(out, 0.0, 1, 256, b"", b"x")  # direction > u8
    with pytest.raises(TypeError):
        speedups_impl.append_capture_frame(out, 0.0, 1, 1, None, b"x")  # meta must be bytes
    assert out == bytearray()
