"""The monitoring API's one route table, and the object both listeners serve it through.

`ROUTES` is every monitoring path there is, fixed here rather than registered by
services as they start: which paths exist does not depend on which services run or in
what order they started. A route names the service it needs; when that service is off,
the table answers 503 with the reason itself, one place for every such route, before a
handler runs (handlers never test for a missing service).

`MonitoringApi` serves the table: the admin listener resolves routes with its own access
policy (admin keys allowed); the data port goes through `serve_data_port`, the
`MonitoringPort` seam, under the data port's policy (peer and Host; no admin keys).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from ..core.access import AccessPolicy
from ..core.errors import GatewayError
from ..core.seams import MonitorRequest, MonitorResponse
from ..monitor.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from . import diagnostics_views, health_views, keys_views, replacement_views, usage_api
from .routes import AdminRequest, AdminResponse, Handler, Router, error_response
from .views import Views

ViewHandler = Callable[[Views, AdminRequest], Awaitable[AdminResponse]]


async def metrics(views: Views, req: AdminRequest) -> AdminResponse:
    store = views.store
    body = views.metrics.render(views.plane, views.activity, views.health, store)
    return AdminResponse(body=body, content_type=METRICS_CONTENT_TYPE)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: ViewHandler
    # The Views attribute that must not be None, and the 503 reason when it is.
    needs: str | None = None


USAGE_OFF = usage_api.DISABLED

ROUTES: tuple[Route, ...] = (
    Route("GET", "/internal/health", health_views.health),
    Route("GET", "/internal/health/events", health_views.events),
    Route("GET", "/v1/diagnostics", diagnostics_views.diagnostics),
    Route("GET", "/v1/diagnostics/activity", diagnostics_views.activity),
    Route("POST", "/v1/diagnostics/backends/{name}/reactivate", diagnostics_views.reactivate),
    Route("GET", "/v1/usage/stats", usage_api.stats, needs="store"),
    Route("GET", "/v1/usage/recent", usage_api.recent, needs="store"),
    Route("GET", "/v1/usage/export", usage_api.export, needs="store"),
    # The named keys are configuration: listed with the store off too (spend null).
    Route("GET", "/v1/keys", keys_views.keys),
    # Answers with replacement off too (enabled: false); the view says why.
    Route("GET", "/v1/replacement/metrics", replacement_views.metrics),
    Route("POST", "/v1/replacement/metrics/reset", replacement_views.reset),
    Route("GET", "/metrics", metrics),
)

# Why a route that needs a service answers 503 when the service is off.
UNAVAILABLE = {"store": USAGE_OFF}


async def _unavailable(reason: str, req: AdminRequest) -> AdminResponse:
    return error_response(503, reason)


async def _answer(handler: ViewHandler, views: Views, req: AdminRequest) -> AdminResponse:
    """Run a handler; a GatewayError it raises (a bad parameter, say) becomes the
    monitoring API's error shape here, the one place for every route and listener."""
    try:
        return await handler(views, req)
    except GatewayError as err:
        return error_response(err.status, str(err))


def build_router(views: object, routes: tuple[Route, ...] = ROUTES) -> Router:
    """The table bound to ``views``: each handler gets them as its first argument."""
    router = Router()
    for r in routes:
        handler: Handler
        if r.needs is not None and getattr(views, r.needs) is None:
            handler = partial(_unavailable, UNAVAILABLE[r.needs])
        else:
            handler = partial(_answer, r.handler, views)  # type: ignore[arg-type]
        router.add(r.method, r.path, handler)
    return router


class MonitoringApi:
    """The route table with the data port's access rules: the `MonitoringPort` seam."""

    __slots__ = ("_policy", "router")

    def __init__(self, views: Views, data_port_policy: AccessPolicy) -> None:
        self.router = build_router(views)
        self._policy = data_port_policy

    def allowed_methods(self, path: str) -> list[str]:
        return self.router.resolve("GET", path)[2]

    async def serve_data_port(self, req: MonitorRequest, host: str | None) -> MonitorResponse:
        denied = self._policy.check(req.peer_ip, host)
        if denied is not None:
            return error_response(*denied)
        handler, params, allowed = self.router.resolve(req.method, req.path)
        if handler is None:
            resp = error_response(405, f"method {req.method} not allowed; use {', '.join(allowed)}")
            resp.headers.append(("allow", ", ".join(allowed)))
            return resp
        req.params = params
        return await handler(req)
