"""The gateway's services, in start-up order.

A service factory is ``factory(gateway, state) -> Service | None`` (None when the feature
is configured off: then no object exists and the hot path pays nothing). A service has
``async start()``, ``async stop()`` and optionally ``async after_listen()`` (runs once
the data listener is bound). Services register their monitoring routes on
``state.router`` and their hooks on ``state`` in ``start()``. Stop runs in reverse order,
so storage (first in) flushes last.

Factories are named by import string (uvicorn's habit), so a module that is not built
yet simply is not listed.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

SERVICES: tuple[str, ...] = (
    "fastproxy.monitor.usage_service:usage_service",
    "fastproxy.monitor.activity:activity_service",
    "fastproxy.monitor.health:health_service",
    "fastproxy.monitor.metrics:metrics_service",
    "fastproxy.admin.service:admin_service",
)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def service_factories() -> list[Any]:
    out = []
    for spec in SERVICES:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not built (yet): the feature is absent, not broken
            raise
        out.append(getattr(module, attr))
    return out
