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
and the data. ``append_capture_frame`` appends one to the link's buffer in place.
"""

from __future__ import annotations

import struct

REDACT_HEADER = 1
REDACT_JSON = 2
REDACT_SHAPE = 4
REDACT_QUERY = 8
REDACT_LITERAL = 16

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
