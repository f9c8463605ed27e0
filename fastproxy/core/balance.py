"""Load balancing: the order in which the backends that serve a model are tried.

Sans-I/O, like ``core/replacement.py``: no sockets, no event loop, no global state; the
random source (``random.Random``) and the clock (a ``() -> float`` of seconds) are
injected, so tests drive the same objects with a seeded generator and a hand-moved
clock. Used by ``dataplane/routing.py`` (``Policy``) and the request cycle
(docs/policy.md, "Load balancing", says how it is wired).

The data plane tries candidates in order and fails over down the list, so balancing is
an *ordering*, not a single pick. Three objects, because their state has three lifetimes:

- ``BackendStats``: per backend, the requests in flight and a moving average of time to
  first token. One per process, shared by every pool: a backend busy with slow
  ``gpt-4o`` streams is busy for any model it serves.
- ``Affinity``: session → backend, bounded (idle expiry and an LRU cap). One per process.
- ``Balancer``: one per pool (a model several backends serve, or a group), holding the
  strategy and its weights.

Strategies (``Balancer.order``):

- ``ordered``: config order, today's behaviour. With no affinity ``make_balancer``
  returns None and the wiring skips balancing entirely, so it costs nothing.
- ``weighted``: one ``random()`` picks the first candidate with probability
  weight / total over the live candidates; the others follow in config order (a
  second draw per failover step would cost on every request for a path that is rare).
  A weight of 0 keeps a backend out of first place; it stays a failover candidate.
- ``least_busy``: fewest requests in flight first (``BackendStats.started`` and
  ``finished``). Ties for first place are broken **randomly** (seeded ``rng``): at low
  load every count is 0, and config order would send everything to the first backend.
  The others follow by count, ties in config order.
- ``latency``: lowest exponentially weighted moving average of time to first token
  first (``BackendStats.observed``). A backend whose newest sample is older than
  ``reprobe_seconds`` (or that has none) is *due*: the first due candidate is put first
  for one request (a probe), and is not due again until ``reprobe_seconds`` after that
  grant or after its next sample. A sample arriving after such a gap replaces the average
  instead of blending into it, so a backend that has recovered wins again from its first
  probe. Backends with no sample that are not due go after the sampled ones, in config
  order.

Health and the breaker stay in charge. ``unavailable`` names the backends whose circuit
is open (or half-open with its trial in flight); those are dropped, exactly as
``dataplane/routing.py`` does today, and if that leaves nothing the input is returned
unchanged (routing's "the original plan is tried anyway"). So an unavailable backend is
never placed before a live one, by any strategy, affinity included.

Affinity: a session is kept on the backend it was last bound to while that backend is
among the live candidates of the pool. Otherwise the strategy orders and the session is
bound to the new first candidate; ``served`` moves a bound session to the backend that
actually answered after a failover (it binds no new session). So a session whose
backend fails over moves and sticks to the new one, even once the old one recovers.
Under ``weighted`` a new session's first backend comes from weighted rendezvous hashing
of its id rather than the random draw: the same shares, but every process (each worker
keeps its own ``Affinity``) starts a session on the same backend and moves it to the
same one when its backend's breaker opens. Under ``least_busy`` and ``latency`` the pick
follows the process's own counts, and a ``latency`` request that carries a probe binds
nothing (the probed backend is first because it is unmeasured, not because it is fast):
the session is bound on its next request. Sessions are keyed per pool
(``Balancer.name``): a session that asks two models is bound once for each.

``pool``: only the first ``pool`` candidates (the backends that serve the model as
asked) are balanced; the rest (``failover_routes`` entries) keep their order after them.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Protocol, TypeVar

# The strategies and the config checks live with the config (the loader runs them, and
# config imports nothing of core); the names are re-exported here, where they are used.
from ..config.policy_rules import STRATEGIES as STRATEGIES
from ..config.policy_rules import Strategy as Strategy
from ..config.policy_rules import validate_balancing as validate_balancing


class Named(Protocol):
    """What a candidate's backend needs here (``httpclient.Backend`` has it)."""

    @property
    def name(self) -> str: ...


# A routing candidate: (backend, model), as ``dataplane.routing.Candidate`` is.
C = TypeVar("C", bound=tuple[Named, str])


class _Backend:
    __slots__ = ("ewma", "in_flight", "probed_at", "sampled_at")

    def __init__(self) -> None:
        self.in_flight = 0
        self.ewma: float | None = None
        self.sampled_at = -math.inf
        self.probed_at = -math.inf


