"""UsageCapture: the numbers, names and raw request body a usage record is built from.

In the gateway the event loop packs these straight from the ExchangeRecord into a frame
for the recorder process (``_speedups.pack_exchange``; no capture object on the loop).
The recorder turns each unpacked frame into a capture (`from_frame`) and projects it
into the stored record (usage_projection.py). `take` makes one in process, from a record,
for tests and tools that drive the projector without a recorder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.records import BackendUsage

if TYPE_CHECKING:
    from ..core.records import ExchangeRecord


class UsageCapture:
    """What the loop copies out of an ExchangeRecord: numbers, names, the raw body."""

    __slots__ = (
        "attempts",
        "backend",
        "backend_ttfb_at",
        "backend_type",
        "body",
        "btp_est",
        "client_key_id",
        "ended_at",
        "first_content_at",
        "frontend",
        "held",
        "key_name",
        "model_requested",
        "model_used",
        "outcome",
        "path",
        "proxy_user",
        "ptc_est",
        "replacement",
        "session_id",
        "started_at",
        "status",
        "streaming",
        "team",
        "tool_call_count",
        "tool_names",
        "upstream_done_at",
        "upstream_sent_at",
        "usage",
        "user_agent",
        "wall_started_at",
    )

    # Declared for the type checker (``take`` fills every slot): the same types as the
    # ExchangeRecord fields they copy, the body as the data plane holds it.
    attempts: int
    backend: str | None
    backend_ttfb_at: float
    backend_type: str | None
    body: bytes | bytearray | None
    btp_est: int | None
    client_key_id: str | None
    ended_at: float
    first_content_at: float
    frontend: str
    held: int
    key_name: str | None
    model_requested: str | None
    model_used: str | None
    outcome: str
    path: str
    proxy_user: str | None
    ptc_est: int | None
    replacement: dict[str, str] | None
    session_id: str | None
    started_at: float
    status: int
    streaming: bool
    team: str | None
    tool_call_count: int
    tool_names: list[str]
    upstream_done_at: float
    upstream_sent_at: float
    usage: BackendUsage | None
    user_agent: str | None
    wall_started_at: float

    @classmethod
    def take(cls, rec: ExchangeRecord, keep_body: bool, held: int = 0) -> UsageCapture:
        c = cls.__new__(cls)
        c.wall_started_at = rec.wall_started_at
        c.started_at = rec.started_at
        c.ended_at = rec.ended_at
        c.upstream_sent_at = rec.upstream_sent_at
        c.backend_ttfb_at = rec.backend_ttfb_at
        c.upstream_done_at = rec.upstream_done_at
        c.first_content_at = rec.first_content_at
        c.session_id = rec.session_id
        c.client_key_id = rec.client_key_id
        c.frontend = rec.frontend
        c.path = rec.path
        c.backend = rec.backend
        c.backend_type = rec.backend_type
        c.model_requested = rec.model_requested
        c.model_used = rec.model_used
        c.streaming = rec.streaming
        c.status = rec.status
        c.outcome = rec.outcome
        c.attempts = rec.attempts
        c.tool_call_count = rec.tool_call_count
        c.tool_names = rec.tool_names  # a fresh list per exchange, never touched again
        c.usage = rec.usage
        c.btp_est = rec.btp_completion_est
        c.ptc_est = rec.ptc_completion_est
        c.replacement = rec.replacement
        c.proxy_user = rec.proxy_user
        c.user_agent = rec.user_agent
        c.key_name = rec.key_name
        c.team = rec.team
        body = rec.request_body
        c.body = body if keep_body else None
        c.held = held  # bytes of PendingBodies this capture holds, released once built
        return c

    @classmethod
    def from_frame(cls, f: tuple[Any, ...]) -> UsageCapture:
        """A capture from an unpacked frame (fields in ``_speedups.EXCHANGE_FIELDS`` order)."""
        c = cls.__new__(cls)
        (
            c.wall_started_at,
            c.started_at,
            c.ended_at,
            c.upstream_sent_at,
            c.backend_ttfb_at,
            c.upstream_done_at,
            c.first_content_at,
            c.session_id,
            c.client_key_id,
            c.frontend,
            c.path,
            c.backend,
            c.backend_type,
            c.model_requested,
            c.model_used,
            c.outcome,
            c.proxy_user,
            c.user_agent,
            c.streaming,
            c.status,
            c.attempts,
            c.tool_call_count,
            c.tool_names,
            usage,
            c.btp_est,
            c.ptc_est,
            c.replacement,
            c.body,
            c.key_name,
            c.team,
        ) = f
        c.usage = BackendUsage(*usage) if usage is not None else None
        c.held = 0
        return c
