"""Relay of an SSE stream from a backend to a client, one upstream chunk at a time.

Runs inside the upstream protocol's ``on_body`` callback: no task switch per chunk, no
await. Backpressure needs no code here: when the client's transport pauses writing, the
client protocol pauses the upstream transport's reading (see protocol.py), so at most
one socket buffer of data is ever held per direction.

A pass-through: each upstream chunk goes through one `SSEPass.feed` call, which finds
the event boundaries in compiled code, estimates the streamed text's tokens and says
(in flags) whether content, the final event or an overflow came by. The bytes up to the
last complete event go out in one write; when the chunk ends on an event boundary (the
usual case) that is the chunk object itself. Python looks at single events only when
the scanner lists them as notable: usage (merged, and the usage-only chunk the gateway
asked an OpenAI backend for is cut out), a tool call's name, an error event. So the
Python work per chunk is constant, whatever the number of events in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .._speedups import (
    NOTE_ERROR,
    NOTE_NAME,
    NOTE_USAGE,
    PASS_ANTHROPIC,
    PASS_GENERIC,
    PASS_NOTABLE,
    PASS_OPENAI,
    PASS_OVERFLOW,
    PASS_TERMINAL,
    SSEPass,
)
from ..core.records import BackendUsage
from ..core.seams import ExchangeTap
from .accounting import StreamAccounting, stream_tool_names
from .dialects.base import Dialect

# Larger than any sane event; past it the stream is treated as broken rather than
# buffered without bound (the default of limits.max_sse_event_bytes).
MAX_EVENT_BYTES = 8 * 1024 * 1024


def dialect_code(name: str) -> int:
    """The SSEPass dialect code of a dialect: which events end its streams. An unknown
    dialect gets PASS_GENERIC, where every event is shown to its is_terminal."""
    if name == "openai":
        return PASS_OPENAI
    if name == "anthropic":
        return PASS_ANTHROPIC
    return PASS_GENERIC


class SSERelay:
    __slots__ = (
        "_acct",
        "_chunked",
        "_dialect",
        "_entry",
        "_generic",
        "_max_event",
        "_on_overflow",
        "_scanner",
        "_strip_usage",
        "_tap",
        "_transport",
        "backend_errors",
        "bytes_tx",
        "first_tx_at",
        "overflow",
        "terminal",
        "usage",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        dialect: Dialect,
        strip_usage: bool,
        accounting: StreamAccounting | None = None,
        activity_entry: Any = None,
        chunked: bool = True,
        max_event_bytes: int = MAX_EVENT_BYTES,
        on_overflow: Callable[[str], None] | None = None,
        *,
        scanner: SSEPass | None = None,
        tap: ExchangeTap | None = None,
    ) -> None:
        """``scanner`` replaces the default SSEPass (tests and benchmarks pass the other
        implementation's); it must be new and built with this dialect's code. ``tap``:
        wire capture is on and ``transport`` is its wrapper. The backend's side (dir 3)
        is then captured here, as each read is relayed: its bytes up to the last
        complete event (the rest joins the next read's, and ``finish`` captures what is
        left at the end), with the client's copy, in one ``tap.stream_chunk`` that
        refers to the backend's bytes instead of copying them again."""
        self._transport = transport
        self._tap = tap
        self._chunked = chunked
        self._dialect = dialect
        self._strip_usage = strip_usage
        self._acct = accounting
        self._entry = activity_entry
        code = dialect_code(dialect.name)
        if scanner is None:
            scanner = SSEPass(max_event_bytes, code)
        self._scanner = scanner
        self._generic = code == PASS_GENERIC
        if accounting is not None:
            accounting.attach(scanner)
        self._max_event = max_event_bytes
        self._on_overflow = on_overflow
        self.terminal = False
        self.overflow = False
        self.usage: BackendUsage | None = None
        self.bytes_tx = 0
        self.first_tx_at = 0.0
        # Error events the backend sent inside the stream (their content is not kept).
        self.backend_errors = 0

    @property
    def events(self) -> int:
        return self._scanner.events

    def __call__(self, data: bytes) -> None:
        if self.overflow:
            return  # the stream is being ended: nothing more reaches the client
        scanner = self._scanner
        out = scanner.feed(data)
        flags = scanner.flags
        raw = out
        cuts: tuple[tuple[int, int], ...] = ()
        if flags:
            if flags & PASS_TERMINAL:
                self.terminal = True
            if flags & PASS_NOTABLE:
                out, cuts = self._notable(out)
            if flags & PASS_OVERFLOW:
                # An event past the limit: the events before it go out, nothing after it
                # (relaying the rest would show a shorter answer as a complete one).
                self.overflow = True
        n = len(out)
        if self._tap is not None and raw and not n:
            self._tap.stream_chunk(raw, None, 0, cuts)  # all cut: only the backend's side
        if n:
            if not self.bytes_tx:
                self.first_tx_at = time.monotonic()
            self.bytes_tx += n
            transport = self._transport
            if self._tap is None:
                transport.write(b"%x\r\n%b\r\n" % (n, out) if self._chunked else out)
            elif self._chunked:
                # Captured as relayed (up to the last complete event): both sides in
                # one call, the client's by reference to the backend's.
                framed = b"%x\r\n%b\r\n" % (n, out)
                self._tap.stream_chunk(raw, framed, len(framed) - n - 2, cuts)
            else:
                self._tap.stream_chunk(raw, out, 0, cuts)
            if self._acct is not None:
                self._acct.wrote(self.bytes_tx, transport.get_write_buffer_size())
        if self._entry is not None:
            self._entry.count(len(data), n)
        if self.overflow and self._on_overflow is not None:
            self._on_overflow(f"backend sent a stream event larger than {self._max_event} bytes")

    def _notable(self, out: bytes) -> tuple[bytes, tuple[tuple[int, int], ...]]:
        """The rare events: usage, tool names, errors (and, for an unknown dialect, its
        terminal test). Returns out without the events to strip, and their ranges."""
        cuts: list[tuple[int, int]] = []
        acct = self._acct
        for note, event, data, start, end in self._scanner.take_notable():
            if self._generic and self._dialect.is_terminal(event, data):
                self.terminal = True
            if note & NOTE_USAGE and self._take_usage(event, data):
                cuts.append((start, end))
            if note & NOTE_NAME and acct is not None:
                acct.tool_names.extend(stream_tool_names(event, data))
            if note & NOTE_ERROR:
                self.backend_errors += 1
        if not cuts:
            return out, ()
        pieces = []
        pos = 0
        for start, end in cuts:
            pieces.append(out[pos:start])
            pos = end
        pieces.append(out[pos:])
        return b"".join(pieces), tuple(cuts)

    def _take_usage(self, event: bytes, data: bytes) -> bool:
        usage, usage_only = self._dialect.stream_usage(event, data)
        if usage is not None:
            if self.usage is None:
                self.usage = usage
            else:
                self.usage.merge(usage)
        return usage_only and self._strip_usage

    def finish(self) -> bytes:
        """Bytes of an incomplete trailing event (a cut stream), discarded by the caller
        (and captured, when capture is on: the backend did send them)."""
        rest = self._scanner.finish()
        if self._tap is not None and rest:
            self._tap.event(3, rest, None)
        return rest
