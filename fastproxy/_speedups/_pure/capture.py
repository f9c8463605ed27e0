"""Wire capture on the event loop: which redaction rules a captured piece needs, and the
frame it travels to the capture writer in.

Every piece the gateway captures (a head, a body, a stream chunk) is redacted before it
leaves the loop. Most pieces hold nothing to redact, so the first question is cheap:
``redact_flags`` says which rules could match at all, from trigger words that each rule
needs to find anything (a rule never matches where its trigger is absent, so skipping it
never changes the result). Only the rules named run, as regular expressions, in
``fastproxy.monitor.capture.Redactor``.

Trigger words, ASCII letters compared without case unless said otherwise:

- ``REDACT_HEADER``: ``key``, ``authorization``, ``cookie``, or a configured extra header
  name (given lower case);
- ``REDACT_JSON``: ``key"``, ``token"``, ``secret"``, ``password"``, ``authorization"``
  (a member name ending);
- ``REDACT_SHAPE``: ``sk-`` (case-sensitive) or ``aiza``;
- ``REDACT_QUERY``: ``key=``, ``token=``;
- ``REDACT_LITERAL``: one of the configured secrets, byte for byte.

A frame (gateway → capture writer): u32 length of the rest, f64 wall-clock timestamp,
u64 sequence number, u8 direction, u32 meta length, little-endian; then the meta (JSON)
and the data. ``append_capture_frame`` appends one to a buffer in place.

``CaptureBuffer`` is the loop's whole part per captured event, in one call: the bound
(``limit`` bytes waiting here plus ``backlog``, what the channel's transport still holds;
past it the event is dropped and counted), the timestamp (``wall0`` plus monotonic time
since ``mono0``, so stamps never go backwards when the wall clock is stepped), the
redaction test, the redaction itself through ``redact(data, flags)`` when a rule may
apply, and the frame. ``wake(full)`` tells the owner when to hand the frames over: with
``False`` when the first frame lands in an empty buffer (arm a timer), with ``True`` when
the buffer reached ``full`` bytes (hand over now). ``take`` returns the frames and
empties the buffer. ``seq`` numbers the events kept (1, 2, ...) and counts them.

``relayed`` is for bytes the gateway relays unchanged in both directions, an SSE chunk
read from the backend (captured with ``event``) and then written to the client inside
HTTP chunked framing. When the relayed payload is the very object the previous event
carried (``bytes``, immutable, at least ``CAPTURE_REF_MIN`` long, kept unredacted), the
new event is a reference frame: direction | ``CAPTURE_REF``, data = u32 offset of the
payload in the framed bytes, u32 number of cuts, each cut's u32 start and end (byte
ranges of the payload the client did not get: the usage-only event the gateway asked
for and strips), the prefix, the suffix. The payload is then scanned, copied and sent once
instead of twice; the writer rebuilds the bytes (storage/capture_writer.py). Anything
else (another object, a redacted or dropped previous event, a prefix or suffix with a
trigger word) is an ordinary ``event`` of the framed bytes.

``split`` is ``event`` for a payload the client's copy will leave bytes out of (the
usage-only event the gateway strips): its frame (direction | ``CAPTURE_SPLIT``) starts
with the offsets where those cuts begin and end (u32 count, u32 each), so the writer
compresses the pieces apart and the reference can reuse the ones the client got.
"""

from __future__ import annotations

import itertools
import re
import struct
import time
from collections.abc import Callable

REDACT_HEADER = 1
REDACT_JSON = 2
REDACT_SHAPE = 4
REDACT_QUERY = 8
REDACT_LITERAL = 16
# A frame whose direction has this bit holds no payload of its own: its data is the
# previous frame's, between a prefix and a suffix it carries (CaptureBuffer.relayed).
CAPTURE_REF = 0x80
# A frame whose direction has this bit starts with split points (u32 count, u32 each)
# before its payload: where the client's copy will leave bytes out (CaptureBuffer.split).
CAPTURE_SPLIT = 0x40
# Only payloads this long are sent by reference; the writer hands every frame this long
# to its Python side, which keeps the last one for the reference that may follow.
CAPTURE_REF_MIN = 1024

_FRAME = struct.Struct("<IdQBI")
_REST = _FRAME.size - 4

Buffer = bytes | bytearray | memoryview


