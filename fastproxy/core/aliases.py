"""Model aliases and groups: which name routing plans for the model a client asked for.

Sans-I/O and pure: no clock, no randomness, no global state. Used by
``dataplane/routing.py`` (``Policy``; docs/policy.md, "Model aliases and groups", says
how it is wired).

- ``model_aliases``: ordered rules ``{pattern, target}``. The pattern is a regular
  expression matched against the **whole** model name (``re.fullmatch``: ``^`` and ``$``
  are allowed and implied); the target may use back-references (``\\1``,
  ``\\g<name>``). The first matching rule wins; the others are not looked at.
  Case-sensitive (write ``(?i)`` for the other).
- ``groups``: a public name → members ``{backend, model, weight}`` tried under a
  strategy (``core/balance.py``).

Resolution order (``ModelResolver.resolve``), one pass, so no rule can loop:

1. The name as asked is a group's name → that group. Exact names are more specific
   than patterns, so a group is never shadowed by a broad alias.
2. Otherwise the first alias rule whose pattern matches the whole name rewrites it.
   The result is not matched against the rules again (no chains, no cycles); it may
   name a group (→ that group), a ``backend:model``, or a plain model.
3. Otherwise the name stays as asked.

Whatever is not a group goes to routing as today: ``backend:model`` when the prefix is a
configured backend, else the backends that list the model, else the default backend.
``failover_routes`` are looked up by the name as asked first and, when it has none, by
the resolved name (``Resolution.failover_keys``), so routes written for a public name
keep working when an alias points it elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..config.policy_rules import AliasRuleLike as AliasRuleLike
from ..config.policy_rules import GroupLike as GroupLike
from ..config.policy_rules import GroupMemberLike as GroupMemberLike
from ..config.policy_rules import validate_aliases as validate_aliases
from ..config.policy_rules import validate_groups as validate_groups
from .balance import Strategy


@dataclass(frozen=True, slots=True)
class AliasRule:
    pattern: str
    target: str


@dataclass(frozen=True, slots=True)
class GroupMember:
    backend: str
    model: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    strategy: Strategy
    members: tuple[GroupMember, ...]
    affinity: bool = False

    def member_weights(self) -> dict[tuple[str, str], float]:
        """For ``Balancer(member_weights=...)``: one backend may serve two members."""
        return {(m.backend, m.model): m.weight for m in self.members}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to plan for a requested model. ``model`` is the name routing plans (the
    group's name when ``group`` is set); ``rule`` the index of the alias that matched."""

    asked: str
    model: str
    group: Group | None = None
    rule: int | None = None

    @property
    def failover_keys(self) -> tuple[str, ...]:
        """The ``failover_routes`` keys to try, in order; the first that has routes is
        used."""
        return (self.asked,) if self.model == self.asked else (self.asked, self.model)


class AliasError(ValueError):
    """Invalid rules or groups; ``errors`` has one line per problem, each naming it."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = tuple(errors)


class ModelResolver:
    """Aliases and groups compiled once; ``resolve`` per request. Raises ``AliasError``
    (every problem, each naming its rule or group) on invalid input.

    Results are memoised per asked name (client traffic repeats a handful of names);
    the memo is bounded by ``cache_size`` and emptied when full, so names a client
    makes up cost memory only up to the bound."""

    __slots__ = ("_cache", "_cache_size", "_groups", "_rules", "rules")

    def __init__(
        self,
        rules: Iterable[AliasRuleLike] = (),
        groups: Mapping[str, GroupLike] | None = None,
        *,
        backends: Collection[str] | None = None,
        cache_size: int = 4096,
    ) -> None:
        rules = tuple(rules)
        groups = dict(groups or {})
        errors = validate_aliases(rules) + validate_groups(groups, backends)
        if errors:
            raise AliasError(errors)
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.rules: tuple[AliasRule, ...] = tuple(AliasRule(r.pattern, r.target) for r in rules)
        self._rules = tuple((re.compile(r.pattern), r.target) for r in self.rules)
        self._groups: dict[str, Group] = {
            name: Group(
                name,
                g.strategy,  # type: ignore[arg-type]  # validated above
                tuple(GroupMember(m.backend, m.model, float(m.weight)) for m in g.members),
                bool(getattr(g, "affinity", False)),
            )
            for name, g in groups.items()
        }
        self._cache: dict[str, Resolution] = {}
        self._cache_size = cache_size

    @property
    def groups(self) -> Mapping[str, Group]:
        return self._groups

    @property
    def active(self) -> bool:
        """False when there is nothing to resolve: the wiring then skips ``resolve``."""
        return bool(self._rules or self._groups)

    def resolve(self, model: str) -> Resolution:
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        result = self._resolve(model)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[model] = result
        return result

    def _resolve(self, model: str) -> Resolution:
        groups = self._groups
        group = groups.get(model)
        if group is not None:
            return Resolution(model, model, group)
        for index, (pattern, target) in enumerate(self._rules):
            match = pattern.fullmatch(model)
            if match is not None:
                name = match.expand(target)
                return Resolution(model, name, groups.get(name), index)
        return Resolution(model, model)
