"""GET /v1/replacement/metrics and POST /v1/replacement/metrics/reset.

The counters come from the one `ReplacementPolicy` (in this process; with workers, the
primary's, which decides for every worker). ``effectiveness`` adds, per rule, what the
usage store recorded since the counters' last reset: the replaced requests' error rate,
average duration, TTFT and cost, and the same figures for the requests the rule matched
that were served as asked (``original``), over the same window. The store is read in a
worker thread (asyncio.to_thread), as the usage API does; the policy is read on the loop,
where it is changed, so no lock is needed.

Decisions (docs/admin-api.md):
- Replacement off: 200 with ``enabled: false``, every counter zero and ``effectiveness``
  empty; the endpoint exists whatever the config (a 404 was the reference's defect).
- The measured fields are null when the window holds no such request (or usage tracking
  is off: ``effectiveness_source`` says why), never a zero that reads as "no errors".
- Reset is a write: loopback peers (or a keyed admin peer with ``admin.remote_writes``),
  no cross-origin browser, like reactivate. It zeroes the counters and starts a new
  effectiveness window; sessions keep their replacements.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from typing import Any

from ..core.access import LOCAL_ONLY
from ..core.replacement import ReplacementPolicy
from ..storage.usage_replacement import Group
from .diagnostics_views import foreign_origin, iso, local_or_keyed
from .routes import AdminRequest, AdminResponse, error_response, json_response
from .views import Views

log = logging.getLogger("fastproxy.admin")


async def metrics(views: Views, req: AdminRequest) -> AdminResponse:
    policy = views.replacement
    if policy is None:
        # The contract's shape with nothing counted: a policy of no rules never counts.
        doc = ReplacementPolicy((), probability=0.0).metrics_document(enabled=False)
        doc["elapsed_seconds"] = 0.0
        doc["effectiveness"] = []
        return json_response(doc)
    doc = policy.metrics_document()
    doc["sessions_replaced"] = policy.sessions_replaced
    # Records keep milliseconds: a request in the reset's own millisecond is in the window.
    since = math.floor(policy.started_wall * 1000) / 1000
    store = views.store
    groups: list[Group] | None = None
    source = "usage store"
    if store is None:
        source = "usage tracking is disabled (usage_tracking.enabled=false)"
    else:
        try:
            groups = await asyncio.to_thread(store.replacement_groups, since)
        except sqlite3.Error as exc:
            log.warning("replacement effectiveness query failed: %s", exc)
            source = f"usage database unavailable: {exc}"
    doc["effectiveness"] = effectiveness(policy, groups)
    doc["effectiveness_source"] = source
    doc["effectiveness_window"] = {"start": iso(since), "end": iso(time.time())}
    return json_response(doc)


async def reset(views: Views, req: AdminRequest) -> AdminResponse:
    if not local_or_keyed(req):
        return error_response(403, LOCAL_ONLY)
    if foreign_origin(req):
        return error_response(403, "cross-origin requests may not change gateway state")
    policy = views.replacement
    if policy is None:
        return json_response({"enabled": False, "reset": False})
    policy.reset()
    return json_response({"enabled": True, "reset": True, "at": iso(policy.started_wall)})


class _Sums:
    __slots__ = (
        "cost_n",
        "cost_sum",
        "dur_n",
        "dur_sum",
        "errors",
        "requests",
        "ttft_n",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.dur_n = self.ttft_n = self.cost_n = 0
        self.dur_sum = self.ttft_sum = self.cost_sum = 0.0

    def add(self, g: Group) -> None:
        self.requests += g.requests
        self.errors += g.errors
        self.dur_sum += g.duration_sum
        self.dur_n += g.duration_n
        self.ttft_sum += g.ttft_sum
        self.ttft_n += g.ttft_n
        self.cost_sum += g.cost_sum
        self.cost_n += g.cost_n

    def figures(self) -> dict[str, Any]:
        return {
            "error_rate": self.errors / self.requests if self.requests else None,
            "avg_duration_ms": self.dur_sum / self.dur_n if self.dur_n else None,
            "avg_ttft_ms": self.ttft_sum / self.ttft_n if self.ttft_n else None,
            "avg_cost": self.cost_sum / self.cost_n if self.cost_n else None,
        }


def effectiveness(policy: ReplacementPolicy, groups: list[Group] | None) -> list[dict[str, Any]]:
    """One entry per rule: the policy's counters, then replaced vs original as recorded.

    A replaced group belongs to the first rule whose target is its ``to`` and whose
    pattern matches its ``from``; an original group to the first rule matching its
    backend and model (what the policy would have taken). Both use ``Rule.matches``."""
    rules = policy.rules
    replaced = [_Sums() for _ in rules]
    original = [_Sums() for _ in rules]
    for g in groups or ():
        if g.source is not None:
            backend, _, model = g.source.partition(":")
            for i, rule in enumerate(rules):
                if rule.label[1] == g.target and rule.matches(backend, model):
                    replaced[i].add(g)
                    break
        elif g.model is not None:
            index = policy.match(g.backend, g.model)
            if index is not None:
                original[index].add(g)
    counts = policy.snapshot()["rules"]
    out = []
    for i, rule in enumerate(rules):
        entry: dict[str, Any] = {
            "from": rule.label[0],
            "to": rule.label[1],
            "activations": counts[i]["activations"],
            "replaced_requests": counts[i]["replaced_requests"],
            "recorded_requests": replaced[i].requests if groups is not None else None,
        }
        entry.update(replaced[i].figures() if groups is not None else dict.fromkeys(_FIGURES))
        entry["original"] = {
            "requests": original[i].requests if groups is not None else None,
            **(original[i].figures() if groups is not None else dict.fromkeys(_FIGURES)),
        }
        out.append(entry)
    return out


_FIGURES = ("error_rate", "avg_duration_ms", "avg_ttft_ms", "avg_cost")
