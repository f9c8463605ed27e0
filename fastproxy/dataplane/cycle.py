"""RequestCycle: one client request → one response.

The cycle is given what it needs and nothing more: the request, the client transport to
write to, the connection's `FlowControl` (to link the backend's reading to the client's
writing), and an ``on_done(keep_alive)`` callback. It never sees the protocol object, so
the protocol's callers and the cycle's can change independently; and nothing outside
assumes how the cycle runs: ``start()``, ``client_gone()``, ``client_stalled()`` and
``abort(message)`` are plain calls, and the end is announced through ``on_done``.

Phases: dispatch (local endpoint or LLM API) → parse (model, stream) → plan (routing) →
attempts (pool acquire, send, await the head, fail over while nothing has been sent to
the client) → relay (buffered JSON, or the SSE relay in the upstream connection's
callbacks) → record (the reporter's exchange sinks).

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
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from ..core.errors import GatewayError, RequestRejected, UpstreamError
from ..core.flow import FlowControl
from ..core.records import ExchangeRecord
from ..core.seams import ActivityHandle
from ..httpclient.backend import Backend
from ..httpclient.pool import UpstreamConnection
from ..httpclient.request import request_head
from ..httpclient.response import UpstreamResponse
from . import models, wire
from .accounting import StreamAccounting, json_completion_tokens, json_tool_names
from .dialects.base import Dialect
from .local import serve_monitoring
from .plane import DataPlane
from .relay import SSERelay
from .request import Request, is_model_path
from .responses import (
    IdleWatch,
    error_response,
    json_head,
    json_obj,
    json_usage,
    stream_head,
    usage_headers,
)
from .routing import plan

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


# Marks a request as relayed by a fastproxy gateway: a second one refuses it (loop guard).
_HOP = b"x-fastproxy-hop: 1\r\n"
FAILOVER_STATUSES = frozenset({429, 502, 503, 504, 529})
MAX_RETRY_AFTER_S = 5.0

Payload = bytes | bytearray | memoryview


class RequestCycle:
    __slots__ = (
        "_activity",
        "_conn",
        "_flow",
        "_on_done",
        "_peer_ip",
        "_task",
        "plane",
        "record",
        "req",
        "streaming_started",
        "transport",
    )

    def __init__(
        self,
        plane: DataPlane,
        req: Request,
        transport: asyncio.Transport,
        flow: FlowControl,
        connection_id: int,
        peer_ip: str | None,
        on_done: Callable[[bool], None],
    ) -> None:
        self.plane = plane
        self.req = req
        self.transport = transport
        self._flow = flow
        self._peer_ip = peer_ip
        self._on_done = on_done
        self._conn: UpstreamConnection | None = None
        self._activity: ActivityHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.streaming_started = False
        self.record = ExchangeRecord(plane.new_request_id(), connection_id, time.monotonic())

    # -- what the connection tells the cycle --------------------------------------------
    def start(self) -> None:
        self._task = self.plane.loop.create_task(self._run())

    def client_stalled(self) -> None:
        """The client stopped reading and is being dropped (the protocol's send timer)."""
        if self.record.outcome in ("ok", "truncated"):
            self.record.outcome = "client_stalled"

    def client_gone(self) -> None:
        """The client disconnected: close the upstream connection now, stop the work."""
        rec = self.record
        if rec.outcome == "ok":
            rec.outcome = "client_aborted"
        if self._conn is not None:
            self._conn.close()
        if self._task is not None:
            self._task.cancel()

    def abort(self, message: str) -> None:
        """Graceful-stop deadline reached: end an active stream with an error event, or
        answer a request still waiting for its backend with a 503. The record still
        reaches the sinks as the cycle unwinds; ``on_done`` follows."""
        rec, transport = self.record, self.transport
        if not transport.is_closing():
            if self.streaming_started:
                event = self.req.dialect.stream_error_event(message, "gateway_shutdown")
                transport.write(wire.chunk(event) + wire.CHUNKED_END if self.req.http11 else event)
                transport.close()
            else:
                err = GatewayError(message, status=503, code="gateway_shutdown")
                rec.status = 503
                transport.write(error_response(self.req, err, self.plane.date.line, False))
                transport.close()
        rec.outcome = "gateway_shutdown"
        self._drop_conn()
        if self._task is not None:
            self._task.cancel()

    # -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        req, rec = self.req, self.record
        keep_alive = req.keep_alive
        try:
            keep_alive = await self._dispatch()
        except GatewayError as err:
            rec.status = err.status
            if err.code == "upstream_timeout":
                rec.outcome = "timeout"
            else:
                rec.outcome = "rejected" if err.status < 500 else "backend_error"
            keep_alive = self._answer_error(err, keep_alive and not err.close)
        except asyncio.CancelledError:
            if rec.outcome == "ok":
                rec.outcome = "client_aborted"
        except Exception:
            log.exception("request failed")
            rec.status = 500
            rec.outcome = "backend_error"
            keep_alive = False
            if not self.streaming_started:
                self._answer_error(GatewayError("internal gateway error"), False)
        finally:
            if self._conn is not None and self._conn.response is not None:
                self._conn.close()  # a response not read to its end is never reused
            if self._activity is not None and self.plane.activity is not None:
                self.plane.activity.close(self._activity)
                self._activity = None
            finish_record(self.plane, rec)
            self._on_done(keep_alive and not self.transport.is_closing())

    def _answer_error(self, err: GatewayError, keep_alive: bool) -> bool:
        """Write ``err`` in the request's dialect; whether the connection stays open."""
        if self.transport.is_closing():
            return False
        keep = keep_alive and not self.plane.draining
        self.transport.write(error_response(self.req, err, self.plane.date.line, keep))
        return keep

    # -----------------------------------------------------------------------------------
    async def _dispatch(self) -> bool:
        req, rec = self.req, self.record
        api = req.api
        if api is None:
            # Not an API call: no usage record, but its access line names what it was.
            rec.method = req.method.decode("latin-1")
            rec.path = req.path.decode("latin-1")
            if is_model_path(req.path) and req.method in (b"GET", b"HEAD"):
                if req.path.startswith(b"/v1/models/"):
                    return self._model(req.path[11:].decode("latin-1"))
                return self._models()
            if is_model_path(req.path) and not req.path.startswith(b"/v1/models/"):
                raise RequestRejected(
                    "use GET for this path",
                    status=405,
                    code="method_not_allowed",
                    headers=b"allow: GET\r\n",
                )
            monitoring = self.plane.monitoring
            if monitoring is not None and monitoring.allowed_methods(rec.path):
                keep, rec.status = await serve_monitoring(
                    self.plane, monitoring, req, self.transport, self._flow, self._peer_ip
                )
                if rec.status >= 400:
                    rec.outcome = "rejected" if rec.status < 500 else "backend_error"
                return keep
            raise RequestRejected(f"no such endpoint: {rec.path}", status=404, code="not_found")
        if req.method != b"POST":
            rec.method = req.method.decode("latin-1")
            rec.path = req.path.decode("latin-1")
            raise RequestRejected(
                "use POST for this endpoint",
                status=405,
                code="method_not_allowed",
                headers=b"allow: POST\r\n",
            )
        return await self._llm(api.dialect, api.kind)

    def _model(self, model_id: str) -> bool:
        """GET /v1/models/{id}: one entry of the union, as the SDKs' retrieve()."""
        from urllib.parse import unquote

        model_id = unquote(model_id)
        found = models.entry(self.plane.backends.values(), model_id, self._anthropic_client())
        if found is None:
            raise RequestRejected(
                f"The model {model_id!r} does not exist", status=404, code="model_not_found"
            )
        self._write_json(200, orjson.dumps(found), b"")
        return self.req.keep_alive

    def _models(self) -> bool:
        backends = self.plane.backends.values()
        if self._anthropic_client():
            from urllib.parse import parse_qsl

            query = dict(parse_qsl(self.req.query.decode("latin-1")))
            listing = models.anthropic_page(backends, query)
        else:
            listing = models.openai_list(backends)
        self._write_json(200, orjson.dumps(listing), b"")
        return self.req.keep_alive

    def _anthropic_client(self) -> bool:
        """Anthropic's SDK sends anthropic-version on every call, OpenAI's never does."""
        return self.req.header(b"anthropic-version") is not None

    async def _llm(self, dialect: Dialect, kind: str) -> bool:
        req, rec, plane = self.req, self.record, self.plane
        rec.frontend = dialect.name
        rec.path = req.path.decode("latin-1")
        rec.client_key_id = req.client_key_id  # checked with the head (auth.py)
        if req.header(b"x-fastproxy-hop") is not None:
            raise RequestRejected(
                "request already passed through a fastproxy gateway",
                status=508,
                code="loop_detected",
            )
        ctype = req.header(b"content-type") or b""
        if b"json" not in ctype.lower():
            raise RequestRejected(
                "Content-Type must be application/json",
                status=415,
                code="unsupported_media_type",
            )
        try:
            body = _read_fields(req.body)
        except msgspec.ValidationError:
            raise RequestRejected(
                "request body must be a JSON object", code="invalid_json"
            ) from None
        except msgspec.DecodeError as exc:
            raise RequestRejected(
                f"request body is not valid JSON: {exc}", code="invalid_json"
            ) from None
        model = body.model
        if not isinstance(model, str) or not model:
            raise RequestRejected(
                "'model' is required and must be a non-empty string", code="missing_model"
            )
        rec.model_requested = model
        rec.streaming = body.stream is True
        rec.request_body = req.body
        rec.user_agent = _text(req.header(b"user-agent"))
        rec.proxy_user = _text(req.header(b"x-proxy-user"))
        rec.session_id = _text(req.header(b"x-session-id"))
        candidates = plan(
            model,
            dialect.name,
            plane.backends,
            plane.default_backend,
            plane.config.failover_routes,
            plane.breakers,
        )
        return await self._attempts(dialect, kind, body, candidates)

    def _upstream_request(
        self, backend: Backend, model: str, body: RequestFields, kind: str
    ) -> tuple[bytes, Payload, bool]:
        """Head and body for the backend, and whether the gateway injected include_usage.

        The client's bytes are forwarded as they are whenever possible. Adding
        ``stream_options`` where the client sent none is a splice (a prefix that travels
        with the head, then the client's bytes), and only a rewrite of a field the client
        did send parses and re-serialises the whole body: a large body stays one copy."""
        req = self.req
        raw = req.body
        prefix = b""
        payload: Payload = raw
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
        head = request_head(
            backend,
            b"POST",
            backend.upstream_path(req.path),
            content_length=len(prefix) + len(payload),
            extra=_HOP,
            headers=req.headers,
            skip=wire.NOT_FORWARDED,
            body_prefix=prefix,
        )
        return head, payload, inject

    async def _attempts(
        self,
        dialect: Dialect,
        kind: str,
        body: RequestFields,
        candidates: list[tuple[Backend, str]],
    ) -> bool:
        rec, plane = self.record, self.plane
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
            head, payload, inject = self._upstream_request(backend, model, body, kind)
            self._track(backend.name, model)
            self._started(backend.name)
            try:
                resp = await self._send(backend, head, payload, deadline)
            except UpstreamError as err:
                self._report(backend.name, 0, err.kind)
                last_error = err
                counters = plane.counters.upstream_errors
                counters[err.kind] = counters.get(err.kind, 0) + 1
                if not is_last:
                    plane.counters.failovers += 1
                    log.warning("failover: %s failed (%s), trying next", backend.name, err)
                i += 1
                continue
            self._report(
                backend.name,
                resp.status,
                None,
                resp.header(b"retry-after") if resp.status == 429 else None,
            )
            if resp.status in FAILOVER_STATUSES and not is_last:
                self._drop_conn()
                plane.counters.failovers += 1
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
            raise UpstreamError("timeout", f"backend timed out: {last_error}")
        raise UpstreamError(last_error.kind, f"backend unavailable: {last_error}")

    def _track(self, backend: str, model: str) -> None:
        """One live activity entry per request, following it across failover."""
        tracker = self.plane.activity
        if tracker is None:
            return
        if self._activity is not None:
            tracker.close(self._activity)
        rec = self.record
        self._activity = tracker.open(rec.id, backend, rec.session_id, model, rec.streaming)

    def _started(self, backend: str) -> None:
        # Guarded like _report: a failing sink must not fail the request it watches.
        for sink in self.plane.reporter.attempts:
            try:
                sink.attempt_started(backend)
            except Exception:
                log.exception("attempt sink failed")

    def _report(
        self, backend: str, status: int, kind: str | None, retry_after: bytes | None = None
    ) -> None:
        for sink in self.plane.reporter.attempts:
            try:
                sink.attempt_finished(backend, status, kind, retry_after)
            except Exception:
                log.exception("attempt sink failed")

    async def _send(
        self, backend: Backend, head: bytes, payload: Payload, deadline: float
    ) -> UpstreamResponse:
        plane = self.plane
        pool = plane.pools[backend.name]
        cfg = backend.config
        fresh_retry = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError("timeout", "request deadline passed", sent_nothing=True)
            conn, reused = await pool.acquire(min(cfg.connect_timeout_s, remaining))
            self._conn = conn
            resp = UpstreamResponse(plane.loop)
            self.record.upstream_sent_at = time.monotonic()
            conn.send(head, payload, resp)
            if not resp.head.done():
                # One plain timer instead of asyncio.timeout(): on expiry it fails the
                # response itself (asyncio.timeout cost ~20% of gateway CPU in profiles).
                wait = max(0.0, min(cfg.first_byte_timeout_s, deadline - time.monotonic()))
                timer = plane.loop.call_later(wait, _first_byte_expired, resp, backend.name)
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

    # -- the response -----------------------------------------------------------------
    async def _relay_response(
        self, resp: UpstreamResponse, backend: Backend, dialect: Dialect, inject: bool
    ) -> bool:
        ctype = resp.header(b"content-type") or b""
        if resp.status == 200 and ctype.startswith(b"text/event-stream"):
            return await self._relay_stream(resp, backend, dialect, inject)
        resp.decided = True
        if self._conn is not None:
            self._conn.resume_reading()  # held while undecided (pool.HOLD_UNDECIDED)
        await self._await_body(resp, backend)
        body = resp.body[0] if len(resp.body) == 1 else b"".join(resp.body)
        self._conn = None
        rec = self.record
        rec.bytes_rx = resp.bytes_rx
        rec.upstream_done_at = time.monotonic()
        extra = [b"x-fastproxy-backend: ", backend.name.encode(), b"\r\n"]
        parsed: Any = None
        ok = 200 <= resp.status < 300 and b"json" in ctype
        if ok:
            parsed = json_obj(body)
            usage = json_usage(parsed, dialect.name)
            if usage is not None:
                rec.usage = usage
                extra += usage_headers(usage)
        else:
            # A backend's 4xx (bad request, 429 ...) is the request being refused, not
            # a success; its 5xx is the backend failing.
            rec.outcome = (
                "backend_error"
                if resp.status >= 500
                else ("rejected" if resp.status >= 400 else "ok")
            )
        self._write_json(resp.status, body, b"".join(extra), resp.headers)
        rec.bytes_tx = len(body)
        rec.first_tx_at = time.monotonic()
        if self._activity is not None:
            self._activity.count(resp.bytes_rx, len(body))
        if ok and self.plane.accounting:
            # After the response is on its way: accounting never delays the client. The
            # estimate only matters when the backend did not count the completion itself
            # (a whole JSON body reached the client, so btp and ptc are that count).
            if rec.usage is None or rec.usage.completion is None:
                rec.btp_completion_est = rec.ptc_completion_est = json_completion_tokens(body)
            rec.tool_names = json_tool_names(parsed)
            rec.tool_call_count = len(rec.tool_names)
        return self.req.keep_alive

    async def _await_body(self, resp: UpstreamResponse, backend: Backend) -> None:
        """Wait for the end of the response, failing it after idle_timeout_s of silence."""
        done = resp.done
        if not done.done():
            watch = IdleWatch(self.plane.loop, resp, self._conn, backend.config.idle_timeout_s)
            try:
                await done
            except UpstreamError:
                pass
            finally:
                watch.cancel()
        err = resp.error
        if err is None:
            return
        self._conn = None
        self.record.error_kind = err.kind
        if err.kind == "timeout":
            self._drop_conn()
            self._report(backend.name, 0, "timeout")
            raise UpstreamError("timeout", f"backend {backend.name} stalled mid-response")
        # A body past the gateway's own limit is not the backend failing; anything else
        # mid-response is (a reset, a malformed body).
        self._report(backend.name, 0, "too_large" if err.kind == "too_large" else "reset")
        raise UpstreamError(err.kind, f"backend {backend.name} failed mid-response: {err}")

    def _write_json(
        self,
        status: int,
        body: bytes,
        extra: bytes,
        upstream_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.record.status = status
        keep = self.req.keep_alive and not self.plane.draining
        parts = json_head(status, self.plane.date.line, len(body), extra, keep, upstream_headers)
        if not self.req.head_only:
            parts.append(body)
        self.transport.write(b"".join(parts))

    async def _relay_stream(
        self, resp: UpstreamResponse, backend: Backend, dialect: Dialect, inject: bool
    ) -> bool:
        rec, transport, flow = self.record, self.transport, self._flow
        chunked = self.req.http11
        keep = chunked and self.req.keep_alive and not self.plane.draining
        transport.write(
            stream_head(self.plane.date.line, chunked, resp.headers, backend.name, keep)
        )
        self.streaming_started = True
        acct = StreamAccounting() if self.plane.accounting else None
        conn = self._conn

        def overflow(message: str) -> None:
            resp.fail(UpstreamError("too_large", message))
            if conn is not None:
                conn.close()

        relay = SSERelay(
            transport,
            dialect,
            inject,
            acct,
            self._activity,
            chunked,
            self.plane.config.limits.max_sse_event_bytes,
            overflow,
        )
        # While the client cannot take more, the backend is not read: the stream is held
        # back at its source, not buffered here.
        flow.follow(conn)
        resp.attach(relay)
        if conn is not None and not flow.write_paused:
            conn.resume_reading()  # held while undecided (pool.HOLD_UNDECIDED)
        cut: str | None = None
        try:
            await self._await_body(resp, backend)
        except UpstreamError as err:
            cut = str(err)
        finally:
            flow.follow(None)
            rec.upstream_done_at = time.monotonic()
            rec.bytes_rx = resp.bytes_rx
            rec.bytes_tx = relay.bytes_tx
            rec.first_tx_at = relay.first_tx_at
            rec.usage = relay.usage
            if acct is not None:
                rec.first_content_at = acct.first_content_at
                rec.btp_completion_est = acct.tokens
                rec.ptc_completion_est = acct.delivered_tokens(
                    relay.bytes_tx, aborted=transport.is_closing()
                )
                rec.tool_names = acct.tool_names
                rec.tool_call_count = len(acct.tool_names)
        self._conn = None
        if cut is None and not relay.terminal:
            cut = "backend ended the stream without its final event"
        if cut is None and relay.overflow:
            cut = "backend sent an oversized stream event"
        if cut is not None:
            relay.finish()
            rec.outcome = "truncated"
            log.warning("stream from %s cut: %s", backend.name, cut)
            event = dialect.stream_error_event(cut, "stream_truncated")
            transport.write(wire.chunk(event) if chunked else event)
        if chunked:
            transport.write(wire.CHUNKED_END)
        return keep


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


def finish_record(plane: DataPlane, rec: ExchangeRecord) -> None:
    """Count, log and hand to the exchange sinks one finished request: every request
    that got an answer (or lost its client) passes here exactly once."""
    rec.ended_at = time.monotonic()
    counters = plane.counters
    counters.requests_total += 1
    if rec.outcome == "client_aborted":
        counters.client_aborts += 1
    elif rec.outcome == "truncated":
        counters.stream_truncations += 1
    if plane.access_log is not None:
        plane.access_log.info(plane.access_line(rec))
    if rec.frontend:
        for sink in plane.reporter.exchanges:
            try:
                sink.on_exchange(rec)
            except Exception:
                log.exception("exchange sink failed")
    rec.request_body = None


def record_rejection(plane: DataPlane, req: Request, connection_id: int, status: int) -> None:
    """The record of a request refused from its head (auth, limits, framing)."""
    rec = ExchangeRecord(plane.new_request_id(), connection_id, req.received_at)
    rec.status = status
    rec.outcome = "rejected" if status < 500 else "backend_error"
    rec.method = req.method.decode("latin-1") or "-"
    rec.path = req.path.decode("latin-1")
    if req.api is not None:
        rec.frontend = req.api.dialect.name  # an API call: it gets a usage record too
    finish_record(plane, rec)
