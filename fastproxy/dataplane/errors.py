"""The one exception that ends an exchange with a gateway-generated error response."""

from __future__ import annotations


class Abort(Exception):
    """Answer the client with ``status`` and an error in its dialect; ``code`` is the
    machine-readable error code, ``extra`` pre-encoded header lines (e.g. ``allow:``)."""

    def __init__(self, status: int, message: str, code: str, extra: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra
