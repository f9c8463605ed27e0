"""Admission: rate limits and budgets on the request path (docs/policy.md, "Rate limits"
and "Budgets", "How it is wired").

The plane holds an ``Admission`` only when the config names a limit or a budget; without
one the cycle makes a single ``is None`` test. What it holds:

- the ``Limiter`` (core/ratelimit.py): in one process it holds the ``Ledger`` and never
  waits; in a worker its asks go to the primary through ``send_asks`` and the grants
  come back through ``on_grants``. The scopes a request names are prebuilt per config
  load: ``key:<name>`` from ``auth.keys[].limits``, ``model:<name>`` from
  ``rate_limits.models``.
- the budget checker: the ``BudgetBook`` itself in one process, a ``BudgetGate`` (the
  blocked set the primary pushes) in a worker. The subjects a key is charged to
  (``key:<name>``, ``team:<team>``, only those with a budget) are prebuilt too.

A request waiting for a grant (workers, an empty lease) waits as a replacement decision
does: the cycle gives a callback, and ``on_grants`` or ``tick`` calls it with the
outcome. No task and no future per request.

The prompt-token estimate at the start is the body's length / 4 (``estimate_tokens``):
counting tokens is proportional to the body and must not run on the event loop, and the
backend's usage replaces the estimate when the request ends (``finished``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from ..config import Config
from ..core.budget import Budget, BudgetBook, BudgetGate, BudgetRefusal
from ..core.errors import RequestRejected
from ..core.keys import ClientKey
from ..core.ratelimit import (
    Ask,
    Grant,
    Handle,
    Ledger,
    Limiter,
    Refusal,
    Scope,
    Wait,
    retry_after_seconds,
)
from ..core.records import BackendUsage, ExchangeRecord

log = logging.getLogger("fastproxy.data")

# One process answers every ask in-line; a worker waits at most this long for the
# primary before it admits (fail open, as the core documents).
WAIT_TIMEOUT_S: Final = 2.0
Resume = Callable[[Handle | Refusal], None]
# USD for a finished request (the usage record's price rule), or None: unpriced.
CostOf = Callable[[ExchangeRecord], float | None]


def estimate_tokens(body_length: int) -> int:
    """A prompt's tokens before anyone counted them: about four bytes of JSON a token.
    An upper bound for English text in a JSON body (keys, quotes and roles count too),
    which is the side a limit should err on; the backend's figure replaces it."""
    return body_length >> 2


class LimitRefused(RequestRejected):
    """A 429 the gateway answers itself (a rate limit or a budget): never a backend's,
    so it is never failed over. ``error_type`` is the OpenAI dialect's ``type``."""

    status = 429

    def __init__(self, message: str, *, code: str, error_type: str, headers: bytes) -> None:
        super().__init__(message, status=429, code=code, headers=headers)
        self.error_type = error_type


def _lines(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in pairs)


def rate_refused(refusal: Refusal) -> LimitRefused:
    """A rate-limit refusal as the error the cycle answers with (OpenAI's ``type`` is
    the resource, as OpenAI sends it: ``requests`` or ``tokens``)."""
    return LimitRefused(
        refusal.message,
        code="rate_limit_exceeded",
        error_type=refusal.resource,
        headers=_lines(refusal.headers()),
    )


def budget_refused(refusal: BudgetRefusal, now: float) -> LimitRefused:
    """A budget refusal: 429 ``insufficient_quota`` (docs/policy.md says why), with a
    ``retry-after`` to the period's reset and ``x-should-retry: false``: both SDKs would
    otherwise retry a 429 at once, and nothing changes before the reset."""
    wait = retry_after_seconds(max(1.0, refusal.resets_at - now))
    return LimitRefused(
        refusal.message,
        code="insufficient_quota",
        error_type="insufficient_quota",
        headers=b"retry-after: %d\r\nx-should-retry: false\r\n" % wait,
    )


def configured(config: Config) -> bool:
    """Whether ``config`` names any rate limit or budget (else the plane holds None)."""
    return limits_configured(config) or budgets_configured(config)


