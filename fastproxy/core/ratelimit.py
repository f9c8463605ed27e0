"""Rate limits (requests and tokens per minute) as sans-I/O objects. Wired by
dataplane/admission.py (the request path) and workers/limiting.py (workers).

Two objects, both driven by an injected clock (``() -> float`` seconds, monotonic) and
plain-data messages, so the same code runs in one process and across worker processes:

- ``Ledger`` holds the truth for every limited scope (a key, a model, a key on a model):
  a sliding window of what was used in the last ``window`` seconds, and the permits it
  has leased out. One per gateway; with workers, the primary's.
- ``Limiter`` is what the request path calls: ``reserve(scopes, tokens)`` answers from
  permits it holds (a *lease*), ``settle(handle, actual_tokens)`` corrects the tokens when
  the request ends. When its lease runs low it sends the ledger an ``Ask`` (what it used
  since its last report, what it still holds, what it wants) and the ledger answers with
  a ``Grant``. In one process the limiter holds the ledger and the ask is a method call;
  in a worker the asks go to ``outbox`` and grants come back through ``on_grant``.

Algorithm: a sliding window with sub-second buckets, counted against leases.

- The ledger counts a scope's usage in buckets of ``window / buckets`` seconds (0.1 s by
  default), kept sparse (only buckets with usage, in a deque). A bucket's usage leaves
  the window ``window`` seconds after the *last* use in it: never early, and on time for
  a scope that is not busy.
- A permit is counted from the moment it is leased (as outstanding) until it is reported
  used, and from then in the window, dated when it was used (the ask says when), until
  ``window`` seconds after that use. So **no interval of ``window`` seconds admits more
  than the limit**. The error is all on the side of admitting less: permits leased to a
  worker that has no request for them (at most one lease per worker per scope,
  ``lease_fraction`` of the limit) and the bucket width. docs/policy.md has the figures
  from the 2-worker simulation.
- Why not a token bucket (GCRA): a bucket that starts full admits its burst *plus* the
  refill in the first minute, twice the limit at a steady over-limit rate, and RPM is read
  by users as "at most N in any minute". Why not an exact log of request times: memory per
  request; the buckets cost at most ``buckets`` entries per active scope.

Tokens per minute are charged from the prompt estimate when the request starts (held by
the request) and corrected by ``settle`` with the backend's figure: the difference is
taken from, or given back to, the lease, so the ledger's count stays exact. A request is
admitted while the tokens left are above zero, not only when its estimate fits: what a
request will cost is not known until it ends, so TPM is a soft limit by nature, and this
way a prompt larger than a lease (or than the limit) is not refused forever. The overshoot
is at most one request's estimate per limiter, and a settle above the estimate.

Requests per minute count at ``reserve``; a refused request counts nothing.

Workers: a limiter with no permits for a scope asks and returns ``Wait`` (the request
waits for the grant, one round trip, like a replacement decision); ``on_grant`` resumes
the waiting requests in order. While the ledger has answered "nothing until T" the limiter
refuses locally until T (``Refusal.retry_after``) and asks again after. A limiter asks for
``lease_fraction`` of the limit at a time, again when half of it is left (in the
background), and waits only when its lease ran dry.
A grant not answered within ``wait_timeout`` admits the waiting requests (a primary that
stopped reading must not stop traffic): fail open, as replacement does.

Leases expire: a lease not renewed by a report within ``lease_seconds`` is dropped at the
ledger's next ask or ``sweep`` (a dead worker's unused permits come back within seconds,
not at the end of the window), and ``forget_worker`` drops one at once. A live limiter reports every
``report_interval`` while it holds anything, and returns an allowance it has not touched
for ``idle_return`` seconds.

Memory: the ledger keeps an account per scope only while it has usage in the window or
leases out; the limiter keeps a lease per scope only while it has used it in the last
window or holds anything. Both are swept by ``sweep``/``tick``; nothing is kept for a
scope no request named, and a gateway with no limits holds no limiter at all (the caller
keeps ``None``: zero cost).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Resource = Literal["requests", "tokens"]

# Headers in the order OpenAI sends them; names as bytes, ready for a response head.
_H_LIMIT_R = b"x-ratelimit-limit-requests"
_H_LIMIT_T = b"x-ratelimit-limit-tokens"
_H_REMAINING_R = b"x-ratelimit-remaining-requests"
_H_REMAINING_T = b"x-ratelimit-remaining-tokens"
_H_RESET_R = b"x-ratelimit-reset-requests"
_H_RESET_T = b"x-ratelimit-reset-tokens"
_H_RETRY = b"retry-after"


@dataclass(frozen=True, slots=True)
class Scope:
    """One limited thing: ``name`` is unique per limit ("key:alice", "model:gpt-4o",
    "key:alice/model:gpt-4o"). ``None`` means that resource is not limited. Built once
    per config load, so the request path passes prebuilt tuples of them."""

    name: str
    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for label, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{self.name}: {label} must be at least 1, got {value}")


# -- messages (plain data: the wiring carries them as control-channel frames) -----------


@dataclass(frozen=True, slots=True)
class Ask:
    """Limiter -> ledger. Used since the last report; still held (unused allowance plus
    the estimates of requests in flight); wanted on top. A report is an ask wanting 0."""

    worker: int
    seq: int
    scope: str
    rpm: int | None
    tpm: int | None
    used_requests: int
    used_tokens: int
    used_at: float  # when the latest use reported here happened (0.0: none)
    holding_requests: int
    holding_tokens: int
    want_requests: int
    want_tokens: int

    def to_tuple(self) -> tuple[object, ...]:
        return (
            self.worker,
            self.seq,
            self.scope,
            self.rpm,
            self.tpm,
            self.used_requests,
            self.used_tokens,
            self.used_at,
            self.holding_requests,
            self.holding_tokens,
            self.want_requests,
            self.want_tokens,
        )

    @classmethod
    def from_tuple(cls, t: Sequence[object]) -> Ask:
        return cls(*t)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Grant:
    """Ledger -> limiter, answering the ask with the same ``seq``. ``free_*``: what the
    ledger had left after this grant (for the remaining-* headers); ``retry_*_at``: when
    the window frees enough to grant again (0.0: not blocked); ``reset_at``: when the
    newest usage counted leaves the window (0.0: nothing counted)."""

    worker: int
    seq: int
    scope: str
    requests: int
    tokens: int
    free_requests: int
    free_tokens: int
    retry_requests_at: float
    retry_tokens_at: float
    reset_at: float

    def to_tuple(self) -> tuple[object, ...]:
        return (
            self.worker,
            self.seq,
            self.scope,
            self.requests,
            self.tokens,
            self.free_requests,
            self.free_tokens,
            self.retry_requests_at,
            self.retry_tokens_at,
            self.reset_at,
        )

    @classmethod
    def from_tuple(cls, t: Sequence[object]) -> Grant:
        return cls(*t)  # type: ignore[arg-type]


# -- the ledger ------------------------------------------------------------------------


class _Account:
    """One scope's window and leases in the ledger."""

    __slots__ = ("buckets", "leases", "out_requests", "out_tokens", "requests", "tokens")

    def __init__(self) -> None:
        # [requests, tokens, last charge time] per bucket, oldest first; only buckets
        # with usage.
        self.buckets: deque[list[float]] = deque()
        self.requests = 0  # in the window
        self.tokens = 0
        # worker -> [requests held, tokens held, expires_at]
        self.leases: dict[int, list[float]] = {}
        self.out_requests = 0  # sum of the leases
        self.out_tokens = 0


