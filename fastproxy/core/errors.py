"""One error hierarchy for everything that ends a request with an answer.

Every exception here carries the HTTP status it should be answered with and a
machine-readable code, the way h11's ``status_hint`` does: the place that raises knows
what went wrong, the plane that answers only renders it (in the caller's API dialect on
the data port, as ``{"detail": ...}`` on the admin listener). So no layer translates one
exception type into another by hand, and the status of a failure is decided once.

- `GatewayError`: the base. ``status``, ``code``, ``headers`` (pre-encoded extra header
  lines such as ``allow:``), ``close`` (the connection cannot be reused after it).
- `RequestRejected`: the request itself is refused (4xx; its head or its body).
- `UpstreamError`: the leg to a backend failed; ``kind`` classifies it for failover,
  metrics and the circuit breaker, and decides the status (504 for a timeout, 502 else).
- `RoutingError`: no backend can take this model from this caller.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: bytes = b"",
        close: bool = False,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers
        self.close = close

    @property
    def message(self) -> str:
        return str(self)


class RequestRejected(GatewayError):
    """The client's request is refused: its head, its body or what it asks for."""

    status = 400
    code = "bad_request"


class RoutingError(GatewayError):
    """The model asked for has no backend that can serve this caller."""

    status = 404
    code = "model_not_found"


# The kinds an upstream failure comes in: connect | timeout | reset | protocol | tls |
# too_large | closed. A timeout answers 504, everything else 502.
class UpstreamError(GatewayError):
    """A failure of the leg to a backend. ``sent_nothing``: the request never reached
    the backend (safe to retry on a fresh connection)."""

    status = 502
    code = "upstream_error"

    def __init__(self, kind: str, message: str, *, sent_nothing: bool = False) -> None:
        timeout = kind == "timeout"
        super().__init__(
            message,
            status=504 if timeout else 502,
            code="upstream_timeout" if timeout else "upstream_error",
        )
        self.kind = kind
        self.sent_nothing = sent_nothing
