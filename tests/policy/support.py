"""A hand-moved clock and a deterministic message bus for limiters in simulated workers."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence

from fastproxy.core.ratelimit import Ask, Grant, Handle, Ledger, Limiter, Refusal, Scope, Wait


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Cluster:
    """One ledger (the primary) and ``workers`` limiters, driven by an event queue in
    simulated time: each message takes ``delay`` seconds each way, as frames on the
    control channel would. Ticks every 0.5 s (the heartbeat) and sweeps every second."""

    def __init__(
        self,
        workers: int = 2,
        *,
        delay: float = 0.0002,
        start: float = 0.0,
        lease_fraction: float = 0.005,
        lease_seconds: float = 5.0,
        wait_timeout: float = 2.0,
    ) -> None:
        self.clock = Clock(start)
        self.ledger = Ledger(clock=self.clock, lease_seconds=lease_seconds)
        self.limiters = [
            Limiter(
                clock=self.clock,
                worker=i,
                lease_fraction=lease_fraction,
                wait_timeout=wait_timeout,
            )
            for i in range(workers)
        ]
        self.delay = delay
        self.alive = [True] * workers
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self.admitted: list[float] = []  # times requests were admitted
        self.refused: list[Refusal] = []
        self.handles: list[tuple[int, Handle]] = []  # (worker, handle)
        self.waits = 0
        self.asks = 0
        self._next_tick = start + 0.5

    def _push(self, at: float, kind: str, payload: object) -> None:
        heapq.heappush(self._events, (at, next(self._seq), kind, payload))

    def arrive(self, at: float, worker: int, scopes: Sequence[Scope], tokens: int = 0) -> None:
        self._push(at, "arrive", (worker, scopes, tokens))

    def arrivals(
        self, times: Iterable[float], scopes: Sequence[Scope], assign: Callable[[int], int]
    ) -> None:
        for n, at in enumerate(times):
            self.arrive(at, assign(n), scopes)

    def _outcome(self, worker: int, outcome: Handle | Refusal | Wait) -> None:
        if isinstance(outcome, Handle):
            self.admitted.append(self.clock.now)
            self.handles.append((worker, outcome))
        elif isinstance(outcome, Refusal):
            self.refused.append(outcome)
        else:
            self.waits += 1

    def _flush(self, worker: int) -> None:
        for ask in self.limiters[worker].take_messages():
            self.asks += 1
            self._push(self.clock.now + self.delay, "ask", ask)

    def run(self, until: float) -> None:
        while True:
            tick_at = self._next_tick
            if self._events and self._events[0][0] <= tick_at:
                if self._events[0][0] > until:
                    break
                at, _, kind, payload = heapq.heappop(self._events)
                self.clock.now = at
                self._dispatch(kind, payload)
            else:
                if tick_at > until:
                    break
                self.clock.now = tick_at
                self._next_tick = tick_at + 0.5
                for w, limiter in enumerate(self.limiters):
                    if self.alive[w]:
                        for _, outcome in limiter.tick():
                            self._outcome(w, outcome)
                        self._flush(w)
                if int(tick_at * 2) % 2 == 0:
                    self.ledger.sweep()
        self.clock.now = until

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind == "arrive":
            assert isinstance(payload, tuple)
            worker: int = payload[0]
            scopes: Sequence[Scope] = payload[1]
            tokens: int = payload[2]
            if not self.alive[worker]:
                return
            self._outcome(worker, self.limiters[worker].reserve(scopes, tokens))
            self._flush(worker)
        elif kind == "ask":
            assert isinstance(payload, Ask)
            # Through the plain-tuple form, as a control-channel frame would carry it.
            grant = self.ledger.handle(Ask.from_tuple(payload.to_tuple()))
            self._push(self.clock.now + self.delay, "grant", grant)
        elif kind == "grant":
            assert isinstance(payload, Grant)
            worker = payload.worker
            if not self.alive[worker]:
                return
            for _, outcome in self.limiters[worker].on_grant(Grant.from_tuple(payload.to_tuple())):
                self._outcome(worker, outcome)
            self._flush(worker)


def max_in_window(times: Sequence[float], window: float = 60.0) -> int:
    """The most admissions in any half-open interval of ``window`` seconds."""
    best = 0
    lo = 0
    ordered = sorted(times)
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def count_between(times: Sequence[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)
