"""Bytes on the wire: status lines, header blocks and canned responses, built once.

The hot path never formats a status line or re-encodes a constant header: they are
precomputed here at import (uvicorn's STATUS_LINE habit). Header values copied from a
backend pass `is_safe_header` before they are written to a client, because a CR, LF or
NUL smuggled in a header value would let a backend split or forge our response.
"""

from __future__ import annotations

import http
import re

STATUS_LINE: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in http.HTTPStatus
}
STATUS_LINE[508] = b"HTTP/1.1 508 Loop Detected\r\n"
STATUS_LINE[529] = b"HTTP/1.1 529 Site Overloaded\r\n"

# Hop-by-hop and framing headers that are ours to decide, never copied across.
# (Content-Encoding is not among them: we ask backends for identity, but one that
# compresses anyway must still be described correctly to the client.)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"alt-svc",
    }
)

# Client headers never forwarded to a backend: credentials (the backend gets its own),
# routing and framing headers we set ourselves, and compression (we must read the body).
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    {
        b"host",
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"x-goog-api-key",
        b"cookie",
        b"accept-encoding",
        b"openai-organization",
        b"openai-project",
        b"x-fastproxy-hop",
        b"x-session-id",
        b"x-proxy-user",
        b"x-disable-replacement",
        b"expect",
        b"content-type",
    }
)

_UNSAFE = re.compile(rb"[\x00\r\n]")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def is_safe_header(name: bytes, value: bytes) -> bool:
    """A header from a backend may be written to a client only if this holds."""
    return _TOKEN.match(name) is not None and _UNSAFE.search(value) is None


CRLF = b"\r\n"
CHUNKED_END = b"0\r\n\r\n"
SSE_HEADERS_10 = (
    b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n"
)
# HTTP/1.1 clients get chunked framing; HTTP/1.0 has none, so their streams end at close.
SSE_HEADERS = SSE_HEADERS_10 + b"transfer-encoding: chunked\r\n"
JSON_CT = b"content-type: application/json\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
CLOSE = b"connection: close\r\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def simple_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    date: bytes = b"",
    content_type: bytes = JSON_CT,
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete response with a Content-Length body (errors, local endpoints).

    ``head_only`` answers a HEAD request: the same headers, Content-Length included, and
    no body, since a body after a HEAD answer would be read as the next response."""
    return b"".join(
        (
            STATUS_LINE.get(status) or b"HTTP/1.1 %d Status\r\n" % status,
            date,
            content_type,
            b"content-length: %d\r\n" % len(body),
            KEEP_ALIVE if keep_alive else CLOSE,
            extra,
            CRLF,
            b"" if head_only else body,
        )
    )
