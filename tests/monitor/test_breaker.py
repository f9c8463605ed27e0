"""The breaker's transition table, driven by hand with an injected clock (no sockets)."""

from __future__ import annotations

import pytest

from fastproxy.monitor.breaker import TRANSITIONS, Breaker, Event, State


def make(threshold: int = 3, cooldown: float = 10.0, trial_timeout: float | None = None) -> Breaker:
    return Breaker("openai.1", threshold, cooldown, trial_timeout)


def states(transitions) -> list[tuple[str, str]]:
    return [(t.old.public, t.new.public) for t in transitions]


def test_closed_opens_after_threshold_consecutive_failures() -> None:
    b = make(threshold=3)
    assert b.feed(Event.LIVE_FAILURE, 0.0, "HTTP 500") == []
    assert b.feed(Event.LIVE_FAILURE, 1.0, "HTTP 502") == []
    assert b.failures == 2
    out = b.feed(Event.LIVE_FAILURE, 2.0, "connect")
    assert states(out) == [("closed", "open")]
    assert out[0].event is Event.THRESHOLD
    assert "3 consecutive failures (last: connect)" in out[0].reason
    assert b.open_until == 12.0


def test_success_resets_the_count() -> None:
    b = make(threshold=3)
    b.feed(Event.LIVE_FAILURE, 0.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    b.feed(Event.LIVE_SUCCESS, 0.0)
    assert b.failures == 0
    b.feed(Event.LIVE_FAILURE, 0.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert b.state is State.CLOSED


def test_probe_unhealthy_opens_at_once_and_healthy_probe_does_not_close_before_cooldown() -> None:
    b = make(cooldown=5.0)
    assert states(b.feed(Event.PROBE_UNHEALTHY, 100.0, "HTTP 503")) == [("closed", "open")]
    assert b.feed(Event.PROBE_HEALTHY, 101.0) == []  # open: only time moves it
    assert b.state is State.OPEN
    out = b.feed(Event.PROBE_HEALTHY, 105.0, "probe ok")
    assert states(out) == [("open", "half_open"), ("half_open", "closed")]


def test_open_refuses_until_cooldown_then_exactly_one_trial() -> None:
    b = make(threshold=1, cooldown=10.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert b.allows_request(5.0) == (False, [])
    allowed, out = b.allows_request(10.0)
    assert allowed is True
    assert states(out) == [("open", "half_open"), ("half_open", "half_open")]
    assert b.state is State.TRIAL
    # every later caller is refused while the trial is in flight
    assert b.allows_request(10.1)[0] is False
    assert b.allows_request(11.0)[0] is False
    assert states(b.feed(Event.LIVE_SUCCESS, 11.5, "HTTP 200")) == [("half_open", "closed")]
    assert b.allows_request(11.6) == (True, [])
    assert b.failures == 0


def test_failed_trial_reopens_for_another_cooldown() -> None:
    b = make(threshold=1, cooldown=10.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    b.allows_request(10.0)
    out = b.feed(Event.LIVE_FAILURE, 10.5, "timeout")
    assert states(out) == [("half_open", "open")]
    assert b.open_until == 20.5
    assert b.allows_request(20.0)[0] is False


def test_probe_can_be_the_trial() -> None:
    b = make(threshold=1, cooldown=1.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert states(b.advance(1.0)) == [("open", "half_open")]
    assert states(b.feed(Event.PROBE_UNHEALTHY, 1.2)) == [("half_open", "open")]
    b.advance(2.2)
    assert states(b.feed(Event.PROBE_HEALTHY, 2.3)) == [("half_open", "closed")]


def test_probe_decides_even_with_a_live_trial_in_flight() -> None:
    b = make(threshold=1, cooldown=1.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    b.allows_request(1.0)
    assert states(b.feed(Event.PROBE_HEALTHY, 1.1)) == [("half_open", "closed")]
    # the trial's own outcome then lands in CLOSED and is counted normally
    assert b.feed(Event.LIVE_SUCCESS, 1.2) == []


def test_lost_trial_is_released_after_trial_timeout() -> None:
    b = make(threshold=1, cooldown=1.0, trial_timeout=3.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert b.allows_request(1.0)[0] is True
    assert b.allows_request(3.9)[0] is False
    allowed, out = b.allows_request(4.0)
    assert allowed is True
    assert [t.event for t in out] == [Event.TRIAL_EXPIRED, Event.TRIAL_STARTED]


def test_outcomes_while_open_are_ignored() -> None:
    b = make(threshold=1, cooldown=10.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert b.feed(Event.LIVE_SUCCESS, 1.0) == []
    assert b.feed(Event.PROBE_UNHEALTHY, 2.0) == []
    assert b.open_until == 10.0  # not extended
    assert b.state is State.OPEN


def test_live_outcome_in_half_open_without_a_trial_decides() -> None:
    b = make(threshold=1, cooldown=1.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    assert states(b.feed(Event.LIVE_SUCCESS, 1.5)) == [
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


@pytest.mark.parametrize("state", [State.OPEN, State.HALF_OPEN, State.TRIAL])
def test_reset_closes_from_every_state(state: State) -> None:
    b = make(threshold=1, cooldown=100.0)
    b.feed(Event.LIVE_FAILURE, 0.0)
    if state is not State.OPEN:
        b.advance(100.0)
    if state is State.TRIAL:
        b.allows_request(100.0)
    assert b.state is state
    out = b.feed(Event.RESET, 100.0, "reactivated")
    assert out[-1].new is State.CLOSED and b.failures == 0


def test_reset_in_closed_is_no_transition() -> None:
    assert make().feed(Event.RESET, 0.0) == []


def test_next_deadline() -> None:
    b = make(threshold=1, cooldown=7.0, trial_timeout=2.0)
    assert b.next_deadline() is None
    b.feed(Event.LIVE_FAILURE, 1.0)
    assert b.next_deadline() == 8.0
    b.allows_request(8.0)
    assert b.next_deadline() == 10.0


def test_table_invariants() -> None:
    """Every state can reach CLOSED; nothing but THRESHOLD/PROBE_UNHEALTHY leaves CLOSED."""
    assert {e for (s, e) in TRANSITIONS if s is State.CLOSED} == {
        Event.THRESHOLD,
        Event.PROBE_UNHEALTHY,
    }
    for s in State:
        if s is not State.CLOSED:
            assert TRANSITIONS.get((s, Event.RESET)) is State.CLOSED
    # 4xx/429 are LIVE_SUCCESS by the caller's classification, so they can never open it
    assert (State.CLOSED, Event.LIVE_SUCCESS) not in TRANSITIONS