class Ledger:
    """The window and leases of every scope; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        window: float = 60.0,
        buckets: int = 600,
        lease_seconds: float = 5.0,
    ) -> None:
        if window <= 0 or buckets < 1 or lease_seconds <= 0:
            raise ValueError("window, buckets and lease_seconds must be positive")
        self._clock = clock
        self.window = window
        self._width = window / buckets
        self.lease_seconds = lease_seconds
        self._accounts: dict[str, _Account] = {}

    def _advance(self, acc: _Account, now: float) -> None:
        # A bucket's usage leaves the window with its last charge: never before any
        # charge in it is ``window`` old, and exactly on time for a sparse scope.
        buckets = acc.buckets
        window = self.window
        while buckets and buckets[0][2] + window <= now:
            r, t, _ = buckets.popleft()
            acc.requests -= int(r)
            acc.tokens -= int(t)

    def _charge(self, acc: _Account, at: float, requests: int, tokens: int) -> None:
        if requests <= 0 and tokens <= 0:
            return
        buckets = acc.buckets
        width = self._width
        if buckets and at // width <= buckets[-1][2] // width:
            # Dated at or before the newest bucket: join it; it leaves with its latest.
            last = buckets[-1]
            last[0] += requests
            last[1] += tokens
            if at > last[2]:
                last[2] = at
        else:
            buckets.append([requests, tokens, at])
        acc.requests += requests
        acc.tokens += tokens

    def _set_lease(
        self, acc: _Account, worker: int, requests: int, tokens: int, expires: float
    ) -> None:
        old = acc.leases.get(worker)
        if old is not None:
            acc.out_requests -= int(old[0])
            acc.out_tokens -= int(old[1])
        if requests or tokens:
            acc.leases[worker] = [requests, tokens, expires]
            acc.out_requests += requests
            acc.out_tokens += tokens
        elif old is not None:
            del acc.leases[worker]

    def _frees_at(self, acc: _Account, now: float, need: int, column: int, worker: int) -> float:
        """When enough usage leaves the window that ``need`` more could be granted, or
        sooner if another worker's lease expires first (a dead worker's permits)."""
        soonest = now + self.window
        freed = 0.0
        for bucket in acc.buckets:
            freed += bucket[column]
            if freed >= need:
                soonest = bucket[2] + self.window
                break
        for other, lease in acc.leases.items():
            if other != worker and lease[column] and lease[2] < soonest:
                soonest = lease[2]
        return max(soonest, now)

    def handle(self, ask: Ask) -> Grant:
        """Record what a limiter used and holds, and lease it what it wants, if there is
        room. Never grants past the limit (the window plus every lease)."""
        now = self._clock()
        acc = self._accounts.get(ask.scope)
        if acc is None:
            acc = self._accounts[ask.scope] = _Account()
        self._advance(acc, now)
        self._expire(acc, now)
        # Dated when the uses happened, not when they were reported: a permit then stays
        # counted for exactly a window after its last use (it was leased until now), so
        # a report's delay costs no capacity.
        used_at = ask.used_at if 0.0 < ask.used_at < now else now
        self._charge(acc, used_at, ask.used_requests, ask.used_tokens)
        held_r, held_t = ask.holding_requests, ask.holding_tokens
        # The ask's holdings replace what we thought this worker held: a limiter has one
        # ask in flight at a time, so no grant is on its way that it could not count.
        self._set_lease(acc, ask.worker, held_r, held_t, now + self.lease_seconds)
        grant_r = grant_t = 0
        retry_r = retry_t = 0.0
        free_r = free_t = 0
        if ask.rpm is not None:
            room = ask.rpm - acc.requests - acc.out_requests
            grant_r = max(0, min(ask.want_requests, room))
            free_r = max(0, room - grant_r)
            if ask.want_requests > 0 and room < 1:
                retry_r = self._frees_at(acc, now, 1 - room, 0, ask.worker)
        if ask.tpm is not None:
            room = ask.tpm - acc.tokens - acc.out_tokens
            grant_t = max(0, min(ask.want_tokens, room))
            free_t = max(0, room - grant_t)
            if ask.want_tokens > 0 and room < 1:
                retry_t = self._frees_at(acc, now, 1 - room, 1, ask.worker)
        if grant_r or grant_t:
            self._set_lease(
                acc, ask.worker, held_r + grant_r, held_t + grant_t, now + self.lease_seconds
            )
        reset_at = acc.buckets[-1][2] + self.window if acc.buckets else 0.0
        return Grant(
            ask.worker,
            ask.seq,
            ask.scope,
            grant_r,
            grant_t,
            free_r,
            free_t,
            retry_r,
            retry_t,
            reset_at,
        )

    def _expire(self, acc: _Account, now: float) -> None:
        if acc.leases:
            for worker in [w for w, lease in acc.leases.items() if lease[2] <= now]:
                self._set_lease(acc, worker, 0, 0, 0.0)

    def forget_worker(self, worker: int) -> None:
        """A worker exited: its leases go back at once. What it used and had not
        reported yet is not counted (at most one lease per scope)."""
        for acc in self._accounts.values():
            if worker in acc.leases:
                self._set_lease(acc, worker, 0, 0, 0.0)

    def sweep(self) -> None:
        """Drop expired leases (a worker that stopped reporting) and idle accounts.
        The wiring calls it about once a second; it walks every account."""
        now = self._clock()
        idle = []
        for name, acc in self._accounts.items():
            self._advance(acc, now)
            self._expire(acc, now)
            if not acc.buckets and not acc.leases:
                idle.append(name)
        for name in idle:
            del self._accounts[name]

    def usage(self, scope: str) -> tuple[int, int, int, int]:
        """(requests, tokens) in the window and (requests, tokens) leased out: for the
        admin plane and tests."""
        acc = self._accounts.get(scope)
        if acc is None:
            return (0, 0, 0, 0)
        self._advance(acc, self._clock())
        return (acc.requests, acc.tokens, acc.out_requests, acc.out_tokens)

    def __len__(self) -> int:
        return len(self._accounts)


# -- the limiter -----------------------------------------------------------------------


def _lease_size(limit: int, fraction: float) -> int:
    return max(1, math.ceil(limit * fraction))


class _Lease:
    """One scope's permits in a limiter."""

    __slots__ = (
        "asked_at",
        "asking",
        "free_r",
        "free_t",
        "last_report",
        "last_use",
        "left_r",
        "left_t",
        "low_r",
        "low_t",
        "need_r",
        "need_t",
        "reset_at",
        "retry_r",
        "retry_t",
        "scope",
        "seq",
        "tok_held",
        "used_at",
        "used_r",
        "used_t",
        "waiting_r",
        "waiting_t",
    )

    def __init__(self, scope: Scope, now: float, fraction: float) -> None:
        self.set_scope(scope, fraction)
        self.left_r = 0  # permits held, not used
        self.left_t = 0
        self.tok_held = 0  # estimates of requests in flight
        self.used_r = 0  # used since the last report
        self.used_t = 0
        self.used_at = 0.0  # when the latest of those uses happened
        self.waiting_r = 0  # requests waiting for a grant, and their estimates: an ask
        self.waiting_t = 0  # wants enough for all of them, not one per round trip
        self.asking = False  # an ask is in flight (at most one)
        self.asked_at = 0.0
        self.seq = 0
        self.retry_r = 0.0  # the ledger said: no requests before this
        self.retry_t = 0.0
        self.free_r = 0  # the ledger's free figures at the last grant
        self.free_t = 0
        self.reset_at = 0.0
        self.last_use = now
        self.last_report = now

    def set_scope(self, scope: Scope, fraction: float) -> None:
        # Precomputed so the request path compares plain ints: a resource that is not
        # limited needs 0 permits and never reaches low water (-1).
        self.scope = scope
        self.need_r = 0 if scope.rpm is None else 1
        self.need_t = 0 if scope.tpm is None else 1
        self.low_r = -1 if scope.rpm is None else _lease_size(scope.rpm, fraction) // 2
        self.low_t = -1 if scope.tpm is None else _lease_size(scope.tpm, fraction) // 2


