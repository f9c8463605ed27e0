"""Relay of an SSE stream from a backend to a client, one upstream chunk at a time.

Runs inside the upstream protocol's ``on_body`` callback: no task switch per chunk, no
await. Backpressure needs no code here: when the client's transport pauses writing, the
client protocol pauses the upstream transport's reading (see protocol.py), so at most
one socket buffer of data is ever held per direction.

Events are forwarded byte-for-byte. The relay re-frames only when it must remove the
usage-only chunk the gateway itself asked an OpenAI backend for; otherwise, when the
chunk ends on an event boundary, the original chunk object is written as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .._speedups import SSE_ERROR, SSE_EVENT, SSEScanner
from ..core.records import BackendUsage
from .accounting import StreamAccounting
from .dialects.base import Dialect

# Larger than any sane event; past it the stream is treated as broken rather than
# buffered without bound (the default of limits.max_sse_event_bytes).
MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSERelay:
    __slots__ = (
        "_acct",
        "_chunked",
        "_dialect",
        "_entry",
        "_max_event",
        "_on_overflow",
        "_scanner",
        "_strip_usage",
        "_transport",
        "bytes_tx",
        "events",
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
    ) -> None:
        self._transport = transport
        self._chunked = chunked
        self._dialect = dialect
        self._strip_usage = strip_usage
        self._acct = accounting
        self._entry = activity_entry
        self._scanner = SSEScanner(max_event_bytes)
        self._max_event = max_event_bytes
        self._on_overflow = on_overflow
        self.terminal = False
        self.overflow = False
        self.usage: BackendUsage | None = None
        self.bytes_tx = 0
        self.events = 0
        self.first_tx_at = 0.0

    def __call__(self, data: bytes) -> None:
        if self.overflow:
            return  # the stream is being ended: nothing more reaches the client
        scanner = self._scanner
        had_pending = scanner.buffered > 0
        items = scanner.feed(data)
        if not items:
            if self._entry is not None:
                self._entry.count(len(data), 0)
            return
        stripped = False
        is_terminal = self._dialect.is_terminal
        acct = self._acct
        for item in items:
            kind = item.kind
            if kind == SSE_EVENT:
                self.events += 1
                d = item.data
                if is_terminal(item.event, d):
                    self.terminal = True
                elif b'"usage"' in d and self._take_usage(item.event, d):
                    stripped = True
                    continue
                if acct is not None:
                    acct.event(item.event, d)
            elif kind == SSE_ERROR:
                # An event past the limit: the events before it go out, nothing after it
                # (relaying the rest would show a shorter answer as a complete one).
                self.overflow = True
                stripped = True
                items = items[: items.index(item)]
                break
        if stripped:
            out = b"".join([i.raw for i in items if not self._is_stripped(i)])
        elif had_pending or scanner.buffered:
            out = b"".join([i.raw for i in items])
        else:
            out = data
        n = len(out)
        if n:
            if not self.bytes_tx:
                self.first_tx_at = time.monotonic()
            self.bytes_tx += n
            transport = self._transport
            transport.write(b"%x\r\n%b\r\n" % (n, out) if self._chunked else out)
            if acct is not None:
                acct.wrote(self.bytes_tx, transport.get_write_buffer_size())
        if self._entry is not None:
            self._entry.count(len(data), n)
        if self.overflow and self._on_overflow is not None:
            self._on_overflow(f"backend sent a stream event larger than {self._max_event} bytes")

    def _take_usage(self, event: bytes, data: bytes) -> bool:
        usage, usage_only = self._dialect.stream_usage(event, data)
        if usage is not None:
            if self.usage is None:
                self.usage = usage
            else:
                self.usage.merge(usage)
        return usage_only and self._strip_usage

    def _is_stripped(self, item: object) -> bool:
        d = item.data  # type: ignore[attr-defined]
        if item.kind != SSE_EVENT or b'"usage"' not in d:  # type: ignore[attr-defined]
            return False
        _, usage_only = self._dialect.stream_usage(item.event, d)  # type: ignore[attr-defined]
        return usage_only and self._strip_usage

    def finish(self) -> bytes:
        """Bytes of an incomplete trailing event (a cut stream), discarded by the caller."""
        return self._scanner.finish()
