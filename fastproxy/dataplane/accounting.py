"""Completion accounting for the usage record, without parsing every stream event.

A relayed stream is counted by the relay's `_speedups.SSEPass`, in the same compiled
scan that finds its event boundaries: content and tool-argument strings are estimated
as they pass, and only the rare events that need a real parse (tool-call starts, usage)
reach Python, where the tool names are read here with orjson. A caller that splits a
stream itself feeds events to `StreamAccounting.event` (a `_speedups.DeltaScanner`);
for JSON responses the same scanner runs over the whole body.

Tool names are numbers-and-names facts (which tools were called); arguments are never
kept.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Protocol

import orjson

from .._speedups import DELTA_NAME, DeltaScanner

# How many (bytes written, tokens so far) checkpoints a stream keeps: enough to cover
# any write buffer a client can leave unread (high-water marks are ~64 KiB, events are
# ~100+ bytes), bounded so a million-event stream costs nothing extra.
CHECKPOINTS = 1024


class TextCounts(Protocol):
    """What the accounting reads from a scanner (DeltaScanner or SSEPass)."""

    @property
    def tokens(self) -> int: ...

    @property
    def text_bytes(self) -> int: ...


class StreamAccounting:
    """Counts what a stream carried (btp) and what reached the client (ptc)."""

    __slots__ = ("_checkpoints", "delta", "first_content_at", "tool_names", "unsent")

    def __init__(self) -> None:
        # Created on first use: a relayed stream is counted by its relay's scanner
        # (attach), and an open stream should cost as little memory as possible.
        self.delta: TextCounts | None = None
        self.tool_names: list[str] = []
        self.first_content_at = 0.0
        # Written byte and token totals, interleaved (16 bytes per write, no objects);
        # only the last CHECKPOINTS pairs count, and it is trimmed at twice that.
        self._checkpoints: array[int] | None = None
        # Bytes still in our client transport after the latest write: at a client abort
        # they never left the process (uvloop reports 0 once the connection is lost).
        self.unsent = 0

    def attach(self, counts: TextCounts) -> None:
        """Read tokens and text bytes from the relay's scanner from now on."""
        self.delta = counts

    def event(self, event: bytes, data: bytes) -> None:
        """One event's data, for a caller that splits the stream itself."""
        delta = self.delta
        if delta is None:
            delta = self.delta = DeltaScanner()
        if not isinstance(delta, DeltaScanner):
            raise TypeError("this stream is counted by its relay's scanner")
        flags = delta.feed_event(data)
        if flags & DELTA_NAME:
            self.tool_names.extend(stream_tool_names(event, data))

    def wrote(self, bytes_tx: int, unsent: int) -> None:
        delta = self.delta
        tokens = 0
        if delta is not None:
            if not self.first_content_at and delta.text_bytes:
                self.first_content_at = time.monotonic()
            tokens = delta.tokens
        cps = self._checkpoints
        if cps is None:
            cps = self._checkpoints = array("q")
        elif len(cps) >= 4 * CHECKPOINTS:
            del cps[: 2 * CHECKPOINTS]
        cps.append(bytes_tx)
        cps.append(tokens)
        self.unsent = unsent

    @property
    def tokens(self) -> int:
        return self.delta.tokens if self.delta is not None else 0

    def delivered_tokens(self, bytes_tx: int, aborted: bool) -> int:
        """Tokens of the content the client can have received."""
        if not aborted or not self.unsent:
            return self.tokens
        delivered = bytes_tx - self.unsent
        cps = self._checkpoints
        best = 0
        if cps is not None:
            for i in range(max(0, len(cps) - 2 * CHECKPOINTS), len(cps), 2):
                if cps[i] <= delivered:
                    best = cps[i + 1]
                else:
                    break
        return best


def stream_tool_names(event: bytes, data: bytes) -> list[str]:
    """Tool names started by one stream event (flagged DELTA_NAME / NOTE_NAME)."""
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
