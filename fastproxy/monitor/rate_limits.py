"""RateLimitWatch: which backends answered 429 lately, and for how long they asked to be
left alone.

An `AttemptSink`: an upstream attempt answered 429 marks the backend rate limited for as
long as the answer's ``Retry-After`` says (delta-seconds or an HTTP-date, capped at
``RATE_LIMIT_MAX_HOLD_S``), ``RATE_LIMIT_HOLD_S`` when it has none or an unreadable one,
or until an attempt on it succeeds. /v1/diagnostics shows what remains of the hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .probes import MAX_RETRY_AFTER_S, parse_retry_after

RATE_LIMIT_HOLD_S = 60.0  # a 429 without a usable Retry-After
# A longer Retry-After (a daily quota, say) is held this long; the next 429 marks it again.
# The same cap as the health probes' Retry-After, so the two views of a backend agree.
RATE_LIMIT_MAX_HOLD_S = MAX_RETRY_AFTER_S


class RateLimitWatch:
    """An attempt sink: remembers which backends answered 429 lately, and for how long
    they asked to be left alone."""

    __slots__ = ("_clock", "_until", "_wall", "hold_s", "max_hold_s")

    def __init__(
        self,
        hold_s: float = RATE_LIMIT_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_hold_s: float = RATE_LIMIT_MAX_HOLD_S,
    ) -> None:
        self.hold_s = hold_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._wall = wall  # an HTTP-date Retry-After is a wall-clock time
        self._until: dict[str, float] = {}

    def attempt_started(self, backend: str) -> None:
        pass  # only outcomes matter here

    def attempt_finished(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        """``retry_after`` is the 429 answer's raw ``Retry-After`` header (None: absent)."""
        if status == 429:
            self._until[backend] = self._clock() + self.hold_for(retry_after)
        elif 200 <= status < 300 and backend in self._until:
            del self._until[backend]  # it answers again: no longer limited

    def hold_for(self, retry_after: bytes | None) -> float:
        """Seconds to hold a backend that answered 429 with this ``Retry-After``: its
        value (delta-seconds, or an HTTP-date minus now; a past date is 0), capped at
        ``max_hold_s``; ``hold_s`` when the header is absent or unreadable."""
        seconds = parse_retry_after(retry_after, self._wall())
        if seconds is None:
            return self.hold_s
        return min(seconds, self.max_hold_s)

    def retry_after(self, backend: str) -> float | None:
        """Seconds left in the hold, or None when not rate limited. A read: an expired
        hold is only ignored here (the next 2xx or 429 of that backend replaces it)."""
        until = self._until.get(backend)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            return None
        return round(left, 3)

    def clear(self, backend: str) -> None:
        self._until.pop(backend, None)
