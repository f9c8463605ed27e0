"""Response bytes for the data port: heads, error answers, usage headers.

Everything here is a function of its arguments: the request cycle decides what to answer, this module says how it looks on
the wire. `error_response` is the one place a `GatewayError` becomes an answer in the
caller's dialect.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from .._speedups import IMPLEMENTATION, json_members
from ..core.errors import GatewayError
from ..core.records import BackendUsage
from . import wire
from .admission import LimitRefused
from .dialects import from_anthropic, from_openai
from .request import Request


def error_response(
    req: Request, err: GatewayError, date: bytes, keep_alive: bool, extra: bytes = b""
) -> bytes:
    """``err`` as a complete response in the dialect the request speaks."""
    if isinstance(err, LimitRefused):
        body = limit_body(req.dialect.name, err)
    else:
        body = req.dialect.error_body(err.status, str(err), err.code)
    return wire.simple_response(
        err.status,
        body,
        keep_alive=keep_alive,
        date=date,
        extra=err.headers + extra if extra else err.headers,
        head_only=req.head_only,
    )


def limit_body(dialect: str, err: LimitRefused) -> bytes:
    """A gateway 429 as each provider writes its own: OpenAI's ``type`` says which limit
    (``requests``, ``tokens``, ``insufficient_quota``) and ``code`` why; Anthropic has one
    type for a 429, ``rate_limit_error``."""
    if dialect == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": "rate_limit_error", "message": str(err)}}
        )
    return orjson.dumps(
        {"error": {"message": str(err), "type": err.error_type, "param": None, "code": err.code}}
    )


# Printable ASCII a header value may hold as it is; anything else in a model name (it is
# the client's text: a CR or LF would split the head) is percent-encoded.
_HEADER_SAFE = "!#$&'()*+,/:;=?@[]~^`{|}<>"


def replaced_from_header(original: str) -> bytes:
    """``x-fastproxy-replaced-from``: the backend:model a replaced request was meant for."""
    return b"x-fastproxy-replaced-from: " + quote(original, safe=_HEADER_SAFE).encode() + b"\r\n"


def json_head(
    status: int,
    date: bytes,
    length: int,
    extra: bytes,
    keep_alive: bool,
    upstream_headers: list[tuple[bytes, bytes]] | None = None,
) -> list[bytes]:
    """The head of a buffered answer, as parts to join with its body. A backend's own
    headers pass through when they are safe to copy (never its framing)."""
    parts = [wire.STATUS_LINE.get(status) or b"HTTP/1.1 %d Status\r\n" % status, date]
    has_ct = False
    for name, value in upstream_headers or ():
        if name in wire.HOP_BY_HOP or not wire.is_safe_header(name, value):
            continue
        if name == b"content-type":
            has_ct = True
        parts += (name, b": ", value, b"\r\n")
    if not has_ct:
        parts.append(wire.JSON_CT)
    parts += (
        b"content-length: %d\r\n" % length,
        extra,
        wire.KEEP_ALIVE if keep_alive else wire.CLOSE,
        wire.CRLF,
    )
    return parts


_SSE_OWN = (b"content-type", b"cache-control", b"x-accel-buffering")


def stream_head(
    date: bytes,
    chunked: bool,
    upstream_headers: list[tuple[bytes, bytes]],
    backend: str,
    keep_alive: bool,
    extra: bytes = b"",
) -> bytes:
    """The head of a relayed event stream (chunked for HTTP/1.1, close-delimited for
    HTTP/1.0); the gateway sets the stream's own headers."""
    parts = [wire.STATUS_LINE[200], date, wire.SSE_HEADERS if chunked else wire.SSE_HEADERS_10]
    for name, value in upstream_headers:
        if name in wire.HOP_BY_HOP or name in _SSE_OWN:
            continue
        if wire.is_safe_header(name, value):
            parts += (name, b": ", value, b"\r\n")
    parts += (
        b"x-fastproxy-backend: ",
        backend.encode(),
        b"\r\n",
        extra,
        wire.KEEP_ALIVE if keep_alive else wire.CLOSE,
        wire.CRLF,
    )
    return b"".join(parts)


def json_obj(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# A whole JSON answer's usage is read by one compiled scan that builds only the members
# it names (`json_members`), not by parsing the completion into Python objects on the
# loop; only with the compiled core: the pure twin is slower than orjson.
SCAN_MEMBERS = IMPLEMENTATION == "cython"
_MEMBERS = (b"usage", b"type")


def answer_usage(body: bytes, frontend: str) -> tuple[BackendUsage | None, Any]:
    """The usage a whole JSON answer reports, and the parsed document when reading the
    usage took one (else None: `answer_doc` parses it if a caller needs more)."""
    if SCAN_MEMBERS:
        members = json_members(body, _MEMBERS)
        if members is not None:
            raw, kind = members
            if raw is None:
                return None, None
            usage = orjson.loads(raw)
            if frontend == "anthropic" or kind == b'"message"':
                return from_anthropic(usage), None
            return from_openai(usage), None
    doc = json_obj(body)
    return json_usage(doc, frontend), doc


def answer_doc(body: bytes, doc: Any) -> Any:
    """The parsed answer for its tool names: ``doc`` if `answer_usage` made it, else
    parsed now, and only when the answer may name a tool call at all. A tool call is
    named under "tool_calls", or by a type "tool_use", "server_tool_use" or
    "function_call": an answer holding neither "tool_" nor "function_call" has none
    (two substring searches, in C)."""
    if doc is not None or (b"tool_" not in body and b'"function_call"' not in body):
        return doc
    return json_obj(body)


def json_usage(obj: Any, frontend: str) -> BackendUsage | None:
    if not isinstance(obj, dict):
        return None
    if frontend == "anthropic" or obj.get("type") == "message":
        return from_anthropic(obj.get("usage"))
    return from_openai(obj.get("usage"))


def usage_headers(usage: BackendUsage) -> list[bytes]:
    out = []
    if usage.prompt is not None:
        out.append(b"x-usage-prompt-tokens: %d\r\n" % usage.prompt)
    if usage.completion is not None:
        out.append(b"x-usage-completion-tokens: %d\r\n" % usage.completion)
    if usage.total is not None:
        out.append(b"x-usage-total-tokens: %d\r\n" % usage.total)
    if usage.cost is not None:
        out.append(b"x-usage-cost: " + repr(usage.cost).encode() + b"\r\n")
    return out
