"""Anthropic dialect: Messages API."""

from __future__ import annotations

from typing import Final

import orjson

from ...core.records import BackendUsage

name: Final = "anthropic"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    414: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "request_too_large",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    508: "invalid_request_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type(status), "message": message}}
    )


def stream_error_event(message: str, code: str) -> bytes:
    body = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return b"event: error\ndata: " + body + b"\n\n"


def is_terminal(event: bytes, data: bytes) -> bool:
    return event == b"message_stop"


def stream_usage(event: bytes, data: bytes) -> tuple[BackendUsage | None, bool]:
    """Input usage arrives in message_start, output in message_delta; never stripped."""
    from .usage import from_anthropic

    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    if obj.get("type") == "message_start":
        msg = obj.get("message")
        return from_anthropic(msg.get("usage") if isinstance(msg, dict) else None), False
    return from_anthropic(obj.get("usage")), False
