"""Client authentication on the data port: which configured key, if any, a request holds.

Checked as soon as the request head is parsed, before a byte of the body is read or a
``100 Continue`` is sent: an unauthenticated client must not be able to make the gateway
buffer a body. Keys come as ``Authorization: Bearer <key>`` (OpenAI's SDK) or
``x-api-key: <key>`` (Anthropic's); they are compared in constant time per key, over every
key, so the time taken does not say which key came close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["bearer_key", "presented_key", "verify"]


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key a client sent, from ``x-api-key`` or a Bearer ``Authorization``."""
    bearer: bytes | None = None
    for name, value in headers:
        if name == b"x-api-key":
            return value
        if name == b"authorization" and bearer is None:
            bearer = value
    return bearer_key(bearer)


def bearer_key(authorization: bytes | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` value, or None."""
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return None


def verify(keys: Sequence[bytes], given: bytes | None) -> str | None:
    """The key's id (a short digest, safe to store and log) or None if no key matches."""
    if not given:
        return None
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return hashlib.sha256(given).hexdigest()[:12] if ok else None
