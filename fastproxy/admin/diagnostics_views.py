"""GET /v1/diagnostics, GET /v1/diagnostics/activity, POST .../backends/{name}/reactivate.

Shapes are CONTRACT.md §5 (the seed document's, with its fields); docs/admin-api.md
lists them. The document builders are pure functions of the state and a snapshot, so
they are tested without sockets; the handlers add the access rule and the JSON.

* **Loopback only**, compared as an IP address (127/8, ::1, ::ffff:127.x), even when
  ``admin.allow_networks`` lets a network read /metrics: diagnostics name sessions and
  models, so they stay on the machine. Same 403 body as the listener's access check.
  The one exception is a request the admin listener admitted by a valid admin key
  (``admin.api_keys``, ``AdminRequest.admin_key``): the operator opted in to remote reads.
* **Timestamps** keep the seed document's form under the seed's names: ``timestamp``,
  ``started_at`` (and ``last_activity_at``, for consistency) are UTC epoch seconds as
  floats, because scripts written against the seed do arithmetic on them
  (``time.time() - started_at``). Each has an ISO-8601 twin, ``<name>_iso``, the form
  every other monitoring endpoint uses. Durations stay numbers.
* **Rate limiting** is what the gateway saw: an upstream attempt answered 429 marks the
  backend rate limited for as long as the answer's ``Retry-After`` says (delta-seconds
  or an HTTP-date, capped at ``RATE_LIMIT_MAX_HOLD_S``), ``RATE_LIMIT_HOLD_S`` when it
  has none or an unreadable one, or until an attempt on it succeeds;
  ``retry_after_seconds`` is what remains of that hold.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..core.access import LOCAL_ONLY, is_loopback
from ..monitor.probes import MAX_RETRY_AFTER_S, parse_retry_after
from .routes import AdminRequest, AdminResponse, Router, error_response, json_response

if TYPE_CHECKING:
    from ..monitor.activity import ActivitySnapshot, ConnectionInfo
    from ..state import GatewayState

RATE_LIMIT_HOLD_S = 60.0  # a 429 without a usable Retry-After
# A longer Retry-After (a daily quota, say) is held this long; the next 429 marks it again.
# The same cap as the health probes' Retry-After, so the two views of a backend agree.
RATE_LIMIT_MAX_HOLD_S = MAX_RETRY_AFTER_S
_LOCAL_ORIGIN_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def iso(epoch: float) -> str:
    """UTC ISO-8601 with milliseconds and Z: ``2026-11-23T07:20:07.123Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def epoch(wall: float) -> float:
    """UTC epoch seconds with milliseconds, the seed document's form: ``1701792000.123``."""
    return round(wall, 3)


def stamp(doc: dict[str, Any], name: str, wall: float) -> None:
    """One timestamp in both forms: ``name`` as epoch seconds, ``name_iso`` as ISO-8601."""
    doc[name] = epoch(wall)
    doc[name + "_iso"] = iso(wall)


