"""Bytes on the wire: status lines, response heads, chunk framing and dialect error bodies.

Everything that does not depend on the request is built once at import, so the hot path only
concatenates bytes (the uvicorn ``STATUS_LINE`` habit).
"""

from __future__ import annotations

import time
from http import HTTPStatus

import orjson

SERVER_HEADER = b"server: mock-llm\r\n"
JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream; charset=utf-8"

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[529] = b"Site Overloaded"


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))


STATUS_LINES: dict[int, bytes] = {code: status_line(code) for code in _REASONS}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_KEEP = b""
_CLOSE = b"connection: close\r\n"
# HTTP/1.0 clients keep the connection only when told so explicitly.
_KEEP_10 = b"connection: keep-alive\r\n"


class DateHeader:
    """The ``date:`` header line, rebuilt at most once a second rather than per response."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = (
                b"date: %s\r\n"
                % time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
            )
        return self._line


def head(
    date: bytes,
    status: int,
    content_type: bytes,
    length: int | None,
    keep_alive: bool,
    http10: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A complete response head. ``length=None`` means a streamed body (chunked on 1.1)."""
    line = STATUS_LINES.get(status) or status_line(status)
    if length is not None:
        framing = b"content-length: %d\r\n" % length
    elif http10:
        framing = b""  # 1.0 has no chunked coding: the body ends when the connection does
    else:
        framing = b"transfer-encoding: chunked\r\n"
    conn = _CLOSE if not keep_alive else (_KEEP_10 if http10 else _KEEP)
    return b"".join(
        (
            line,
            date,
            SERVER_HEADER,
            b"content-type: ",
            content_type,
            b"\r\n",
            framing,
            conn,
            extra,
            b"\r\n",
        )
    )


def sse_extra(request_id: bytes) -> bytes:
    return (
        b"cache-control: no-cache\r\nx-accel-buffering: no\r\nx-request-id: "
        + request_id
        + (b"\r\n")
    )


def chunk(data: bytes) -> bytes:
    """One chunk of ``transfer-encoding: chunked`` (never call with empty data: that ends it)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- dialect error bodies ----------------------------------------------------------------------

# OpenAI: (type, code) per status, following what api.openai.com returns.
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout_error", None),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
    529: ("overloaded_error", "overloaded"),
}

# Anthropic: error.type per status, as the Messages API documents them.
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}

_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Bad request (mock)",
    401: "Incorrect API key provided (mock)",
    403: "Permission denied (mock)",
    404: "Not found (mock)",
    429: "Rate limit reached (mock)",
    500: "The server had an error while processing your request (mock)",
    503: "The server is overloaded or not ready yet (mock)",
    529: "Overloaded (mock)",
}


def error_message(status: int) -> str:
    return _DEFAULT_MESSAGES.get(status) or f"{_REASONS.get(status, b'Error').decode()} (mock)"


def error_body(
    dialect: str, status: int, message: str | None = None, param: str | None = None
) -> bytes:
    """The JSON error body a real API of ``dialect`` ("openai"/"anthropic") sends."""
    msg = message or error_message(status)
    if dialect == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status) or (
            "api_error" if status >= 500 else "invalid_request_error"
        )
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": msg}})
    kind, code = _OPENAI_ERRORS.get(status) or (
        ("server_error" if status >= 500 else "invalid_request_error"),
        None,
    )
    return orjson.dumps({"error": {"message": msg, "type": kind, "param": param, "code": code}})
