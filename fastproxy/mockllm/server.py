"""``MockLLMServer``: the listener, routing, statistics and the ``/_mock`` control endpoints.

All state is plain attributes touched only on the server's loop. Tests in another thread call
``set_behaviour``/``stats`` through their loop thread (or simply read ints, which is atomic in
CPython), so there are no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from . import anthropic_api, openai_api, responses_api, wire
from .behaviour import (
    DEFAULT_PLAN,
    BehaviourTable,
    MockBehaviour,
    SteeringError,
    canonical_path,
    from_headers,
)
from .protocol import MockProtocol, Reply, Request
from .responder import Ctx, error_reply

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "text-embedding-3-small",
    "demo",
)
RECORDED_REQUESTS = 1000


class RecordedRequest(NamedTuple):
    method: str
    path: str
    headers: list[tuple[str, str]]  # lower-cased names, in arrival order
    body: bytes
    received_at: float  # time.time()


@dataclass(slots=True)
class MockStats:
    """Counters a test asserts on. ``open_connections`` is live state and survives ``reset``."""

    connections_opened: int = 0
    connections_closed: int = 0
    open_connections: int = 0
    requests_total: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0  # the client went away (or the server closed) mid-stream
    faults_injected: int = 0
    requests: deque[RecordedRequest] = field(
        default_factory=lambda: deque(maxlen=RECORDED_REQUESTS)
    )

    def reset(self) -> None:
        self.connections_opened = self.connections_closed = 0
        self.requests_total = 0
        self.streams_started = self.streams_completed = self.streams_aborted = 0
        self.faults_injected = 0
        self.requests_by_path.clear()
        self.requests.clear()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able view for ``GET /_mock/stats`` (request bodies are left out)."""
        return {
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "open_connections": self.open_connections,
            "requests_total": self.requests_total,
            "requests_by_path": dict(self.requests_by_path),
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
            "faults_injected": self.faults_injected,
            "requests": [
                {
                    "method": r.method,
                    "path": r.path,
                    "headers": r.headers,
                    "body_bytes": len(r.body),
                    "received_at": r.received_at,
                }
                for r in self.requests
            ],
        }


Handler = Callable[[Ctx], Reply]


