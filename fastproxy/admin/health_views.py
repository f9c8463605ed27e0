"""GET /internal/health and GET /internal/health/events (docs/health.md).

The document is built from the health service's state at the moment of the request:
the service keeps plain attributes and this module only renders them (timestamps as
UTC ISO-8601 with ``Z``, latencies in ms). The same handlers answer on the admin
listener and on the data port (``curl localhost:8000/internal/health`` works).

Decisions:
- ``status`` is "degraded" when an endpoint is unhealthy or misconfigured, a breaker is
  not closed, or storage reports "degraded". A rate-limited endpoint alone is not
  degradation of the gateway (it is shown per endpoint).
- ``storage`` comes from the usage service's ``status()``; with usage tracking off it reads
  ``{"usage_db": "disabled", "queue_depth": 0, "dropped_records": 0, "write_errors": 0}``.
- The events stream starts with a comment line (so clients see the stream open), sends
  a ``: keepalive`` comment every ~15 s, and ends when the gateway drains or when the
  subscriber fell too far behind (it may reconnect).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from ..monitor.health import Endpoint
from ..monitor.notify import Subscription, utc_iso
from .routes import AdminRequest, AdminResponse, json_response
from .views import Views

DRAIN_POLL_S = 0.25  # how often an idle events stream checks whether the gateway drains
STORAGE_DISABLED = {
    "usage_db": "disabled",
    "queue_depth": 0,
    "dropped_records": 0,
    "write_errors": 0,
}


async def health(views: Views, req: AdminRequest) -> AdminResponse:
    return json_response(health_document(views))


async def events(views: Views, req: AdminRequest) -> AdminResponse:
    sub = views.health.notifier.subscribe()
    return AdminResponse(
        status=200,
        content_type="text/event-stream",
        headers=[("cache-control", "no-cache"), ("x-accel-buffering", "no")],
        stream=event_stream(views, sub),
    )


def endpoint_view(ep: Endpoint, ping_mode: str | None) -> dict[str, Any]:
    return {
        "api_url": ep.api_url,
        "is_healthy": ep.is_healthy,
        "condition": ep.condition,
        "ping_check_success": ep.ping_ok,
        "ping_status": ep.ping_status,
        "ping_mode": ping_mode if ep.ping_status != "disabled" else None,
        "http_check_success": ep.http_ok,
        "http_status": ep.http_kind,
        "last_ping_check_timestamp": utc_iso(ep.last_ping_at),
        "last_http_check_timestamp": utc_iso(ep.last_http_at),
        "last_successful_ping_timestamp": utc_iso(ep.last_ping_ok_at),
        "last_successful_http_timestamp": utc_iso(ep.last_http_ok_at),
        "consecutive_ping_failures": ep.ping_failures,
        "consecutive_http_failures": ep.http_failures,
        "last_ping_latency_ms": ep.ping_latency_ms,
        "last_http_latency_ms": ep.http_latency_ms,
        "last_http_status_code": ep.http_code,
        "last_ping_error": ep.ping_error,
        "last_http_error": ep.http_error,
        "backends_using_url": list(ep.backends),
    }


def health_document(views: Views) -> dict[str, Any]:
    """The document at the moment of the call; reading it changes nothing."""
    service = views.health
    endpoints = list(service.endpoints.values())
    ping_mode = service.pinger.mode()
    backends = []
    degraded = False
    for name, b in service.breakers.items():
        ep = service.endpoint_of[name]
        circuit = service.circuit_state(name)
        degraded |= circuit != "closed"
        backend = views.backends.get(name)
        backends.append(
            {
                "name": name,
                "api_url": ep.api_url,
                "backend_type": backend.type if backend is not None else None,
                "is_endpoint_healthy": ep.is_healthy,
                "circuit_state": circuit,
                "consecutive_failures": b.failures,
                "open_until": utc_iso(service.open_until_wall(b)),
                "last_failure": b.last_failure or None,
            }
        )
    healthy = sum(1 for ep in endpoints if ep.is_healthy)
    degraded |= any(ep.condition in ("unhealthy", "misconfigured") for ep in endpoints)
    store = views.store
    storage = dict(store.status()) if store is not None else dict(STORAGE_DISABLED)
    # A PostgreSQL usage store that spools (docs/usage-storage.md) is degraded too.
    degraded |= storage.get("usage_db") in ("degraded", "spooling")
    return {
        "status": "degraded" if degraded else "ok",
        "timestamp": utc_iso(time.time()),
        "endpoint_health": {
            "enabled": service.config.enabled,
            "circuit_breaker_enabled": service.breaker_enabled,
            "summary": {
                "total_endpoints": len(endpoints),
                "healthy_endpoints": healthy,
                "unhealthy_endpoints": len(endpoints) - healthy,
            },
            "endpoints": [endpoint_view(ep, ping_mode) for ep in endpoints],
            "backends": backends,
        },
        "storage": storage,
        "wire_capture": views.capture() if views.capture is not None else {"enabled": False},
    }


async def event_stream(views: Views, sub: Subscription) -> AsyncIterator[bytes]:
    service = views.health
    notifier = service.notifier
    plane = views.plane
    try:
        if notifier.outward:
            yield b": fastproxy health events\nretry: 3000\n\n"
        else:
            yield b": notifications are off (health_check.notify_backends: false)\n\n"
        last_sent = time.monotonic()
        while not (service.stopping or plane.draining):
            try:
                async with asyncio.timeout(DRAIN_POLL_S):
                    frame = await sub.queue.get()
            except TimeoutError:
                if time.monotonic() - last_sent >= service.keepalive_s:
                    last_sent = time.monotonic()
                    yield b": keepalive\n\n"
                continue
            if frame is None:
                break  # dropped for falling behind, or the service stopped
            last_sent = time.monotonic()
            yield frame
    finally:
        notifier.unsubscribe(sub)
