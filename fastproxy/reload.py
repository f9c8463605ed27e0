"""Reload: a changed config file applied to a running gateway (SIGHUP), no request lost.

What a reload changes: the backends (added, removed, changed), routing
(``default_backend``, ``failover_routes``), health checks and circuit breakers, limits,
timeouts, the client API keys (``auth``: keys rotate without a restart) and random model
replacement (``replacement``: a new probability or turn count applies to the running
policy; new rules or ``enabled`` make a new one, gateway.reload_replacement). Everything
else is bound to something already open (the listening sockets, the admin listener,
the usage recorder, the activity tracker, logging, the state directory): a change to it
is logged, one line per key, and the running value is kept until a restart.

How it stays safe for requests in flight. A reload builds the new generation beside the
running one and swaps it in with one synchronous step (`DataPlane.reconfigure`):

- A request planned before the swap keeps the backends and pools it was planned with
  (the request cycle holds them), so it finishes, failover included, on the old config.
  Every request planned after the swap is routed by the new one; a keep-alive client
  connection takes the new limits, timeouts and keys from its next request on.
- A backend whose configuration did not change keeps its `Backend` object, its pool of
  warm connections and its breaker with its state and history. A removed or changed
  backend's pool is retired: its idle connections close now, busy ones when their
  response ends.
- New backends have their models discovered and a fresh health service makes its first
  round of probes before the swap, as at start-up: traffic never reaches a backend the
  gateway has not looked at. The old health service stops after the swap.

A file that does not read or validate changes nothing: one log line says why, and the
running config stays (the caller, `gateway.serve`, re-reads the file and hands the result
here only when it loaded). Reloads are serialised: a SIGHUP during a reload runs after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from .config import Config

# The top-level config keys a reload applies; every other key needs a restart.
RELOADABLE = (
    "auth",
    "backends",
    "circuit_breaker",
    "default_backend",
    "failover_routes",
    "health_check",
    "limits",
    "replacement",
    "load_balancing",
    "model_aliases",
    "groups",
    "rate_limits",
    "timeouts",
)


@dataclass(slots=True)
class ReloadPlan:
    """What a new config means for the running gateway."""

    config: Config  # the config to run: the new reloadable keys, the running rest
    restart_keys: list[str] = field(default_factory=list)  # changed, applied at restart
    kept: list[str] = field(default_factory=list)  # backends unchanged (state carried on)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if names
        ]
        return "; ".join(parts) if parts else "backends unchanged"


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Split ``new`` into what a reload applies and what waits for a restart."""
    restart = [
        name
        for name in msgspec.structs.fields(Config)
        if name.name not in RELOADABLE and getattr(running, name.name) != getattr(new, name.name)
    ]
    config = msgspec.structs.replace(running, **{k: getattr(new, k) for k in RELOADABLE})
    old_b, new_b = running.backends, config.backends
    return ReloadPlan(
        config=config,
        restart_keys=[f.name for f in restart],
        kept=[n for n in new_b if n in old_b and old_b[n] == new_b[n]],
        added=[n for n in new_b if n not in old_b],
        changed=[n for n in new_b if n in old_b and old_b[n] != new_b[n]],
        removed=[n for n in old_b if n not in new_b],
    )