class BackendStats:
    """Requests in flight and time-to-first-token averages, per backend name.

    Memory: one small record per backend name ever reported (the configured backends);
    ``forget`` drops one a reload removed. Per process: with ``--workers`` each worker
    balances its own traffic by its own counts.
    """

    __slots__ = ("_alpha", "_backends", "_clock", "reprobe_seconds")

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        reprobe_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be within (0, 1], got {alpha}")
        if not reprobe_seconds > 0:
            raise ValueError(f"reprobe_seconds must be positive, got {reprobe_seconds}")
        self._alpha = alpha
        self.reprobe_seconds = reprobe_seconds
        self._clock = clock
        self._backends: dict[str, _Backend] = {}

    def _get(self, backend: str) -> _Backend:
        state = self._backends.get(backend)
        if state is None:
            state = self._backends[backend] = _Backend()
        return state

    def started(self, backend: str) -> None:
        """A request is being sent to ``backend`` (each attempt, failovers included)."""
        self._get(backend).in_flight += 1

    def finished(self, backend: str) -> None:
        """That attempt has ended, however it ended. Never below zero: a ``finished``
        without its ``started`` (a reload in between) must not make a backend look
        idler than idle."""
        state = self._backends.get(backend)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def observed(self, backend: str, ttft_s: float) -> None:
        """A successful attempt's time to first token. Failures are not fed in: the
        breaker judges them, and a timeout's duration says nothing about speed."""
        if not ttft_s >= 0.0 or ttft_s == math.inf:  # NaN, negative, inf: a caller bug
            return
        now = self._clock()
        state = self._get(backend)
        if state.ewma is None or now - state.sampled_at >= self.reprobe_seconds:
            # After a gap the old average describes the backend as it was.
            state.ewma = ttft_s
        else:
            state.ewma += self._alpha * (ttft_s - state.ewma)
        state.sampled_at = now

    def in_flight(self, backend: str) -> int:
        state = self._backends.get(backend)
        return 0 if state is None else state.in_flight

    def latency(self, backend: str) -> float | None:
        """The moving average in seconds, or None before the first sample."""
        state = self._backends.get(backend)
        return None if state is None else state.ewma

    def forget(self, backend: str) -> None:
        self._backends.pop(backend, None)


class _Binding:
    __slots__ = ("backend", "last_seen")

    def __init__(self, backend: str, now: float) -> None:
        self.backend = backend
        self.last_seen = now


class Affinity:
    """Session → backend, per pool. A binding idle for ``idle_seconds`` is forgotten
    (swept on every lookup and bind), and at most ``max_sessions`` are kept, the least
    recently used dropped first. A forgotten session is balanced afresh."""

    __slots__ = ("_bindings", "_clock", "_idle", "_max", "dropped", "expired")

    def __init__(
        self,
        *,
        idle_seconds: float = 3600.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self._idle = idle_seconds
        self._max = max_sessions
        self._clock = clock
        # Least recently used first: the idle sweep and the cap both pop from the front.
        self._bindings: OrderedDict[tuple[str, str], _Binding] = OrderedDict()
        self.expired = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._bindings)

    def _sweep(self, now: float) -> None:
        bindings = self._bindings
        while bindings:
            binding = next(iter(bindings.values()))
            if now - binding.last_seen < self._idle:
                return
            bindings.popitem(last=False)
            self.expired += 1

    def lookup(self, pool: str, session_id: str) -> str | None:
        return self._lookup(pool, session_id, self._clock())

    def bind(self, pool: str, session_id: str, backend: str) -> None:
        now = self._clock()
        self._sweep(now)
        self._bind(pool, session_id, backend, now)

    def _lookup(self, pool: str, session_id: str, now: float) -> str | None:
        self._sweep(now)
        key = (pool, session_id)
        binding = self._bindings.get(key)
        if binding is None:
            return None
        binding.last_seen = now
        self._bindings.move_to_end(key)
        return binding.backend

    def move(self, pool: str, session_id: str, backend: str) -> None:
        """Rebind a session that is bound (and not yet expired); others are left alone."""
        now = self._clock()
        self._sweep(now)
        key = (pool, session_id)
        binding = self._bindings.get(key)
        if binding is not None:
            binding.backend = backend
            binding.last_seen = now
            self._bindings.move_to_end(key)

    def _bind(self, pool: str, session_id: str, backend: str, now: float) -> None:
        # ``order`` has just swept at ``now`` when it binds a session it looked up.
        key = (pool, session_id)
        binding = self._bindings.get(key)
        if binding is not None:
            binding.backend = backend
            binding.last_seen = now
            self._bindings.move_to_end(key)
            return
        self._bindings[key] = _Binding(backend, now)
        if len(self._bindings) > self._max:
            self._bindings.popitem(last=False)
            self.dropped += 1


