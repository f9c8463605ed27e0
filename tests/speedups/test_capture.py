"""redact_flags and append_capture_frame: the loop's part of wire capture, on both builds.

redact_flags may only ever say too much, never too little: a rule it leaves out is not
run, so a missed trigger would let a credential into a capture file. The tests plant
each trigger in every case spelling and position and compare both builds on random
bytes (the pure twin's substring tests are the reference)."""

from __future__ import annotations

import random
import struct
from types import ModuleType
from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy.storage.capture_writer import event_item, pack_event, read_frames

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


def test_triggers_at_every_offset_and_in_long_text(speedups_impl: ModuleType) -> None:
    """The compiled scan reads sixteen bytes at a time and looks one byte ahead and two
    back: each trigger, its near misses and its case variants at every offset across
    three blocks, inside stream-like JSON text, must give the flags the other build
    gives (and each trigger its own)."""
    other = other_impl(speedups_impl)
    filler = b'data: {"object":"chat.completion.chunk","content":"hello world"}\n\n'
    words = [text for text, _ in TRIGGERS] + [
        b'"secret"',
        b'client_secret"',
        b"kE",
        b"ki",
        b"k-",
        b"za",
        b"Wo",
        b'et"',
        b't"',
    ]
    for word in words:
        for variant in {word, word.upper(), word.swapcase()}:
            for at in range(0, 49):
                for tail in (b"", b"...", filler[:17]):
                    data = filler[:at] + variant + tail
                    got = speedups_impl.redact_flags(data)
                    assert got == other.redact_flags(data), (data, got)
                    want = dict(TRIGGERS).get(variant)
                    if want is not None:
                        assert got & want == want, (data, got)
    rng = random.Random(11)
    pieces = [filler, b"key", b"sk-abc", b"AIza", b'password"', b'secret"', b"token=", b"x" * 30]
    for _ in range(200):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 80)))
        assert speedups_impl.redact_flags(data) == other.redact_flags(data), data


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


class Owner:
    """What the capture link is to a CaptureBuffer: its wake calls and the redactor."""

    def __init__(self) -> None:
        self.wakes: list[bool] = []
        self.redacted: list[tuple[bytes, int]] = []

    def wake(self, full: bool) -> None:
        self.wakes.append(full)

    def redact(self, data: bytes, flags: int) -> bytes:
        self.redacted.append((data, flags))
        return data.replace(b"sk-abcdefghijklmnopqrstuv", b"[REDACTED]")


def frames(raw: bytes | bytearray) -> list[tuple[float, int, int, bytes, bytes]]:
    out, at = [], 0
    while at < len(raw):
        length, ts, seq, direction, mlen = struct.unpack_from("<IdQBI", raw, at)
        body = bytes(raw[at + 25 : at + 4 + length])
        out.append((ts, seq, direction, body[:mlen], body[mlen:]))
        at += 4 + length
    return out


def make(m: ModuleType, owner: Owner, limit: int = 1 << 20, full: int = 1 << 16) -> Any:
    return m.CaptureBuffer(
        (b"literal-secret",), (b"x-team",), owner.redact, owner.wake, limit, full, 1000.0, 0.0
    )


def test_buffer_frames_redacts_and_wakes(speedups_impl: ModuleType) -> None:
    owner = Owner()
    buf = make(speedups_impl, owner)
    buf.event(0, b'{"rid":1}', b"POST / HTTP/1.1\r\n\r\n")
    buf.event(2, b'{"rid":1}', memoryview(b"key sk-abcdefghijklmnopqrstuv"))
    buf.event(1, b"{}", bytearray(b"ok"))
    # The first frame into an empty buffer arms the owner's timer, once.
    assert owner.wakes == [False]
    # Only the piece with a trigger went through the redactor, with its flags.
    assert owner.redacted == [(b"key sk-abcdefghijklmnopqrstuv", H | S)]
    got = frames(buf.take())
    assert [(seq, d, meta, data) for _, seq, d, meta, data in got] == [
        (1, 0, b'{"rid":1}', b"POST / HTTP/1.1\r\n\r\n"),
        (2, 2, b'{"rid":1}', b"key [REDACTED]"),
        (3, 1, b"{}", b"ok"),
    ]
    stamps = [ts for ts, *_ in got]
    assert stamps == sorted(stamps) and stamps[0] > 1000.0  # wall0 + monotonic since mono0
    assert len(buf) == 0 and buf.seq == 3 and buf.dropped == 0
    buf.event(1, b"{}", b"again")
    assert owner.wakes == [False, False]  # empty again after take: the next frame wakes


