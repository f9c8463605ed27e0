"""Exchange frames: a finished exchange packed for the usage recorder process.

The event loop appends one frame per finished request to a bytearray
(``pack_exchange``); the recorder process reads them back (``unpack_exchanges``). A frame
carries the numbers and names the usage record needs and, optionally, the raw request
body; nothing is parsed or counted on the packing side.

Layout (little-endian; both ends run on one machine)::

    u32  length of what follows
    u8   kind (FRAME_EXCHANGE)
    u8   flags (FLAG_*)
    u8   usage mask: bit i set when usage field i (EXCHANGE_USAGE order) is present
    u8   0
    i64  status, attempts, tool_call_count
    u32  number of tool names
    u32  0
    f64  7 times (wall_started_at .. first_content_at, EXCHANGE_FIELDS order)
    i64  btp_est, ptc_est (0 when absent, see flags)
    i64  6 usage counts, f64 usage cost (0 when absent, see the mask)
    str  13 texts: i32 length (-1: None), then UTF-8 (surrogates passed through); the
         last two (a named key's name and team) are the last two EXCHANGE_FIELDS, after
         the body, so the fields before them kept their positions when they were added
    str  tool names, then the replacement: i32 pairs (-1: None) and its key/value texts
    u32  body length, then the body (only with FLAG_BODY)

``unpack_exchanges`` gives one tuple per frame, fields in ``EXCHANGE_FIELDS`` order; the
usage is a 7-tuple in BackendUsage's constructor order, or None.
"""

from __future__ import annotations

import operator
import struct
from typing import Any

FRAME_EXCHANGE = 1
FLAG_STREAMING = 1
FLAG_BODY = 2
FLAG_USAGE = 4
FLAG_BTP = 8
FLAG_PTC = 16

EXCHANGE_FIELDS = (
    "wall_started_at",
    "started_at",
    "ended_at",
    "upstream_sent_at",
    "backend_ttfb_at",
    "upstream_done_at",
    "first_content_at",
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
)
# BackendUsage's fields in its constructor's order; the last (cost) is a float.
EXCHANGE_USAGE = ("prompt", "completion", "total", "cached", "cache_write", "reasoning", "cost")

_HEAD = struct.Struct("<IBBBBqqqII7dqq6qd")
_HEAD_SIZE = _HEAD.size  # 4 + 148: the length word and the fixed part
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_TEXTS = (
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
    "key_name",
    "team",
)
_NONE = _I32.pack(-1)


def _count(v: Any) -> int | None:
    """A usage count as the frame holds it: an int within 64 bits, else absent."""
    if type(v) is int and _I64_MIN <= v <= _I64_MAX:
        return v
    return None


def _text(out: bytearray, v: str | None) -> None:
    if v is None:
        out += _NONE
        return
    if not isinstance(v, str):
        raise TypeError(f"expected str or None, got {type(v).__name__}")
    b = v.encode("utf-8", "surrogatepass")
    out += _I32.pack(len(b))
    out += b


def pack_exchange(
    rec: Any, body: bytes | bytearray | None, out: bytearray, defer_body: bool = False
) -> int:
    """Append one frame for ``rec`` (an ExchangeRecord) to ``out``, with ``body`` (the
    request body, or None to send the record without it). Returns the bytes appended.
    With ``defer_body`` the frame stops after the body's length: the caller sends the
    body's bytes next (a large body then goes out by reference, never copied).
    On an error (a field of the wrong type) ``out`` is left as it was."""
    start = len(out)
    try:
        _pack(rec, body, out, defer_body)
    except BaseException:
        del out[start:]
        raise
    return len(out) - start


