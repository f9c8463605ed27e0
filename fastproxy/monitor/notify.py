"""Fan-out of health and breaker transitions: log line, SSE subscribers, webhook.

Rules, and why:

- **Publishing never blocks and never waits.** ``publish`` runs inside the prober and
  inside the health service's attempt sink on the request path (``attempt_started``,
  ``attempt_finished``), so it only formats one event, writes one log line and does
  ``put_nowait`` on bounded queues.
- **A slow SSE subscriber is dropped, not waited for.** Each subscriber has its own
  bounded queue; when it is full the subscriber's stream is ended (it can reconnect and
  read the current state from ``/internal/health``). Memory per subscriber is bounded.
- **The webhook has one worker and one bounded queue.** Events are POSTed in order,
  each with a timeout and up to ``WEBHOOK_ATTEMPTS`` tries with exponential backoff.
  A dead receiver therefore delays only later webhook deliveries, never the prober or
  traffic; when the queue is full new events are counted as dropped. The POST goes
  through the gateway's own upstream client (``httpclient.fetch``: same TLS handling
  as backends).
- **Every transition is logged in one line**, whatever ``notify_backends`` says: the log
  is the operator's record. ``notify_backends: false`` silences the outward channels
  (SSE events and webhook) only.
- **Repeats are summarised in the log, never in the other channels.** A dead endpoint
  cycles its breaker open -> half_open -> open every cooldown, forever; two WARNING lines
  per cooldown bury everything else in the log. So the first of each transition (subject,
  from, to) is a WARNING, later identical ones are DEBUG lines, and once per
  ``health_check.log_repeat_window_seconds`` the next one is a WARNING again that says how
  many there were ("repeated 20 times in the last 10 min"). A recovery (to ``closed`` or
  ``healthy``) is always one WARNING line and forgets the subject's repeats, so the next
  outage is logged in full: the last WARNING line about a subject is never a stale
  "closed" while it is failing. SSE subscribers and the webhook get every transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config import BackendConfig
from ..core.errors import UpstreamError
from ..httpclient.backend import Backend
from ..httpclient.fetch import fetch

log = logging.getLogger("fastproxy.monitor")

SUBSCRIBER_QUEUE = 256  # events buffered per SSE subscriber before it is dropped
WEBHOOK_QUEUE = 1000
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_BACKOFF_S = 0.5  # 0.5 s, then 1 s between the three attempts
LOG_REPEAT_WINDOW_S = 600.0  # health_check.log_repeat_window_seconds' default
RECOVERED = frozenset({"closed", "healthy"})  # transitions into these are recoveries
USER_AGENT = b"fastproxy-health"  # the health probe's: one gateway health client


def utc_iso(wall: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and ``Z`` (the monitoring API's timestamp form)."""
    if wall is None:
        return None
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def span(seconds: float) -> str:
    """A short human duration for a log line: "45 s", "10 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TransitionLog:
    """The log channel of the notifier: one line per transition, repeats summarised.

    Keyed by (kind, subject, from, to), not by the reason: the reason of a dead
    endpoint's transitions changes ("failed 3x", "failed 4x") while the news does not.
    Memory is bounded by subjects x distinct transitions, and a recovery frees a
    subject's entries."""

    __slots__ = ("_clock", "_repeats", "window_s")

    def __init__(
        self, window_s: float = LOG_REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s  # 0: every transition is a WARNING line
        self._clock = clock
        # (kind, subject, from, to) -> [when its last WARNING line was written,
        #                               how many times it happened since then]
        self._repeats: dict[tuple[str, str, str, str], list[float]] = {}

    def write(self, kind: str, subject: str, old: str, new: str, reason: str) -> None:
        if new in RECOVERED:
            unlogged = self._forget(kind, subject)
            if unlogged:
                log.warning(
                    "%s %s: %s -> %s (%s) (after %d repeated transitions logged at DEBUG only)",
                    kind,
                    subject,
                    old,
                    new,
                    reason,
                    unlogged,
                )
            else:
                log.warning("%s %s: %s -> %s (%s)", kind, subject, old, new, reason)
            return
        if self.window_s <= 0:
            log.warning("%s %s: %s -> %s (%s)", kind, subject, old, new, reason)
            return
        key = (kind, subject, old, new)
        now = self._clock()
        seen = self._repeats.get(key)
        if seen is None:
            self._repeats[key] = [now, 0]
            log.warning("%s %s: %s -> %s (%s)", kind, subject, old, new, reason)
            return
        seen[1] += 1
        elapsed = now - seen[0]
        if elapsed >= self.window_s:
            log.warning(
                "%s %s: %s -> %s (%s) (repeated %d times in the last %s)",
                kind,
                subject,
                old,
                new,
                reason,
                seen[1],
                span(elapsed),
            )
            seen[0], seen[1] = now, 0
        else:
            log.debug(
                "%s %s: %s -> %s (%s) (repeat %d; summarised at WARNING every %s)",
                kind,
                subject,
                old,
                new,
                reason,
                seen[1],
                span(self.window_s),
            )

    def _forget(self, kind: str, subject: str) -> int:
        """Drop the subject's entries; how many of its transitions went to DEBUG only
        since their last WARNING line."""
        unlogged = 0
        for key in [k for k in self._repeats if k[0] == kind and k[1] == subject]:
            unlogged += int(self._repeats.pop(key)[1])
        return unlogged


class Subscription:
    """One SSE subscriber's bounded queue; ``None`` in it means "your stream ends"."""

    __slots__ = ("dropped", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = False


class Notifier:
    __slots__ = (
        "_subscribers",
        "_webhook",
        "_webhook_queue",
        "_webhook_task",
        "counters",
        "outward",
        "seq",
        "transition_log",
        "webhook_backoff_s",
        "webhook_timeout_s",
    )

    def __init__(
        self,
        *,
        outward: bool,
        webhook_url: str | None,
        webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
        webhook_backoff_s: float = WEBHOOK_BACKOFF_S,
        log_repeat_window_s: float = LOG_REPEAT_WINDOW_S,
    ) -> None:
        self.outward = outward  # health_check.notify_backends
        self.seq = 0
        self.transition_log = TransitionLog(log_repeat_window_s)
        self._subscribers: set[Subscription] = set()
        self._webhook: Backend | None = None
        if webhook_url and outward:
            self._webhook = Backend(
                "webhook", BackendConfig(type="openai", api_url=webhook_url), env={}
            )
        self._webhook_queue: asyncio.Queue[bytes] = asyncio.Queue(WEBHOOK_QUEUE)
        self._webhook_task: asyncio.Task[None] | None = None
        self.webhook_timeout_s = webhook_timeout_s
        self.webhook_backoff_s = webhook_backoff_s
        self.counters = {
            "published": 0,
            "subscribers_dropped": 0,
            "webhook_sent": 0,
            "webhook_failed": 0,
            "webhook_dropped": 0,
        }

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._webhook is not None and self._webhook_task is None:
            self._webhook_task = asyncio.get_running_loop().create_task(
                self._webhook_worker(), name="fastproxy-health-webhook"
            )

    async def stop(self) -> None:
        task, self._webhook_task = self._webhook_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subscribers):
            self._end(sub)

    # -- publishing -------------------------------------------------------------------
    def publish(
        self,
        kind: str,
        subject_key: str,
        subject: str,
        old: str,
        new: str,
        reason: str,
        wall: float | None = None,
    ) -> dict[str, Any]:
        """Announce one transition; ``kind`` is "endpoint" or "breaker"."""
        event = {
            "at": utc_iso(time.time() if wall is None else wall),
            subject_key: subject,
            "from": old,
            "to": new,
            "reason": reason,
        }
        self.transition_log.write(kind, subject, old, new, reason)
        self.counters["published"] += 1
        if not self.outward:
            return event
        self.seq += 1
        data = orjson.dumps(event)
        frame = b"event: %b\nid: %d\ndata: %b\n\n" % (kind.encode(), self.seq, data)
        self._fan_out(frame, data)
        return event

    def _fan_out(self, frame: bytes, data: bytes) -> None:
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.counters["subscribers_dropped"] += 1
                log.warning(
                    "health events: dropping a subscriber that is not reading (%d events queued)",
                    sub.queue.qsize(),
                )
                self._end(sub)
        if self._webhook_task is not None:
            try:
                self._webhook_queue.put_nowait(data)
            except asyncio.QueueFull:
                self.counters["webhook_dropped"] += 1

    def announce(self, kind: str, event: dict[str, Any], line: str) -> None:
        """Announce one event that is not a transition (``kind`` "budget": a budget
        threshold crossed): one WARNING ``line``, then the SSE subscribers and the
        webhook get ``event`` as they get transitions (so ``notify_backends: false``
        silences it there too)."""
        log.warning("%s", line)
        self.counters["published"] += 1
        if not self.outward:
            return
        self.seq += 1
        data = orjson.dumps(event)
        frame = b"event: %b\nid: %d\ndata: %b\n\n" % (kind.encode(), self.seq, data)
        self._fan_out(frame, data)

    # -- SSE subscribers ----------------------------------------------------------------
    def subscribe(self) -> Subscription:
        sub = Subscription(SUBSCRIBER_QUEUE)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _end(self, sub: Subscription) -> None:
        """Make the subscriber's stream end at its next read (the queue may be full)."""
        self._subscribers.discard(sub)
        sub.dropped = True
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    # -- webhook ------------------------------------------------------------------------
    async def _webhook_worker(self) -> None:
        while True:
            data = await self._webhook_queue.get()
            for attempt in range(WEBHOOK_ATTEMPTS):
                error = await self._post(data)
                if error is None:
                    self.counters["webhook_sent"] += 1
                    break
                if attempt + 1 == WEBHOOK_ATTEMPTS:
                    self.counters["webhook_failed"] += 1
                    log.warning(
                        "health webhook: giving up on one event after %d attempts (%s)",
                        WEBHOOK_ATTEMPTS,
                        error,
                    )
                    break
                await asyncio.sleep(self.webhook_backoff_s * (2**attempt))

    async def _post(self, data: bytes) -> str | None:
        """POST one event; None on a 2xx, else why it failed."""
        hook = self._webhook
        assert hook is not None
        try:
            # need_body=False: the status decides; the (small) answer is read only so
            # the receiver sees a complete exchange rather than a reset.
            resp = await fetch(
                hook,
                b"POST",
                webhook_target(hook.api_url),
                timeout_s=self.webhook_timeout_s,
                loop=asyncio.get_running_loop(),
                body=data,
                user_agent=USER_AGENT,
                identity=False,
                auth=False,  # a receiver is no backend: it has no key to be sent
                need_body=False,
            )
        except UpstreamError as exc:
            if exc.kind == "timeout":
                return f"timeout after {self.webhook_timeout_s:g}s"
            return str(exc)
        if resp.body_error is not None and resp.body_error.kind == "timeout":
            # A receiver still sending its answer at the deadline may not have taken
            # the event yet: a failed attempt, tried again. One that reset the
            # connection after a complete head has answered.
            return f"timeout after {self.webhook_timeout_s:g}s"
        if 200 <= resp.status < 300:
            return None
        return f"HTTP {resp.status}"


def webhook_target(url: str) -> bytes:
    """The request target of a webhook URL: its path (``/`` if none) and query."""
    parts = urlsplit(url)
    return ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
