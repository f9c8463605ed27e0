"""Pure-Python twin of ``_core.pyx``: same names, signatures, results and edge cases.

This module is the reference and the typing contract (``__init__`` imports its names
under ``TYPE_CHECKING``). It is used when the extension is not built or when
``FASTPROXY_NO_EXTENSIONS=1``. Every behaviour here is mirrored by ``_core.pyx`` and the
tests in ``tests/speedups`` run on both; when the two disagree, that is a bug in one of
them, never a licence to document a difference.

Speed still matters here (a gateway without a compiler runs on this): the hot paths use
``bytes.splitlines``/``find``/``partition``, which run in C, instead of per-byte loops.
"""

from .capture import (
    CAPTURE_REF,
    CAPTURE_REF_MIN,
    CAPTURE_SPLIT,
    REDACT_HEADER,
    REDACT_JSON,
    REDACT_LITERAL,
    REDACT_QUERY,
    REDACT_SHAPE,
    CaptureBuffer,
    append_capture_frame,
    capture_items,
    redact_flags,
)
from .counters import CounterBlock, count_bytes
from .delta import DELTA_ERROR, DELTA_NAME, DELTA_USAGE, DeltaScanner
from .head import parse_simple_request, parse_simple_response
from .members import json_members
from .record import EXCHANGE_FIELDS, EXCHANGE_USAGE, pack_exchange, unpack_exchanges
from .rollup import fold_rollups
from .sse import (
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
    SSE_COMMENT,
    SSE_ERROR,
    SSE_EVENT,
    SSEEvent,
    SSEPass,
    SSEScanner,
)
from .tokens import TokenEstimator, estimate_tokens
from .usagerow import usage_row

__all__ = [
    "CAPTURE_REF",
    "CAPTURE_REF_MIN",
    "CAPTURE_SPLIT",
    "DELTA_ERROR",
    "DELTA_NAME",
    "DELTA_USAGE",
    "EXCHANGE_FIELDS",
    "EXCHANGE_USAGE",
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
