"""Fixtures for the admin plane: a gateway whose admin listener is up, plus its URL."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from fastproxy.admin.service import AdminService
from tests.conftest import RunningGateway, backend_for


class Admin:
    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw

    @property
    def port(self) -> int:
        port = self.gw.gateway.admin_port
        assert port is not None, "the admin listener is not bound"
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plane(self) -> Any:
        """The data plane (connections, counters, the activity tracker)."""
        return self.gw.plane

    @property
    def service(self) -> AdminService:
        """The admin listener (its connections, its server)."""
        svc = self.gw.gateway.admin
        assert svc is not None, "the admin listener is off"
        return svc


@pytest.fixture
def admin_factory(
    gateway_factory: Callable[..., RunningGateway], mock_llm: Any
) -> Callable[..., Admin]:
    def make(tree: dict[str, Any] | None = None, **kw: Any) -> Admin:
        tree = dict(tree or {})
        tree.setdefault(
            "backends",
            {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
        )
        tree.setdefault("default_backend", "openai.1")
        # Probes would add traffic and timers these tests do not look at.
        tree.setdefault("health_check", {"enabled": False})
        tree.setdefault("usage_tracking", {"enabled": False})
        return Admin(gateway_factory(tree, **kw))

    return make


@pytest.fixture
def admin(admin_factory: Callable[..., Admin]) -> Admin:
    return admin_factory()


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (the default interface's)."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None
