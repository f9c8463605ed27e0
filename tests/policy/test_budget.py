"""Budgets as plain objects with a hand-moved wall clock (UTC epoch seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.core.budget import (
    Blocked,
    Budget,
    BudgetBook,
    BudgetEvent,
    BudgetGate,
    BudgetRefusal,
    period_bounds,
)
from tests.policy.support import Clock


def epoch(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type,misc]


NOON = epoch(2026, 12, 5, 12, 0, 0)


def book(*budgets: Budget, now: float = NOON) -> tuple[Clock, BudgetBook]:
    clock = Clock(now)
    return clock, BudgetBook(budgets, clock=clock)


def thresholds(events: list[BudgetEvent]) -> list[tuple[str, float]]:
    return [(e.subject, e.threshold) for e in events]


def test_period_bounds_are_utc_days_and_months() -> None:
    assert period_bounds("day", NOON) == (epoch(2026, 12, 5), epoch(2026, 12, 6))
    assert period_bounds("day", epoch(2026, 12, 5)) == (epoch(2026, 12, 5), epoch(2026, 12, 6))
    assert period_bounds("month", NOON) == (epoch(2026, 12, 1), epoch(2027, 1, 1))
    assert period_bounds("month", epoch(2028, 2, 29, 23, 59, 59)) == (
        epoch(2028, 2, 1),
        epoch(2028, 3, 1),
    )
    with pytest.raises(ValueError, match="period"):
        period_bounds("week", NOON)  # type: ignore[arg-type]


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="above 0"):
        Budget("key:a", 0.0)
    with pytest.raises(ValueError, match="period"):
        Budget("key:a", 1.0, "year")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two budgets"):
        book(Budget("key:a", 1.0), Budget("key:a", 2.0))


def test_charges_add_up_and_refuse_at_the_budget() -> None:
    _, b = book(Budget("key:alice", 10.0, "day"))
    assert b.check(["key:alice"]) is None
    b.charge(["key:alice"], 6.0)
    b.charge(["key:alice"], 3.99)
    assert b.check(["key:alice"]) is None
    b.charge(["key:alice"], 0.02)  # admitted below the budget, ends above it
    r = b.check(["key:alice"])
    assert isinstance(r, BudgetRefusal)
    assert (r.subject, r.amount, r.period) == ("key:alice", 10.0, "day")
    assert r.spent == pytest.approx(10.01)
    assert r.resets_at == epoch(2026, 12, 6)
    assert r.message == (
        "Budget exceeded for key 'alice': spent $10.01 of its $10.00 daily budget. "
        "It resets at 2026-12-06T00:00:00Z."
    )


def test_no_cost_and_subjects_without_a_budget_change_nothing() -> None:
    _, b = book(Budget("key:alice", 1.0, "day"))
    assert b.charge(["key:alice"], None) == []
    assert b.charge(["key:alice"], 0.0) == []
    assert b.charge(["key:bob", "team:x"], 5.0) == []
    assert b.check(["key:bob", "team:x"]) is None
    assert b.spend("key:alice") == (0.0, 1.0, "day", epoch(2026, 12, 6))
    assert b.spend("key:bob") is None
    assert len(b) == 1


def test_the_key_or_its_team_refuses() -> None:
    _, b = book(Budget("key:alice", 100.0), Budget("team:ml", 5.0))
    b.charge(["key:bob", "team:ml"], 5.0)  # a teammate spent the team's budget
    r = b.check(["key:alice", "team:ml"])
    assert r is not None and r.subject == "team:ml"
    assert "team 'ml'" in r.message and "monthly" in r.message
    assert b.spend("key:alice") == (0.0, 100.0, "month", epoch(2027, 1, 1))


def test_thresholds_are_announced_once_per_period() -> None:
    clock, b = book(Budget("key:alice", 10.0, "day"), Budget("team:ml", 100.0, "day"))
    assert b.charge(["key:alice", "team:ml"], 7.9) == []
    events = b.charge(["key:alice", "team:ml"], 0.1)
    assert thresholds(events) == [("key:alice", 0.8)]
    e = events[0]
    assert e.spent == pytest.approx(8.0)
    assert e.to_dict() == {
        "event": "budget_threshold",
        "subject": "key:alice",
        "threshold_percent": 80,
        "spent": 8.0,
        "budget": 10.0,
        "period": "day",
        "period_start": "2026-12-05T00:00:00Z",
        "resets_at": "2026-12-06T00:00:00Z",
    }
    assert b.charge(["key:alice"], 1.0) == []  # 90%: nothing new
    assert thresholds(b.charge(["key:alice"], 1.0)) == [("key:alice", 1.0)]
    assert b.charge(["key:alice"], 50.0) == []  # way over: said already
    # Next day: announced again when crossed again.
    clock.now = epoch(2026, 12, 6, 0, 0, 1)
    assert b.charge(["key:alice"], 7.0) == []
    assert thresholds(b.charge(["key:alice"], 4.0)) == [("key:alice", 0.8), ("key:alice", 1.0)]


def test_day_budget_rolls_over_at_utc_midnight() -> None:
    clock, b = book(Budget("key:alice", 1.0, "day"), now=epoch(2026, 12, 5, 23, 59, 0))
    b.charge(["key:alice"], 1.5)
    clock.now = epoch(2026, 12, 5, 23, 59, 59)
    assert b.check(["key:alice"]) is not None
    clock.now = epoch(2026, 12, 6)
    assert b.check(["key:alice"]) is None
    assert b.spend("key:alice") == (0.0, 1.0, "day", epoch(2026, 12, 7))


def test_month_budget_rolls_over_on_the_first_including_the_year() -> None:
    clock, b = book(Budget("team:ml", 50.0, "month"), now=epoch(2026, 12, 31, 23, 0, 0))
    b.charge(["team:ml"], 60.0)
    assert b.check(["team:ml"]) is not None
    clock.now = epoch(2026, 12, 31, 23, 59, 59)
    assert b.check(["team:ml"]) is not None
    clock.now = epoch(2027, 1, 1)
    assert b.check(["team:ml"]) is None
    assert b.spend("team:ml") == (0.0, 50.0, "month", epoch(2027, 2, 1))
    # Rolling is by the calendar, not 30 days: a day budget would have rolled daily.
    clock.now = epoch(2027, 1, 20)
    b.charge(["team:ml"], 49.0)
    assert b.check(["team:ml"]) is None
    clock.now = epoch(2027, 1, 31, 23, 59, 59)
    b.charge(["team:ml"], 1.0)
    assert b.check(["team:ml"]) is not None


def test_seeding_sets_spend_without_announcing_again() -> None:
    _, b = book(Budget("key:alice", 10.0, "day"), Budget("key:bob", 10.0, "day"))
    assert b.seed("key:alice", 8.5) == []
    assert b.spend("key:alice") == (8.5, 10.0, "day", epoch(2026, 12, 6))
    assert b.charge(["key:alice"], 0.5) == []  # 80% was passed before the restart
    assert thresholds(b.charge(["key:alice"], 1.0)) == [("key:alice", 1.0)]
    assert b.seed("key:nobody", 5.0) == []
    assert thresholds(b.seed("key:bob", 12.0, announce=True)) == [
        ("key:bob", 0.8),
        ("key:bob", 1.0),
    ]
    assert b.check(["key:bob"]) is not None


def test_seed_from_an_earlier_period_is_ignored() -> None:
    _, b = book(Budget("key:alice", 10.0, "day"))
    b.seed("key:alice", 9.0, at=epoch(2026, 12, 4, 23, 0, 0))
    assert b.spend("key:alice") == (0.0, 10.0, "day", epoch(2026, 12, 6))
    b.seed("key:alice", 9.0, at=epoch(2026, 12, 5, 0, 0, 0))
    assert b.spend("key:alice") is not None and b.spend("key:alice")[0] == 9.0  # type: ignore[index]


def test_a_reload_keeps_spend_and_announces_a_raised_budgets_crossing_again() -> None:
    _, b = book(Budget("key:alice", 10.0, "day"), Budget("key:bob", 10.0, "day"))
    b.charge(["key:alice", "key:bob"], 9.0)
    b.set_budgets([Budget("key:alice", 20.0, "day"), Budget("key:bob", 10.0, "month")])
    assert b.spend("key:alice") == (9.0, 20.0, "day", epoch(2026, 12, 6))
    assert b.spend("key:bob") == (0.0, 10.0, "month", epoch(2027, 1, 1))  # a new period kind
    assert thresholds(b.charge(["key:alice"], 7.0)) == [("key:alice", 0.8)]


def test_blocked_set_is_pushed_when_it_changes_and_unblocks_at_the_boundary() -> None:
    clock, b = book(Budget("key:alice", 1.0, "day"), Budget("team:ml", 5.0, "month"))
    gate = BudgetGate(clock=clock)
    first = b.take_blocked()
    assert first is not None and first.refusals == ()
    gate.update(first)
    assert b.take_blocked() is None  # unchanged: nothing to send
    b.charge(["key:alice", "team:ml"], 2.0)
    msg = b.take_blocked()
    assert msg is not None and [r.subject for r in msg.refusals] == ["key:alice"]
    # As a control-channel frame would carry it.
    gate.update(Blocked.from_tuple(msg.to_tuple()))
    r = gate.check(["key:alice", "team:ml"])
    assert r is not None and r.subject == "key:alice" and r.spent == 2.0
    assert gate.check(["key:bob"]) is None
    gate.update(first)  # a stale frame is ignored
    assert gate.check(["key:alice"]) is not None
    # Midnight UTC: the worker lets the key through by itself, before any push.
    clock.now = epoch(2026, 12, 6)
    assert gate.check(["key:alice"]) is None
    b.tick()
    cleared = b.take_blocked()
    assert cleared is not None and cleared.refusals == ()
    assert cleared.generation > msg.generation


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.floats(min_value=0.0, max_value=3.0), max_size=80),
    amount=st.floats(min_value=0.5, max_value=50.0),
)
def test_each_threshold_is_announced_exactly_once_when_crossed(
    costs: list[float], amount: float
) -> None:
    _, b = book(Budget("key:a", amount, "day"))
    events: list[BudgetEvent] = []
    spent = 0.0
    for cost in costs:
        before = spent
        spent += cost
        got = b.charge(["key:a"], cost)
        events.extend(got)
        for e in got:  # announced on the charge that crossed it, not before or after
            assert before < e.threshold * amount <= spent + 1e-9
    expected = [t for t in (0.8, 1.0) if spent >= t * amount]
    assert [e.threshold for e in events] == expected
    assert (b.check(["key:a"]) is not None) == (spent >= amount)