def redact_flags(
    data: Buffer, secrets: tuple[bytes, ...] = (), extras: tuple[bytes, ...] = ()
) -> int:
    raw = bytes(data)
    low = raw.lower()
    flags = 0
    if (
        b"key" in low
        or b"authorization" in low
        or b"cookie" in low
        or any(name in low for name in extras)
    ):
        flags |= REDACT_HEADER
    if (
        b'key"' in low
        or b'token"' in low
        or b'secret"' in low
        or b'password"' in low
        or b'authorization"' in low
    ):
        flags |= REDACT_JSON
    if b"sk-" in raw or b"aiza" in low:
        flags |= REDACT_SHAPE
    if b"key=" in low or b"token=" in low:
        flags |= REDACT_QUERY
    if any(secret in raw for secret in secrets):
        flags |= REDACT_LITERAL
    return flags


def append_capture_frame(
    out: bytearray, ts: float, seq: int, direction: int, meta: bytes, data: Buffer
) -> None:
    if not 0 <= direction <= 255:
        raise ValueError("direction must be 0..255")
    size = memoryview(data).nbytes
    if _REST + len(meta) + size > 0xFFFFFFFF:
        raise ValueError("capture event too large for one frame")
    out += _FRAME.pack(_REST + len(meta) + size, ts, seq, direction, len(meta))
    out += meta
    out += data


class CaptureBuffer:
    __slots__ = (
        "_extras",
        "_full",
        "_last",
        "_last_seq",
        "_limit",
        "_mono0",
        "_out",
        "_redact",
        "_secrets",
        "_wake",
        "_wall0",
        "backlog",
        "disabled",
        "dropped",
        "referred",
        "seq",
    )

    def __init__(
        self,
        secrets: tuple[bytes, ...],
        extras: tuple[bytes, ...],
        redact: Callable[[bytes, int], bytes],
        wake: Callable[[bool], None],
        limit: int,
        full: int,
        wall0: float,
        mono0: float,
    ) -> None:
        self._out = bytearray()
        self.backlog = 0
        self.disabled = False
        self.seq = 0
        self.dropped = 0
        self.referred = 0  # events sent as a reference to the one before
        self._limit = limit
        self._full = full
        self._secrets = secrets
        self._extras = extras
        self._redact = redact
        self._wake = wake
        self._wall0 = wall0
        self._mono0 = mono0
        # The payload of frame _last_seq when it went out unredacted and immutable.
        self._last: bytes | None = None
        self._last_seq = 0

    def __len__(self) -> int:
        return len(self._out)

    def take(self) -> bytearray:
        out, self._out = self._out, bytearray()
        return out

    def clear(self) -> None:
        # Frames dropped here never reach the writer: nothing may refer to them.
        self._out = bytearray()
        self._last = None

    def event(self, direction: int, meta: bytes, data: Buffer) -> None:
        if self.disabled or self._full_up():
            return
        flags = redact_flags(data, self._secrets, self._extras)
        if flags:
            data = self._redact(bytes(data), flags)
        self._append(direction, meta, data)
        if not flags and type(data) is bytes and len(data) >= CAPTURE_REF_MIN:
            self._last = data
            self._last_seq = self.seq

    def split(self, direction: int, meta: bytes, payload: bytes, points: tuple[int, ...]) -> None:
        if self.disabled:
            return
        n, k = len(payload), len(points)
        ordered = all(0 < p < n for p in points) and all(
            a < b for a, b in itertools.pairwise(points)
        )
        if (
            n < CAPTURE_REF_MIN
            or not k
            or not ordered
            or 4 + 4 * k + n > 0xFFFFFF00
            or redact_flags(payload, self._secrets, self._extras)
        ):
            self.event(direction, meta, payload)
            return
        if self._full_up():
            return
        data = struct.pack(f"<I{k}I", k, *points) + payload
        self._append(direction | CAPTURE_SPLIT, meta, data)
        self._last = payload
        self._last_seq = self.seq

    def relayed(
        self,
        direction: int,
        meta: bytes,
        payload: bytes,
        framed: bytes,
        at: int,
        cuts: tuple[tuple[int, int], ...],
    ) -> None:
        n, f = len(payload), len(framed)
        kept, pos, ordered = n, 0, True
        for start, end in cuts:
            ordered = ordered and pos <= start <= end <= n
            kept -= end - start
            pos = end
        if (
            payload is not self._last
            or self._last_seq != self.seq
            or self.disabled
            or at < 0
            or not ordered
            or at + kept > f
        ):
            self.event(direction, meta, framed)
            return
        outside = framed[:at] + framed[at + kept :]
        if redact_flags(outside, self._secrets, self._extras):
            self.event(direction, meta, framed)
            return
        if self._full_up():
            return
        ref = struct.pack("<II", at, len(cuts))
        ref += b"".join(struct.pack("<II", start, end) for start, end in cuts) + outside
        self._append(direction | CAPTURE_REF, meta, ref)
        self.referred += 1

    def _full_up(self) -> bool:
        """Past the bound: the event is dropped and counted (checked before any work)."""
        if len(self._out) + self.backlog > self._limit:
            self.dropped += 1
            return True
        return False

    def _append(self, direction: int, meta: bytes, data: Buffer) -> None:
        """Stamp, number and frame a kept event; wake the owner as the module says."""
        before = len(self._out)
        ts = self._wall0 + (time.monotonic() - self._mono0)
        self.seq += 1
        append_capture_frame(self._out, ts, self.seq, direction, meta, data)
        if len(self._out) >= self._full:
            self._wake(True)
        elif before == 0:
            self._wake(False)


