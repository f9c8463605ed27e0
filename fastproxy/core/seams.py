"""The interfaces the planes talk through, and nothing else.

Each is a small `typing.Protocol`: the side that implements it does not import the side
that uses it, and the gateway (gateway.py) is the one place that plugs an
implementation into a user. A feature that is off is simply absent (None, or an empty
fan-out), so the data plane pays one attribute test for it and nothing more.

Who implements what:

- `BreakerView` (routing's question): the health service. Free of side effects: asking
  never moves a breaker; a half-open trial is claimed only by `AttemptSink`'s
  ``attempt_started`` when the request actually goes to that backend.
- `AttemptSink` (what the data plane reports per upstream attempt): the health service
  (circuit breakers) and the rate-limit board.
- `ExchangeSink` (what the data plane reports per finished request): metrics and usage.
- `LiveActivity` (live byte counters per request): the activity tracker.
- `MonitoringPort` (monitoring paths answered on the data port): the admin plane's route
  table, with the data port's access rules.
- `PlaneStats` (what views read of the data plane): the data plane.
- `WireTap` → `ExchangeTap` (the bytes of one exchange, all four directions, for wire
  capture): the capture service. None when capture is off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from .records import Counters, ExchangeRecord


class BreakerState(Enum):
    """A backend's circuit as routing sees it. ``BUSY``: half-open with its one trial
    request already in flight, so this caller must not be the second."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    BUSY = "busy"

    @property
    def routable(self) -> bool:
        # Asked per candidate per request: the members are module globals, bound after
        # the class (an enum class lookup is a metaclass hook in Python 3.11).
        return self is _ROUTE_CLOSED or self is _ROUTE_HALF_OPEN

    @property
    def public(self) -> str:
        """The state as the API reports it (a trial in flight is still "half_open")."""
        return "half_open" if self is BreakerState.BUSY else self.value


_ROUTE_CLOSED = BreakerState.CLOSED
_ROUTE_HALF_OPEN = BreakerState.HALF_OPEN


class BreakerView(Protocol):
    def breaker_state(self, backend: str) -> BreakerState: ...


class AttemptSink(Protocol):
    def attempt_started(self, backend: str) -> None:
        """The request is being sent to ``backend`` now (claims a half-open trial)."""

    def attempt_finished(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None
    ) -> None:
        """An attempt's outcome, the moment it is known: the head arrived (``status``,
        ``kind`` None), or it failed (``status`` 0, ``kind`` connect | timeout | reset |
        tls | protocol | too_large); a response cut after its head reports once more
        with status 0. ``retry_after``: a 429's raw Retry-After header, else None."""


class ExchangeSink(Protocol):
    def on_exchange(self, record: ExchangeRecord) -> None:
        """One finished request, on the loop; must not block."""


class ActivityHandle(Protocol):
    def count(self, rx: int, tx: int) -> None: ...


class LiveActivity(Protocol):
    def open(
        self,
        exchange_id: int,
        backend: str,
        session_id: str | None,
        model: str | None,
        streaming: bool,
    ) -> ActivityHandle: ...

    def close(self, entry: ActivityHandle) -> None: ...


class ExchangeTap(Protocol):
    """One exchange's wire capture. Each call is on the loop: it redacts credentials and
    appends to a buffer; encoding and file I/O happen off the loop (docs/capture.md)."""

    def event(
        self, direction: int, data: bytes | bytearray | memoryview, meta: dict[str, Any] | None
    ) -> None:
        """Bytes that crossed one leg: 0 client→proxy, 1 proxy→client, 2 proxy→backend,
        3 backend→proxy. ``meta``: short keys (``be``, ``mod``, ``sc``, ``ss``, ``se``);
        an empty ``data`` with a marker is allowed."""

    def wrap(self, transport: asyncio.Transport) -> asyncio.Transport:
        """The client transport, seen through the capture: every write is a dir-1 event."""

    def stream_chunk(
        self, raw: bytes, framed: bytes | None, at: int, cuts: tuple[tuple[int, int], ...]
    ) -> None:
        """A stream chunk relayed: ``raw``, the backend's bytes (dir 3), and ``framed``
        written to the client (the transport ``wrap`` was given; None: nothing to write),
        which holds ``raw`` without the byte ranges ``cuts`` (events the gateway strips)
        at offset ``at``. The client's copy is captured as a reference to the backend's
        where it can, so the bytes leave the loop once."""


class WireTap(Protocol):
    def open(self, request_id: int, session_id: str | None) -> ExchangeTap | None:
        """A new exchange's capture; None while capture is disabled (its disk failed)."""


class Reporter:
    """The fixed fan-out of data-plane reports to the services that are on. Built once
    by the gateway from the services it made; a service never adds itself."""

    __slots__ = ("attempts", "exchanges")

    def __init__(self, attempts: Sequence[AttemptSink], exchanges: Sequence[ExchangeSink]) -> None:
        self.attempts = tuple(attempts)
        self.exchanges = tuple(exchanges)


# -- the monitoring API on the data port ---------------------------------------------------
@dataclass(slots=True)
class MonitorRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; a repeated header keeps the last value
    body: bytes
    peer_ip: str | None
    params: dict[str, str] = field(default_factory=dict)  # from {name} path segments
    # True when the admin listener admitted a non-loopback peer by a valid admin key
    # (admin.api_keys): handlers that are loopback-only serve it too. Never set on the
    # data port, which does not accept admin keys.
    admin_key: bool = False

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(slots=True)
class MonitorResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A streamed body (SSE, exports) is sent with chunked framing; `body` is then ignored.
    stream: AsyncIterator[bytes] | None = None


class MonitoringPort(Protocol):
    def allowed_methods(self, path: str) -> list[str]:
        """The methods ``path`` answers (empty: no such monitoring path)."""

    async def serve_data_port(self, req: MonitorRequest, host: str | None) -> MonitorResponse:
        """Answer one monitoring request that arrived on the data port, under the data
        port's access rules (peer and Host; no admin keys)."""


class PlaneStats(Protocol):
    """What views read of the data plane: counters and live connections."""

    @property
    def draining(self) -> bool: ...

    @property
    def counters(self) -> Counters: ...

    def open_connections(self) -> int: ...

    def in_flight(self) -> tuple[int, int]:
        """(requests being answered, of which streams being relayed) right now."""

    def backend_names(self) -> list[str]: ...

    def pool_stats(self) -> Mapping[str, tuple[int, int]]:
        """backend name -> (open upstream connections, idle ones)."""


class StorageStatusDoc(TypedDict):
    usage_db: str  # "ok" | "degraded"
    queue_depth: int
    dropped_records: int
    write_errors: int
    path: NotRequired[str]


class StorageStatus(Protocol):
    """The usage store's condition, for health and metrics (None when usage is off)."""

    def status(self) -> StorageStatusDoc: ...