def test_buffer_full_hands_over_now(speedups_impl: ModuleType) -> None:
    owner = Owner()
    buf = make(speedups_impl, owner, full=100)
    buf.event(1, b"{}", b"x" * 40)
    buf.event(1, b"{}", b"x" * 40)  # 2 x (25 + 2 + 40) bytes: past full
    assert owner.wakes == [False, True]


def test_buffer_bound_drops_and_counts(speedups_impl: ModuleType) -> None:
    owner = Owner()
    buf = make(speedups_impl, owner, limit=100)
    buf.event(1, b"{}", b"x" * 90)  # under the bound when it arrives: kept
    buf.event(1, b"{}", b"y")  # 117 bytes wait: dropped
    assert buf.seq == 1 and buf.dropped == 1
    buf.take()
    buf.backlog = 200  # the channel's transport still holds this much
    buf.event(1, b"{}", b"z")
    assert buf.dropped == 2 and len(buf) == 0
    buf.backlog = 0
    buf.event(1, b"{}", b"z")
    assert buf.seq == 2


def test_buffer_disabled_keeps_nothing(speedups_impl: ModuleType) -> None:
    owner = Owner()
    buf = make(speedups_impl, owner)
    buf.event(1, b"{}", b"a")
    buf.disabled = True
    buf.clear()
    buf.event(1, b"{}", b"b")
    assert len(buf) == 0 and buf.seq == 1 and owner.wakes == [False]


def reference_item(ts: float, seq: int, direction: int, meta: bytes, data: bytes) -> bytes:
    """What the writer's cbor2 path makes of a frame: the bytes capture_items must equal."""
    return event_item(ts, seq, direction, orjson.loads(meta) if meta else None, data)


METAS = [
    b"",
    b"{}",
    b'{"rid":12345}',
    b'{"rid":1,"sid":"s\xc3\xa9ss","be":"openai","mod":"gpt-4o"}',
    b'{"rid":0,"se":true,"sc":-500,"oc":null,"x":false}',
    b'{"a":-1,"b":-24,"c":-25,"d":-256,"e":65536,"f":4294967296,"g":23,"h":24}',
    # Not flat, or not written by hand: these take the slow way, with the same result.
    b'{"a":1.5}',
    b'{"a":"x\\"y"}',
    b'{"a":{"b":1}}',
    b'{"a":[1]}',
    b'{"rid":123456789012345678901}',
]


def test_items_are_cbor2s_bytes(speedups_impl: ModuleType) -> None:
    buf = bytearray()
    for i, meta in enumerate(METAS):
        for data in (b"", b"abc", b"x" * 300, b"z" * 2000):
            pack = speedups_impl.append_capture_frame
            pack(buf, 1733370000.5 + i, i * 100_003 + 7, i % 4, meta, data)
    whole = len(buf)
    buf += pack_event(1.0, 1, 1, b"{}", b"cut")[:-1]  # a frame not all here yet
    slow: list[int] = []

    def counted(ts: float, seq: int, direction: int, meta: bytes, data: bytes) -> bytes:
        slow.append(seq)
        return reference_item(ts, seq, direction, meta, data)

    items, used = speedups_impl.capture_items(buf, 1024, counted)
    assert used == whole
    assert items == [reference_item(*f) for f in read_frames(bytearray(buf[:whole]))]
    # The slow way is taken for the data to compress and the metas above marked so.
    assert len(slow) == len(METAS) + 5 * 3
    assert all(cbor2.loads(item)["dir"] in (0, 1, 2, 3) for item in items)


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=10)),
        max_size=6,
    ),
    st.binary(max_size=40),
    st.integers(0, 2**64 - 1),
)
def test_items_agree_with_cbor2_on_any_flat_meta(
    speedups_impl: ModuleType, meta: dict[str, Any], data: bytes, seq: int
) -> None:
    raw = orjson.dumps(meta)
    buf = bytearray()
    speedups_impl.append_capture_frame(buf, 12.25, seq, 2, raw, data)
    items, used = speedups_impl.capture_items(buf, 1024, reference_item)
    assert used == len(buf) and items == [reference_item(12.25, seq, 2, raw, data)]


# -- relayed: a stream chunk's client copy sent as a reference to the backend's event -----
CHUNK = b'data: {"choices":[{"delta":{"content":"hello there"}}]}\n\n' * 40  # 2.3 KB
USAGE = b'data: {"choices":[],"usage":{"total_tokens":9}}\n\n'
DONE = b"data: [DONE]\n\n"


