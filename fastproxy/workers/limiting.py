"""Rate limits and budgets with workers: one ledger and one budget book, in the primary.

A limit of N per minute holds for the gateway, not per worker, and a budget is spent by
every worker's requests: so the truth lives in the primary (docs/policy.md, "How workers
share a limit" and "With workers"; docs/workers.md, "Rate limits and budgets").

- **Asks and grants.** A worker's ``Limiter`` answers its requests from leases. Its asks
  go to the primary as an ASKS frame (``[Ask.to_tuple(), ...]``): sent once per loop
  iteration, or at once when a request waits for the answer. The primary answers each
  with ``Ledger.handle`` in a GRANTS frame, written at once (a request may be waiting).
- **Spend.** Each worker adds up the cost its finished requests charged per budget
  subject and sends the sums once per loop iteration (SPEND, ``{subject: usd}``); the
  primary charges its book with them, announces the thresholds crossed, and pushes the
  blocked set (BLOCKED, ``Blocked.to_tuple()``) to every worker when it changed. A
  worker (re)started gets the current set right after its config.
- **A worker that exits** gives its leases back at once (``Ledger.forget_worker``): a
  worker is known to the ledger by its serial, unique per process started, so a rolling
  restart's new and old workers never share a lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from ..config import Config
from ..core.budget import BudgetGate
from ..core.ratelimit import Ask, Ledger, Limiter
from ..core.records import ExchangeRecord
from ..dataplane import admission
from ..dataplane.admission import WAIT_TIMEOUT_S, Admission, CostOf
from ..monitor.costs import PriceTable, compute_cost
from .channel import Channel, Kind


def cost_function(config: Config) -> CostOf:
    """A finished request's cost as the usage record prices it: the backend's own
    figure, else ``usage_tracking.pricing`` over the built-in table, from the backend's
    reported usage (a request without usage is not charged here)."""
    table = PriceTable(config.usage_tracking.pricing)

    def cost_of(rec: ExchangeRecord) -> float | None:
        usage = rec.usage
        if usage is None:
            return None
        cost, _ = compute_cost(
            usage,
            rec.model_used or rec.model_requested,
            table,
            answered=200 <= rec.status < 300,
        )
        return cost

    return cost_of


class SpendSender:
    """A worker's budget spend, summed per subject and sent once per loop iteration."""

    __slots__ = ("_scheduled", "channel", "loop", "sums")

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self.sums: dict[str, float] = {}
        self._scheduled = False

    def charged(self, subjects: tuple[str, ...], cost: float) -> None:
        sums = self.sums
        for subject in subjects:
            sums[subject] = sums.get(subject, 0.0) + cost
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self.sums:
            self.channel.send_json(Kind.SPEND, self.sums)
            self.sums = {}


def worker_admission(
    config: Config,
    serial: int,
    channel: Channel,
    spend: SpendSender,
    running: Admission | None,
) -> Admission | None:
    """A worker's admission for ``config`` (None when nothing is limited). A reload keeps
    the limiter (its leases follow scopes by name) and the gate, unless the window or
    what is configured changed."""
    if not admission.configured(config):
        return None
    limits = admission.limits_configured(config)
    budgets = admission.budgets_configured(config)
    window = config.rate_limits.window_seconds
    if (
        running is not None
        and (running.limiter is not None) == limits
        and (running.budget is not None) == budgets
        and running.window == window
    ):
        running.configure(config)
        running.cost_of = cost_function(config) if budgets else None
        return running

    def send_asks(asks: list[Ask], urgent: bool) -> None:
        channel.send_json(Kind.ASKS, [a.to_tuple() for a in asks])
        if urgent:
            channel.flush()  # a request waits for the answer

    limiter = Limiter(worker=serial, window=window, wait_timeout=WAIT_TIMEOUT_S) if limits else None
    gate = BudgetGate() if budgets else None
    if running is not None:
        if running.limiter is not None and limits and running.window == window:
            limiter = running.limiter
        if isinstance(running.budget, BudgetGate) and budgets:
            gate = running.budget
    return Admission(
        config,
        limiter=limiter,
        budget=gate,
        cost_of=cost_function(config) if budgets else None,
        charged=spend.charged if budgets else None,
        send_asks=send_asks,
    )


def answer_asks(ledger: Ledger | None, payload: memoryview) -> bytes | None:
    """The primary's side of an ASKS frame: each ask answered by the one ledger (None:
    limits were turned off by a reload; the worker's limiter fails open on its own)."""
    if ledger is None:
        return None
    asks: list[list[Any]] = orjson.loads(payload)
    return orjson.dumps([ledger.handle(Ask.from_tuple(t)).to_tuple() for t in asks])


SpendHandler = Callable[[dict[str, float]], None]
