"""Views: everything the monitoring API's handlers may read, handed over once.

The gateway builds one `Views` after it made the services and the data plane; the
route table (table.py) passes it to every handler. A service that is off is None here,
and the table answers 503 for the routes that need it before any handler runs, so no
handler tests for a missing service and no service knows an HTTP type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..core.replacement import ReplacementPolicy
from ..core.seams import PlaneStats
from ..httpclient.backend import Backend
from ..monitor.activity import ActivityTracker
from ..monitor.health import HealthService
from ..monitor.metrics import MetricsCollector
from ..monitor.rate_limits import RateLimitWatch
from ..monitor.usage_service import UsageService
from ..storage.usage_store import UsageStore


@dataclass(slots=True)
class Views:
    # Not frozen: a reload (SIGHUP) sets config, backends and health to the new
    # generation's, and every route built over this object reads them from then on.
    config: Config
    backends: Mapping[str, Backend]
    plane: PlaneStats
    health: HealthService
    rate_limits: RateLimitWatch
    metrics: MetricsCollector
    activity: ActivityTracker | None = None
    usage: UsageService | None = None
    # Multi-process mode: one entry per worker (index, pid, up, restarts, connections);
    # None with one process, and /v1/diagnostics then has no "workers" key.
    workers: Callable[[], list[dict[str, Any]]] | None = None
    # Wire capture's counters (monitor/capture.py), None when capture is off or runs in
    # the workers; /internal/health shows them under "wire_capture".
    capture: Callable[[], dict[str, Any]] | None = None
    # Random model replacement's policy (with workers, the primary's, which decides for
    # all of them); None when replacement is off. A reload may set another.
    replacement: ReplacementPolicy | None = None
    # Gateway policy's live state (the one ledger and budget book: with workers, the
    # primary's), for /v1/keys. ``rate_usage(scope)``: (requests, tokens) counted in the
    # window and (requests, tokens) leased out, None when no limits are configured;
    # ``budget_spend(subject)``: (spent, budget, period, resets_at), None without one.
    rate_usage: Callable[[str], tuple[int, int, int, int] | None] | None = None
    budget_spend: Callable[[str], tuple[float, float, str, float] | None] | None = None
    # The gateway's environment: where named keys' secret variables are (for key_id).
    env: Mapping[str, str] | None = None

    @property
    def store(self) -> UsageStore | None:
        """The usage store to query (None when usage tracking is off)."""
        return self.usage.store if self.usage is not None else None