def chunked(payload: bytes) -> tuple[bytes, int]:
    framed = b"%x\r\n%b\r\n" % (len(payload), payload)
    return framed, len(framed) - len(payload) - 2


def ref_parts(data: bytes) -> tuple[int, list[tuple[int, int]], bytes]:
    at, count = struct.unpack_from("<II", data)
    cuts = [struct.unpack_from("<II", data, 8 + 8 * i) for i in range(count)]
    return at, cuts, data[8 + 8 * count :]


def test_relayed_refers_to_the_event_before(speedups_impl: ModuleType) -> None:
    owner = Owner()
    buf = make(speedups_impl, owner)
    buf.event(3, b'{"rid":1}', CHUNK)
    framed, at = chunked(CHUNK)
    buf.relayed(1, b'{"rid":1}', CHUNK, framed, at, ())
    got = frames(buf.take())
    assert [(seq, d) for _, seq, d, _, _ in got] == [(1, 3), (2, 1 | speedups_impl.CAPTURE_REF)]
    assert got[0][4] == CHUNK
    # The reference carries only the framing around the payload: 4 + 4 + "904\r\n\r\n".
    at_, cuts, outside = ref_parts(got[1][4])
    assert (at_, cuts, outside) == (at, [], b"%x\r\n\r\n" % len(CHUNK))
    assert buf.seq == 2 and buf.referred == 1


def test_relayed_with_a_cut_event(speedups_impl: ModuleType) -> None:
    """The usage-only event the gateway asked for is cut from the client's copy: the
    reference says which bytes of the payload the client did not get."""
    payload = CHUNK + USAGE + DONE
    start, end = len(CHUNK), len(CHUNK) + len(USAGE)
    buf = make(speedups_impl, Owner())
    buf.event(3, b"{}", payload)
    framed, at = chunked(CHUNK + DONE)
    buf.relayed(1, b"{}", payload, framed, at, ((start, end),))
    (_, ref) = [(d, data) for _, _, d, _, data in frames(buf.take())]
    assert ref[0] & speedups_impl.CAPTURE_REF
    assert ref_parts(ref[1]) == (at, [(start, end)], b"%x\r\n\r\n" % len(CHUNK + DONE))


@pytest.mark.parametrize(
    "case",
    [
        "equal bytes, another object",
        "payload under CAPTURE_REF_MIN",
        "previous event redacted",
        "an event in between",
        "previous event dropped",
        "cleared since",
        "cuts out of order",
        "framing with a trigger word",
    ],
)
def test_relayed_sends_the_bytes_when_it_cannot_refer(speedups_impl: ModuleType, case: str) -> None:
    """Every case where the previous event is not certainly this payload, unredacted and
    delivered, falls back to an ordinary event of the framed bytes (redacted as usual)."""
    buf = make(speedups_impl, Owner(), limit=1 << 20)
    payload = CHUNK
    cuts: tuple[tuple[int, int], ...] = ()
    referred = 0
    if case == "payload under CAPTURE_REF_MIN":
        payload = CHUNK[: speedups_impl.CAPTURE_REF_MIN - 1]
    if case == "previous event redacted":
        payload = CHUNK + b"sk-abcdefghijklmnopqrstuv"
    buf.event(3, b"{}", payload)
    if case == "an event in between":
        buf.event(1, b"{}", b"x")
    if case == "cleared since":
        buf.clear()
    if case == "previous event dropped":
        # Referred once; then the same payload's next backend event is dropped (over
        # the bound), so the event before the client's copy is not that payload's.
        framed, at = chunked(payload)
        buf.relayed(1, b"{}", payload, framed, at, ())
        referred = 1
        buf.take()
        buf.backlog = 1 << 21
        buf.event(3, b"{}", payload)
        buf.backlog = 0
        assert buf.dropped == 1
    if case == "cuts out of order":
        cuts = ((20, 30), (0, 10))
    relayed = payload
    if case == "equal bytes, another object":
        relayed = bytes(bytearray(payload))
        assert relayed == payload and relayed is not payload
    framed, at = chunked(relayed)
    if case == "framing with a trigger word":
        framed, at = b"key: " + framed, at + 5
    seq = buf.seq
    buf.relayed(1, b"{}", relayed, framed, at, cuts)
    got = frames(buf.take())[-1]
    assert got[1] == seq + 1 and got[2] == 1  # an ordinary dir-1 event
    assert got[4] == framed.replace(b"sk-abcdefghijklmnopqrstuv", b"[REDACTED]")
    assert buf.referred == referred


