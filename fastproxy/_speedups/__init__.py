"""Hot-path primitives of the gateway: SSE scanning, token estimation, byte counters.

Two implementations with the same names and behaviour: ``_core`` (Cython, used when it
is built) and ``_pure`` (the pure-Python twin and the reference). ``_core`` is chosen
when importable; ``FASTPROXY_NO_EXTENSIONS=1`` (read once, at import) forces ``_pure``.
``IMPLEMENTATION`` says which one is in use ("cython" or "python").

This package is a leaf: it imports nothing from fastproxy and nothing from asyncio, so
it can be compiled, benchmarked and fuzzed on its own. See docs/speedups.md.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "CAPTURE_REF",
    "CAPTURE_REF_MIN",
    "CAPTURE_SPLIT",
    "DELTA_ERROR",
    "DELTA_NAME",
    "DELTA_USAGE",
    "EXCHANGE_FIELDS",
    "EXCHANGE_USAGE",
    "IMPLEMENTATION",
    "NOTE_ERROR",
    "NOTE_NAME",
    "NOTE_TERMINAL",
    "NOTE_USAGE",
    "PASS_ANTHROPIC",
    "PASS_CONTENT",
    "PASS_GENERIC",
    "PASS_NOTABLE",
    "PASS_OPENAI",
    "PASS_OVERFLOW",
    "PASS_TERMINAL",
    "REDACT_HEADER",
    "REDACT_JSON",
    "REDACT_LITERAL",
    "REDACT_QUERY",
    "REDACT_SHAPE",
    "SSE_COMMENT",
    "SSE_ERROR",
    "SSE_EVENT",
    "CaptureBuffer",
    "CounterBlock",
    "DeltaScanner",
    "SSEEvent",
    "SSEPass",
    "SSEScanner",
    "TokenEstimator",
    "append_capture_frame",
    "capture_items",
    "count_bytes",
    "estimate_tokens",
    "fold_rollups",
    "json_members",
    "pack_exchange",
    "parse_simple_request",
    "parse_simple_response",
    "redact_flags",
    "unpack_exchanges",
    "usage_row",
]


def _select() -> tuple[ModuleType, str]:
    if os.environ.get("FASTPROXY_NO_EXTENSIONS", "").lower() in {"1", "true", "yes"}:
        from . import _pure

        return _pure, "python"
    try:
        from . import _core
    except ImportError:
        # Not built (no compiler at install time): the twin gives the same results.
        from . import _pure

        return _pure, "python"
    return _core, "cython"


_impl, IMPLEMENTATION = _select()

if TYPE_CHECKING:
    # The typing contract is the pure twin; _core mirrors it (tests enforce parity).
    from ._pure import (
        CAPTURE_REF,
        CAPTURE_REF_MIN,
        CAPTURE_SPLIT,
        DELTA_ERROR,
        DELTA_NAME,
        DELTA_USAGE,
        EXCHANGE_FIELDS,
        EXCHANGE_USAGE,
        NOTE_ERROR,
        NOTE_NAME,
        NOTE_TERMINAL,
        NOTE_USAGE,
        PASS_ANTHROPIC,
        PASS_CONTENT,
        PASS_GENERIC,
        PASS_NOTABLE,
        PASS_OPENAI,
        PASS_OVERFLOW,
        PASS_TERMINAL,
        REDACT_HEADER,
        REDACT_JSON,
        REDACT_LITERAL,
        REDACT_QUERY,
        REDACT_SHAPE,
        SSE_COMMENT,
        SSE_ERROR,
        SSE_EVENT,
        CaptureBuffer,
        CounterBlock,
        DeltaScanner,
        SSEEvent,
        SSEPass,
        SSEScanner,
        TokenEstimator,
        append_capture_frame,
        capture_items,
        count_bytes,
        estimate_tokens,
        fold_rollups,
        json_members,
        pack_exchange,
        parse_simple_request,
        parse_simple_response,
        redact_flags,
        unpack_exchanges,
        usage_row,
    )
else:
    SSE_EVENT = _impl.SSE_EVENT
    NOTE_ERROR = _impl.NOTE_ERROR
    NOTE_NAME = _impl.NOTE_NAME
    NOTE_TERMINAL = _impl.NOTE_TERMINAL
    NOTE_USAGE = _impl.NOTE_USAGE
    PASS_ANTHROPIC = _impl.PASS_ANTHROPIC
    PASS_CONTENT = _impl.PASS_CONTENT
    PASS_GENERIC = _impl.PASS_GENERIC
    PASS_NOTABLE = _impl.PASS_NOTABLE
    PASS_OPENAI = _impl.PASS_OPENAI
    PASS_OVERFLOW = _impl.PASS_OVERFLOW
    PASS_TERMINAL = _impl.PASS_TERMINAL
    SSEPass = _impl.SSEPass
    SSE_COMMENT = _impl.SSE_COMMENT
    SSE_ERROR = _impl.SSE_ERROR
    SSEEvent = _impl.SSEEvent
    SSEScanner = _impl.SSEScanner
    CounterBlock = _impl.CounterBlock
    count_bytes = _impl.count_bytes
    TokenEstimator = _impl.TokenEstimator
    estimate_tokens = _impl.estimate_tokens
    fold_rollups = _impl.fold_rollups
    json_members = _impl.json_members
    DELTA_USAGE = _impl.DELTA_USAGE
    DELTA_NAME = _impl.DELTA_NAME
    DELTA_ERROR = _impl.DELTA_ERROR
    DeltaScanner = _impl.DeltaScanner
    EXCHANGE_FIELDS = _impl.EXCHANGE_FIELDS
    EXCHANGE_USAGE = _impl.EXCHANGE_USAGE
    pack_exchange = _impl.pack_exchange
    parse_simple_request = _impl.parse_simple_request
    parse_simple_response = _impl.parse_simple_response
    unpack_exchanges = _impl.unpack_exchanges
    usage_row = _impl.usage_row
    REDACT_HEADER = _impl.REDACT_HEADER
    REDACT_JSON = _impl.REDACT_JSON
    REDACT_LITERAL = _impl.REDACT_LITERAL
    REDACT_QUERY = _impl.REDACT_QUERY
    REDACT_SHAPE = _impl.REDACT_SHAPE
    append_capture_frame = _impl.append_capture_frame
    redact_flags = _impl.redact_flags
    CaptureBuffer = _impl.CaptureBuffer
    capture_items = _impl.capture_items
    CAPTURE_REF = _impl.CAPTURE_REF
    CAPTURE_REF_MIN = _impl.CAPTURE_REF_MIN
    CAPTURE_SPLIT = _impl.CAPTURE_SPLIT

del _select
