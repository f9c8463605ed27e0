"""OpenAI dialect: Chat Completions, Responses API, embeddings, models."""

from __future__ import annotations

from typing import Final

import orjson

from ...core.records import BackendUsage

name: Final = "openai"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    508: "invalid_request_error",
}

DONE = b"[DONE]"
# Responses API streams end with one of these event types instead of [DONE].
_RESPONSES_TERMINAL = frozenset({b"response.completed", b"response.failed", b"response.incomplete"})


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    )


def stream_error_event(message: str, code: str) -> bytes:
    """What a client receives when a stream is cut: an error object, and no [DONE]."""
    body = orjson.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    )
    return b"data: " + body + b"\n\n"


def is_terminal(event: bytes, data: bytes) -> bool:
    return data == DONE or event in _RESPONSES_TERMINAL


def stream_usage(event: bytes, data: bytes) -> tuple[BackendUsage | None, bool]:
    """Usage carried by one SSE event, and whether the event is a usage-only chunk.

    Only called for events whose data contains ``"usage"``, so the JSON parse is rare.
    """
    from .usage import from_openai

    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    if event.startswith(b"response."):
        resp = obj.get("response")
        usage = resp.get("usage") if isinstance(resp, dict) else None
        return from_openai(usage), False
    usage = from_openai(obj.get("usage"))
    return usage, usage is not None and obj.get("choices") == []
