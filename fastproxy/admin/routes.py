"""Path matching for the monitoring API, and the request/response helpers handlers use.

`Router` maps (method, path) to a handler, with ``{name}`` segments for parameterised
paths. Which paths exist is said once, in table.py; handlers are plain async functions
that know nothing of h11 or httptools, so the same handler answers on the strict admin
listener and on the data port (``curl localhost:8000/...`` works as on the admin port).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from ..core.seams import MonitorRequest, MonitorResponse

# The monitoring API's request and response are neutral types (core/seams.py): the data
# port builds and writes them too, without importing this plane.
AdminRequest = MonitorRequest
AdminResponse = MonitorResponse


def parse_query(raw: str) -> dict[str, list[str]]:
    return parse_qs(raw, keep_blank_values=True)


def json_response(obj: object, status: int = 200) -> AdminResponse:
    return AdminResponse(status=status, body=orjson.dumps(obj))


def error_response(status: int, detail: str) -> AdminResponse:
    """The monitoring API's error shape: ``{"detail": "..."}`` (docs/admin-api.md)."""
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
