"""What the tracing tests that run a real gateway process share: its config, its start,
and reading the ``traceparent`` a mock backend received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.support.proc import GatewayProcess

# The batch processor's delay (OTEL_BSP_SCHEDULE_DELAY, read by the SDK itself): spans
# reach the receiver within a poll's deadline instead of the default 5 s.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def start(tmp_path: Path, tree: dict[str, Any], env: dict[str, str]) -> GatewayProcess:
    tree = {"port": 0, "admin": {"port": 0}, "health_check": {"enabled": False}, **tree}
    tree.setdefault("usage_tracking", {"enabled": False})
    cfg = tmp_path / "config.yaml"
    # Not sorted: the backends' order is the failover order.
    cfg.write_text(yaml.safe_dump(tree, sort_keys=False))
    gw = GatewayProcess(["--config", str(cfg)], env={**FAST_EXPORT, **env}, cwd=str(tmp_path))
    gw.wait_ready()
    return gw


def two_backends(mock: MockLLMServer) -> dict[str, Any]:
    return {
        "openai.1": backend_for(mock, "openai"),
        "anthropic.1": backend_for(mock, "anthropic"),
    }


def received_traceparents(mock: MockLLMServer) -> list[str | None]:
    """The ``traceparent`` of each API request the mock received, in arrival order."""
    out: list[str | None] = []
    for r in list(mock.stats.requests):
        if r.method != "POST":
            continue
        values = [v for k, v in r.headers if k == "traceparent"]
        assert len(values) <= 1, values  # never the client's and the gateway's both
        out.append(values[0] if values else None)
    return out


def split(traceparent: str) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of a version-00 ``traceparent``."""
    version, trace_id, parent, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent) == 16
    return trace_id, parent, flags
