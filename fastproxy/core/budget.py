"""Budgets: spend per key and per team over a UTC day or month, as sans-I/O objects.
Wired by dataplane/admission.py (the request path), gateway.py (``BudgetKeeper``: the
book, seeding, events) and workers/limiting.py.

``BudgetBook`` holds the spend of every subject that has a budget ("key:alice",
"team:ml"): seeded at start with the spend so far in the current period (the wiring reads
it from the usage store), charged with each finished request's cost, and asked before a
request starts (``check``): a subject at or over its budget is refused with a
``BudgetRefusal`` that says who, how much, and when the budget resets. Crossing 80% and
100% of a budget yields a ``BudgetEvent`` once per period per subject (for the health
webhook and the event stream). Periods follow UTC: a day starts at 00:00:00Z, a month on
its first day; spend starts again from zero at the boundary. The clock is injected
(``() -> float`` of epoch seconds, ``time.time`` by default), so tests move it by hand.

What "over budget" means: a request is refused once the spend so far has reached the
budget. A request admitted below it may cross it (its cost is known only when it ends),
so the spend can end a period above the budget by what was in flight at the crossing.

Seeding does not announce: thresholds the seeded spend already passed are marked as
announced, because the process that saw the crossing announced it (a restart must not
send every 80% event of the day again). ``seed(..., announce=True)`` returns them instead.

With workers: the spend is known in the primary (one book), and each worker holds a
``BudgetGate``, a copy of the blocked subjects, answered without a round trip. The book
says when that set changed (``take_blocked``: a ``Blocked`` message, plain data, with a
generation so a late frame cannot undo a newer one); the primary pushes it to every
worker. A blocked subject's entry carries its reset time, so a worker lets it through
again at the period boundary without waiting for a push. Overshoot with workers: the
requests that start on any worker between the crossing and the push reaching it, on top
of what was in flight; with spend reported by the workers every heartbeat (0.5 s), that
is at most about half a second of that subject's traffic plus one control-channel hop.

Memory: one small account per subject with a budget (the config bounds them); nothing is
kept for subjects without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")
THRESHOLDS: tuple[float, ...] = (0.8, 1.0)


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """[start, end) of the UTC day or month containing ``now`` (epoch seconds)."""
    if period == "day":
        start = (now // 86400) * 86400
        return start, start + 86400
    if period == "month":
        moment = datetime.fromtimestamp(now, UTC)
        first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if first.month == 12:
            following = first.replace(year=first.year + 1, month=1)
        else:
            following = first.replace(month=first.month + 1)
        return first.timestamp(), following.timestamp()
    raise ValueError(f"period must be one of {PERIODS}, got {period!r}")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(subject: str) -> str:
    """ "key:alice" -> "key 'alice'" for messages; other names as they are."""
    kind, sep, name = subject.partition(":")
    return f"{kind} '{name}'" if sep else subject


@dataclass(frozen=True, slots=True)
class Budget:
    """``amount`` in the usage records' currency (USD) per ``period``."""

    subject: str
    amount: float
    period: Period = "month"

    def __post_init__(self) -> None:
        if not self.amount > 0:
            raise ValueError(f"{self.subject}: a budget must be above 0, got {self.amount}")
        if self.period not in PERIODS:
            raise ValueError(f"{self.subject}: period must be one of {PERIODS}")


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """A subject's spend crossed ``threshold`` (0.8, 1.0) of its budget this period."""

    subject: str
    threshold: float
    spent: float
    amount: float
    period: Period
    period_start: float
    resets_at: float

    def to_dict(self) -> dict[str, Any]:
        """The body for the webhook and the event stream."""
        return {
            "event": "budget_threshold",
            "subject": self.subject,
            "threshold_percent": round(self.threshold * 100),
            "spent": round(self.spent, 6),
            "budget": self.amount,
            "period": self.period,
            "period_start": _iso(self.period_start),
            "resets_at": _iso(self.resets_at),
        }


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """A request refused because ``subject`` spent its budget; render it in the caller's
    dialect (429, ``rate_limit_error``/``insufficient_quota``) with ``message``."""

    subject: str
    spent: float
    amount: float
    period: Period
    resets_at: float

    @property
    def message(self) -> str:
        return (
            f"Budget exceeded for {_describe(self.subject)}: spent ${self.spent:.2f} "
            f"of its ${self.amount:.2f} {'daily' if self.period == 'day' else 'monthly'} "
            f"budget. It resets at {_iso(self.resets_at)}."
        )

    def to_tuple(self) -> tuple[str, float, float, str, float]:
        return (self.subject, self.spent, self.amount, self.period, self.resets_at)

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> BudgetRefusal:
        return cls(str(t[0]), float(t[1]), float(t[2]), t[3], float(t[4]))


