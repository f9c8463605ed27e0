"""ReplacementPolicy: which model serves a request under random model replacement.

Sans-I/O on purpose: no sockets, no event loop, no global state. The random source
(``random.Random``) and the clock (a ``() -> float`` of seconds) are injected, so the
same object is driven by the request cycle (``dataplane/cycle.py``, through
``LocalReplacer`` below; with workers, by the primary on the workers' behalf:
``workers/replacing.py``) and by tests with a seeded generator and a hand-moved clock. ``metrics_document`` builds the counters part of
``/v1/replacement/metrics``; the admin plane adds the effectiveness from the usage store.

Rules (``{from_pattern, to_backend, to_model}``, as the contract defines them), matched against
the backend and model a request would otherwise go to:

- ``*`` matches every request;
- a pattern equal to ``backend:model`` matches exactly that backend and model;
- otherwise the pattern is a case-sensitive substring of the requested model.

The **first matching rule wins**: rules are checked in the configured order and the
rest are not looked at, so put narrow rules before broad ones. A rule whose target does
not speak the request's API (``set_target_dialects``; an OpenAI-type target for an
Anthropic ``/v1/messages`` request, say) does not match that request: the gateway does
not translate between dialects, so replacing it could only fail.

A request's decision, in this order:

1. A session in an active (sticky) replacement keeps the rule that activated it. A
   request that rule does not match (a session that also asks a small model for titles,
   say) is served as asked and consumes no turn; no other rule is rolled for it.
   Otherwise the first matching rule is taken; no rule, no replacement.
2. Opt-outs: the header (the caller passes ``opt_out=True`` for
   ``X-Disable-Replacement: true`` or ``session``; ``decide_request``) and then the
   session (``opt_out_session``, which ``X-Disable-Replacement: session`` calls). An
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

Metrics beside the counters: activations and opt-outs in the last 60 seconds (sixty
one-second buckets, not a list of times), sessions counted once per kind (checked,
activated, opted out) since the last reset, and how many turns each replacement served
before its session returned. A session is counted once while it is tracked: one
forgotten (idle, or over the cap) and seen again counts again, which keeps the unique
counts in the same bounded memory as the sessions themselves.

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
from collections.abc import Callable, Iterable, Mapping
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
    "unavailable",  # (workers) the primary did not answer in time: served as asked
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


# What a session has been counted as since the last reset (bits of _Session.counted).
_CHECKED, _ACTIVATED, _OPTED_OUT = 1, 2, 4


class _Session:
    __slots__ = (
        "activation",
        "counted",
        "epoch",
        "held",
        "last_seen",
        "opted_out",
        "rule_index",
        "turns_done",
    )

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.opted_out = False
        self.held = False  # a failed roll waiting for its turn to complete
        self.rule_index: int | None = None  # set while a replacement is active
        self.activation = 0
        self.turns_done = 0
        self.counted = 0  # _CHECKED | _ACTIVATED | _OPTED_OUT, for the unique counts
        self.epoch = 0  # the counters' reset generation ``counted`` belongs to


class _Window:
    """Events in the last ``span`` seconds: one counter per whole second, so a burst of
    a million activations costs sixty integers, not a million timestamps."""

    __slots__ = ("_counts", "_seconds", "span")

    def __init__(self, span: int = 60) -> None:
        self.span = span
        self._seconds = [-1] * span
        self._counts = [0] * span

    def add(self, now: float) -> None:
        second = int(now)
        slot = second % self.span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += 1

    def total(self, now: float) -> int:
        second = int(now)
        return sum(
            c
            for s, c in zip(self._seconds, self._counts, strict=True)
            if second - self.span < s <= second
        )


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
        self._epoch = 0
        # Backend -> the dialects it speaks; None: every target takes every request.
        self._dialects: Mapping[str, frozenset[str]] | None = None
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
        self._epoch += 1
        self.started_at = self._clock()
        self.started_wall = time.time()  # the effectiveness window's start, in the store's time
        self.activation_window = _Window()
        self.opt_out_window = _Window()
        self.unique_checked = 0
        self.unique_activated = 0
        self.unique_opted_out = 0
        # Turns a replacement served before its session returned -> how many did.
        self.turns_before_return: dict[int, int] = {}
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

    def set_target_dialects(self, dialects: Mapping[str, frozenset[str]] | None) -> None:
        """The APIs each backend speaks (routing's view; replaced again by a reload). A
        rule only matches requests of an API its target speaks."""
        self._dialects = dialects

    def _usable(self, rule: Rule, dialect: str | None) -> bool:
        dialects = self._dialects
        if dialect is None or dialects is None:
            return True
        return dialect in dialects.get(rule.to_backend, ())

    def match(self, backend: str, model: str, dialect: str | None = None) -> int | None:
        """Index of the first rule matching the request, or None."""
        for index, rule in enumerate(self.rules):
            if rule.matches(backend, model) and self._usable(rule, dialect):
                return index
        return None

    def _count(self, state: _Session | None, kind: int) -> bool:
        """Whether ``state`` is counted as ``kind`` for the first time since the reset."""
        if state is None:
            return False
        if state.epoch != self._epoch:
            state.epoch = self._epoch
            state.counted = 0
        if state.counted & kind:
            return False
        state.counted |= kind
        return True

    def _returned(self, state: _Session) -> None:
        """An active replacement ends: the session goes back to the original."""
        state.rule_index = None
        self._active -= 1
        self.returns_to_original += 1
        done = state.turns_done
        self.turns_before_return[done] = self.turns_before_return.get(done, 0) + 1

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
            self._returned(state)

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
        self,
        session_id: str | None,
        model: str,
        backend: str,
        opt_out: bool = False,
        dialect: str | None = None,
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
            active = self.rules[index]
            if not (active.matches(backend, model) and self._usable(active, dialect)):
                return original("no_rule")
        else:
            found = self.match(backend, model, dialect)
            if found is None:
                return original("no_rule")
            index = found
            if session_id is not None and state is None:
                state = self._touch(session_id, now, create=True)

        if opt_out or (state is not None and state.opted_out):
            self.opt_out_window.add(now)
            if self._count(state, _OPTED_OUT):
                self.unique_opted_out += 1
            if opt_out:
                self.header_opt_outs += 1
                return original("opt_out_header", index)
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
        if self._count(state, _CHECKED):
            self.unique_checked += 1
        if self._rng.random() < self.probability:
            self.activations += 1
            self.activation_window.add(now)
            if self._count(state, _ACTIVATED):
                self.unique_activated += 1
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
                self._returned(state)
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

    def metrics_document(self, enabled: bool = True) -> dict[str, Any]:
        """The counters as ``/v1/replacement/metrics`` shows them (the contract's shape
        without ``effectiveness``, which the admin plane adds from the usage store; the
        per-rule counters it needs are ``snapshot()["rules"]``)."""
        now = self._clock()
        returns = sum(self.turns_before_return.values())
        served = sum(t * n for t, n in self.turns_before_return.items())
        checks = self.probability_checks
        return {
            "enabled": enabled,
            "elapsed_seconds": round(max(0.0, now - self.started_at), 3),
            "activation_metrics": {
                "total_activations": self.activations,
                "activation_rate": self.activations / checks if checks else 0.0,
                "activations_last_60s": self.activation_window.total(now),
                "unique_sessions_activated": self.unique_activated,
            },
            "turn_count_metrics": {
                "total_turns_completed": self.turns_completed,
                "average_turns_before_return": served / returns if returns else 0.0,
                "turn_count_distribution": {
                    str(t): n for t, n in sorted(self.turns_before_return.items())
                },
            },
            "opt_out_metrics": {
                "total_opt_outs": self.header_opt_outs + self.session_opt_outs,
                "header_opt_outs": self.header_opt_outs,
                "session_opt_outs": self.session_opt_outs,
                "opt_outs_last_60s": self.opt_out_window.total(now),
                "unique_sessions_opted_out": self.unique_opted_out,
            },
            "probability_check_metrics": {
                "total_probability_checks": checks,
                "unique_sessions_checked": self.unique_checked,
            },
        }

    def reset(self) -> None:
        """Zero the counters. Sessions and their replacements go on: they are state,
        not metrics, and a metrics reset must not change which model serves anyone."""
        self._reset_counters()


# -- what the data plane calls ---------------------------------------------------------

Resume = Callable[[Decision], None]

# What a request's ``X-Disable-Replacement`` header asks for: ``true`` this request
# served as asked; ``session`` the same, and the session opted out from now on (while
# it is tracked: an idle session is forgotten, its opt-out with it). Anything else, or
# no header: nothing.
NO_OPT_OUT, OPT_OUT_REQUEST, OPT_OUT_SESSION = 0, 1, 2


def opt_out_of(header: bytes | None) -> int:
    if header is None:
        return NO_OPT_OUT
    value = header.strip().lower()
    if value == b"true":
        return OPT_OUT_REQUEST
    if value == b"session":
        return OPT_OUT_SESSION
    return NO_OPT_OUT


def decide_request(
    policy: ReplacementPolicy,
    session_id: str | None,
    model: str,
    backend: str,
    opt_out: int,
    dialect: str | None,
) -> Decision:
    """``policy.decide`` for a request's header opt-out (``opt_out_of``): a session
    opt-out is recorded first; the request itself counts as a header opt-out."""
    if opt_out == OPT_OUT_SESSION and session_id is not None:
        policy.opt_out_session(session_id)
    return policy.decide(session_id, model, backend, opt_out != NO_OPT_OUT, dialect)


class Replacer(Protocol):
    """The request cycle's view of replacement (None on the plane when it is off).

    ``decide`` returns the decision at once, or None when it must be asked elsewhere
    (a worker asks the primary): then ``resume(decision)`` is called exactly once, later,
    on the same loop. ``finished`` reports the end of a decided request, as
    ``ReplacementPolicy.finished``. Neither blocks."""

    def decide(
        self,
        session_id: str | None,
        model: str,
        backend: str,
        opt_out: int,
        dialect: str,
        resume: Resume,
    ) -> Decision | None: ...

    def finished(self, session_id: str | None, decision: Decision, ok: bool) -> None: ...


class LocalReplacer:
    """One process: the policy in this process, asked synchronously."""

    __slots__ = ("policy",)

    def __init__(self, policy: ReplacementPolicy) -> None:
        self.policy = policy

    def decide(
        self,
        session_id: str | None,
        model: str,
        backend: str,
        opt_out: int,
        dialect: str,
        resume: Resume,
    ) -> Decision | None:
        return decide_request(self.policy, session_id, model, backend, opt_out, dialect)

    def finished(self, session_id: str | None, decision: Decision, ok: bool) -> None:
        self.policy.finished(session_id, decision, ok)


def decision_to_wire(d: Decision) -> list[Any]:
    """A decision as the workers' control channel carries it (JSON)."""
    return [
        d.backend,
        d.model,
        d.replaced,
        d.reason,
        d.original_backend,
        d.original_model,
        d.session_id,
        d.rule_index,
        d.activation,
    ]


def decision_from_wire(v: list[Any]) -> Decision:
    return Decision(v[0], v[1], bool(v[2]), v[3], v[4], v[5], v[6], v[7], int(v[8]))