# -- the writer's side: frames to CBOR event items ------------------------------------
# One CBOR map per frame: ts (float64), dir, seq, data and, when the frame has one, meta,
# in that order, every head in its shortest form (what cbor2 writes for the same dict).
# For the usual small event with a flat meta object the bytes are written here; data of
# ``compress_min`` bytes or more, or a meta that is not a flat JSON object of strings
# without escapes, integers, booleans and nulls, go to ``slow(ts, seq, direction, meta,
# data)`` instead.

_FLAT_STRING = re.compile(rb'"([^"\\\x00-\x1f]*)"')
_FLAT_INT = re.compile(rb"-?[0-9]{1,18}(?![0-9.eE])")


def _cbor_head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


def _meta_cbor(meta: bytes) -> bytes | None:
    if len(meta) < 2 or meta[:1] != b"{" or meta[-1:] != b"}":
        return None
    if meta == b"{}":
        return b"\xa0"
    out = bytearray()
    i, n, pairs = 1, len(meta), 0
    while True:
        key = _FLAT_STRING.match(meta, i)
        if key is None or meta[key.end() : key.end() + 1] != b":":
            return None
        out += _cbor_head(3, len(key.group(1))) + key.group(1)
        i = key.end() + 1
        if (text := _FLAT_STRING.match(meta, i)) is not None:
            out += _cbor_head(3, len(text.group(1))) + text.group(1)
            i = text.end()
        elif meta.startswith(b"true", i):
            out += b"\xf5"
            i += 4
        elif meta.startswith(b"false", i):
            out += b"\xf4"
            i += 5
        elif meta.startswith(b"null", i):
            out += b"\xf6"
            i += 4
        elif (num := _FLAT_INT.match(meta, i)) is not None:
            value = int(num.group())
            if num.group() == b"-0":
                return None
            out += _cbor_head(1, -1 - value) if value < 0 else _cbor_head(0, value)
            i = num.end()
        else:
            return None
        pairs += 1
        if meta[i : i + 1] == b",":
            i += 1
        elif i == n - 1:
            break
        else:
            return None
    if pairs >= 24:
        return None
    return bytes((0xA0 | pairs,)) + bytes(out)


def capture_items(
    buf: Buffer,
    compress_min: int,
    slow: Callable[[float, int, int, bytes, bytes], bytes],
) -> tuple[list[bytes], int]:
    view = memoryview(buf).cast("B")
    items: list[bytes] = []
    pos, end = 0, len(view)
    while end - pos >= _FRAME.size:
        length, ts, seq, direction, mlen = _FRAME.unpack_from(view, pos)
        stop = pos + 4 + length
        if stop > end or length < _REST:
            break
        meta_at = pos + _FRAME.size
        data_at = meta_at + mlen
        if data_at > stop:
            break
        meta, data = bytes(view[meta_at:data_at]), bytes(view[data_at:stop])
        cbor_meta = _meta_cbor(meta) if meta else b""
        if (
            len(data) >= compress_min
            or cbor_meta is None
            or direction & (CAPTURE_REF | CAPTURE_SPLIT)
        ):
            items.append(slow(ts, seq, direction, meta, data))
        else:
            if cbor_meta == b"\xa0":
                cbor_meta = b""  # an empty object: no meta, as cbor2's writer leaves it out
            items.append(
                (b"\xa5" if cbor_meta else b"\xa4")
                + b"\x62ts\xfb"
                + struct.pack(">d", ts)
                + b"\x63dir"
                + _cbor_head(0, direction)
                + b"\x63seq"
                + _cbor_head(0, seq)
                + b"\x64data"
                + _cbor_head(2, len(data))
                + data
                + (b"\x64meta" + cbor_meta if cbor_meta else b"")
            )
        pos = stop
    return items, pos