@dataclass(frozen=True, slots=True)
class Blocked:
    """Primary -> workers: every subject over budget now, replacing the last set."""

    generation: int
    refusals: tuple[BudgetRefusal, ...]

    def to_tuple(self) -> tuple[int, tuple[tuple[str, float, float, str, float], ...]]:
        return (self.generation, tuple(r.to_tuple() for r in self.refusals))

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> Blocked:
        return cls(int(t[0]), tuple(BudgetRefusal.from_tuple(r) for r in t[1]))


class _Account:
    __slots__ = ("announced", "budget", "end", "spent", "start")

    def __init__(self, budget: Budget, now: float) -> None:
        self.budget = budget
        self.start, self.end = period_bounds(budget.period, now)
        self.spent = 0.0
        self.announced = 0  # thresholds announced this period (bits, by index)

    def roll(self, now: float) -> bool:
        """Start the period containing ``now`` if this one is over; True if it did."""
        if now < self.end:
            return False
        self.start, self.end = period_bounds(self.budget.period, now)
        self.spent = 0.0
        self.announced = 0
        return True

    def refusal(self) -> BudgetRefusal:
        b = self.budget
        return BudgetRefusal(b.subject, self.spent, b.amount, b.period, self.end)


class BudgetBook:
    """Spend per subject against its budget; see the module docstring."""

    def __init__(
        self,
        budgets: Iterable[Budget],
        *,
        clock: Callable[[], float] = time.time,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> None:
        if not thresholds or any(not 0 < t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be within (0, 1], got {thresholds}")
        self._clock = clock
        self._thresholds = tuple(sorted(thresholds))
        self._accounts: dict[str, _Account] = {}
        self._generation = 0
        self._sent: frozenset[str] | None = None  # the blocked set last taken
        self.set_budgets(budgets)

    def set_budgets(self, budgets: Iterable[Budget]) -> None:
        """(Re)load the budgets. A subject keeps its spend and announcements when its
        period is unchanged (a new amount applies at once); others start afresh."""
        now = self._clock()
        accounts: dict[str, _Account] = {}
        for budget in budgets:
            if budget.subject in accounts:
                raise ValueError(f"two budgets for {budget.subject}")
            old = self._accounts.get(budget.subject)
            acc = _Account(budget, now)
            if old is not None and old.budget.period == budget.period:
                old.roll(now)
                acc.spent, acc.announced = old.spent, old.announced
                # A raised amount may put a crossed threshold ahead again: announce anew.
                acc.announced &= self._crossed(acc)
            accounts[budget.subject] = acc
        self._accounts = accounts

    def _crossed(self, acc: _Account) -> int:
        bits = 0
        for i, t in enumerate(self._thresholds):
            if acc.spent >= t * acc.budget.amount:
                bits |= 1 << i
        return bits

    def _events(self, acc: _Account) -> list[BudgetEvent]:
        new = self._crossed(acc) & ~acc.announced
        if not new:
            return []
        acc.announced |= new
        b = acc.budget
        return [
            BudgetEvent(b.subject, t, acc.spent, b.amount, b.period, acc.start, acc.end)
            for i, t in enumerate(self._thresholds)
            if new & (1 << i)
        ]

    def seed(
        self, subject: str, spent: float, *, at: float | None = None, announce: bool = False
    ) -> list[BudgetEvent]:
        """Spend so far (from the usage store) in the period containing ``at`` (now by
        default). Spend from a period that is over is ignored. Thresholds it passes are
        marked announced, or announced now with ``announce=True``."""
        acc = self._accounts.get(subject)
        if acc is None:
            return []
        now = self._clock()
        acc.roll(now)
        when = now if at is None else at
        if not acc.start <= when < acc.end:
            return []
        acc.spent = max(0.0, spent)
        if announce:
            return self._events(acc)
        acc.announced |= self._crossed(acc)
        return []

    def check(self, subjects: Sequence[str]) -> BudgetRefusal | None:
        """Before a request: the first of ``subjects`` (key, then team) at or over its
        budget, or None. A dict lookup per subject; the clock only when over."""
        accounts = self._accounts
        for subject in subjects:
            acc = accounts.get(subject)
            if acc is not None and acc.spent >= acc.budget.amount:
                if acc.roll(self._clock()):
                    continue
                return acc.refusal()
        return None

    def charge(self, subjects: Iterable[str], cost: float | None) -> list[BudgetEvent]:
        """After a request: add its cost to each subject's period; the thresholds it
        crossed, once per period."""
        if not cost or cost <= 0:
            return []
        events: list[BudgetEvent] = []
        now = self._clock()
        for subject in subjects:
            acc = self._accounts.get(subject)
            if acc is None:
                continue
            acc.roll(now)
            acc.spent += cost
            if acc.spent >= acc.budget.amount * self._thresholds[0]:
                events.extend(self._events(acc))
        return events

    def tick(self) -> None:
        """Roll every period that ended (so ``take_blocked`` sees the unblocking); the
        wiring calls it about once a second."""
        now = self._clock()
        for acc in self._accounts.values():
            acc.roll(now)

    def blocked(self) -> frozenset[str]:
        return frozenset(s for s, acc in self._accounts.items() if acc.spent >= acc.budget.amount)

    def take_blocked(self) -> Blocked | None:
        """The blocked set, if it changed since the last call: push it to the workers."""
        now = self._clock()
        for acc in self._accounts.values():
            acc.roll(now)
        current = self.blocked()
        if current == self._sent:
            return None
        self._sent = current
        self._generation += 1
        return Blocked(
            self._generation, tuple(self._accounts[s].refusal() for s in sorted(current))
        )

    def subjects(self) -> list[str]:
        """Every subject with a budget, in config order."""
        return list(self._accounts)

    def spend(self, subject: str) -> tuple[float, float, Period, float] | None:
        """(spent, budget, period, resets_at) for the admin plane; None: no budget."""
        acc = self._accounts.get(subject)
        if acc is None:
            return None
        acc.roll(self._clock())
        return (acc.spent, acc.budget.amount, acc.budget.period, acc.end)

    def __len__(self) -> int:
        return len(self._accounts)


class BudgetGate:
    """A worker's copy of the blocked subjects (see the module docstring)."""

    __slots__ = ("_blocked", "_clock", "generation")

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._blocked: dict[str, BudgetRefusal] = {}
        self.generation = 0

    def update(self, message: Blocked) -> None:
        if message.generation <= self.generation:
            return  # an older set, overtaken
        self.generation = message.generation
        self._blocked = {r.subject: r for r in message.refusals}

    def check(self, subjects: Sequence[str]) -> BudgetRefusal | None:
        blocked = self._blocked
        if not blocked:
            return None
        for subject in subjects:
            refusal = blocked.get(subject)
            if refusal is not None and self._clock() < refusal.resets_at:
                return refusal
        return None
