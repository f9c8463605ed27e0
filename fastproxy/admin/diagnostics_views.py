"""GET /v1/diagnostics, GET /v1/diagnostics/activity, POST .../backends/{name}/reactivate.

The shapes and field names are the ones existing diagnostics clients read;
docs/admin-api.md lists them. The document builders are pure functions of the views and
a snapshot, so they are tested without sockets; the handlers add the access rule and the
JSON.

* **Loopback only**, compared as an IP address (127/8, ::1, ::ffff:127.x), even when
  ``admin.allow_networks`` lets a network read /metrics: diagnostics name sessions and
  models, so they stay on the machine. Same 403 body as the listener's access check.
  The one exception is a request the admin listener admitted by a valid admin key
  (``admin.api_keys``, ``AdminRequest.admin_key``): the operator opted in to remote reads.
* **Timestamps** keep the original epoch form under the original names: ``timestamp``,
  ``started_at`` (and ``last_activity_at``, for consistency) are UTC epoch seconds as
  floats, because existing diagnostics scripts do arithmetic on them
  (``time.time() - started_at``). Each has an ISO-8601 twin, ``<name>_iso``, the form
  every other monitoring endpoint uses. Durations stay numbers.
* **Rate limiting** is what the gateway saw (monitor/rate_limits.py: a 429 holds a
  backend for its ``Retry-After``); ``retry_after_seconds`` is what remains of the hold.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..core.access import LOCAL_ONLY, is_loopback
from ..httpclient.backend import Backend
from ..monitor.activity import ActivitySnapshot, ConnectionInfo
from .routes import AdminRequest, AdminResponse, error_response, json_response
from .views import Views

_LOCAL_ORIGIN_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def iso(epoch: float) -> str:
    """UTC ISO-8601 with milliseconds and Z: ``2026-11-23T07:20:07.123Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def epoch(wall: float) -> float:
    """UTC epoch seconds with milliseconds, the diagnostics' form: ``1701792000.123``."""
    return round(wall, 3)


def stamp(doc: dict[str, Any], name: str, wall: float) -> None:
    """One timestamp in both forms: ``name`` as epoch seconds, ``name_iso`` as ISO-8601."""
    doc[name] = epoch(wall)
    doc[name + "_iso"] = iso(wall)


def validation_errors(backend: Backend) -> list[str]:
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
    views: Views, snapshot: ActivitySnapshot | None, now: float
) -> dict[str, Any]:
    by_backend: dict[str, list[dict[str, Any]]] = {}
    if snapshot is not None:
        for c in snapshot.connections:
            by_backend.setdefault(c.backend, []).append(connection_json(c))
    instances = []
    for name, backend in views.backends.items():
        errors = validation_errors(backend)
        breaker = views.health.circuit_state(name)
        retry = views.rate_limits.retry_after(name)
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
    if views.workers is not None:
        doc["workers"] = views.workers()
    return doc


def activity_document(views: Views) -> dict[str, Any]:
    tracker = views.activity
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


def foreign_origin(req: AdminRequest) -> bool:
    """A browser page on another origin (CSRF against 127.0.0.1) sends its Origin."""
    origin = req.headers.get("origin")
    if origin is None:
        return False
    host = (urlsplit(origin).hostname or "").lower()
    return not (host in _LOCAL_ORIGIN_NAMES or is_loopback(host))


async def diagnostics(views: Views, req: AdminRequest) -> AdminResponse:
    if not local_or_keyed(req):
        return error_response(403, LOCAL_ONLY)
    tracker = views.activity
    snapshot = tracker.snapshot() if tracker is not None else None
    return json_response(diagnostics_document(views, snapshot, time.time()))


async def activity(views: Views, req: AdminRequest) -> AdminResponse:
    if not local_or_keyed(req):
        return error_response(403, LOCAL_ONLY)
    return json_response(activity_document(views))


async def reactivate(views: Views, req: AdminRequest) -> AdminResponse:
    # A keyed remote POST got here only with admin.remote_writes on (the listener's
    # access check refuses it otherwise).
    if not local_or_keyed(req):
        return error_response(403, LOCAL_ONLY)
    if foreign_origin(req):
        return error_response(403, "cross-origin requests may not change gateway state")
    name = req.params.get("name", "")
    if name not in views.backends:
        return error_response(404, f"no such backend: {name}")
    views.health.reactivate(name)
    views.rate_limits.clear(name)
    return json_response({"backend": name, "circuit_state": views.health.circuit_state(name)})