class Balancer:
    """The order to try one pool's candidates in; see the module docstring."""

    __slots__ = (
        "_affinity",
        "_backend_weights",
        "_member_weights",
        "_rng",
        "_stats",
        "name",
        "strategy",
    )

    def __init__(
        self,
        strategy: Strategy,
        *,
        name: str = "",
        weights: Mapping[str, float] | None = None,
        member_weights: Mapping[tuple[str, str], float] | None = None,
        stats: BackendStats | None = None,
        affinity: Affinity | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``name``: the pool (public model or group name), which keys affinity.
        ``weights``: per backend name; ``member_weights``: per (backend, model), for
        groups that list one backend with several models; it wins over ``weights``.
        Missing weights are 1. ``stats`` is required by least_busy and latency."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if strategy in ("least_busy", "latency") and stats is None:
            raise ValueError(f"strategy {strategy!r} needs the BackendStats it reads")
        for key, w in (*(weights or {}).items(), *(member_weights or {}).items()):
            if not (w >= 0.0 and math.isfinite(w)):
                raise ValueError(f"weight of {key!r} must be a finite number >= 0, got {w}")
        self.strategy = strategy
        self.name = name
        self._backend_weights = dict(weights or {})
        self._member_weights = dict(member_weights or {})
        self._stats = stats
        self._affinity = affinity
        self._rng = rng if rng is not None else random.Random()

    def order(
        self,
        candidates: Sequence[C],
        session_id: str | None = None,
        unavailable: Container[str] = (),
        pool: int | None = None,
    ) -> list[C]:
        """The candidates in the order to try them: a new list, without the
        ``unavailable`` backends unless every candidate is one (then the input as it
        is). Only the first ``pool`` candidates are balanced (all by default)."""
        n = len(candidates)
        k = n if pool is None or pool > n else pool
        if unavailable:
            live: list[C] = []
            dropped = 0
            for i, c in enumerate(candidates):
                if c[0].name in unavailable:
                    dropped += i < k
                else:
                    live.append(c)
            k -= dropped
            if not live:
                return list(candidates)
        else:
            live = list(candidates)
        if k <= 1:
            return live  # nothing to choose between (and nothing worth remembering)
        head = live[:k] if k < len(live) else live
        affinity = self._affinity
        if affinity is not None and session_id is not None:
            now = affinity._clock()
            bound = affinity._lookup(self.name, session_id, now)
            if bound is not None:
                for i, c in enumerate(head):
                    if c[0].name == bound:
                        if i == 0:
                            return live
                        return [c, *live[:i], *live[i + 1 :]]
            if self.strategy == "weighted":
                ordered = self._rendezvous(head, session_id)
            elif self.strategy == "latency":
                ordered, probing = self._latency_probing(head)
                if probing:
                    # A probe goes to a backend because it is unmeasured, not because
                    # it is fast: the session is bound on its next request instead.
                    return ordered + live[k:] if head is not live else ordered
            else:
                ordered = self._order(head)
            affinity._bind(self.name, session_id, ordered[0][0].name, now)
        else:
            ordered = self._order(head)
        if head is live:
            return ordered
        ordered.extend(live[k:])
        return ordered

    def served(self, session_id: str | None, backend: str) -> None:
        """The pool's request for ``session_id`` was answered by ``backend`` (a 2xx
        head): a bound session that failed over now sticks to it. It binds no new
        session: ``order`` decides whether a session is bound (a latency probe is not)."""
        if self._affinity is not None and session_id is not None:
            self._affinity.move(self.name, session_id, backend)

    # -- strategies --------------------------------------------------------------------

    def _order(self, head: list[C]) -> list[C]:
        strategy = self.strategy
        if strategy == "weighted":
            return self._weighted(head)
        if strategy == "least_busy":
            return self._least_busy(head)
        if strategy == "latency":
            return self._latency(head)
        return list(head)

    def _weighted(self, head: list[C]) -> list[C]:
        member, backend = self._member_weights, self._backend_weights
        weights: list[float] = []
        for c in head:
            w = member.get((c[0].name, c[1])) if member else None
            weights.append(backend.get(c[0].name, 1.0) if w is None else w)
        total = sum(weights)
        if total <= 0.0:
            return list(head)
        x = self._rng.random() * total
        pick = 0
        for i, w in enumerate(weights):
            if w > 0.0:
                pick = i  # the last positive weight absorbs float rounding at the top
                x -= w
                if x < 0.0:
                    break
        if pick == 0:
            return list(head)
        return [head[pick], *head[:pick], *head[pick + 1 :]]

    def _rendezvous(self, head: list[C], session_id: str) -> list[C]:
        """A new session's first backend under ``weighted`` with affinity: weighted
        rendezvous hashing of the session id instead of a random draw. The share per
        backend is the same (weight / total over many sessions), but every process picks
        the same backend for a session without sharing state, so sessions whose requests
        reach different workers, or a restarted gateway, start on one backend."""
        member, backend = self._member_weights, self._backend_weights
        best = -1
        best_score = math.inf
        key = session_id.encode("utf-8", "surrogatepass")
        for i, c in enumerate(head):
            w = member.get((c[0].name, c[1])) if member else None
            if w is None:
                w = backend.get(c[0].name, 1.0)
            if w <= 0.0:
                continue
            # A stable hash (Python's own is salted per process) mapped into (0, 1).
            h = zlib.crc32(c[1].encode(), zlib.crc32(c[0].name.encode(), zlib.crc32(key)))
            h = (h * 0x9E3779B1) & 0xFFFFFFFF  # crc32 of near-equal inputs is too regular
            score = -math.log((h + 0.5) / 4294967296.0) / w
            if score < best_score:
                best, best_score = i, score
        if best <= 0:
            return list(head)
        return [head[best], *head[:best], *head[best + 1 :]]

    def _least_busy(self, head: list[C]) -> list[C]:
        assert self._stats is not None
        states = self._stats._backends
        counts: list[int] = []
        for c in head:
            state = states.get(c[0].name)
            counts.append(0 if state is None else state.in_flight)
        if len(head) == 2:  # the common pool: no sort, no lists of ties
            a, b = counts
            if a < b or (a == b and self._rng.random() < 0.5):
                return list(head)
            return [head[1], head[0]]
        ranked = sorted(range(len(head)), key=counts.__getitem__)  # stable: config order
        low = counts[ranked[0]]
        tied = 1
        while tied < len(ranked) and counts[ranked[tied]] == low:
            tied += 1
        if tied > 1:
            pick = int(self._rng.random() * tied)
            ranked.insert(0, ranked.pop(pick))
        return [head[i] for i in ranked]

    def _latency(self, head: list[C]) -> list[C]:
        return self._latency_probing(head)[0]

    def _latency_probing(self, head: list[C]) -> tuple[list[C], bool]:
        """The latency order, and whether its first candidate is a probe."""
        stats = self._stats
        assert stats is not None
        now = stats._clock()
        states = stats._backends
        reprobe = stats.reprobe_seconds
        probe: int | None = None
        sampled: list[tuple[float, int]] = []
        unsampled: list[int] = []
        for i, c in enumerate(head):
            state = states.get(c[0].name)
            if state is None:
                state = stats._get(c[0].name)
            if probe is None and now - max(state.sampled_at, state.probed_at) >= reprobe:
                probe = i
                state.probed_at = now
            elif state.ewma is None:
                unsampled.append(i)
            else:
                sampled.append((state.ewma, i))
        if probe is None and not unsampled and len(sampled) == 2:
            return (list(head) if sampled[0] <= sampled[1] else [head[1], head[0]]), False
        sampled.sort()  # ties: config order, through the index
        out = [] if probe is None else [head[probe]]
        out.extend(head[i] for _, i in sampled)
        out.extend(head[i] for i in unsampled)
        return out, probe is not None


def make_balancer(
    strategy: Strategy,
    *,
    name: str = "",
    weights: Mapping[str, float] | None = None,
    member_weights: Mapping[tuple[str, str], float] | None = None,
    stats: BackendStats | None = None,
    affinity: Affinity | None = None,
    rng: random.Random | None = None,
) -> Balancer | None:
    """A balancer, or None when it would only return its input (``ordered`` with no
    affinity): the wiring then skips balancing and pays one ``is None`` test."""
    if strategy == "ordered" and affinity is None:
        return None
    return Balancer(
        strategy,
        name=name,
        weights=weights,
        member_weights=member_weights,
        stats=stats,
        affinity=affinity,
        rng=rng,
    )