def test_relayed_parity_with_the_other_build(speedups_impl: ModuleType) -> None:
    """The same calls make the same frames on both builds (time stamps aside)."""

    def run(m: ModuleType) -> list[tuple[int, int, bytes, bytes]]:
        buf = make(m, Owner())
        for i in range(4):
            payload = CHUNK * (i + 1) + (USAGE + DONE if i == 3 else b"")
            buf.event(3, b'{"rid":7}', payload)
            if i == 3:
                start = len(CHUNK) * 4
                kept = payload[:start] + DONE
                framed, at = chunked(kept)
                buf.relayed(1, b'{"rid":7}', payload, framed, at, ((start, start + len(USAGE)),))
            else:
                framed, at = chunked(payload)
                buf.relayed(1, b'{"rid":7}', payload, framed, at, ())
        return [(seq, d, meta, data) for _, seq, d, meta, data in frames(buf.take())]

    assert run(speedups_impl) == run(other_impl(speedups_impl))


def test_split_frames_carry_the_points_before_the_payload(speedups_impl: ModuleType) -> None:
    payload = CHUNK + USAGE + DONE
    points = (len(CHUNK), len(CHUNK) + len(USAGE))
    buf = make(speedups_impl, Owner())
    buf.split(3, b'{"rid":2}', payload, points)
    framed, at = chunked(CHUNK + DONE)
    buf.relayed(1, b'{"rid":2}', payload, framed, at, (points,))
    (_, seq, d, meta, data), ref = frames(buf.take())
    assert (seq, d, meta) == (1, 3 | speedups_impl.CAPTURE_SPLIT, b'{"rid":2}')
    assert struct.unpack_from("<III", data) == (2, *points)
    assert data[12:] == payload
    assert ref[2] == 1 | speedups_impl.CAPTURE_REF and buf.referred == 1


@pytest.mark.parametrize(
    ("what", "payload", "points"),
    [
        ("no points", CHUNK, ()),
        ("a point at 0", CHUNK, (0, 10)),
        ("a point at the end", CHUNK, (10, len(CHUNK))),
        ("points out of order", CHUNK, (30, 10)),
        ("a payload under CAPTURE_REF_MIN", CHUNK[:500], (10, 20)),
    ],
)
def test_split_is_an_ordinary_event_otherwise(
    speedups_impl: ModuleType, what: str, payload: bytes, points: tuple[int, ...]
) -> None:
    buf = make(speedups_impl, Owner())
    buf.split(3, b"{}", payload, points)
    [(_, _, d, _, data)] = frames(buf.take())
    assert (d, data) == (3, payload), what


def test_split_of_a_payload_to_redact_is_redacted(speedups_impl: ModuleType) -> None:
    """A credential in the payload: redacted as any event, and no reference follows."""
    owner = Owner()
    buf = make(speedups_impl, owner)
    payload = CHUNK + b"sk-abcdefghijklmnopqrstuv" + USAGE
    buf.split(3, b"{}", payload, (len(CHUNK),))
    framed, at = chunked(payload[: len(CHUNK)])
    buf.relayed(1, b"{}", payload, framed, at, ((len(CHUNK), len(payload)),))
    (_, _, d, _, data), (_, _, d1, _, data1) = frames(buf.take())
    assert d == 3 and b"sk-abc" not in data and b"[REDACTED]" in data
    assert d1 == 1 and data1 == framed and buf.referred == 0


def test_split_parity_with_the_other_build(speedups_impl: ModuleType) -> None:
    def run(m: ModuleType) -> list[tuple[int, int, bytes, bytes]]:
        buf = make(m, Owner())
        payload = CHUNK * 2 + USAGE + DONE
        points = (len(CHUNK) * 2, len(CHUNK) * 2 + len(USAGE))
        buf.split(3, b'{"rid":3}', payload, points)
        framed, at = chunked(CHUNK * 2 + DONE)
        buf.relayed(1, b'{"rid":3}', payload, framed, at, (points,))
        buf.split(3, b'{"rid":3}', CHUNK[:100], (5,))
        return [(seq, d, meta, data) for _, seq, d, meta, data in frames(buf.take())]

    assert run(speedups_impl) == run(other_impl(speedups_impl))