class MockLLMServer:
    """An OpenAI + Anthropic stand-in on a raw asyncio protocol (see docs/mock-llm.md)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        behaviour: MockBehaviour | Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.models: list[str] = list(models) if models else list(DEFAULT_MODELS)
        self.ssl = ssl
        self.url = ""
        self.stats = MockStats()
        self._table = BehaviourTable()
        self._has_behaviour = False
        if behaviour is not None:
            fields = behaviour.as_dict() if isinstance(behaviour, MockBehaviour) else behaviour
            self.set_behaviour(None, **fields)
        self._server: asyncio.Server | None = None
        self._conns: set[MockProtocol] = set()
        self._all_closed: asyncio.Future[None] | None = None
        self._date = wire.DateHeader()
        self._ids = itertools.count(1)
        self._models_body = openai_api.models_body(self.models)
        self._routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", openai_api.chat_completions),
            "/v1/embeddings": ("POST", openai_api.embeddings),
            "/v1/completions": ("POST", openai_api.legacy_completions),
            "/v1/models": ("GET", lambda ctx: openai_api.list_models(ctx, self._models_body)),
            "/v1/messages": ("POST", anthropic_api.messages),
            "/v1/messages/count_tokens": ("POST", anthropic_api.count_tokens),
            "/v1/responses": ("POST", responses_api.responses),
        }

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http(s)://host:port`` without ``/v1`` (the Anthropic SDK adds ``/v1`` itself)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol,
            self.host,
            self.port,
            ssl=self.ssl,
            backlog=2048,
            reuse_address=True,
        )
        # With port 0 and a name that resolves to several addresses each socket may get its
        # own port; the first one is the one we report (use an IP literal to avoid that).
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = self.root_url + "/v1"

    async def close(self) -> None:
        """Close the listener and every connection; returns once all of them are gone."""
        if self._server is not None:
            self._server.close()
        if self._conns:
            self._all_closed = asyncio.get_running_loop().create_future()
            for conn in list(self._conns):
                conn.abort()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_closed), 5.0)
            except TimeoutError:
                pass
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MockLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_protocol(self) -> MockProtocol:
        return MockProtocol(self._handle, self.stats, self._date, self._conns.add, self._forget)

    def _forget(self, conn: MockProtocol) -> None:
        self._conns.discard(conn)
        if not self._conns and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    # --- steering and stats ----------------------------------------------------------------

    def set_behaviour(self, path_prefix: str | None = None, **fields: Any) -> None:
        """Persistently steer every request (or those under ``path_prefix``); merges fields."""
        self._table.set(path_prefix, fields)
        self._has_behaviour = True

    def clear_behaviour(self) -> None:
        self._table.clear()
        self._has_behaviour = False

    def reset_stats(self) -> None:
        self.stats.reset()

    # --- request handling (called from the protocol's parser callback) ---------------------

    def _handle(self, req: Request, conn: MockProtocol) -> Reply:
        path = req.path
        if path.startswith("/_mock/"):
            return self._control(req, conn)
        stats = self.stats
        stats.requests_total += 1
        by_path = stats.requests_by_path
        by_path[path] = by_path.get(path, 0) + 1
        stats.requests.append(
            RecordedRequest(req.method, path, req.headers, req.body, req.received_at)
        )
        canon = canonical_path(path)
        dialect = "anthropic" if canon.startswith("/v1/messages") else "openai"
        ctx = Ctx(conn, req, dialect, stats, None, None, self._ids)
        try:
            ctx.header_layer = from_headers(req.mock) if req.mock else None
        except SteeringError as exc:
            return error_reply(ctx, DEFAULT_PLAN, 400, str(exc))
        if self._has_behaviour:
            ctx.persistent = self._table.lookup(canon)
        route = self._routes.get(canon)
        if route is None:
            if canon.startswith("/v1/models/") and req.method == "GET":
                return openai_api.get_model(ctx, self.models, canon[len("/v1/models/") :])
            return error_reply(ctx, DEFAULT_PLAN, 404, f"Unknown request URL: {req.method} {path}")
        method, handler = route
        if req.method != method:
            return error_reply(
                ctx, DEFAULT_PLAN, 405, f"Method {req.method} not allowed for {path} (use {method})"
            )
        return handler(ctx)

    def _control(self, req: Request, conn: MockProtocol) -> Reply:
        path, method = req.path.rstrip("/"), req.method
        if path == "/_mock/stats" and method == "GET":
            return self._control_json(conn, req, 200, self.stats.snapshot())
        if path == "/_mock/behaviour":
            if method == "GET":
                return self._control_json(conn, req, 200, self._table.snapshot())
            if method == "DELETE":
                self.clear_behaviour()
                return self._control_json(conn, req, 200, self._table.snapshot())
            if method == "POST":
                try:
                    fields = orjson.loads(req.body or b"{}")
                    if not isinstance(fields, dict):
                        raise SteeringError("the body must be a JSON object of steering fields")
                    prefix = fields.pop("path_prefix", None)
                    if prefix is not None and not isinstance(prefix, str):
                        raise SteeringError("path_prefix must be a string")
                    self.set_behaviour(prefix, **fields)
                except (orjson.JSONDecodeError, SteeringError) as exc:
                    return self._control_json(conn, req, 400, {"error": {"message": str(exc)}})
                return self._control_json(conn, req, 200, self._table.snapshot())
        if path == "/_mock/reset" and method == "POST":
            self.clear_behaviour()
            self.reset_stats()
            return self._control_json(conn, req, 200, {"reset": True})
        return self._control_json(
            conn, req, 404, {"error": {"message": f"unknown control endpoint {method} {path}"}}
        )

    def _control_json(self, conn: MockProtocol, req: Request, status: int, payload: Any) -> bytes:
        body = orjson.dumps(payload)
        return (
            wire.head(
                conn.date.get(), status, wire.JSON_TYPE, len(body), req.keep_alive, req.http10
            )
            + body
        )
