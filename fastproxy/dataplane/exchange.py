"""Exchange: one client request → one response, as one task.

Phases: dispatch (local endpoint or LLM API) → parse (dialect, model, stream) → plan
(routing) → attempts (pool acquire, send, await the head, fail over while nothing has
been sent to the client) → relay (buffered JSON, or the SSE relay in the upstream
protocol's callbacks) → record (observers).

Failover happens only before the first byte reaches the client: on connect errors,
timeouts before the head, 429 and 502/503/504/529. 4xx answers are the client's and
are relayed, never retried. A reused pooled connection that dies before answering is
retried once on a fresh connection (the backend closed an idle keep-alive socket).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from ..core.errors import UpstreamError
from ..core.records import ExchangeRecord
from ..httpclient.pool import UpstreamConnection
from ..httpclient.response import UpstreamResponse
from . import models, wire
from .dialects import anthropic, openai
from .errors import Abort
from .relay import SSERelay
from .responses import ResponseRelay
from .routing import RoutingError, plan

if TYPE_CHECKING:
    from ..httpclient.backend import Backend
    from ..state import GatewayState
    from .protocol import ClientProtocol, Request

log = logging.getLogger("fastproxy.data")


class RequestFields(msgspec.Struct):
    """The few members of an API request body the gateway reads. Decoding into this
    validates the whole document but builds nothing for the members it skips (messages,
    tools, images): no parsed copy of a large body is made on the loop."""

    model: object = None
    stream: object = None
    stream_options: object = msgspec.UNSET
    session_id: object = msgspec.UNSET


_read_fields = msgspec.json.Decoder(RequestFields).decode
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'
_EMPTY_REST = re.compile(rb"[ \t\r\n]*\}")


def _splice_member(raw: bytes | bytearray, member: bytes) -> tuple[bytes, memoryview]:
    """``member`` as the first member of the JSON object ``raw``: the prefix to send, then
    the rest of ``raw`` as a view (no copy). Only for a member ``raw`` does not have."""
    start = raw.index(b"{") + 1
    empty = _EMPTY_REST.match(raw, start) is not None
    return bytes(raw[:start]) + member + (b"" if empty else b","), memoryview(raw)[start:]


# path -> (dialect module, API kind)
API_PATHS: dict[bytes, tuple[Any, str]] = {
    b"/v1/chat/completions": (openai, "chat"),
    b"/v1/responses": (openai, "responses"),
    b"/v1/embeddings": (openai, "embeddings"),
    b"/v1/messages": (anthropic, "messages"),
    b"/v1/messages/count_tokens": (anthropic, "count_tokens"),
    b"/v1/completions": (openai, "completions"),
}
for _p, _v in list(API_PATHS.items()):
    API_PATHS[_p[3:]] = _v  # clients configured with a base URL lacking /v1
FAILOVER_STATUSES = frozenset({429, 502, 503, 504, 529})
MAX_RETRY_AFTER_S = 5.0
MAX_BUFFERED_RESPONSE = 64 * 1024 * 1024


class Exchange(ResponseRelay):
    __slots__ = (
        "_activity",
        "_conn",
        "_relay",
        "_task",
        "proto",
        "record",
        "req",
        "state",
        "streaming_started",
    )

    def __init__(self, proto: ClientProtocol, req: Request) -> None:
        self.proto = proto
        self.req = req
        self.state = proto.state
        self._conn: UpstreamConnection | None = None
        self._relay: SSERelay | None = None
        self._activity: Any = None  # the activity-tracker entry, when tracking is on
        self._task: asyncio.Task[None] | None = None
        self.streaming_started = False
        self.record = ExchangeRecord(
            self.state.new_request_id(), proto.connection_id, time.monotonic()
        )

    def start(self) -> None:
        self._task = self.state.loop.create_task(self.run())

    def client_stalled(self) -> None:
        """The client stopped reading and is being dropped (the protocol's send timer)."""
        if self.record.outcome in ("ok", "truncated"):
            self.record.outcome = "client_stalled"

    def client_gone(self) -> None:
        """The client disconnected: close the upstream connection now, stop the task."""
        rec = self.record
        if rec.outcome == "ok":
            rec.outcome = "client_aborted"
        conn = self._conn
        if conn is not None:
            conn.close()
        if self._task is not None:
            self._task.cancel()

    # -----------------------------------------------------------------------------------
    async def run(self) -> None:
        req, proto, rec = self.req, self.proto, self.record
        keep_alive = req.keep_alive
        try:
            keep_alive = await self._dispatch()
        except Abort as err:
            rec.status = err.status
            if err.code == "upstream_timeout":
                rec.outcome = "timeout"
            else:
                rec.outcome = "rejected" if err.status < 500 else "backend_error"
            if not proto.closed:
                proto.write_error(req, err.status, str(err), err.code, extra=err.extra)
        except asyncio.CancelledError:
            if rec.outcome == "ok":
                rec.outcome = "client_aborted"
        except Exception:
            log.exception("exchange failed")
            rec.status = 500
            rec.outcome = "backend_error"
            if not proto.closed and not self.streaming_started:
                proto.write_error(req, 500, "internal gateway error", "internal_error")
            keep_alive = False
        finally:
            if self._conn is not None and self._conn.response is not None:
                self._conn.close()  # a response not read to its end is never reused
            if self._activity is not None:
                self.state.activity.close(self._activity)
                self._activity = None
            self._finish()
            proto.exchange_done(keep_alive and not proto.closed)

    def _finish(self) -> None:
        finish_record(self.state, self.record)

    # -----------------------------------------------------------------------------------
    async def _dispatch(self) -> bool:
        req, rec = self.req, self.record
        api = API_PATHS.get(req.path)
        if api is None:
            # Not an API call: no usage record, but its access line names what it was.
            rec.method = req.method.decode("latin-1")
            rec.path = req.path.decode("latin-1")
            if req.path in (b"/v1/models", b"/models"):
                if req.method not in (b"GET", b"HEAD"):
                    raise Abort(
                        405, "use GET for this path", "method_not_allowed", b"allow: GET\r\n"
                    )
                return self._models()
            if req.path.startswith(b"/v1/models/") and req.method in (b"GET", b"HEAD"):
                return self._model(req.path[11:].decode("latin-1"))
            if self.state.router.knows(req.path.decode("latin-1")):
                from .local import serve_monitoring

                keep, rec.status = await serve_monitoring(self.proto, req)
                if rec.status >= 400:
                    rec.outcome = "rejected" if rec.status < 500 else "backend_error"
                return keep
            raise Abort(404, f"no such endpoint: {req.path.decode('latin-1')}", "not_found")
        if req.method != b"POST":
            rec.method = req.method.decode("latin-1")
            rec.path = req.path.decode("latin-1")
            raise Abort(405, "use POST for this endpoint", "method_not_allowed", b"allow: POST\r\n")
        return await self._llm(api[0], api[1])

    def _model(self, model_id: str) -> bool:
        """GET /v1/models/{id}: one entry of the union, as the SDKs' retrieve()."""
        from urllib.parse import unquote

        model_id = unquote(model_id)
        found = models.entry(self.state.backends.values(), model_id, self._anthropic_client())
        if found is None:
            raise Abort(404, f"The model {model_id!r} does not exist", "model_not_found")
        self._write_json(200, orjson.dumps(found), b"")
        return self.req.keep_alive

    def _models(self) -> bool:
        backends = self.state.backends.values()
        if self._anthropic_client():
            from urllib.parse import parse_qsl

            query = dict(parse_qsl(self.req.query.decode("latin-1")))
            try:
                listing = models.anthropic_page(backends, query)
            except models.ModelListError as err:
                raise Abort(400, str(err), "invalid_request") from None
        else:
            listing = models.openai_list(backends)
        self._write_json(200, orjson.dumps(listing), b"")
        return self.req.keep_alive

    def _anthropic_client(self) -> bool:
        """Anthropic's SDK sends anthropic-version on every call, OpenAI's never does."""
        return self.req.header(b"anthropic-version") is not None

    async def _llm(self, dialect: Any, kind: str) -> bool:
        req, rec, state = self.req, self.record, self.state
        rec.frontend = dialect.name
        rec.path = req.path.decode("latin-1")
        rec.client_key_id = req.client_key_id  # checked with the head (auth.py)
        if req.header(b"x-fastproxy-hop") is not None:
            raise Abort(508, "request already passed through a fastproxy gateway", "loop_detected")
        ctype = req.header(b"content-type") or b""
        if b"json" not in ctype.lower():
            raise Abort(415, "Content-Type must be application/json", "unsupported_media_type")
        try:
            body = _read_fields(req.body)
        except msgspec.ValidationError:
            raise Abort(400, "request body must be a JSON object", "invalid_json") from None
        except msgspec.DecodeError as exc:
            raise Abort(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
        model = body.model
        if not isinstance(model, str) or not model:
            raise Abort(400, "'model' is required and must be a non-empty string", "missing_model")
        rec.model_requested = model
        rec.streaming = body.stream is True
        rec.request_body = req.body
        rec.user_agent = _text(req.header(b"user-agent"))
        rec.proxy_user = _text(req.header(b"x-proxy-user"))
        rec.session_id = _text(req.header(b"x-session-id"))
        try:
            candidates = plan(
                model,
                dialect.name,
                state.backends,
                state.default_backend,
                state.config.failover_routes,
                state.is_open,
            )
        except RoutingError as err:
            raise Abort(err.status, str(err), err.code) from None
        return await self._attempts(dialect, kind, body, candidates)

    def _upstream_request(
        self, backend: Backend, model: str, body: RequestFields, dialect: Any, kind: str
    ) -> tuple[bytes, bytes | bytearray | memoryview, bool]:
        """Head and body for the backend, and whether the gateway injected include_usage.

        The client's bytes are forwarded as they are whenever possible. Adding
        ``stream_options`` where the client sent none is a splice (a prefix that travels
        with the head, then the client's bytes), and only a rewrite of a field the client
        did send parses and re-serialises the whole body: a large body stays one copy."""
        req = self.req
        raw = req.body
        prefix = b""
        payload: bytes | bytearray | memoryview = raw
        edits: dict[str, Any] = {}
        if body.model != model:
            edits["model"] = model
        drop_session = body.session_id is not msgspec.UNSET
        if drop_session and self.record.session_id is None and isinstance(body.session_id, str):
            self.record.session_id = body.session_id
        inject = False
        if kind == "chat" and body.stream is True:
            opts = body.stream_options
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                inject = True
                if opts is msgspec.UNSET and not edits and not drop_session:
                    prefix, payload = _splice_member(raw, _INCLUDE_USAGE)
                else:
                    edits["stream_options"] = {
                        **(opts if isinstance(opts, dict) else {}),
                        "include_usage": True,
                    }
        if edits or drop_session:
            obj = orjson.loads(raw)
            obj.pop("session_id", None)
            obj.update(edits)
            payload = orjson.dumps(obj)
        self.record.mutated = inject or drop_session or bool(edits)
        lines = [
            b"POST ",
            backend.upstream_path(req.path),
            b" HTTP/1.1\r\nhost: ",
            backend.host_header,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            b"%d" % (len(prefix) + len(payload)),
            b"\r\nx-fastproxy-hop: 1\r\naccept-encoding: identity\r\n",
            backend.auth_headers,
        ]
        has_version = False
        for name, value in req.headers:
            if name in wire.NOT_FORWARDED:
                continue
            if name == b"anthropic-version":
                has_version = True
            lines += (name, b": ", value, b"\r\n")
        if backend.type == "anthropic" and not has_version:
            lines += (b"anthropic-version: ", backend.config.anthropic_version.encode(), b"\r\n")
        lines += (b"\r\n", prefix)
        return b"".join(lines), payload, inject

    async def _attempts(
        self, dialect: Any, kind: str, body: RequestFields, candidates: list[tuple[Backend, str]]
    ) -> bool:
        rec, state = self.record, self.state
        # One budget for the whole request: no attempt waits for a first byte past the
        # most patient candidate's first_byte_timeout_s; each attempt also keeps its own.
        deadline = time.monotonic() + max(b.config.first_byte_timeout_s for b, _ in candidates)
        last_error: UpstreamError | None = None
        retried_429 = False
        i = 0
        while i < len(candidates):
            backend, model = candidates[i]
            is_last = i == len(candidates) - 1
            rec.attempts += 1
            rec.backend, rec.backend_type, rec.model_used = backend.name, backend.type, model
            head, payload, inject = self._upstream_request(backend, model, body, dialect, kind)
            self._track(backend.name, model)
            try:
                resp = await self._send(backend, head, payload, deadline)
            except UpstreamError as err:
                self._attempt(backend.name, 0, err.kind)
                last_error = err
                counters = state.counters.upstream_errors
                counters[err.kind] = counters.get(err.kind, 0) + 1
                if not is_last:
                    state.counters.failovers += 1
                    log.warning("failover: %s failed (%s), trying next", backend.name, err)
                i += 1
                continue
            self._attempt(
                backend.name,
                resp.status,
                None,
                resp.header(b"retry-after") if resp.status == 429 else None,
            )
            if resp.status in FAILOVER_STATUSES and not is_last:
                self._drop_conn()
                state.counters.failovers += 1
                log.warning("failover: %s answered %d, trying next", backend.name, resp.status)
                i += 1
                continue
            if resp.status == 429 and is_last and not retried_429:
                wait = _retry_after(resp.header(b"retry-after"))
                if (
                    wait is not None
                    and wait <= MAX_RETRY_AFTER_S
                    and time.monotonic() + wait < deadline
                ):
                    self._drop_conn()
                    retried_429 = True
                    await asyncio.sleep(wait)
                    continue
            return await self._relay_response(resp, backend, dialect, inject)
        assert last_error is not None
        rec.error_kind = last_error.kind
        if last_error.kind == "timeout":
            raise Abort(504, f"backend timed out: {last_error}", "upstream_timeout")
        raise Abort(502, f"backend unavailable: {last_error}", "upstream_error")

    def _track(self, backend: str, model: str) -> None:
        """One live activity entry per exchange, following it across failover."""
        tracker = self.state.activity
        if tracker is None:
            return
        if self._activity is not None:
            tracker.close(self._activity)
        rec = self.record
        self._activity = tracker.open(rec.id, backend, rec.session_id, model, rec.streaming)

    def _attempt(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        for hook in self.state.attempt_hooks:
            try:
                hook(backend, status, kind, retry_after)
            except Exception:
                log.exception("attempt hook failed")

    async def _send(
        self, backend: Backend, head: bytes, payload: bytes, deadline: float
    ) -> UpstreamResponse:
        pool = self.state.pools[backend.name]
        cfg = backend.config
        fresh_retry = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError("timeout", "request deadline passed", sent_nothing=True)
            conn, reused = await pool.acquire(min(cfg.connect_timeout_s, remaining))
            self._conn = conn
            resp = UpstreamResponse(self.state.loop)
            self.record.upstream_sent_at = time.monotonic()
            conn.send(head, payload, resp)
            if not resp.head.done():
                # One plain timer instead of asyncio.timeout(): on expiry it fails the
                # response itself (asyncio.timeout cost ~20% of gateway CPU in profiles).
                wait = max(0.0, min(cfg.first_byte_timeout_s, deadline - time.monotonic()))
                timer = self.state.loop.call_later(wait, _first_byte_expired, resp, backend.name)
                try:
                    await resp.head
                except UpstreamError as err:
                    if err.kind == "timeout":
                        self._drop_conn()
                        raise
                    self._conn = None
                    if reused and err.sent_nothing and not fresh_retry:
                        fresh_retry = True  # the backend closed an idle pooled socket
                        continue
                    raise
                finally:
                    timer.cancel()
            elif resp.error is not None:
                self._conn = None
                raise resp.error
            self.record.backend_ttfb_at = resp.first_byte_at or time.monotonic()
            self.record.status = resp.status
            return resp

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -----------------------------------------------------------------------------------


def _first_byte_expired(resp: UpstreamResponse, backend: str) -> None:
    resp.fail(UpstreamError("timeout", f"no response from {backend} in time"))


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1")[:256] if value is not None else None


def _retry_after(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def finish_record(state: GatewayState, rec: ExchangeRecord) -> None:
    """Count, log and hand to the observers one finished request: every request that got
    an answer (or lost its client) passes here exactly once."""
    rec.ended_at = time.monotonic()
    state.counters.requests_total += 1
    if rec.outcome == "client_aborted":
        state.counters.client_aborts += 1
    elif rec.outcome == "truncated":
        state.counters.stream_truncations += 1
    if state.access_log is not None:
        state.access_log.info(state.access_line(rec))
    if rec.frontend:
        for observer in state.observers:
            try:
                observer(rec)
            except Exception:
                log.exception("usage observer failed")
    rec.request_body = None


def record_rejection(state: GatewayState, req: Request, connection_id: int, status: int) -> None:
    """The record of a request refused from its head (auth, limits, framing)."""
    rec = ExchangeRecord(state.new_request_id(), connection_id, req.received_at)
    rec.status = status
    rec.outcome = "rejected" if status < 500 else "backend_error"
    rec.method = req.method.decode("latin-1") or "-"
    rec.path = req.path.decode("latin-1")
    api = API_PATHS.get(req.path)
    if api is not None:
        rec.frontend = api[0].name  # an API call: it gets a usage record too
    finish_record(state, rec)
