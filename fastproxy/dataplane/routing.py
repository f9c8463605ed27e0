"""Model string → ordered list of (backend, model) candidates. Pure: no I/O, no clock.

Rules (CONTRACT.md §2-3, decisions written down in docs/routing.md):
1. ``backend:model`` where ``backend`` is a configured instance selects it explicitly.
   Model names may themselves contain ':' (``ft:gpt-4o:org``); the prefix counts as a
   backend only when such an instance exists.
2. A plain model goes to every backend whose model list names it, in config order.
3. Otherwise the default backend (which decides whether it knows the model).
4. ``failover_routes[model]`` entries follow, in order, each resolved by rules 1-2.
5. Only backends that speak the caller's dialect are candidates; duplicates are dropped.
6. Backends whose circuit is open are moved out; if that leaves nothing, the original
   plan is tried anyway (failing blind helps no one; the breaker may be wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..httpclient.backend import Backend


class RoutingError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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
    is_open: Callable[[str], bool] | None = None,
) -> list[Candidate]:
    prefix, sep, _ = model.partition(":")
    if sep and prefix in backends and dialect not in backends[prefix].dialects:
        raise RoutingError(
            400,
            f"backend {prefix!r} speaks {'/'.join(sorted(backends[prefix].dialects))}, "
            f"not the {dialect} API used by this request",
            "backend_dialect_mismatch",
        )
    out: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for name in (model, *failover_routes.get(model, ())):
        for b, m in _resolve(name, dialect, backends, default if name == model else None):
            if (b.name, m) not in seen:
                seen.add((b.name, m))
                out.append((b, m))
    if not out:
        raise RoutingError(
            404,
            f"The model {model!r} does not exist or no configured backend serves it",
            "model_not_found",
        )
    if is_open is not None:
        closed = [c for c in out if not is_open(c[0].name)]
        if closed:
            return closed
    return out