class Handle:
    """An admitted request: give it back to ``settle`` when the request ends."""

    __slots__ = ("leases", "settled", "taken", "tokens")

    def __init__(self, leases: tuple[_Lease, ...], tokens: int, taken: tuple[int, ...]) -> None:
        self.leases = leases
        self.tokens = tokens
        # Per lease, the part of the estimate that came out of the lease (the rest was
        # borrowed past zero): only that part can go back into it at settle. -1: the
        # lease does not limit tokens.
        self.taken = taken
        self.settled = False


@dataclass(slots=True)  # not frozen: built per response, and frozen __init__ is slow
class RateInfo:
    """The values of the x-ratelimit-* headers; None: that resource is not limited."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: render it as a 429 with ``headers()``."""

    scope: str
    resource: Resource
    limit: int
    retry_after: float  # seconds
    info: RateInfo

    @property
    def message(self) -> str:
        unit = "requests" if self.resource == "requests" else "tokens"
        return (
            f"Rate limit reached for {self.scope}: {self.limit} {unit} per minute. "
            f"Please retry after {retry_after_seconds(self.retry_after)} seconds."
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        return render_headers(self.info, retry_after=self.retry_after)


class Wait:
    """A request waiting for a grant (workers only): ``on_grant`` or ``tick`` returns it
    with its outcome."""

    __slots__ = ("scopes", "since", "tokens")

    def __init__(self, scopes: Sequence[Scope], tokens: int, since: float) -> None:
        self.scopes = scopes
        self.tokens = tokens
        self.since = since


Outcome = Handle | Refusal | Wait


class Limiter:
    """The request path's side; see the module docstring.

    ``ledger``: pass the ledger in one process (asks are method calls, nothing waits);
    leave it None in a worker and carry ``outbox`` to the primary, ``on_grant`` back.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ledger: Ledger | None = None,
        worker: int = 0,
        lease_fraction: float = 0.005,
        window: float = 60.0,
        report_interval: float = 1.0,
        idle_return: float = 2.0,
        wait_timeout: float = 2.0,
    ) -> None:
        if not 0.0 < lease_fraction <= 1.0:
            raise ValueError(f"lease_fraction must be within (0, 1], got {lease_fraction}")
        self._clock = clock
        self._ledger = ledger
        self.worker = worker
        self._fraction = lease_fraction
        self._window = window
        self._report_interval = report_interval
        self._idle_return = idle_return
        self._wait_timeout = wait_timeout
        self._leases: dict[str, _Lease] = {}
        self._waiting: list[Wait] = []
        self.outbox: list[Ask] = []

    # -- request path --------------------------------------------------------------

    def reserve(self, scopes: Sequence[Scope], tokens: int) -> Outcome:
        """Admit (a ``Handle``), refuse (a ``Refusal``) or, in a worker whose lease ran
        dry, ``Wait``. ``tokens``: the prompt estimate."""
        now = self._clock()
        # The common case: every scope's lease holds a permit. Plain lookups only.
        leases = self._leases
        got = []
        for scope in scopes:
            lease = leases.get(scope.name)
            if (
                lease is None
                or lease.scope is not scope
                or lease.left_r < lease.need_r
                or lease.left_t < lease.need_t
            ):
                break
            got.append(lease)
        else:
            return self._admit(got, now, tokens)
        # A scope with requests waiting has an ask in flight and no permits, so a new
        # request for it waits too (behind them); other scopes are not held up.
        outcome = self._try(scopes, tokens, now)
        if outcome is None:
            return self._park(scopes, tokens, now)
        return outcome

    def settle(self, handle: Handle, actual_tokens: int | None) -> None:
        """The request ended: charge what the backend reported instead of the estimate.
        ``None`` (an error or abort before usage was known) keeps the estimate."""
        if handle.settled:
            return
        handle.settled = True
        estimate = handle.tokens
        actual = estimate if actual_tokens is None or actual_tokens < 0 else actual_tokens
        now = self._clock()
        leases, takens = handle.leases, handle.taken
        for i in range(len(leases)):  # (zip(strict=True) costs more than the body)
            taken = takens[i]
            if taken < 0:
                continue  # tokens were not limited when it was admitted
            lease = leases[i]
            lease.tok_held -= estimate
            lease.used_t += actual
            lease.used_at = now
            # The ledger's "no tokens until" may have counted this request's estimate:
            # ask again rather than wait it out.
            lease.retry_t = 0.0
            # What the request took from the lease and did not use goes back; what it
            # used beyond that comes out of the lease, and past zero it is simply
            # counted (as used, in the next report): the ledger never loses it.
            left = lease.left_t + taken - actual
            lease.left_t = left if left > 0 else 0

    def info(self, handle: Handle) -> RateInfo:
        """Header values for an admitted request: the tightest of its scopes."""
        return self._info(handle.leases, self._clock())

    def header_lines(self, handle: Handle) -> bytes:
        """The x-ratelimit-* lines of an admitted request's response head: the bytes
        ``render_headers(info(handle))`` renders, in one format. Every admitted response
        carries them, so they are built without the ``RateInfo``, the list of pairs and
        the join."""
        limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t = self._tightest(
            handle.leases, self._clock()
        )
        if limit_r >= 0:
            if limit_t >= 0:
                return _LINES_BOTH % (
                    limit_r,
                    limit_t,
                    remaining_r,
                    remaining_t,
                    _duration(reset_r),
                    _duration(reset_t),
                )
            return _LINES_REQUESTS % (limit_r, remaining_r, _duration(reset_r))
        if limit_t >= 0:
            return _LINES_TOKENS % (limit_t, remaining_t, _duration(reset_t))
        return b""

    # -- messages ------------------------------------------------------------------

    def on_grant(self, grant: Grant) -> list[tuple[Wait, Handle | Refusal]]:
        """Apply a grant; return the waiting requests it decides, in arrival order."""
        lease = self._leases.get(grant.scope)
        if lease is None or not lease.asking or grant.seq != lease.seq:
            # Stale (answered after a timeout and a new ask): the next report's holdings
            # put the ledger right, so dropping it loses nothing for long.
            return []
        self._apply(lease, grant)
        return self._resume(self._clock())

    def take_messages(self) -> list[Ask]:
        out, self.outbox = self.outbox, []
        return out

    def tick(self) -> list[tuple[Wait, Handle | Refusal]]:
        """About once a second: report usage, renew or return leases, forget idle ones,
        and admit requests that waited past ``wait_timeout`` (fail open)."""
        now = self._clock()
        idle = []
        for name, lease in self._leases.items():
            if lease.asking:
                if now - lease.asked_at >= self._wait_timeout:
                    lease.asking = False  # the answer is not coming; a new ask may go
                continue
            if (lease.left_r or lease.left_t) and now - lease.last_use >= self._idle_return:
                lease.left_r = lease.left_t = 0  # give it to a worker that uses it
                self._ask(lease, 0, 0, now)
                continue
            holding = lease.left_r or lease.left_t or lease.tok_held
            if (lease.used_r or lease.used_t or holding) and (
                now - lease.last_report >= self._report_interval
            ):
                self._ask(lease, 0, 0, now)
            elif (
                not holding
                and not lease.used_r
                and not lease.used_t
                and now - lease.last_use >= self._window
            ):
                idle.append(name)
        for name in idle:
            del self._leases[name]
        out: list[tuple[Wait, Handle | Refusal]] = []
        while self._waiting and now - self._waiting[0].since >= self._wait_timeout:
            waited = self._waiting.pop(0)
            leases = self._leases_for(waited.scopes, now)
            self._count_waiting(leases, waited.tokens, -1)
            out.append((waited, self._admit(leases, now, waited.tokens)))
        out.extend(self._resume(now))
        return out

    def __len__(self) -> int:
        return len(self._leases)

    # -- inside ----------------------------------------------------------------------

    def _leases_for(self, scopes: Sequence[Scope], now: float) -> tuple[_Lease, ...]:
        leases = self._leases
        out = []
        for scope in scopes:
            lease = leases.get(scope.name)
            if lease is None:
                lease = leases[scope.name] = _Lease(scope, now, self._fraction)
            elif lease.scope is not scope:
                # A reload changed the limit: what the ledger said under the old one
                # no longer holds.
                lease.set_scope(scope, self._fraction)
                lease.retry_r = lease.retry_t = 0.0
            out.append(lease)
        return tuple(out)

    def _try(self, scopes: Sequence[Scope], tokens: int, now: float) -> Handle | Refusal | None:
        """Admit or refuse from what is held; None: an ask is in flight, wait for it."""
        leases = self._leases_for(scopes, now)
        # Each pass asks for at most one short scope; in one process the answer is
        # already in when ``_ask`` returns, so the next pass sees it.
        for _ in range(len(leases) + 1):
            short: _Lease | None = None
            for lease in leases:
                scope = lease.scope
                if (scope.rpm is not None and lease.left_r < 1) or (
                    scope.tpm is not None and lease.left_t < 1
                ):
                    short = lease
                    break
            if short is None:
                return self._admit(leases, now, tokens)
            refusal = self._blocked(short, now)
            if refusal is not None:
                return refusal
            if short.asking:
                return None
            self._ask(short, *self._wants(short, tokens), now)
            if self._ledger is None:
                return None
        # Every pass asked and was answered without a block: only a ledger that grants
        # nothing without saying until when does this; refuse rather than loop.
        return self._refuse(short, now) if short is not None else None

    def _admit(self, leases: Sequence[_Lease], now: float, tokens: int) -> Handle:
        taken = []
        for lease in leases:
            lease.last_use = now
            if lease.need_r:
                lease.used_at = now
                lease.used_r += 1
                if lease.left_r > 0:  # 0 only when a wait timed out (fail open)
                    lease.left_r -= 1
            if lease.need_t:
                lease.tok_held += tokens
                left = lease.left_t
                took = tokens if tokens < left else left
                lease.left_t = left - took
                taken.append(took)
            else:
                taken.append(-1)
            if (lease.left_r <= lease.low_r or lease.left_t <= lease.low_t) and not lease.asking:
                self._refill(lease, now)
        return Handle(tuple(leases), tokens, tuple(taken))

    def _refill(self, lease: _Lease, now: float) -> None:
        # Low water: refill before it runs dry, so the next request need not wait.
        # Blocked resources want nothing until their retry time.
        want_r, want_t = self._wants(lease, 0)
        if now < lease.retry_r:
            want_r = 0
        if now < lease.retry_t:
            want_t = 0
        self._ask(lease, want_r, want_t, now)

    def _wants(self, lease: _Lease, tokens: int) -> tuple[int, int]:
        scope = lease.scope
        want_r = 0
        if scope.rpm is not None:
            want_r = _lease_size(scope.rpm, self._fraction) + lease.waiting_r - lease.left_r
        want_t = 0
        if scope.tpm is not None:
            want_t = (
                max(_lease_size(scope.tpm, self._fraction), tokens) + lease.waiting_t - lease.left_t
            )
        return max(0, want_r), max(0, want_t)

    def _blocked(self, lease: _Lease, now: float) -> Refusal | None:
        scope = lease.scope
        if scope.rpm is not None and lease.left_r < 1 and now < lease.retry_r:
            return self._refuse(lease, now)
        if scope.tpm is not None and lease.left_t < 1 and now < lease.retry_t:
            return self._refuse(lease, now)
        return None

    def _refuse(self, lease: _Lease, now: float) -> Refusal:
        scope = lease.scope
        if scope.rpm is not None and lease.left_r < 1:
            resource: Resource = "requests"
            limit, retry = scope.rpm, lease.retry_r
        else:
            resource, limit, retry = "tokens", scope.tpm or 0, lease.retry_t
        return Refusal(
            scope.name,
            resource,
            limit,
            max(0.0, retry - now),
            self._info((lease,), now),
        )

    def _ask(self, lease: _Lease, want_r: int, want_t: int, now: float) -> None:
        scope = lease.scope
        lease.seq += 1
        ask = Ask(
            self.worker,
            lease.seq,
            scope.name,
            scope.rpm,
            scope.tpm,
            lease.used_r,
            lease.used_t,
            lease.used_at if (lease.used_r or lease.used_t) else 0.0,
            lease.left_r,
            lease.left_t + lease.tok_held,
            want_r,
            want_t,
        )
        lease.used_r = lease.used_t = 0
        lease.last_report = now
        lease.asking = True
        lease.asked_at = now
        if self._ledger is not None:
            self._apply(lease, self._ledger.handle(ask))
        else:
            self.outbox.append(ask)

    def _apply(self, lease: _Lease, grant: Grant) -> None:
        lease.asking = False
        lease.left_r += grant.requests
        lease.left_t += grant.tokens
        lease.free_r = grant.free_requests
        lease.free_t = grant.free_tokens
        lease.reset_at = grant.reset_at
        # Room (granted or left over) clears a block; a refusal sets it; a report that
        # wanted nothing and found no room leaves it as it was.
        if grant.requests or grant.free_requests:
            lease.retry_r = 0.0
        elif grant.retry_requests_at:
            lease.retry_r = grant.retry_requests_at
        if grant.tokens or grant.free_tokens:
            lease.retry_t = 0.0
        elif grant.retry_tokens_at:
            lease.retry_t = grant.retry_tokens_at

    def _park(self, scopes: Sequence[Scope], tokens: int, now: float) -> Wait:
        waiting = Wait(scopes, tokens, now)
        self._waiting.append(waiting)
        self._count_waiting(self._leases_for(scopes, now), tokens, 1)
        return waiting

    def _count_waiting(self, leases: Sequence[_Lease], tokens: int, sign: int) -> None:
        for lease in leases:
            lease.waiting_r += sign
            lease.waiting_t += sign * tokens

    def _resume(self, now: float) -> list[tuple[Wait, Handle | Refusal]]:
        out: list[tuple[Wait, Handle | Refusal]] = []
        pending, self._waiting = self._waiting, []
        for waited in pending:
            leases = self._leases_for(waited.scopes, now)
            # Not counted while it is decided, so an ask it makes wants for the others.
            self._count_waiting(leases, waited.tokens, -1)
            outcome = self._try(waited.scopes, waited.tokens, now)
            if outcome is None:
                self._waiting.append(waited)
                self._count_waiting(leases, waited.tokens, 1)
            else:
                out.append((waited, outcome))
        return out

    def _info(self, leases: Sequence[_Lease], now: float) -> RateInfo:
        limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t = self._tightest(leases, now)
        none = (None, None, None)
        r = (limit_r, remaining_r, reset_r) if limit_r >= 0 else none
        t = (limit_t, remaining_t, reset_t) if limit_t >= 0 else none
        return RateInfo(*r, *t)

    def _tightest(
        self, leases: Sequence[_Lease], now: float
    ) -> tuple[int, int, float, int, int, float]:
        """Per resource, the limit, remaining count and seconds to reset of the scope
        with the fewest remaining (-1 for a resource none of them limits)."""
        window = self._window
        limit_r = remaining_r = limit_t = remaining_t = -1
        reset_r = reset_t = 0.0
        for lease in leases:
            scope = lease.scope
            reset = lease.last_use + window
            if lease.reset_at > reset:
                reset = lease.reset_at
            reset = reset - now if reset > now else 0.0
            rpm = scope.rpm
            if rpm is not None:
                remaining = lease.free_r + lease.left_r
                if remaining > rpm:
                    remaining = rpm
                if remaining_r < 0 or remaining < remaining_r:
                    limit_r, remaining_r, reset_r = rpm, remaining, reset
            tpm = scope.tpm
            if tpm is not None:
                remaining = lease.free_t + lease.left_t
                if remaining > tpm:
                    remaining = tpm
                if remaining_t < 0 or remaining < remaining_t:
                    limit_t, remaining_t, reset_t = tpm, remaining, reset
        return limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t


# -- headers ---------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers (Go's time.Duration format):
    ``20ms``, ``1s``, ``6m0s``, ``1h0m0s``. Rounded *up*, so a client that waits that long
    is never early: to the millisecond below a second, to the second from one second up
    (a pacing hint does not need more, and whole seconds render from a table)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = math.ceil(seconds * 1000 - 1e-6)
        return f"{ms}ms" if ms < 1000 else "1s"
    whole = math.ceil(seconds - 1e-6)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# Whole seconds up to two windows, rendered once: a reset is almost always among them.
_SECONDS = tuple(format_duration(float(i)).encode() for i in range(121))


def _duration(seconds: float) -> bytes:
    if 1.0 <= seconds <= 120.0:
        return _SECONDS[math.ceil(seconds - 1e-6)]
    return format_duration(seconds).encode()


# The x-ratelimit-* lines in render_headers' order, for Limiter.header_lines.
_LINES_BOTH = (
    _H_LIMIT_R
    + b": %d\r\n"
    + _H_LIMIT_T
    + b": %d\r\n"
    + _H_REMAINING_R
    + b": %d\r\n"
    + _H_REMAINING_T
    + b": %d\r\n"
    + _H_RESET_R
    + b": %b\r\n"
    + _H_RESET_T
    + b": %b\r\n"
)
_LINES_REQUESTS = _H_LIMIT_R + b": %d\r\n" + _H_REMAINING_R + b": %d\r\n" + _H_RESET_R + b": %b\r\n"
_LINES_TOKENS = _H_LIMIT_T + b": %d\r\n" + _H_REMAINING_T + b": %d\r\n" + _H_RESET_T + b": %b\r\n"


def retry_after_seconds(seconds: float) -> int:
    """``Retry-After`` takes whole seconds: round up, and never 0 (a client told 0
    would come straight back)."""
    return max(1, math.ceil(seconds - 1e-9))


def render_headers(info: RateInfo, retry_after: float | None = None) -> list[tuple[bytes, bytes]]:
    """The x-ratelimit-* headers (and ``retry-after`` on a 429) as (name, value) bytes."""
    out: list[tuple[bytes, bytes]] = []
    if info.limit_requests is not None:
        out.append((_H_LIMIT_R, b"%d" % info.limit_requests))
    if info.limit_tokens is not None:
        out.append((_H_LIMIT_T, b"%d" % info.limit_tokens))
    if info.remaining_requests is not None:
        out.append((_H_REMAINING_R, b"%d" % info.remaining_requests))
    if info.remaining_tokens is not None:
        out.append((_H_REMAINING_T, b"%d" % info.remaining_tokens))
    if info.reset_requests is not None:
        out.append((_H_RESET_R, _duration(info.reset_requests)))
    if info.reset_tokens is not None:
        out.append((_H_RESET_T, _duration(info.reset_tokens)))
    if retry_after is not None:
        out.append((_H_RETRY, b"%d" % retry_after_seconds(retry_after)))
    return out
