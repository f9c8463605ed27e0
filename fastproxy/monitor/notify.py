"""Fan-out of health and breaker transitions: log line, SSE subscribers, webhook.

Rules, and why:

- **Publishing never blocks and never waits.** ``publish`` runs inside the prober and
  inside the attempt hook on the request path, so it only formats one event, writes
  one log line and does ``put_nowait`` on bounded queues.
- **A slow SSE subscriber is dropped, not waited for.** Each subscriber has its own
  bounded queue; when it is full the subscriber's stream is ended (it can reconnect and
  read the current state from ``/internal/health``). Memory per subscriber is bounded.
- **The webhook has one worker and one bounded queue.** Events are POSTed in order,
  each with a timeout and up to ``WEBHOOK_ATTEMPTS`` tries with exponential backoff.
  A dead receiver therefore delays only later webhook deliveries, never the prober or
  traffic; when the queue is full new events are counted as dropped. The POST goes
  through the gateway's own upstream client (same TLS handling as backends).
- **Every transition is logged at WARNING in one line**, whatever ``notify_backends``
  says: the log is the operator's record. ``notify_backends: false`` silences the
  outward channels (SSE events and webhook) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config import BackendConfig
from ..dataplane.backends import Backend
from ..dataplane.upstream import UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("fastproxy.monitor")

SUBSCRIBER_QUEUE = 256  # events buffered per SSE subscriber before it is dropped
WEBHOOK_QUEUE = 1000
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_BACKOFF_S = 0.5  # 0.5 s, then 1 s between the three attempts


def utc_iso(wall: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and ``Z`` (the contract's timestamp form)."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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
        "webhook_backoff_s",
        "webhook_timeout_s",
    )

    def __init__(self, *, outward: bool, webhook_url: str | None,
                 webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
                 webhook_backoff_s: float = WEBHOOK_BACKOFF_S) -> None:
        self.outward = outward  # health_check.notify_backends
        self.seq = 0
        self._subscribers: set[Subscription] = set()
        self._webhook: Backend | None = None
        if webhook_url and outward:
            self._webhook = Backend("webhook", BackendConfig(type="openai", api_url=webhook_url),
                                    env={})
        self._webhook_queue: asyncio.Queue[bytes] = asyncio.Queue(WEBHOOK_QUEUE)
        self._webhook_task: asyncio.Task[None] | None = None
        self.webhook_timeout_s = webhook_timeout_s
        self.webhook_backoff_s = webhook_backoff_s
        self.counters = {"published": 0, "subscribers_dropped": 0, "webhook_sent": 0,
                         "webhook_failed": 0, "webhook_dropped": 0}

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._webhook is not None and self._webhook_task is None:
            self._webhook_task = asyncio.get_running_loop().create_task(
                self._webhook_worker(), name="fastproxy-health-webhook")

    async def stop(self) -> None:
        task, self._webhook_task = self._webhook_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subscribers):
            self._end(sub)

    # -- publishing -------------------------------------------------------------------
    def publish(self, kind: str, subject_key: str, subject: str, old: str, new: str,
                reason: str, wall: float | None = None) -> dict[str, Any]:
        """Announce one transition; ``kind`` is "endpoint" or "breaker"."""
        event = {"at": utc_iso(time.time() if wall is None else wall), subject_key: subject,
                 "from": old, "to": new, "reason": reason}
        log.warning("%s %s: %s -> %s (%s)", kind, subject, old, new, reason)
        self.counters["published"] += 1
        if not self.outward:
            return event
        self.seq += 1
        data = orjson.dumps(event)
        frame = b"event: %b\nid: %d\ndata: %b\n\n" % (kind.encode(), self.seq, data)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.counters["subscribers_dropped"] += 1
                log.warning("health events: dropping a subscriber that is not reading "
                            "(%d events queued)", sub.queue.qsize())
                self._end(sub)
        if self._webhook_task is not None:
            try:
                self._webhook_queue.put_nowait(data)
            except asyncio.QueueFull:
                self.counters["webhook_dropped"] += 1
        return event

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
                    log.warning("health webhook: giving up on one event after %d attempts (%s)",
                                WEBHOOK_ATTEMPTS, error)
                    break
                await asyncio.sleep(self.webhook_backoff_s * (2 ** attempt))

    async def _post(self, data: bytes) -> str | None:
        """POST one event; None on a 2xx, else why it failed."""
        hook = self._webhook
        assert hook is not None
        loop = asyncio.get_running_loop()
        parts = urlsplit(hook.api_url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (b"POST " + target.encode("latin-1") + b" HTTP/1.1\r\nhost: " + hook.host_header
                + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(data)
                + b"user-agent: fastproxy-health\r\nconnection: close\r\n\r\n")
        pool = UpstreamPool(hook, loop)
        try:
            async with asyncio.timeout(self.webhook_timeout_s):
                conn, _ = await pool.acquire(self.webhook_timeout_s)
                resp = UpstreamResponse(loop)
                conn.send(head, data, resp)
                await resp.head
                with contextlib.suppress(UpstreamError):
                    await resp.done  # read the (small) answer: no reset to the receiver
        except TimeoutError:
            return f"timeout after {self.webhook_timeout_s:g}s"
        except (UpstreamError, OSError) as exc:
            return str(exc)
        finally:
            pool.close()
        if 200 <= resp.status < 300:
            return None
        return f"HTTP {resp.status}"