def limits_configured(config: Config) -> bool:
    return bool(config.rate_limits.models) or any(k.limits is not None for k in config.auth.keys)


def budgets_configured(config: Config) -> bool:
    return any(k.budget is not None for k in config.auth.keys) or any(
        t.budget is not None for t in config.auth.teams.values()
    )


def budgets_of(config: Config) -> list[Budget]:
    """The ``Budget`` of every key and team that has one."""
    out = [
        Budget(f"key:{k.name}", k.budget.usd, k.budget.period)
        for k in config.auth.keys
        if k.budget is not None
    ]
    out += [
        Budget(f"team:{name}", t.budget.usd, t.budget.period)
        for name, t in config.auth.teams.items()
        if t.budget is not None
    ]
    return out


def subjects_of(config: Config) -> dict[str, tuple[str, ...]]:
    """Per key name, the budget subjects its requests are checked against and charged
    to: the key, then its team (those with a budget only; keys with none are absent)."""
    teams = {n for n, t in config.auth.teams.items() if t.budget is not None}
    out: dict[str, tuple[str, ...]] = {}
    for k in config.auth.keys:
        subjects = []
        if k.budget is not None:
            subjects.append(f"key:{k.name}")
        if k.team is not None and k.team in teams:
            subjects.append(f"team:{k.team}")
        if subjects:
            out[k.name] = tuple(subjects)
    return out


