"""ReplacementPolicy: which model serves a request under random model replacement.

Sans-I/O on purpose: no sockets, no event loop, no global state. The random source
(``random.Random``) and the clock (a ``() -> float`` of seconds) are injected, so the
same object can be driven by the data plane later and by tests now with a seeded
generator and a hand-moved clock. Not wired into routing, the gateway, the admin API or
the config loader yet: the ``replacement.*`` keys are still refused as "not built yet".

Rules (``{from_pattern, to_backend, to_model}``, CONTRACT.md section 7), matched against
the backend and model a request would otherwise go to:

- ``*`` matches every request;
- a pattern equal to ``backend:model`` matches exactly that backend and model;
- otherwise the pattern is a case-sensitive substring of the requested model.

The **first matching rule wins**: rules are checked in the configured order and the
rest are not looked at, so put narrow rules before broad ones.

A request's decision, in this order:

1. A session in an active (sticky) replacement keeps the rule that activated it. A
   request that rule does not match (a session that also asks a small model for titles,
   say) is served as asked and consumes no turn; no other rule is rolled for it.
   Otherwise the first matching rule is taken; no rule, no replacement.
2. Opt-outs: the header (the caller passes ``opt_out=True`` for
   ``X-Disable-Replacement: true``) and then the session (``opt_out_session``). An
   opted-out request is served as asked; an active replacement is not consumed by it.
3. An active replacement serves the request with its target (``sticky``).
4. Otherwise ``random() < probability`` is rolled once per eligible turn. A failed roll
   is held until that turn completes, so a retry of a failed request is the same turn
   and is not rolled again (re-rolling retries would raise the rate above
   ``probability``). A successful roll makes the session replaced for ``turn_count``
   **completed** turns; when the last completes the session returns to the original
   and its next eligible turn is rolled again (there is no cool-down).

Requests without a session id are rolled per request and nothing is remembered about
them: there is nothing to attach stickiness to, and replacing that one request with the
configured probability is the closest to what the operator asked for. They never
become "sticky" and a header opt-out is the only opt-out that applies to them.

Turns: the caller calls ``finished`` once per decided request. A turn completes only
on success (``ok=True``); an error or a client abort (``ok=False``) consumes nothing.
A streamed response's turn completes at the end of the stream, so the caller calls
``finished`` when the stream ends, not when its head is sent.

Memory is bounded: a session idle for ``idle_seconds`` is forgotten (swept on every
``decide``/``finished``/``opt_out_session``, driven by the injected clock) and at most
``max_sessions`` are tracked, the least recently used dropped first. A forgotten session
starts afresh, including its opt-out (counted in ``sessions_expired`` and
``sessions_dropped``). Only sessions whose requests match a rule, or that opted out,
are tracked.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastproxy.config.schema import ReplacementConfig

# Why a request was served as it was; the data plane will put it in logs, and tests
# assert on it rather than on counters alone.
Reason = Literal[
    "no_rule",  # no rule matches (or the active rule does not match this request)
    "opt_out_header",
    "opt_out_session",
    "activated",  # a roll succeeded on this request
    "sticky",  # served by an already active replacement
    "rolled_original",  # a roll failed on this request
    "held",  # the pending turn already rolled and failed; not rolled again
]


class RuleLike(Protocol):
    """What a rule needs: config's ``ReplacementRule`` has these, and so does ``Rule``."""

    @property
    def from_pattern(self) -> str: ...

    @property
    def to_backend(self) -> str: ...

    @property
    def to_model(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Rule:
    from_pattern: str
    to_backend: str
    to_model: str

    def matches(self, backend: str, model: str) -> bool:
        pattern = self.from_pattern
        if pattern == "*":
            return True
        # Checked before the substring so "openai:gpt-4o" means that backend's model
        # only; models may themselves contain colons ("llama3:8b"), which the substring
        # form still matches.
        if pattern == f"{backend}:{model}":
            return True
        return pattern in model

    @property
    def label(self) -> tuple[str, str]:
        """(from, to) as the metrics name a rule."""
        return (self.from_pattern, f"{self.to_backend}:{self.to_model}")


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes. ``backend``/``model`` are what to send it to."""

    backend: str
    model: str
    replaced: bool
    reason: Reason
    original_backend: str
    original_model: str
    session_id: str | None = None
    rule_index: int | None = None
    # Which activation of the session served this request, so a late ``finished`` from
    # an earlier replacement cannot consume a turn of a newer one.
    activation: int = 0


class _Session:
    __slots__ = ("activation", "held", "last_seen", "opted_out", "rule_index", "turns_done")

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.opted_out = False
        self.held = False  # a failed roll waiting for its turn to complete
        self.rule_index: int | None = None  # set while a replacement is active
        self.activation = 0
        self.turns_done = 0


class ReplacementPolicy:
    """The replacement decisions and their counters; see the module docstring."""

    def __init__(
        self,
        rules: Iterable[RuleLike],
        *,
        probability: float,
        turn_count: int = 1,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_seconds: float = 3600.0,
        max_sessions: int = 100_000,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability}")
        if turn_count < 1:
            raise ValueError(f"turn_count must be at least 1, got {turn_count}")
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.rules: tuple[Rule, ...] = tuple(
            Rule(r.from_pattern, r.to_backend, r.to_model) for r in rules
        )
        for rule in self.rules:
            # An empty substring would match every model: a typo turned into "*".
            if not rule.from_pattern:
                raise ValueError("a replacement rule's from_pattern must not be empty")
        self.probability = probability
        self.turn_count = turn_count
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._idle = idle_seconds
        self._max_sessions = max_sessions
        # Least recently used first: both the idle sweep and the cap pop from the front.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._active = 0  # sessions currently replaced (a gauge, kept by reset)
        self._reset_counters()

    @classmethod
    def from_config(cls, config: ReplacementConfig, **kwargs: Any) -> ReplacementPolicy:
        return cls(
            config.replacement_rules,
            probability=config.probability,
            turn_count=config.turn_count,
            **kwargs,
        )

    def _reset_counters(self) -> None:
        self.decisions = 0
        self.probability_checks = 0
        self.activations = 0
        self.replaced_requests = 0
        self.header_opt_outs = 0
        self.session_opt_outs = 0
        self.turns_completed = 0
        self.returns_to_original = 0
        self.sessions_expired = 0
        self.sessions_dropped = 0
        self.activations_per_rule = [0] * len(self.rules)
        self.replaced_per_rule = [0] * len(self.rules)

    # -- rules -------------------------------------------------------------------------

    def match(self, backend: str, model: str) -> int | None:
        """Index of the first rule matching the request, or None."""
        for index, rule in enumerate(self.rules):
            if rule.matches(backend, model):
                return index
        return None

    # -- sessions ----------------------------------------------------------------------

    @property
    def sessions_tracked(self) -> int:
        return len(self._sessions)

    @property
    def sessions_replaced(self) -> int:
        return self._active

    def _sweep(self, now: float) -> None:
        sessions = self._sessions
        while sessions:
            sid, state = next(iter(sessions.items()))
            if now - state.last_seen < self._idle:
                break
            del sessions[sid]
            self._forget(state)
            self.sessions_expired += 1

    def _forget(self, state: _Session) -> None:
        if state.rule_index is not None:
            self._active -= 1

    def _touch(self, sid: str, now: float, create: bool) -> _Session | None:
        state = self._sessions.get(sid)
        if state is None:
            if not create:
                return None
            state = _Session(now)
            self._sessions[sid] = state
            if len(self._sessions) > self._max_sessions:
                _, oldest = self._sessions.popitem(last=False)
                self._forget(oldest)
                self.sessions_dropped += 1
        else:
            state.last_seen = now
            self._sessions.move_to_end(sid)
        return state

    def opt_out_session(self, session_id: str) -> None:
        """Never replace this session's requests again (while it is tracked).

        An active replacement ends here and counts as a return to the original.
        """
        now = self._clock()
        self._sweep(now)
        state = self._touch(session_id, now, create=True)
        assert state is not None
        state.opted_out = True
        state.held = False
        if state.rule_index is not None:
            state.rule_index = None
            self._active -= 1
            self.returns_to_original += 1

    def opt_in_session(self, session_id: str) -> None:
        """Undo ``opt_out_session``."""
        state = self._sessions.get(session_id)
        if state is not None:
            state.opted_out = False

    def is_opted_out(self, session_id: str) -> bool:
        self._sweep(self._clock())  # an idle session's opt-out is forgotten, as documented
        state = self._sessions.get(session_id)
        return state is not None and state.opted_out

    # -- decisions ---------------------------------------------------------------------

    def decide(
        self, session_id: str | None, model: str, backend: str, opt_out: bool = False
    ) -> Decision:
        now = self._clock()
        self._sweep(now)
        self.decisions += 1

        def original(reason: Reason, rule_index: int | None = None) -> Decision:
            return Decision(backend, model, False, reason, backend, model, session_id, rule_index)

        # A known session is touched whatever the outcome (it is in use); a new one is
        # tracked only once a rule matches, so unmatched traffic costs no memory.
        state = None
        if session_id is not None:
            state = self._touch(session_id, now, create=False)
        if state is not None and state.rule_index is not None:
            index = state.rule_index
            if not self.rules[index].matches(backend, model):
                return original("no_rule")
        else:
            found = self.match(backend, model)
            if found is None:
                return original("no_rule")
            index = found
            if session_id is not None and state is None:
                state = self._touch(session_id, now, create=True)

        if opt_out:
            self.header_opt_outs += 1
            return original("opt_out_header", index)
        if state is not None and state.opted_out:
            self.session_opt_outs += 1
            return original("opt_out_session", index)

        rule = self.rules[index]
        if state is not None and state.rule_index is not None:
            self.replaced_requests += 1
            self.replaced_per_rule[index] += 1
            return Decision(
                rule.to_backend,
                rule.to_model,
                True,
                "sticky",
                backend,
                model,
                session_id,
                index,
                state.activation,
            )
        if state is not None and state.held:
            return original("held", index)

        self.probability_checks += 1
        if self._rng.random() < self.probability:
            self.activations += 1
            self.activations_per_rule[index] += 1
            self.replaced_requests += 1
            self.replaced_per_rule[index] += 1
            activation = 0
            if state is not None:
                state.rule_index = index
                state.activation += 1
                state.turns_done = 0
                self._active += 1
                activation = state.activation
            return Decision(
                rule.to_backend,
                rule.to_model,
                True,
                "activated",
                backend,
                model,
                session_id,
                index,
                activation,
            )
        if state is not None:
            state.held = True
        return original("rolled_original", index)

    def finished(self, session_id: str | None, decision: Decision, ok: bool) -> None:
        """The request ``decision`` was made for has ended; ``ok`` only on success.

        Call it when the response has fully ended: for a stream, after its last event.
        A failure or a client abort (``ok=False``) consumes no turn and keeps a held
        roll, so the retry is the same turn.
        """
        now = self._clock()
        self._sweep(now)
        if session_id is None:
            return
        state = self._touch(session_id, now, create=False)
        if state is None or not ok:
            return
        if decision.replaced:
            if state.rule_index is None or decision.activation != state.activation:
                return  # from a replacement that has ended since
            state.turns_done += 1
            self.turns_completed += 1
            if state.turns_done >= self.turn_count:
                state.rule_index = None
                self._active -= 1
                self.returns_to_original += 1
        elif decision.reason in ("rolled_original", "held"):
            state.held = False

    # -- metrics -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data; the admin endpoint's JSON shape is built from it."""
        return {
            "decisions": self.decisions,
            "probability_checks": self.probability_checks,
            "activations": self.activations,
            "replaced_requests": self.replaced_requests,
            "turns_completed": self.turns_completed,
            "returns_to_original": self.returns_to_original,
            "sessions_replaced": self._active,
            "sessions_tracked": len(self._sessions),
            "sessions_expired": self.sessions_expired,
            "sessions_dropped": self.sessions_dropped,
            "opt_outs": {
                "total": self.header_opt_outs + self.session_opt_outs,
                "header": self.header_opt_outs,
                "session": self.session_opt_outs,
            },
            "rules": [
                {
                    "from": rule.label[0],
                    "to": rule.label[1],
                    "activations": self.activations_per_rule[i],
                    "replaced_requests": self.replaced_per_rule[i],
                }
                for i, rule in enumerate(self.rules)
            ],
        }

    def reset(self) -> None:
        """Zero the counters. Sessions and their replacements go on: they are state,
        not metrics, and a metrics reset must not change which model serves anyone."""
        self._reset_counters()