class RateLimitWatch:
    """An attempt hook: remembers which backends answered 429 lately, and for how long
    they asked to be left alone."""

    __slots__ = ("_clock", "_until", "_wall", "hold_s", "max_hold_s")

    def __init__(
        self,
        hold_s: float = RATE_LIMIT_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_hold_s: float = RATE_LIMIT_MAX_HOLD_S,
    ) -> None:
        self.hold_s = hold_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._wall = wall  # an HTTP-date Retry-After is a wall-clock time
        self._until: dict[str, float] = {}

    def __call__(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        """``retry_after`` is the 429 answer's raw ``Retry-After`` header, when the data
        plane passes it (None: absent, or a caller that does not pass it)."""
        if status == 429:
            self._until[backend] = self._clock() + self.hold_for(retry_after)
        elif 200 <= status < 300 and backend in self._until:
            del self._until[backend]  # it answers again: no longer limited

    def hold_for(self, retry_after: bytes | None) -> float:
        """Seconds to hold a backend that answered 429 with this ``Retry-After``: its
        value (delta-seconds, or an HTTP-date minus now; a past date is 0), capped at
        ``max_hold_s``; ``hold_s`` when the header is absent or unreadable."""
        seconds = parse_retry_after(retry_after, self._wall())
        if seconds is None:
            return self.hold_s
        return min(seconds, self.max_hold_s)

    def retry_after(self, backend: str) -> float | None:
        """Seconds left in the hold, or None when not rate limited."""
        until = self._until.get(backend)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[backend]
            return None
        return round(left, 3)

    def clear(self, backend: str) -> None:
        self._until.pop(backend, None)


def circuit_state(state: GatewayState, name: str) -> str:
    fn = getattr(state.health, "circuit_state", None) if state.health is not None else None
    if callable(fn):
        value = fn(name)
        return str(getattr(value, "value", value))
    return "closed"


def validation_errors(backend: Any) -> list[str]:
    errors = []
    env = backend.config.api_key_env
    if env and not backend.has_key:
        errors.append(f"API key environment variable {env} is not set")
    return errors


def connection_json(c: ConnectionInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "connection_id": c.exchange_id,
        "session_id": c.session_id,
        "connection_type": "streaming" if c.streaming else "non_streaming",
    }
    stamp(doc, "started_at", c.started_at)
    doc["duration_seconds"] = round(c.duration_seconds, 3)
    stamp(doc, "last_activity_at", c.last_activity_at)
    doc["model"] = c.model
    doc["bytes_rx"] = c.bytes_rx
    doc["bytes_tx"] = c.bytes_tx
    return doc


def diagnostics_document(
    state: GatewayState, rate_limits: RateLimitWatch, snapshot: ActivitySnapshot | None, now: float
) -> dict[str, Any]:
    by_backend: dict[str, list[dict[str, Any]]] = {}
    if snapshot is not None:
        for c in snapshot.connections:
            by_backend.setdefault(c.backend, []).append(connection_json(c))
    instances = []
    for name, backend in state.backends.items():
        errors = validation_errors(backend)
        breaker = circuit_state(state, name)
        retry = rate_limits.retry_after(name)
        activity: dict[str, Any] | None = None
        if snapshot is not None:
            ba = snapshot.backends.get(name)
            activity = {
                "active_connections": ba.active_connections if ba else 0,
                "connections": by_backend.get(name, []),
                "total_bytes_rx": ba.bytes_rx if ba else 0,
                "total_bytes_tx": ba.bytes_tx if ba else 0,
                "lifetime_bytes_rx": ba.lifetime_bytes_rx if ba else 0,
                "lifetime_bytes_tx": ba.lifetime_bytes_tx if ba else 0,
            }
        instances.append(
            {
                "name": name,
                "connector_type": backend.type,
                "is_rate_limited": retry is not None,
                "retry_after_seconds": retry,
                "is_functional": not errors and breaker != "open",
                "circuit_state": breaker,
                "validation_errors": errors,
                "models": sorted(backend.models or ()),
                "activity": activity,
            }
        )
    global_activity = None
    if snapshot is not None:
        t = snapshot.totals
        global_activity = {
            "total_active_connections": t.total_active_connections,
            "total_bytes_rx": t.total_bytes_rx,
            "total_bytes_tx": t.total_bytes_tx,
        }
    doc: dict[str, Any] = {}
    stamp(doc, "timestamp", now)
    doc["activity_tracking_enabled"] = snapshot is not None
    doc["instances"] = instances
    doc["global_activity"] = global_activity
    return doc


def activity_document(state: GatewayState) -> dict[str, Any]:
    tracker = state.activity
    if tracker is None:
        return {
            "enabled": False,
            "total_active_connections": 0,
            "total_bytes_rx": 0,
            "total_bytes_tx": 0,
        }
    g = tracker.global_snapshot()
    return {
        "enabled": True,
        "total_active_connections": g.total_active_connections,
        "total_bytes_rx": g.total_bytes_rx,
        "total_bytes_tx": g.total_bytes_tx,
    }


def local_or_keyed(req: AdminRequest) -> bool:
    """A loopback peer, or one the admin listener admitted by a valid admin key."""
    return req.admin_key or is_loopback(req.peer_ip)


def _foreign_origin(req: AdminRequest) -> bool:
    """A browser page on another origin (CSRF against 127.0.0.1) sends its Origin."""
    origin = req.headers.get("origin")
    if origin is None:
        return False
    host = (urlsplit(origin).hostname or "").lower()
    return not (host in _LOCAL_ORIGIN_NAMES or is_loopback(host))


class DiagnosticsViews:
    """The three handlers, bound to one gateway's state."""

    __slots__ = ("rate_limits", "state")

    def __init__(self, state: GatewayState, rate_limits: RateLimitWatch | None = None) -> None:
        self.state = state
        self.rate_limits = rate_limits or RateLimitWatch()

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/diagnostics", self.diagnostics)
        router.add("GET", "/v1/diagnostics/activity", self.activity)
        router.add("POST", "/v1/diagnostics/backends/{name}/reactivate", self.reactivate)

    async def diagnostics(self, req: AdminRequest) -> AdminResponse:
        if not local_or_keyed(req):
            return error_response(403, LOCAL_ONLY)
        tracker = self.state.activity
        snapshot = tracker.snapshot() if tracker is not None else None
        return json_response(
            diagnostics_document(self.state, self.rate_limits, snapshot, time.time())
        )

    async def activity(self, req: AdminRequest) -> AdminResponse:
        if not local_or_keyed(req):
            return error_response(403, LOCAL_ONLY)
        return json_response(activity_document(self.state))

    async def reactivate(self, req: AdminRequest) -> AdminResponse:
        # A keyed remote POST got here only with admin.remote_writes on (the listener's
        # access check refuses it otherwise).
        if not local_or_keyed(req):
            return error_response(403, LOCAL_ONLY)
        if _foreign_origin(req):
            return error_response(403, "cross-origin requests may not change gateway state")
        name = req.params.get("name", "")
        if name not in self.state.backends:
            return error_response(404, f"no such backend: {name}")
        health = self.state.health
        fn = getattr(health, "reactivate", None) if health is not None else None
        if callable(fn):
            result = fn(name)
            if inspect.isawaitable(result):
                await result
        self.rate_limits.clear(name)
        return json_response({"backend": name, "circuit_state": circuit_state(self.state, name)})


def register_diagnostics(state: GatewayState) -> DiagnosticsViews:
    views = DiagnosticsViews(state)
    views.register(state.router)
    state.attempt_hooks.append(views.rate_limits)
    return views
