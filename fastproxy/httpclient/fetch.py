"""One request, one whole response: the gateway's own requests to a backend.

The health probe, the webhook notifier and model discovery each send one request and
read one answer; ``fetch`` does it for them over the same pool and connection classes
the data plane uses, so they fail for the same reasons live traffic would (a wrong CA
bundle, an expired key). The data plane does not use it: it relays as bytes arrive and
fails over, which a whole-response helper cannot express.

Rules, and why:

- **One deadline for everything.** Connecting, sending, the head and the body share
  ``timeout_s``: the caller's budget is the longest the call can take, however the time
  is split between a slow connect and a slow answer.
- **Every failure is an `UpstreamError`,** a timeout included (kind ``timeout``, "no
  answer within 5s"), so a caller has one exception to classify, by its ``kind``.
- **Given a `Backend`, a fresh pool for this request alone, and ``connection:
  close``.** A probe must see connect and TLS failures, which a pooled keep-alive
  socket would hide; the pool is closed on the way out, whatever happens.
- **Given an `UpstreamPool`, keep-alive.** A reused connection that the backend closed
  while it sat idle fails before any byte of an answer: the request is sent once more
  on a fresh connection, as the data plane does.
- **Never half-reuse.** A connection left with this response unfinished (a timeout, a
  HEAD answer, a body not waited for) is closed, never returned to a pool.
- **A HEAD answer's body is never waited for.** The response parser frames a body by
  its Content-Length, which a HEAD answer declares without sending one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from ..core.errors import UpstreamError
from .backend import Backend
from .pool import UpstreamConnection, UpstreamPool
from .request import request_head
from .response import UpstreamResponse

__all__ = ["FetchResult", "fetch"]

# Methods whose empty body is still announced (``content-length: 0``): a server may
# otherwise wait for a body or refuse the request with 411.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class FetchResult:
    """The answer to one `fetch`: status, headers (names lower-case), body bytes.

    ``complete``: the body was read to its end. It is False for a HEAD request, and
    with ``need_body=False`` when the body failed or ran out of time; ``body_error``
    then says why (None for HEAD, whose body is never waited for)."""

    __slots__ = ("body", "body_error", "complete", "head_at", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        head_at: float,
        complete: bool,
        body_error: UpstreamError | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.head_at = head_at  # time.monotonic() when the response head was complete
        self.complete = complete
        self.body_error = body_error

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


async def fetch(
    via: Backend | UpstreamPool,
    method: bytes,
    target: bytes,
    *,
    timeout_s: float,
    loop: asyncio.AbstractEventLoop,
    body: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    extra: bytes = b"",
    user_agent: bytes = b"",
    identity: bool = True,
    auth: bool = True,
    anthropic_version: bool = True,
    need_body: bool = True,
) -> FetchResult:
    """Send one request to ``via`` and read its answer within ``timeout_s`` seconds.

    ``target`` is the request target as sent; the head is `request_head`'s, with the
    header options of the same names (``body`` is sent as JSON). ``need_body``: when
    True a body that fails or runs out of time raises; when False the status decides
    and the body is read only within what is left of the deadline (so the server sees
    a complete exchange), its failure reported in ``FetchResult.body_error``.

    Raises `UpstreamError` for anything that keeps a response head from arriving in
    time (and, with ``need_body``, a whole body)."""
    own = isinstance(via, Backend)
    pool = UpstreamPool(via, loop) if isinstance(via, Backend) else via
    head = request_head(
        pool.backend,
        method,
        target,
        content_length=len(body) if body or method in _BODY_METHODS else None,
        extra=extra,
        identity=identity,
        user_agent=user_agent,
        auth=auth,
        headers=headers,
        anthropic_version=anthropic_version,
        close=own,
    )
    deadline = loop.time() + timeout_s
    conn: UpstreamConnection | None = None
    resp: UpstreamResponse | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                conn, resp = await _exchange(pool, head, body, deadline, loop)
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {timeout_s:g}s") from None
        except OSError as exc:  # the pool reports its own; this is a transport's surprise
            raise UpstreamError("connect", exc.strerror or str(exc), sent_nothing=True) from None
        head_at = time.monotonic()
        body_error: UpstreamError | None = None
        if method == b"HEAD":
            pass  # no body to wait for, whatever the head announces
        elif not resp.done.done():
            try:
                async with asyncio.timeout_at(deadline):
                    await resp.done
            except TimeoutError:
                body_error = UpstreamError("timeout", f"answer not complete within {timeout_s:g}s")
            except UpstreamError as exc:
                body_error = exc
        elif resp.error is not None:  # the read that ended the head also failed the body
            body_error = resp.error
        if body_error is not None and need_body:
            raise body_error
        complete = method != b"HEAD" and body_error is None
        return FetchResult(
            resp.status, resp.headers, b"".join(resp.body), head_at, complete, body_error
        )
    finally:
        if own:
            pool.close()
        elif conn is not None and conn.response is resp and resp is not None:
            conn.close()


async def _exchange(
    pool: UpstreamPool,
    head: bytes,
    body: bytes,
    deadline: float,
    loop: asyncio.AbstractEventLoop,
) -> tuple[UpstreamConnection, UpstreamResponse]:
    """Acquire, send, wait for the head; one more try on a fresh connection when a
    reused one turns out to have been closed by the backend."""
    retried = False
    while True:
        conn, reused = await pool.acquire(max(0.0, deadline - loop.time()))
        resp = UpstreamResponse(loop)
        conn.send(head, body, resp)
        try:
            await resp.head
        except UpstreamError as err:
            if reused and err.sent_nothing and not retried:
                retried = True
                continue
            raise
        except BaseException:
            # Cancelled or timed out waiting: this response is abandoned with the
            # connection (a late answer must not reach the next request on it).
            conn.close()
            raise
        return conn, resp
