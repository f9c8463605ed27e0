"""The monitoring API's routing table, shared by the admin listener and the data port.

Handlers are plain async functions ``(AdminRequest) -> AdminResponse``: they know nothing
of h11 or httptools, so the same handler answers on the strict admin listener and on the
data port (the seed documents curl ``localhost:8000/...``). Services register their
routes at start-up; the table is the single place that says which paths exist.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import orjson


@dataclass(slots=True)
class AdminRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; a repeated header keeps the last value
    body: bytes
    peer_ip: str | None
    params: dict[str, str] = field(default_factory=dict)  # from {name} path segments
    # True when the admin listener admitted a non-loopback peer by a valid admin key
    # (admin.api_keys): handlers that are loopback-only serve it too. Never set on the
    # data port, which does not accept admin keys.
    admin_key: bool = False

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    @staticmethod
    def parse_query(raw: str) -> dict[str, list[str]]:
        return parse_qs(raw, keep_blank_values=True)


@dataclass(slots=True)
class AdminResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A streamed body (SSE, exports) is sent with chunked framing; `body` is then ignored.
    stream: AsyncIterator[bytes] | None = None


def json_response(obj: object, status: int = 200) -> AdminResponse:
    return AdminResponse(status=status, body=orjson.dumps(obj))


def error_response(status: int, detail: str) -> AdminResponse:
    """The contract's monitoring error shape: ``{"detail": "..."}``."""
    return AdminResponse(status=status, body=orjson.dumps({"detail": detail}))


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


class Router:
    """(method, path) → handler, with ``{name}`` segments for parameterised paths."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" in path:
            regex = re.compile(
                "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$"
            )
            for pattern, methods in self._patterns:
                if pattern.pattern == regex.pattern:
                    methods[method] = handler
                    return
            self._patterns.append((regex, {method: handler}))
        else:
            self._exact.setdefault(path, {})[method] = handler

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        """The handler and path params; or None and the allowed methods (empty = 404)."""
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidate in self._patterns:
                m = pattern.match(path)
                if m is not None:
                    methods, params = candidate, m.groupdict()
                    break
        if methods is None:
            return None, {}, []
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        return handler, params, sorted(methods)

    def knows(self, path: str) -> bool:
        return self.resolve("GET", path)[2] != []

    def paths(self) -> list[str]:
        return sorted(self._exact) + [p.pattern for p, _ in self._patterns]
