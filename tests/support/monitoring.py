"""The monitoring API's pieces, built the way the gateway builds them, for tests that serve
a part of the route table without a running gateway.

`usage_router` is the usage routes of the fixed table (fastproxy/admin/table.py) over a
stub store: the usage handlers read nothing of their views but ``store``, and with a
None store the table itself answers 503 (the reason is ``usage_api.DISABLED``).
`serve_routes` plugs a router into a `DataPlane` (the data port, through the
`MonitoringPort` seam) and returns the admin listener's protocol factory over the same
router, with each listener's own access policy, as gateway.py and admin/service.py
make them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from fastproxy.admin.protocol import AdminContext, AdminProtocol
from fastproxy.admin.routes import Router
from fastproxy.admin.table import ROUTES, MonitoringApi, Route, build_router
from fastproxy.core.access import AccessPolicy
from fastproxy.dataplane.plane import DataPlane

USAGE_ROUTES: tuple[Route, ...] = tuple(r for r in ROUTES if r.path.startswith("/v1/usage"))


def usage_router(store: Any) -> Router:
    """The table's /v1/usage/* routes over ``store`` (None: usage tracking off)."""
    return build_router(SimpleNamespace(store=store), USAGE_ROUTES)


def serve_routes(plane: DataPlane, router: Router) -> Callable[[], AdminProtocol]:
    """Serve ``router`` on ``plane``'s data port and return an admin-listener protocol
    factory serving it too: both listeners answer from the one router."""
    config = plane.config
    admin = config.admin
    # The data port's policy, as the gateway makes it; the table it is built with is
    # replaced by ``router`` (the views are never read: no handler of theirs runs).
    api = MonitoringApi(
        SimpleNamespace(store=None),  # type: ignore[arg-type]
        AccessPolicy(admin.allow_networks, (config.host, admin.host)),
    )
    api.router = router
    plane.monitoring = api
    policy = AccessPolicy(
        admin.allow_networks,
        (config.host, admin.host),
        admin_keys=admin.api_keys,
        remote_writes=admin.remote_writes,
    )
    ctx = AdminContext(config, plane.loop, router, policy, plane.date, plane)
    connections: set[AdminProtocol] = set()
    return lambda: AdminProtocol(ctx, connections)
