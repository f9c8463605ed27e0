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

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .balance import STRATEGIES, Strategy


class AliasRuleLike(Protocol):
    @property
    def pattern(self) -> str: ...

    @property
    def target(self) -> str: ...


class GroupMemberLike(Protocol):
    @property
    def backend(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def weight(self) -> float: ...


class GroupLike(Protocol):
    @property
    def strategy(self) -> str: ...

    @property
    def members(self) -> Sequence[GroupMemberLike]: ...

    @property
    def affinity(self) -> bool: ...


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


def _label(rule: AliasRuleLike) -> str:
    return f"(rule {rule.pattern!r} -> {rule.target!r})"


def validate_aliases(rules: Iterable[AliasRuleLike], where: str = "model_aliases") -> list[str]:
    """One error per invalid rule field, naming the rule; empty when all are valid."""
    errors: list[str] = []
    for i, rule in enumerate(rules):
        pattern, target = rule.pattern, rule.target
        if not isinstance(pattern, str) or not pattern:
            errors.append(f"{where}[{i}].pattern: got {pattern!r}; a non-empty regular expression")
            continue
        if not isinstance(target, str) or not target.strip():
            errors.append(
                f"{where}[{i}].target: got {target!r}; a non-empty model name {_label(rule)}"
            )
            continue
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            errors.append(
                f"{where}[{i}].pattern: {pattern!r} is not a valid regular expression: {e} "
                f"{_label(rule)}"
            )
            continue
        try:
            # Parses the template against the pattern's groups without needing a match:
            # a back-reference to a group that does not exist fails here, not per request.
            compiled.sub(target, "")
        except (re.error, IndexError) as e:
            errors.append(
                f"{where}[{i}].target: {target!r} is not a valid replacement: {e} {_label(rule)}"
            )
            continue
        if target != target.strip():
            errors.append(f"{where}[{i}].target: {target!r} has surrounding spaces {_label(rule)}")
    return errors


def validate_groups(
    groups: Mapping[str, GroupLike],
    backends: Collection[str] | None = None,
    where: str = "groups",
) -> list[str]:
    """One error per invalid group or member, naming it; empty when all are valid.
    ``backends``: the configured backend names (members must name one)."""
    errors: list[str] = []
    for name, group in groups.items():
        at = f"{where}[{name!r}]"
        if not isinstance(name, str) or not name or name != name.strip():
            errors.append(f"{at}: a group name must be a non-empty name without surrounding spaces")
            continue
        prefix, sep, _ = name.partition(":")
        if sep and backends is not None and prefix in backends:
            errors.append(
                f"{at}: the name reads as backend:model for backend {prefix!r}; "
                "choose a name that does not start with a backend's name and ':'"
            )
        if group.strategy not in STRATEGIES:
            errors.append(
                f"{at}.strategy: got {group.strategy!r}; allowed: {', '.join(STRATEGIES)}"
            )
        members = group.members
        if not members:
            errors.append(f"{at}.members: empty; a group needs at least one member")
            continue
        seen: set[tuple[str, str]] = set()
        positive = False
        for j, m in enumerate(members):
            mat = f"{at}.members[{j}]"
            if backends is not None and m.backend not in backends:
                errors.append(
                    f"{mat}.backend: got {m.backend!r}; configured: "
                    f"{', '.join(sorted(backends)) or '(none)'}"
                )
            if not isinstance(m.model, str) or not m.model.strip() or m.model != m.model.strip():
                errors.append(f"{mat}.model: got {m.model!r}; a non-empty model name")
            w = m.weight
            if (
                isinstance(w, bool)
                or not isinstance(w, int | float)
                or not math.isfinite(w)
                or w < 0
            ):
                errors.append(f"{mat}.weight: got {w!r}; allowed: a number >= 0")
            elif w > 0:
                positive = True
            key = (m.backend, m.model)
            if key in seen:
                errors.append(f"{mat}: {m.backend}:{m.model} is listed twice")
            seen.add(key)
        if group.strategy == "weighted" and not positive:
            errors.append(f"{at}.members: every weight is 0; at least one must be positive")
    return errors


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
