"""Model string → ordered list of (backend, model) candidates. Pure: no I/O, no clock.

Rules (the decisions are written down in docs/routing.md):
1. ``backend:model`` where ``backend`` is a configured instance selects it explicitly.
   Model names may themselves contain ':' (``ft:gpt-4o:org``); the prefix counts as a
   backend only when such an instance exists.
2. A plain model goes to every backend whose model list names it, in config order.
3. Otherwise the default backend (which decides whether it knows the model).
4. ``failover_routes[model]`` entries follow, in order, each resolved by rules 1-2.
5. Only backends that speak the caller's dialect are candidates; duplicates are dropped.
6. Backends whose circuit is open (or half-open with its trial already in flight) are
   moved out; if that leaves nothing, the original plan is tried anyway (failing blind helps no one; the breaker may be wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..core.errors import RoutingError
from ..core.seams import BreakerView
from ..httpclient.backend import Backend

Candidate = tuple[Backend, str]


def _resolve(
    model: str, dialect: str, backends: Mapping[str, Backend], default: str | None
) -> list[Candidate]:
    prefix, sep, rest = model.partition(":")
    if sep and prefix in backends:
        b = backends[prefix]
        return [(b, rest)] if dialect in b.dialects else []
    listed = [
        (b, model)
        for b in backends.values()
        if dialect in b.dialects and b.models is not None and model in b.models
    ]
    if listed:
        return listed
    if default is not None and default in backends and dialect in backends[default].dialects:
        return [(backends[default], model)]
    return []


def plan(
    model: str,
    dialect: str,
    backends: Mapping[str, Backend],
    default: str | None,
    failover_routes: Mapping[str, Sequence[str]],
    breakers: BreakerView | None = None,
) -> list[Candidate]:
    prefix, sep, _ = model.partition(":")
    if sep and prefix in backends and dialect not in backends[prefix].dialects:
        raise RoutingError(
            f"backend {prefix!r} speaks {'/'.join(sorted(backends[prefix].dialects))}, "
            f"not the {dialect} API used by this request",
            status=400,
            code="backend_dialect_mismatch",
        )
    out: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for name in (model, *failover_routes.get(model, ())):
        for b, m in _resolve(name, dialect, backends, default if name == model else None):
            if (b.name, m) not in seen:
                seen.add((b.name, m))
                out.append((b, m))
    if not out:
        raise RoutingError(f"The model {model!r} does not exist or no configured backend serves it")
    if breakers is not None:
        # Asking is free of side effects: a half-open backend stays a candidate, and its
        # one trial is claimed only if the request is actually sent there.
        routable = [c for c in out if breakers.breaker_state(c[0].name).routable]
        if routable:
            return routable
    return out
