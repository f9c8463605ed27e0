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

``Policy`` adds model aliases, groups and load balancing when they are configured
(docs/policy.md): the name is resolved first, and the pool (rule 2's backends, or a
group's members) is ordered by its balancer, whose stats the request cycle feeds. With
none configured the plane holds no policy and ``plan`` runs as it always did.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ..config import Config
from ..core.aliases import ModelResolver
from ..core.balance import Affinity, BackendStats, Balancer, make_balancer
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
    return _routable(_candidates(model, dialect, backends, default, failover_routes), breakers)


def _candidates(
    model: str,
    dialect: str,
    backends: Mapping[str, Backend],
    default: str | None,
    failover_routes: Mapping[str, Sequence[str]],
) -> list[Candidate]:
    """Rules 1-5: the plan before any breaker is asked."""
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
    return out


def _routable(out: list[Candidate], breakers: BreakerView | None) -> list[Candidate]:
    """Rule 6, on a list the caller may keep: always a new one."""
    if breakers is not None:
        # Asking is free of side effects: a half-open backend stays a candidate, and its
        # one trial is claimed only if the request is actually sent there.
        routable = [c for c in out if breakers.breaker_state(c[0].name).routable]
        if routable:
            return routable
    return list(out)


class Plans:
    """``plan`` for the plane, made once per model and dialect instead of per request.

    Rules 1-5 depend only on the model, the dialect, the backends mapping, the default
    backend and the failover routes. A reload replaces the mapping and the routes (a
    new config), and a backend's model list is set before its mapping is served (at
    start, and for a reload's new backends before the reload takes effect), so a cached
    plan holds until those objects change. Breakers change at any moment: rule 6 runs
    per request. A client may name any model (the default backend takes names no
    backend lists), so the cache is emptied when it holds ``MAX`` names; a name that is
    refused is not kept."""

    MAX = 1024
    __slots__ = ("_for", "_plans")

    def __init__(self) -> None:
        self._for: tuple[object, str | None, object] | None = None
        self._plans: dict[tuple[str, str], list[Candidate]] = {}

    def plan(
        self,
        model: str,
        dialect: str,
        backends: Mapping[str, Backend],
        default: str | None,
        failover_routes: Mapping[str, Sequence[str]],
        breakers: BreakerView | None = None,
    ) -> list[Candidate]:
        made_for = self._for
        if (
            made_for is None
            or made_for[0] is not backends
            or made_for[2] is not failover_routes
            or made_for[1] != default
        ):
            self._plans = {}
            self._for = (backends, default, failover_routes)
        plans = self._plans
        key = (model, dialect)
        out = plans.get(key)
        if out is None:
            out = _candidates(model, dialect, backends, default, failover_routes)
            if len(plans) >= self.MAX:
                plans.clear()
            plans[key] = out
        return _routable(out, breakers)


class Policy:
    """Model aliases, groups and load balancing, built from one config (docs/policy.md).

    The plane holds None when none of them is configured, so requests pay one ``is None``
    test. ``stats`` and ``affinity`` outlive a reload (``rebuilt``): the requests in
    flight and the sessions' bindings belong to the backends, not to the config.
    Per process: with workers each worker has its own."""

    __slots__ = (
        "_balancers",
        "_group_pools",
        "_lb",
        "_pools_for",
        "affinity",
        "groups",
        "resolver",
        "rng",
        "stats",
        "timed",
    )

    def __init__(
        self,
        config: Config,
        stats: BackendStats | None = None,
        affinity: Affinity | None = None,
        rng: random.Random | None = None,
    ) -> None:
        lb = self._lb = config.load_balancing
        self.rng = rng if rng is not None else random.Random()
        self.stats = (
            stats
            if stats is not None
            else BackendStats(alpha=lb.latency.alpha, reprobe_seconds=lb.latency.reprobe_seconds)
        )
        # Latency settings may change on a reload; the samples stay.
        self.stats._alpha = lb.latency.alpha
        self.stats.reprobe_seconds = lb.latency.reprobe_seconds
        # Whether any pool orders by latency: only then is a request's time to first
        # byte fed to the averages (the cycle asks, so other strategies skip it).
        self.timed = (
            lb.strategy == "latency"
            or any(p.strategy == "latency" for p in lb.models.values())
            or any(g.strategy == "latency" for g in config.groups.values())
        )
        wants_affinity = (
            lb.affinity.enabled
            or any(p.affinity for p in lb.models.values())
            or any(g.affinity for g in config.groups.values())
        )
        if wants_affinity and affinity is None:
            affinity = Affinity(
                idle_seconds=lb.affinity.idle_seconds, max_sessions=lb.affinity.max_sessions
            )
        elif affinity is not None:
            affinity._idle = lb.affinity.idle_seconds
            affinity._max = lb.affinity.max_sessions
        self.affinity = affinity if wants_affinity else None
        # Validated at load (config/loader.py); the backends were checked there too.
        resolver = ModelResolver(config.model_aliases, config.groups)
        self.resolver = resolver if resolver.active else None
        self.groups: dict[str, Balancer | None] = {
            name: make_balancer(
                g.strategy,
                name=name,
                member_weights=g.member_weights(),
                stats=self.stats,
                affinity=self.affinity if g.affinity else None,
                rng=self.rng,
            )
            for name, g in resolver.groups.items()
        }
        # Model pools get their balancer the first time several backends serve one
        # (models may be discovered at start), then keep it: bounded by the models
        # the backends list.
        self._balancers: dict[str, Balancer | None] = {}
        # Each group's candidates per dialect, for the backends mapping they were built
        # from (see plan).
        self._group_pools: dict[tuple[str, str], list[Candidate]] = {}
        self._pools_for: Mapping[str, Backend] | None = None

    @staticmethod
    def configured(config: Config) -> bool:
        lb = config.load_balancing
        return bool(config.model_aliases or config.groups or lb.affinity.enabled or lb.models) or (
            lb.strategy != "ordered"
        )

    def rebuilt(self, config: Config, removed: Sequence[str]) -> Policy | None:
        """The policy for a reloaded ``config``, keeping stats and affinity."""
        for name in removed:
            self.stats.forget(name)
        if not Policy.configured(config):
            return None
        return Policy(config, self.stats, self.affinity, self.rng)

    def _pool_balancer(self, model: str) -> Balancer | None:
        try:
            return self._balancers[model]
        except KeyError:
            pass
        lb = self._lb
        pool = lb.models.get(model)
        strategy = lb.strategy
        weights: Mapping[str, float] = lb.weights
        affinity = lb.affinity.enabled
        if pool is not None:
            strategy = pool.strategy if pool.strategy is not None else strategy
            weights = pool.weights if pool.weights is not None else weights
            affinity = pool.affinity if pool.affinity is not None else affinity
        balancer = self._balancers[model] = make_balancer(
            strategy,  # type: ignore[arg-type]  # validated at load
            name=model,
            weights=weights,
            stats=self.stats,
            affinity=self.affinity if affinity else None,
            rng=self.rng,
        )
        return balancer

    def plan(
        self,
        model: str,
        dialect: str,
        backends: Mapping[str, Backend],
        default: str | None,
        failover_routes: Mapping[str, Sequence[str]],
        breakers: BreakerView | None,
        session_id: str | None,
    ) -> tuple[list[Candidate], Balancer | None]:
        """``plan`` with aliases, groups and balancing: the candidates in the order to
        try them, and the balancer that ordered the pool (told who served, for affinity)."""
        resolver = self.resolver
        res = resolver.resolve(model) if resolver is not None else None
        name = model if res is None else res.model
        balancer: Balancer | None = None
        grouped = res is not None and res.group is not None
        if grouped:
            assert res is not None and res.group is not None
            group = res.group
            # A group's members are fixed by the config, and a backend's dialects by
            # its type: the pool changes only with the backends mapping (a reload), so
            # it is built once per group and dialect, not per request.
            if self._pools_for is not backends:
                self._group_pools.clear()
                self._pools_for = backends
            pool_key = (group.name, dialect)
            cached = self._group_pools.get(pool_key)
            if cached is None:
                cached = self._group_pools[pool_key] = [
                    (backends[m.backend], m.model)
                    for m in group.members
                    if m.backend in backends and dialect in backends[m.backend].dialects
                ]
            pool = cached
            balancer = self.groups.get(group.name)
        else:
            prefix, sep, _ = name.partition(":")
            if sep and prefix in backends and dialect not in backends[prefix].dialects:
                raise RoutingError(
                    f"backend {prefix!r} speaks {'/'.join(sorted(backends[prefix].dialects))}"
                    f", not the {dialect} API used by this request",
                    status=400,
                    code="backend_dialect_mismatch",
                )
            pool = _resolve(name, dialect, backends, default)
            if len(pool) > 1:
                balancer = self._pool_balancer(name)
        routes: Sequence[str] = ()
        for key in (model,) if res is None else res.failover_keys:
            routes = failover_routes.get(key, ())
            if routes:
                break
        out = pool
        if routes or not grouped:  # a group listing one member twice cannot load
            seen = {(b.name, m) for b, m in pool}
            if len(seen) < len(pool):  # a model two backends list under one name can
                out, seen = [], set()
                for b, m in pool:
                    if (b.name, m) not in seen:
                        seen.add((b.name, m))
                        out.append((b, m))
            elif routes:
                out = list(pool)  # the routes are added to a copy (a group's is cached)
            size = len(out)
            for route in routes:
                for b, m in _resolve(route, dialect, backends, None):
                    if (b.name, m) not in seen:
                        seen.add((b.name, m))
                        out.append((b, m))
        else:
            size = len(out)
        if not out:
            raise RoutingError(
                f"The model {model!r} does not exist or no configured backend serves it"
            )
        unavailable: set[str] = set()
        if breakers is not None:
            for b, _ in out:
                if not breakers.breaker_state(b.name).routable:
                    unavailable.add(b.name)
        if balancer is not None:
            return balancer.order(out, session_id, unavailable, size), balancer
        if unavailable:
            routable = [c for c in out if c[0].name not in unavailable]
            if routable:
                return routable, None
        # Never the cached group pool itself: the caller owns what it is given.
        return (list(out) if out is pool and grouped else out), None
