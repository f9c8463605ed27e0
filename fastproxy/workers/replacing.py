"""Random model replacement with workers: one policy, in the primary, for every worker.

Stickiness is per session and a session's requests land on any worker (the kernel
spreads connections, and a client opens new ones), so the decisions cannot be made per
worker: two workers would each roll for the same turn, and each would count its own
activations. The policy (core/replacement.py) therefore lives only in the primary,
which decides for all of them and is what ``/v1/replacement/metrics`` reads: every
decision is made, and counted, once.

A worker's side is `RemoteReplacer`, the request cycle's `Replacer`:

- ``decide`` first checks the rules itself (they are in the config every worker has):
  a request no rule matches gets "no_rule" at once, as the policy would answer, with no
  round trip (unless it opts its session out: the primary records that). So traffic the rules do not name pays one loop over the rules.
- A request a rule matches is asked of the primary: a DECIDE frame (``[[token,
  session, model, backend, opt_out, dialect]]``) written at once, not batched per loop
  iteration (measured at c=1 with two workers: batching both ways added 160-210 us to a
  matched request's median latency, writing at once 110-160 us; the write is one
  syscall on a loop that makes several per request anyway). The cycle waits in its
  ROUTE stage, with no task and no future, and the primary's DECIDED frame (also
  written at once) calls it back (``resume``).
- ``finished`` sends a TURNS frame **at once** (not batched): it is written right after
  the response's last bytes, so it reaches the primary before the client can have sent
  its next request to another worker, and that request sees the turn completed.
- An answer that does not come within ``DECIDE_TIMEOUT_S`` (a primary that stopped
  reading), or a channel that closed, is answered "unavailable": the request is served
  as asked. Replacement is a preference, never a reason to fail or hold a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import orjson

from ..config import Config
from ..core.replacement import (
    OPT_OUT_SESSION,
    Decision,
    ReplacementPolicy,
    Resume,
    Rule,
    decide_request,
    decision_from_wire,
    decision_to_wire,
)
from .channel import Channel, Kind

log = logging.getLogger("fastproxy.workers")

DECIDE_TIMEOUT_S = 2.0


class RemoteReplacer:
    """A worker's `Replacer`: decisions asked of the primary (see the module docstring)."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self.rules: tuple[Rule, ...] = ()
        self.dialects: Mapping[str, frozenset[str]] = {}
        self._pending: dict[int, tuple[Resume, float, Decision]] = {}
        self._next = 0
        self.timeouts = 0

    def configure(self, config: Config, dialects: Mapping[str, frozenset[str]]) -> None:
        rep = config.replacement
        self.rules = tuple(
            Rule(r.from_pattern, r.to_backend, r.to_model) for r in rep.replacement_rules
        )
        self.dialects = dialects

    def _matches(self, backend: str, model: str, dialect: str) -> bool:
        for rule in self.rules:
            if rule.matches(backend, model) and dialect in self.dialects.get(rule.to_backend, ()):
                return True
        return False

    def decide(
        self,
        session_id: str | None,
        model: str,
        backend: str,
        opt_out: int,
        dialect: str,
        resume: Resume,
    ) -> Decision | None:
        # A session opt-out is recorded by the primary even for a request no rule matches.
        unmatched = opt_out != OPT_OUT_SESSION and not self._matches(backend, model, dialect)
        if unmatched or self.channel.closed:
            return Decision(backend, model, False, "no_rule", backend, model, session_id)
        self._next += 1
        token = self._next
        fallback = Decision(backend, model, False, "unavailable", backend, model, session_id)
        self._pending[token] = (resume, time.monotonic(), fallback)
        self.channel.send_json(Kind.DECIDE, [[token, session_id, model, backend, opt_out, dialect]])
        self.channel.flush()
        return None

    def finished(self, session_id: str | None, decision: Decision, ok: bool) -> None:
        if decision.reason in ("no_rule", "unavailable"):
            return  # decided here: the primary has nothing to complete
        self.channel.send_json(Kind.TURNS, [[session_id, decision_to_wire(decision), ok]])
        self.channel.flush()

    def decided(self, payload: memoryview) -> None:
        """A DECIDED frame: resume each waiting request with its decision."""
        for token, wire in orjson.loads(payload):
            entry = self._pending.pop(token, None)
            if entry is not None:
                entry[0](decision_from_wire(wire))

    def expire(self, now: float) -> None:
        """Serve as asked the requests whose decision is overdue (the worker's tick)."""
        late = [t for t, (_, at, _) in self._pending.items() if now - at > DECIDE_TIMEOUT_S]
        if late:
            self.timeouts += len(late)
            log.warning(
                "replacement: %d decisions overdue from the primary; served as asked", len(late)
            )
        for token in late:
            resume, _, fallback = self._pending.pop(token)
            resume(fallback)

    def abandon(self) -> None:
        """The primary is gone: every waiting request is served as asked."""
        pending, self._pending = self._pending, {}
        for resume, _, fallback in pending.values():
            resume(fallback)

    @property
    def waiting(self) -> int:
        return len(self._pending)


def answer(policy: ReplacementPolicy | None, payload: memoryview) -> bytes:
    """The primary's side of a DECIDE frame: each request decided by the one policy."""
    out = []
    for token, session_id, model, backend, opt_out, dialect in orjson.loads(payload):
        if policy is None:  # turned off by a reload while the question travelled
            d = Decision(backend, model, False, "no_rule", backend, model, session_id)
        else:
            d = decide_request(policy, session_id, model, backend, int(opt_out), dialect)
        out.append([token, decision_to_wire(d)])
    return orjson.dumps(out)


def turns(policy: ReplacementPolicy | None, payload: memoryview) -> None:
    """The primary's side of a TURNS frame: each decided request's end."""
    if policy is None:
        return
    for session_id, wire, ok in orjson.loads(payload):
        policy.finished(session_id, decision_from_wire(wire), bool(ok))
