"""The values the planes hand each other: what one exchange leaves behind
(`ExchangeRecord`) and backend-reported usage in its normal form (`BackendUsage`).

This module imports nothing of the gateway: the data plane fills these, monitoring
services and storage read them, and none of them needs the others' modules for it.

Usage normal form: ``prompt`` counts every prompt token the backend processed, cached
ones included (OpenAI's convention). Anthropic reports ``input_tokens`` *excluding* cache
reads and writes, so its prompt is ``input + cache_read + cache_write``; ``cached`` and
``cache_write`` then say how many of those were cache reads and writes. ``reasoning`` is
inside ``completion`` in both dialects. One normal form means cost and stats code has one
formula, not one per provider.

An exchange record is filled by the request cycle as it runs and handed to the
monitoring services once, at the end. It holds numbers and names only: no message text, no keys (usage tracking stores a projection).
"""

from __future__ import annotations

import time


class BackendUsage:
    __slots__ = ("cache_write", "cached", "completion", "cost", "prompt", "reasoning", "total")

    def __init__(
        self,
        prompt: int | None = None,
        completion: int | None = None,
        total: int | None = None,
        cached: int | None = None,
        cache_write: int | None = None,
        reasoning: int | None = None,
        cost: float | None = None,
    ) -> None:
        self.prompt = prompt
        self.completion = completion
        self.total = total
        self.cached = cached
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.cost = cost

    def merge(self, other: BackendUsage) -> None:
        """Fill fields from a later report (Anthropic sends input at start, output at end)."""
        for name in self.__slots__:
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        if other.total is None and self.prompt is not None and self.completion is not None:
            self.total = self.prompt + self.completion

    def as_dict(self) -> dict[str, int | float | None]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}

    def as_row(self) -> tuple[int | float | None, ...]:
        """The values in ``__slots__`` order (sorted, as ``as_dict``): the stored form."""
        return (
            self.cache_write,
            self.cached,
            self.completion,
            self.cost,
            self.prompt,
            self.reasoning,
            self.total,
        )

    def __repr__(self) -> str:
        return f"BackendUsage({self.as_dict()})"


class ExchangeRecord:
    __slots__ = (
        "attempts",
        "backend",
        "backend_ttfb_at",
        "backend_type",
        "btp_completion_est",
        "bytes_rx",
        "bytes_tx",
        "client_key_id",
        "connection_id",
        "ended_at",
        "error_kind",
        "first_content_at",
        "first_tx_at",
        "frontend",
        "id",
        "key_name",
        "method",
        "model_requested",
        "model_used",
        "outcome",
        "path",
        "proxy_user",
        "ptc_completion_est",
        "replacement",
        "request_body",
        "session_id",
        "started_at",
        "status",
        "streaming",
        "team",
        "tool_call_count",
        "tool_names",
        "trace",
        "upstream_done_at",
        "upstream_sent_at",
        "usage",
        "user_agent",
        "wall_started_at",
    )

    def __init__(self, rid: int, connection_id: int, started_at: float) -> None:
        self.id = rid
        self.connection_id = connection_id
        self.started_at = started_at
        # Wall-clock start (UTC epoch seconds) for the record's timestamp; every other
        # time here is time.monotonic(), for durations.
        self.wall_started_at = time.time()
        self.upstream_done_at = 0.0
        # When the first byte of completion *content* reached the client (TTFT).
        self.first_content_at = 0.0
        # Proxy-side completion estimates: what the backend sent us (btp) and what we
        # relayed to the client (ptc); they differ when a client aborts or a stream is cut.
        self.btp_completion_est: int | None = None
        self.ptc_completion_est: int | None = None
        self.tool_call_count = 0
        self.tool_names: list[str] = []
        self.replacement: dict[str, str] | None = None
        self.ended_at = 0.0
        self.upstream_sent_at = 0.0
        self.backend_ttfb_at = 0.0
        self.first_tx_at = 0.0
        self.frontend = ""
        self.method = "POST"
        self.path = ""
        self.backend: str | None = None
        self.backend_type: str | None = None
        self.model_requested: str | None = None
        self.model_used: str | None = None
        self.streaming = False
        self.status = 0
        self.outcome = "ok"
        self.error_kind: str | None = None
        self.attempts = 0
        self.bytes_rx = 0
        self.bytes_tx = 0
        self.usage: BackendUsage | None = None
        self.session_id: str | None = None
        self.proxy_user: str | None = None
        self.user_agent: str | None = None
        self.client_key_id: str | None = None
        # A named key's name and team (auth.keys); None for the plain api_keys list.
        self.key_name: str | None = None
        self.team: str | None = None
        # The raw request body, held only until the exchange sinks ran (token counting
        # needs it); never stored by any sink. A bytearray when it arrived in several reads.
        self.request_body: bytes | bytearray | None = None
        # Tracing on: this request's trace ids and its upstream attempts (docs/tracing.md).
        self.trace: Trace | None = None

    @property
    def duration_ms(self) -> float:
        return (self.ended_at - self.started_at) * 1000.0


class TraceAttempt:
    """One upstream attempt as its span will show it: ids and times taken on the loop,
    nothing built. ``status``: the backend's HTTP status (0: none came); ``error``: the
    failure's kind (connect, timeout, reset, ...), None when there was none."""

    __slots__ = (
        "backend",
        "ended_at",
        "error",
        "host",
        "kind",
        "model",
        "port",
        "span_id",
        "started_at",
        "status",
    )

    def __init__(
        self,
        span_id: int,
        backend: str,
        kind: str,
        model: str,
        host: str,
        port: int,
        started_at: float,
    ) -> None:
        self.span_id = span_id
        self.backend = backend
        self.kind = kind  # the backend's type: openai | anthropic
        self.model = model
        self.host = host
        self.port = port
        self.started_at = started_at
        self.ended_at = 0.0  # when its outcome was known; the serving one ends with the body
        self.status = 0
        self.error: str | None = None


class Trace:
    """The trace of one request (tracing on): W3C trace-context ids as ints, whether it
    is sampled, the caller's span when a ``traceparent`` came in (0: the request's span
    is a root), and one `TraceAttempt` per upstream attempt."""

    __slots__ = ("attempts", "parent_id", "sampled", "span_id", "trace_id")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, sampled: bool) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.attempts: list[TraceAttempt] = []


class Counters:
    """Plain integer counters of the data plane: it increments them, metrics and
    diagnostics read them. A plain object, so a count costs one attribute add."""

    __slots__ = (
        "client_aborts",
        "client_stalls",
        "connections_rejected",
        "connections_total",
        "failovers",
        "requests_total",
        "stream_truncations",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_rejected = 0
        self.requests_total = 0
        self.client_aborts = 0
        self.client_stalls = 0
        self.stream_truncations = 0
        self.failovers = 0
        self.upstream_errors: dict[str, int] = {}