def _pack(rec: Any, body: bytes | bytearray | None, out: bytearray, defer_body: bool) -> None:
    start = len(out)
    flags = FLAG_STREAMING if rec.streaming else 0
    usage = rec.usage
    mask = 0
    counts = [0, 0, 0, 0, 0, 0]
    cost = 0.0
    if usage is not None:
        flags |= FLAG_USAGE
        for i, v in enumerate(
            (
                usage.prompt,
                usage.completion,
                usage.total,
                usage.cached,
                usage.cache_write,
                usage.reasoning,
            )
        ):
            n = _count(v)
            if n is not None:
                counts[i] = n
                mask |= 1 << i
        c = usage.cost
        if c is not None and type(c) in (float, int) and type(c) is not bool:
            cost = float(c)
            mask |= 1 << 6
    btp = _count(rec.btp_completion_est)
    ptc = _count(rec.ptc_completion_est)
    if btp is not None:
        flags |= FLAG_BTP
    if ptc is not None:
        flags |= FLAG_PTC
    if body is not None:
        flags |= FLAG_BODY
    names = rec.tool_names
    out += _HEAD.pack(
        0,
        FRAME_EXCHANGE,
        flags,
        mask,
        0,
        operator.index(rec.status),
        operator.index(rec.attempts),
        operator.index(rec.tool_call_count),
        len(names),
        0,
        float(rec.wall_started_at),
        float(rec.started_at),
        float(rec.ended_at),
        float(rec.upstream_sent_at),
        float(rec.backend_ttfb_at),
        float(rec.upstream_done_at),
        float(rec.first_content_at),
        btp or 0,
        ptc or 0,
        *counts,
        cost,
    )
    for name in _TEXTS:
        _text(out, getattr(rec, name))
    for n in names:
        _text(out, n)
    replacement = rec.replacement
    if replacement is None:
        out += _NONE
    else:
        out += _I32.pack(len(replacement))
        for k, v in replacement.items():
            _text(out, k)
            _text(out, v)
    size = len(out) - start - 4
    if body is not None:
        out += _U32.pack(len(body))
        size += 4 + len(body)
        if not defer_body:
            out += body
    if size > 0xFFFFFFFF:
        raise OverflowError("an exchange frame is limited to 4 GiB")
    out[start : start + 4] = _U32.pack(size)


def _read_text(buf: memoryview, pos: int) -> tuple[str | None, int]:
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    return str(buf[pos : pos + n], "utf-8", "surrogatepass"), pos + n


def unpack_exchanges(
    buf: bytes | bytearray | memoryview, start: int = 0
) -> tuple[list[tuple[Any, ...]], int]:
    """The complete frames in ``buf`` from ``start``: (tuples in EXCHANGE_FIELDS order,
    the offset just past the last complete frame). An incomplete frame at the end is
    left for the next call; a frame of another kind or a malformed one raises ValueError."""
    view = memoryview(buf).cast("B")
    try:
        return _unpack(view, start)
    finally:
        view.release()


def _unpack(view: memoryview, pos: int) -> tuple[list[tuple[Any, ...]], int]:
    out: list[tuple[Any, ...]] = []
    end = len(view)
    while end - pos >= 4:
        (size,) = _U32.unpack_from(view, pos)
        if end - pos - 4 < size:
            break
        if size < _HEAD_SIZE - 4:
            raise ValueError("a malformed exchange frame")
        stop = pos + 4 + size
        try:
            out.append(_frame(view[:stop], pos))
        except (struct.error, UnicodeDecodeError, IndexError) as exc:
            raise ValueError("a malformed exchange frame") from exc
        pos = stop
    return out, pos


def _frame(view: memoryview, pos: int) -> tuple[Any, ...]:
    (
        _size,
        kind,
        flags,
        mask,
        _pad,
        status,
        attempts,
        tool_calls,
        n_names,
        _pad2,
        wall,
        started,
        ended,
        sent,
        ttfb,
        done,
        first,
        btp,
        ptc,
        *rest,
    ) = _HEAD.unpack_from(view, pos)
    if kind != FRAME_EXCHANGE:
        raise ValueError(f"not an exchange frame (kind {kind})")
    pos += _HEAD_SIZE
    texts: list[str | None] = []
    for _ in range(len(_TEXTS)):
        t, pos = _read_text(view, pos)
        texts.append(t)
    names: list[str] = []
    for _ in range(n_names):
        t, pos = _read_text(view, pos)
        names.append(t or "")
    (pairs,) = _I32.unpack_from(view, pos)
    pos += 4
    replacement: dict[str, str] | None = None
    if pairs >= 0:
        replacement = {}
        for _ in range(pairs):
            k, pos = _read_text(view, pos)
            v, pos = _read_text(view, pos)
            replacement[k or ""] = v or ""
    body: bytes | None = None
    if flags & FLAG_BODY:
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise IndexError
        body = bytes(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise IndexError
    usage: tuple[Any, ...] | None = None
    if flags & FLAG_USAGE:
        usage = tuple(v if mask & (1 << i) else None for i, v in enumerate(rest))
    (session_id, client_key_id, frontend, path, backend, backend_type) = texts[:6]
    (model_requested, model_used, outcome, proxy_user, user_agent, key_name, team) = texts[6:]
    return (
        wall,
        started,
        ended,
        sent,
        ttfb,
        done,
        first,
        session_id,
        client_key_id,
        frontend,
        path,
        backend,
        backend_type,
        model_requested,
        model_used,
        outcome,
        proxy_user,
        user_agent,
        bool(flags & FLAG_STREAMING),
        status,
        attempts,
        tool_calls,
        names,
        usage,
        btp if flags & FLAG_BTP else None,
        ptc if flags & FLAG_PTC else None,
        replacement,
        body,
        key_name,
        team,
    )
