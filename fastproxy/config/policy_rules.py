"""The checks of the load-balancing, alias and group config keys (docs/policy.md).

They belong to the sans-I/O policy libraries (``core/balance.py`` and
``core/aliases.py`` re-export them) but live here, because the loader runs them at load
time and config imports nothing of core. Pure functions: each returns one line per
problem, naming its key, and the loader writes the keys with dots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal, Protocol

Strategy = Literal["ordered", "weighted", "least_busy", "latency"]
STRATEGIES: tuple[Strategy, ...] = ("ordered", "weighted", "least_busy", "latency")


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


def validate_balancing(
    where: str,
    strategy: object,
    weights: Mapping[str, object] | None = None,
    backends: Collection[str] | None = None,
) -> list[str]:
    """Errors for one pool's settings, each naming ``where`` (the config key, e.g.
    ``load_balancing.models['gpt-4o']``); empty when valid. ``backends``: the
    configured backend names, to catch a weight for a backend that does not exist."""
    errors: list[str] = []
    if strategy not in STRATEGIES:
        errors.append(f"{where}.strategy: got {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    positive = False
    for backend, w in (weights or {}).items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            errors.append(f"{where}.weights[{backend!r}]: got {w!r}; allowed: a number >= 0")
            continue
        positive = positive or w > 0
        if backends is not None and backend not in backends:
            errors.append(
                f"{where}.weights[{backend!r}]: no such backend; configured: "
                f"{', '.join(sorted(backends)) or '(none)'}"
            )
    if weights and not positive and not errors:
        errors.append(f"{where}.weights: every weight is 0; at least one must be positive")
    return errors


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