class Admission:
    """What the request path asks before a request reaches routing; see the module
    docstring. Built by the gateway (one process) or the worker, rebuilt on reload with
    ``reconfigure`` (the limiter and the budget state carry over)."""

    __slots__ = (
        "_keys",
        "_models",
        "_waiting",
        "budget",
        "charged",
        "cost_of",
        "limiter",
        "send_asks",
        "subjects",
        "window",
    )

    def __init__(
        self,
        config: Config,
        *,
        limiter: Limiter | None,
        budget: BudgetBook | BudgetGate | None,
        cost_of: CostOf | None = None,
        charged: Callable[[tuple[str, ...], float], None] | None = None,
        send_asks: Callable[[list[Ask], bool], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.budget = budget
        # How a finished request's cost is known (set by the gateway or worker: the
        # price table lives with the monitoring services), and where it goes: the book
        # in one process, the spend sums for the primary in a worker.
        self.cost_of = cost_of
        self.charged = charged
        # A worker's way to the primary; None in one process (the ledger is in-line).
        self.send_asks = send_asks
        self._waiting: dict[Wait, Resume] = {}
        self.window = config.rate_limits.window_seconds
        self._keys: dict[str, Scope] = {}
        self._models: dict[str, Scope] = {}
        self.subjects: dict[str, tuple[str, ...]] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """The scopes and subjects of ``config``: new ``Scope`` objects, so a changed
        limit applies from the next request (the limiter follows leases by name)."""
        self._keys = {
            k.name: Scope(f"key:{k.name}", k.limits.rpm, k.limits.tpm)
            for k in config.auth.keys
            if k.limits is not None
        }
        self._models = {
            model: Scope(f"model:{model}", lim.rpm, lim.tpm)
            for model, lim in config.rate_limits.models.items()
        }
        self.subjects = subjects_of(config)

    # -- the request path ------------------------------------------------------------
    def check_budget(self, key: ClientKey | None) -> LimitRefused | None:
        """The key's or its team's budget is spent: the refusal to answer with. (The
        wall clock is read only for a refusal's retry-after.)"""
        budget = self.budget
        if budget is None or key is None or key.name is None:
            return None
        subjects = self.subjects.get(key.name)
        if subjects is None:
            return None
        refusal = budget.check(subjects)
        return None if refusal is None else budget_refused(refusal, time.time())

    def scopes(self, key: ClientKey | None, model: str) -> tuple[Scope, ...]:
        """The limited scopes a request names: its key's, its model's, both or none."""
        k = self._keys.get(key.name) if key is not None and key.name is not None else None
        m = self._models.get(model)
        if k is None:
            return () if m is None else (m,)
        return (k,) if m is None else (k, m)

    def reserve(
        self, scopes: tuple[Scope, ...], tokens: int, resume: Resume
    ) -> Handle | Refusal | None:
        """Admit or refuse now, or None: the request waits, and ``resume`` gets the
        outcome (a worker whose lease ran dry)."""
        limiter = self.limiter
        assert limiter is not None
        outcome = limiter.reserve(scopes, tokens)
        waiting = type(outcome) is Wait
        if waiting:
            self._waiting[outcome] = resume  # type: ignore[index]
        if limiter.outbox:
            self._send(waiting)
        return None if waiting else outcome  # type: ignore[return-value]

    def headers(self, handle: Handle) -> bytes:
        """The x-ratelimit-* lines of an admitted request's response head."""
        assert self.limiter is not None
        return self.limiter.header_lines(handle)

    def finished(self, handle: Handle | None, rec: ExchangeRecord) -> None:
        """The request ended (the cycle's one exit): tokens settled with the backend's
        figure (the estimate stands when it reported none), its cost charged."""
        if handle is not None and self.limiter is not None:
            self.limiter.settle(handle, _total(rec.usage))
            if self.limiter.outbox:
                self._send(False)
        charged, cost_of = self.charged, self.cost_of
        if charged is None or cost_of is None or rec.key_name is None:
            return
        subjects = self.subjects.get(rec.key_name)
        if subjects is None:
            return
        cost = cost_of(rec)
        if cost:
            charged(subjects, cost)

    # -- messages and time -----------------------------------------------------------
    def on_grants(self, grants: Sequence[Sequence[object]]) -> None:
        """Grants from the primary (a worker): resume the requests they decide."""
        limiter = self.limiter
        if limiter is None:
            return
        for t in grants:
            self._resume(limiter.on_grant(Grant.from_tuple(t)))
        if limiter.outbox:
            self._send(bool(self._waiting))

    def tick(self) -> None:
        """About once a second (a worker: each heartbeat): reports, returns, fail open."""
        limiter = self.limiter
        if limiter is None:
            return
        self._resume(limiter.tick())
        if limiter.outbox:
            self._send(bool(self._waiting))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _resume(self, decided: list[tuple[Wait, Handle | Refusal]]) -> None:
        waiting = self._waiting
        for waited, outcome in decided:
            resume = waiting.pop(waited, None)
            if resume is None:
                continue
            try:
                resume(outcome)
            except Exception:
                log.exception("rate limit: resuming a request failed")

    def _send(self, urgent: bool) -> None:
        limiter = self.limiter
        assert limiter is not None
        asks = limiter.take_messages()
        if self.send_asks is not None:
            self.send_asks(asks, urgent)


def _total(usage: BackendUsage | None) -> int | None:
    if usage is None:
        return None
    if usage.total is not None:
        return usage.total
    if usage.prompt is None and usage.completion is None:
        return None
    return (usage.prompt or 0) + (usage.completion or 0)


def local_admission(
    config: Config,
    *,
    ledger: Ledger | None,
    book: BudgetBook | None,
    cost_of: CostOf | None,
    charged: Callable[[tuple[str, ...], float], None] | None,
) -> Admission:
    """One process: the limiter asks ``ledger`` in-line, the book answers budgets."""
    limiter = (
        Limiter(ledger=ledger, window=ledger.window, wait_timeout=WAIT_TIMEOUT_S)
        if ledger is not None
        else None
    )
    return Admission(config, limiter=limiter, budget=book, cost_of=cost_of, charged=charged)


def new_ledger(config: Config, *, lease_seconds: float = 5.0) -> Ledger:
    return Ledger(window=config.rate_limits.window_seconds, lease_seconds=lease_seconds)


__all__ = [
    "Admission",
    "LimitRefused",
    "budget_refused",
    "budgets_of",
    "configured",
    "estimate_tokens",
    "local_admission",
    "new_ledger",
    "rate_refused",
    "subjects_of",
]
