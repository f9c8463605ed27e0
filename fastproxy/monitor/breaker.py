"""The circuit breaker of one backend instance, as a sans-I/O state machine.

Rules of this module (h11's habit: the rules first, then the table):

1. Everything that decides a breaker transition lives in this file; callers feed events
   and receive the transition (or None). Nothing here sleeps, reads a clock or does I/O:
   ``now`` (monotonic seconds) is passed in, so tests drive time by hand.
2. The transitions are one table, ``TRANSITIONS[(state, event)] -> state``. A pair that is
   not in the table means "this event does not change this state" (an outcome that
   arrives while the breaker is open, for example). Counters and deadlines are updated
   only by ``_enter`` and by the counting rule in ``feed``, nowhere else.
3. The breaker does not know where events come from. The health service turns live
   attempt outcomes and probe verdicts into events, and calls ``allows_request`` when a
   request is actually sent to the backend; readers (routing's question included) use
   ``state_at``, which changes nothing.

Theory of operation. CLOSED counts consecutive transient failures of live traffic (5xx,
connect, timeout, reset, TLS; never 4xx, never 429, which are the caller's or a quota's
business). A success resets the count. At ``failure_threshold`` the event is rewritten to
THRESHOLD and the breaker OPENs; an unhealthy verdict from the health probes opens it at
once (the probes already applied their own consecutive-failure threshold). OPEN refuses
traffic until ``open_until``; then COOLDOWN_ELAPSED makes it HALF_OPEN. In HALF_OPEN the
first request sent to the backend is the trial (TRIAL, still reported as "half_open");
routing leaves the backend out of other plans until the trial's outcome arrives. A probe verdict that
arrives first decides as well: a probe is a trial that costs no tokens. Success closes
the breaker, failure reopens it for another cooldown. A trial whose outcome never arrives
(the client left before the backend answered) is released after
``trial_timeout`` so the breaker cannot stay stuck half-open.

Why a live outcome in HALF_OPEN (no trial claimed) decides too: with
``circuit_breaker_enabled: false`` nobody claims trials, and a request that was planned
before the breaker opened is still real evidence about the backend now.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # cooldown over, waiting for a trial
    TRIAL = "trial"  # a trial request is in flight; reported as "half_open"

    @property
    def public(self) -> str:
        return "half_open" if self is State.TRIAL else self.value


class Event(Enum):
    LIVE_SUCCESS = "live_success"  # a 2xx/3xx/4xx head from live traffic
    LIVE_FAILURE = "live_failure"  # 5xx, connect, timeout, reset, TLS from live traffic
    THRESHOLD = "threshold"  # derived: LIVE_FAILURE that reached failure_threshold
    PROBE_HEALTHY = "probe_healthy"  # a probe succeeded and the endpoint is healthy
    PROBE_UNHEALTHY = "probe_unhealthy"  # a probe ended with the endpoint unhealthy
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    TRIAL_STARTED = "trial_started"  # a request was sent to the backend in HALF_OPEN
    TRIAL_EXPIRED = "trial_expired"  # the trial's outcome never arrived
    RESET = "reset"  # operator: POST /v1/diagnostics/backends/{name}/reactivate


_C, _O, _H, _T = State.CLOSED, State.OPEN, State.HALF_OPEN, State.TRIAL

TRANSITIONS: dict[tuple[State, Event], State] = {
    # closed: live failures are counted (see `feed`); the threshold or a probe verdict opens
    (_C, Event.THRESHOLD): _O,
    (_C, Event.PROBE_UNHEALTHY): _O,
    # open: refuses traffic; only time (or an operator) moves it
    (_O, Event.COOLDOWN_ELAPSED): _H,
    (_O, Event.RESET): _C,
    # half-open: the first request sent to the backend becomes the trial
    (_H, Event.TRIAL_STARTED): _T,
    (_H, Event.LIVE_SUCCESS): _C,
    (_H, Event.LIVE_FAILURE): _O,
    (_H, Event.PROBE_HEALTHY): _C,
    (_H, Event.PROBE_UNHEALTHY): _O,
    (_H, Event.RESET): _C,
    # trial in flight: its outcome (or a probe's, whichever comes first) decides
    (_T, Event.LIVE_SUCCESS): _C,
    (_T, Event.LIVE_FAILURE): _O,
    (_T, Event.PROBE_HEALTHY): _C,
    (_T, Event.PROBE_UNHEALTHY): _O,
    (_T, Event.TRIAL_EXPIRED): _H,
    (_T, Event.RESET): _C,
}


class Transition:
    """What changed, for the notification channels."""

    __slots__ = ("backend", "event", "new", "old", "reason")

    def __init__(self, backend: str, old: State, new: State, event: Event, reason: str) -> None:
        self.backend = backend
        self.old = old
        self.new = new
        self.event = event
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"Transition({self.backend}: {self.old.public} -> {self.new.public}, {self.reason!r})"
        )


class Breaker:
    """One backend instance's breaker. Not thread-safe; lives on the event loop."""

    __slots__ = (
        "cooldown",
        "failures",
        "last_failure",
        "name",
        "open_until",
        "state",
        "threshold",
        "trial_timeout",
        "trial_until",
    )

    def __init__(
        self, name: str, failure_threshold: int, cooldown: float, trial_timeout: float | None = None
    ) -> None:
        self.name = name
        self.threshold = failure_threshold
        self.cooldown = cooldown
        self.trial_timeout = cooldown if trial_timeout is None else trial_timeout
        self.state = State.CLOSED
        self.failures = 0  # consecutive transient failures (kept while open, for display)
        self.last_failure = ""
        self.open_until = 0.0  # monotonic; meaningful in OPEN
        self.trial_until = 0.0  # monotonic; meaningful in TRIAL

    # -- the one entry point ---------------------------------------------------------
    def feed(self, event: Event, now: float, reason: str = "") -> list[Transition]:
        """Apply ``event`` at ``now``; return the transitions (none if nothing changed).

        Timed transitions (cooldown, trial expiry) are applied first, so a caller that
        feeds an outcome long after ``open_until`` sees the half-open rules: that is why
        one event can yield two transitions (open -> half_open -> closed)."""
        out = self.advance(now)
        if event is Event.LIVE_FAILURE:
            # The counting rule, the only state change outside the table. The count goes
            # on while open (it is shown); only CLOSED compares it with the threshold.
            self.last_failure = reason
            self.failures += 1
            if self.state is State.CLOSED:
                if self.failures < self.threshold:
                    return out
                event = Event.THRESHOLD
                reason = f"{self.failures} consecutive failures (last: {reason})"
        elif event is Event.LIVE_SUCCESS and self.state is State.CLOSED:
            self.failures = 0
        new = TRANSITIONS.get((self.state, event))
        if new is not None:
            out.append(self._enter(new, event, now, reason))
        return out

    def advance(self, now: float) -> list[Transition]:
        """Apply the transitions that time alone causes (cooldown over, trial lost)."""
        if self.state is State.OPEN and now >= self.open_until:
            return [
                self._enter(
                    State.HALF_OPEN,
                    Event.COOLDOWN_ELAPSED,
                    now,
                    f"cooldown of {self.cooldown:g}s elapsed",
                )
            ]
        if self.state is State.TRIAL and now >= self.trial_until:
            return [
                self._enter(
                    State.HALF_OPEN,
                    Event.TRIAL_EXPIRED,
                    now,
                    "no outcome for the trial request; another may try",
                )
            ]
        return []

    def state_at(self, now: float) -> State:
        """The state ``advance(now)`` would leave, without applying it: for readers,
        which must never move a breaker (the owner's timer applies it on time)."""
        if self.state is State.OPEN and now >= self.open_until:
            return State.HALF_OPEN
        if self.state is State.TRIAL and now >= self.trial_until:
            return State.HALF_OPEN
        return self.state

    def allows_request(self, now: float) -> tuple[bool, list[Transition]]:
        """A request is being sent (the health service's ``attempt_started``). In
        HALF_OPEN the first caller becomes the trial."""
        out = self.advance(now)
        state = self.state
        if state is State.CLOSED:
            return True, out
        if state is State.HALF_OPEN:
            out.append(
                self._enter(State.TRIAL, Event.TRIAL_STARTED, now, "trial request let through")
            )
            return True, out
        return False, out

    def next_deadline(self) -> float | None:
        """When ``advance`` will next change something (for the caller's timer)."""
        if self.state is State.OPEN:
            return self.open_until
        if self.state is State.TRIAL:
            return self.trial_until
        return None

    # -- entry actions ---------------------------------------------------------------
    def _enter(self, new: State, event: Event, now: float, reason: str) -> Transition:
        old = self.state
        self.state = new
        if new is State.OPEN:
            self.open_until = now + self.cooldown
        elif new is State.CLOSED:
            self.failures = 0
            self.open_until = 0.0
        elif new is State.TRIAL:
            self.trial_until = now + self.trial_timeout
        return Transition(self.name, old, new, event, reason)
