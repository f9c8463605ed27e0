"""Completion accounting for the usage record, without parsing every stream event.

Per stream event the `_speedups.DeltaScanner` walks the JSON once in C: it finds content
and tool-argument strings, estimates their tokens, and flags the rare events that need a
real parse (tool-call starts, usage). Only those are parsed here, with orjson. For JSON
responses the same scanner runs over the whole body.

Tool names are numbers-and-names facts (which tools were called); arguments are never
kept.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import orjson

from .._speedups import DELTA_NAME, DeltaScanner

# How many (bytes written, tokens so far) checkpoints a stream keeps: enough to cover
# any write buffer a client can leave unread (high-water marks are ~64 KiB, events are
# ~100+ bytes), bounded so a million-event stream costs nothing extra.
CHECKPOINTS = 1024


class StreamAccounting:
    """Counts what a stream carried (btp) and what reached the client (ptc)."""

    __slots__ = ("_checkpoints", "delta", "first_content_at", "tool_names", "unsent")

    def __init__(self) -> None:
        self.delta = DeltaScanner()
        self.tool_names: list[str] = []
        self.first_content_at = 0.0
        self._checkpoints: deque[tuple[int, int]] = deque(maxlen=CHECKPOINTS)
        # Bytes still in our client transport after the latest write: at a client abort
        # they never left the process (uvloop reports 0 once the connection is lost).
        self.unsent = 0

    def event(self, event: bytes, data: bytes) -> None:
        flags = self.delta.feed_event(data)
        if flags & DELTA_NAME:
            self.tool_names.extend(_stream_tool_names(event, data))

    def wrote(self, bytes_tx: int, unsent: int) -> None:
        delta = self.delta
        if not self.first_content_at and delta.text_bytes:
            self.first_content_at = time.monotonic()
        self._checkpoints.append((bytes_tx, delta.tokens))
        self.unsent = unsent

    @property
    def tokens(self) -> int:
        return self.delta.tokens

    def delivered_tokens(self, bytes_tx: int, aborted: bool) -> int:
        """Tokens of the content the client can have received."""
        if not aborted or not self.unsent:
            return self.delta.tokens
        delivered = bytes_tx - self.unsent
        best = 0
        for cum_bytes, cum_tokens in self._checkpoints:
            if cum_bytes <= delivered:
                best = cum_tokens
            else:
                break
        return best


def _stream_tool_names(event: bytes, data: bytes) -> list[str]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    names: list[str] = []
    kind = obj.get("type")
    if kind == "content_block_start":  # Anthropic
        block = obj.get("content_block")
        if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
            _add(names, block.get("name"))
    elif kind == "response.output_item.added":  # Responses API
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            _add(names, item.get("name"))
    else:  # Chat Completions: the first delta of each call carries its name
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            for call in (delta or {}).get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    _add(names, fn.get("name"))
    return names


def json_tool_names(obj: Any) -> list[str]:
    """Tool calls of a complete (non-streaming) response, in any dialect."""
    names: list[str] = []
    if not isinstance(obj, dict):
        return names
    for choice in obj.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        for call in (msg or {}).get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                _add(names, fn.get("name"))
    for block in obj.get("content") or () if obj.get("type") == "message" else ():
        if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
            _add(names, block.get("name"))
    for item in obj.get("output") or () if obj.get("object") == "response" else ():
        if isinstance(item, dict) and item.get("type") == "function_call":
            _add(names, item.get("name"))
    return names


def json_completion_tokens(body: bytes) -> int:
    """Estimated completion tokens of a complete JSON response body."""
    scanner = DeltaScanner()
    scanner.feed_event(body)
    return scanner.tokens


def _add(names: list[str], name: Any) -> None:
    if isinstance(name, str) and name:
        names.append(name[:128])
