"""RequestCycle: one client request → one response.

The cycle is given what it needs and nothing more: the request, the client transport to
write to, the connection's `FlowControl` (to link the backend's reading to the client's
writing), and an ``on_done(keep_alive)`` callback. It never sees the protocol object, so
the protocol's callers and the cycle's can change independently; and nothing outside
assumes how the cycle runs: ``start()``, ``client_gone()``, ``client_stalled()`` and
``abort(message)`` are plain calls, and the end is announced through ``on_done``.

Stages (`Stage`): dispatch (local endpoint or LLM API), parse (model, stream) and plan
(routing), all synchronous → CONNECT (an idle pooled connection is taken at once; only a
new connection waits, in a task) → HEAD (request sent; the upstream connection calls the
cycle back, it is its `ResponseListener`) → BODY (a JSON answer read to its end) or
STREAM (the SSE relay inside the connection's callbacks) → DONE (the one exit,
``_finish``: upstream let go, the record to the reporter's exchange sinks, ``on_done``).

No task, future or timer per request on the usual path: a keep-alive client, an idle
pooled connection and a JSON or SSE answer run from ``start()`` through the upstream
connection's callbacks to ``on_done`` without leaving them. Deadlines are the upstream
connection's lazy timer (first byte, then idle time between body bytes). Tasks appear
only where waiting is the point: a new connection, a monitoring endpoint, a 429's short
Retry-After (a timer). Rare decisions (fail over, retry) are made after the parser
callback that saw them has returned (``call_soon``), so another attempt never starts
inside the read of the one it replaces. Each step runs through ``_guarded``: an error in
it ends the request with an answer in the client's dialect, never an escaped exception.

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

from ..core.balance import BackendStats, Balancer
from ..core.errors import GatewayError, RequestRejected, UpstreamError
from ..core.flow import FlowControl
from ..core.keys import ClientKey
from ..core.ratelimit import Handle, Refusal
from ..core.records import ExchangeRecord
from ..core.replacement import Decision, Replacer, opt_out_of
from ..core.seams import ActivityHandle, ExchangeTap, WireTap
from ..httpclient.backend import Backend
from ..httpclient.pool import UpstreamConnection
from ..httpclient.request import request_head
from ..httpclient.response import UpstreamResponse
from . import models, wire
from .accounting import StreamAccounting, json_completion_tokens, json_tool_names
from .admission import Admission, estimate_tokens, rate_refused
from .dialects.base import Dialect
from .local import serve_monitoring
from .plane import DataPlane
from .relay import SSERelay
from .request import Request, is_model_path
from .responses import (
    answer_doc,
    answer_usage,
    error_response,
    json_head,
    replaced_from_header,
    stream_head,
    usage_headers,
)
from .routing import plan
from .tracecontext import attempt_outcome

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
# Tracing on: the gateway's own traceparent replaces the client's (docs/tracing.md).
_NOT_FORWARDED_TRACED = wire.NOT_FORWARDED | frozenset({b"traceparent"})
FAILOVER_STATUSES = frozenset({429, 502, 503, 504, 529})
MAX_RETRY_AFTER_S = 5.0

Payload = bytes | bytearray | memoryview


class Stage:
    """Where the cycle is; names what an upstream event means to it.

    Plain int constants, not an IntEnum: in Python 3.11 every ``Stage.X`` on an enum
    class goes through the metaclass's ``__getattr__`` hook (~70 ns, against ~10 for a
    plain class attribute), and the cycle asks dozens of times per request."""

    PREPARE = 0  # dispatch, parse, plan (synchronous)
    CONNECT = 1  # waiting for a pooled or new upstream connection (a task)
    HEAD = 2  # request sent, waiting for the response head
    BODY = 3  # a JSON response being read to its end
    STREAM = 4  # an SSE stream being relayed
    LOCAL = 5  # a monitoring endpoint answering on the data port (a task)
    DONE = 6
    ROUTE = 7  # waiting for a replacement decision from the primary (workers only)
    ADMIT = 8  # waiting for a rate-limit grant from the primary (workers only)


class RequestCycle:
    __slots__ = (
        "_acct",
        "_activity",
        "_adm",
        "_backend",
        "_balancer",
        "_body",
        "_candidates",
        "_conn",
        "_counted",
        "_ctype",
        "_deadline",
        "_decision",
        "_dialect",
        "_flow",
        "_fresh_retry",
        "_i",
        "_inject",
        "_kind",
        "_last_error",
        "_on_done",
        "_peer_ip",
        "_pools",
        "_rate",
        "_relay",
        "_replacer",
        "_resp",
        "_retried_429",
        "_reused",
        "_sending",
        "_stage",
        "_stats",
        "_tap",
        "_task",
        "_timer",
        "plane",
        "record",
        "req",
        "streaming_started",
        "transport",
    )
    # Set with _stats, when a routing policy is on.
    _balancer: Balancer | None
    _counted: str | None

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
        self._stage = Stage.PREPARE
        self._conn: UpstreamConnection | None = None
        self._resp: UpstreamResponse | None = None
        self._activity: ActivityHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._relay: SSERelay | None = None
        self._acct: StreamAccounting | None = None
        self._tap: ExchangeTap | None = None  # wire capture of this exchange, when on
        # Set only when replacement is on (with _decision): the one test _finish makes.
        self._replacer: Replacer | None = None
        # Set only when a routing policy is on (with _balancer and _counted): the one
        # test each attempt, head and end makes.
        self._stats: BackendStats | None = None
        # Set only when rate limits or budgets are configured (``_rate`` when a limit
        # admitted this request): the one test _finish makes.
        self._adm: Admission | None = None
        self._rate: Handle | None = None
        self.streaming_started = False
        self.record = ExchangeRecord(plane.new_request_id(), connection_id, time.monotonic())

    # -- what the connection tells the cycle --------------------------------------------
    def start(self) -> None:
        try:
            self._dispatch()
        except GatewayError as err:
            self._fail(err)
        except Exception:
            self._crashed()

    def client_stalled(self) -> None:
        """The client stopped reading and is being dropped (the protocol's send timer)."""
        if self.record.outcome in ("ok", "truncated"):
            self.record.outcome = "client_stalled"

    def client_gone(self) -> None:
        """The client disconnected: close the upstream connection now, stop the work."""
        if self._stage == Stage.DONE:
            return
        rec = self.record
        if rec.outcome == "ok":
            rec.outcome = "client_aborted"
        self._halt()

    def abort(self, message: str) -> None:
        """Graceful-stop deadline reached: end an active stream with an error event, or
        answer a request still waiting for its backend with a 503. The record reaches
        the sinks and ``on_done`` follows, at once."""
        if self._stage == Stage.DONE:
            return
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
        self._halt()

    def _halt(self) -> None:
        """Stop wherever the cycle is (the client or the gateway ended it)."""
        if self._stage == Stage.STREAM:
            self._stream_facts()
        self._drop_conn()
        self._finish(False)

    # -- the one way out ------------------------------------------------------------------
    def _finish(self, keep_alive: bool) -> None:
        """Every cycle ends here exactly once: upstream let go, record handed over,
        the connection told."""
        if self._stage == Stage.DONE:
            return
        self._stage = Stage.DONE
        resp = self._resp
        if resp is not None:
            resp.listener = None  # late upstream events are no longer this cycle's
        conn = self._conn
        if conn is not None and conn.response is not None:
            conn.close()  # a response not read to its end is never reused
        self._conn = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._activity is not None and self.plane.activity is not None:
            self.plane.activity.close(self._activity)
            self._activity = None
        if self._tap is not None and self.streaming_started:
            rec = self.record
            self._tap.event(1, b"", {"se": True, "sc": rec.status, "oc": rec.outcome})
        if self._replacer is not None:
            self._turn_ended()
        if self._stats is not None and self._counted is not None:
            self._stats.finished(self._counted)  # a stream's attempt ends with it
            self._counted = None
        if self._adm is not None:
            try:
                self._adm.finished(self._rate, self.record)
            except Exception:
                log.exception("rate limit or budget settlement failed")
        finish_record(self.plane, self.record)
        self._on_done(keep_alive and not self.transport.is_closing())

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of the cycle; an error it raises ends the request with an
        answer in the client's dialect (a `GatewayError`) or a 500 (a bug). The three
        steps every request takes (start, head, end) hold the same two handlers inline:
        a try costs nothing in Python 3.11, a call through here does."""
        try:
            step(*args)
        except GatewayError as err:
            self._fail(err)
        except Exception:
            self._crashed()

    def _crashed(self) -> None:
        """A step raised something not a `GatewayError`: a bug. Logged with its
        traceback (called from the ``except`` block), answered 500."""
        log.exception("request failed")
        rec = self.record
        rec.status = 500
        rec.outcome = "backend_error"
        if self._stage == Stage.STREAM:
            self._stream_facts()
        elif self._stage != Stage.DONE:
            self._answer_error(GatewayError("internal gateway error"), False)
        self._finish(False)

    def _fail(self, err: GatewayError) -> None:
        if self._stage == Stage.DONE:
            return
        rec = self.record
        rec.status = err.status
        if err.code == "upstream_timeout":
            rec.outcome = "timeout"
        else:
            rec.outcome = "rejected" if err.status < 500 else "backend_error"
        self._finish(self._answer_error(err, self.req.keep_alive and not err.close))

    def _answer_error(self, err: GatewayError, keep_alive: bool) -> bool:
        """Write ``err`` in the request's dialect; whether the connection stays open."""
        if self.transport.is_closing():
            return False
        keep = keep_alive and not self.plane.draining
        replaced = self.record.replacement
        extra = replaced_from_header(replaced["from"]) if replaced is not None else b""
        self.transport.write(error_response(self.req, err, self.plane.date.line, keep, extra))
        return keep

    # -- dispatch -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        req, rec = self.req, self.record
        api = req.api
        if api is None:
            # Not an API call: no usage record, but its access line names what it was.
            rec.method = req.method.decode("latin-1")
            rec.path = req.path.decode("latin-1")
            if is_model_path(req.path) and req.method in (b"GET", b"HEAD"):
                if req.path.startswith(b"/v1/models/"):
                    self._model(req.path[11:].decode("latin-1"))
                else:
                    self._models()
                self._finish(req.keep_alive)
                return
            if is_model_path(req.path) and not req.path.startswith(b"/v1/models/"):
                raise RequestRejected(
                    "use GET for this path",
                    status=405,
                    code="method_not_allowed",
                    headers=b"allow: GET\r\n",
                )
            monitoring = self.plane.monitoring
            if monitoring is not None and monitoring.allowed_methods(rec.path):
                self._stage = Stage.LOCAL
                self._task = self.plane.loop.create_task(
                    serve_monitoring(
                        self.plane, monitoring, req, self.transport, self._flow, self._peer_ip
                    )
                )
                self._task.add_done_callback(self._local_done)
                return
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
        self._llm(api.dialect, api.kind)

    def _local_done(self, task: asyncio.Task[tuple[bool, int]]) -> None:
        if self._task is task:
            self._task = None
        if self._stage == Stage.DONE or task.cancelled():
            return
        self._guarded(self._local_result, task)

    def _local_result(self, task: asyncio.Task[tuple[bool, int]]) -> None:
        rec = self.record
        keep, rec.status = task.result()
        if rec.status >= 400:
            rec.outcome = "rejected" if rec.status < 500 else "backend_error"
        self._finish(keep)

    def _model(self, model_id: str) -> None:
        """GET /v1/models/{id}: one entry of the union, as the SDKs' retrieve()."""
        from urllib.parse import unquote

        model_id = unquote(model_id)
        found = models.entry(
            self.plane.backends.values(), model_id, self._anthropic_client(), self.req.client_key
        )
        if found is None:
            raise RequestRejected(
                f"The model {model_id!r} does not exist", status=404, code="model_not_found"
            )
        self._write_json(200, orjson.dumps(found), b"")

    def _models(self) -> None:
        backends = self.plane.backends.values()
        if self._anthropic_client():
            from urllib.parse import parse_qsl

            query = dict(parse_qsl(self.req.query.decode("latin-1")))
            listing = models.anthropic_page(backends, query, self.req.client_key)
        else:
            listing = models.openai_list(backends, self.req.client_key)
        self._write_json(200, orjson.dumps(listing), b"")

    def _anthropic_client(self) -> bool:
        """Anthropic's SDK sends anthropic-version on every call, OpenAI's never does."""
        return self.req.header(b"anthropic-version") is not None

    def _llm(self, dialect: Dialect, kind: str) -> None:
        req, rec, plane = self.req, self.record, self.plane
        # Half a dozen headers are looked up below: straight from the head's index.
        header = req.header_lookup()
        if plane.capture is not None:
            self._open_tap(plane.capture)
        rec.frontend = dialect.name
        rec.path = req.path.decode("latin-1")
        if plane.tracing is not None:
            rec.trace = plane.tracing.begin(header(b"traceparent"))
        rec.client_key_id = req.client_key_id  # checked with the head (core/keys.py)
        key = req.client_key
        if key is not None:
            rec.key_name = key.name
            rec.team = key.team
        if header(b"x-fastproxy-hop") is not None:
            raise RequestRejected(
                "request already passed through a fastproxy gateway",
                status=508,
                code="loop_detected",
            )
        ctype = header(b"content-type") or b""
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
        if key is not None and not key.allows(model):
            # The public name the client asked for, before aliases and groups: a key
            # is granted names, not the backends behind them.
            raise RequestRejected(
                f"this API key ({key.name}) may not use model {model!r}",
                status=403,
                code="model_not_allowed",
            )
        rec.streaming = body.stream is True
        rec.request_body = req.body
        # Each usually absent: decoded (and cut to 256 characters) only when sent.
        value = header(b"user-agent")
        if value is not None:
            rec.user_agent = _text(value)
        value = header(b"x-proxy-user")
        if value is not None:
            rec.proxy_user = _text(value)
        value = header(b"x-session-id")
        if value is not None:
            rec.session_id = _text(value)
        if rec.session_id is None and isinstance(body.session_id, str):
            rec.session_id = body.session_id
        self._dialect, self._kind, self._body = dialect, kind, body
        admission = plane.admission
        if admission is not None and self._admit(admission, key, model):
            return  # a worker asked the primary for permits: _admitted resumes
        self._plan()

    def _admit(self, adm: Admission, key: ClientKey | None, model: str) -> bool:
        """Budgets, then rate limits, before any backend is chosen: a refusal is the
        gateway's own 429 and never fails over. True: the request waits for a grant."""
        self._adm = adm
        refused = adm.check_budget(key)
        if refused is not None:
            raise refused
        if adm.limiter is None:
            return False
        scopes = adm.scopes(key, model)
        if not scopes:
            return False
        outcome = adm.reserve(scopes, estimate_tokens(len(self.req.body)), self._admitted)
        if outcome is None:
            self._stage = Stage.ADMIT
            return True
        self._take(outcome)
        return False

    def _take(self, outcome: Handle | Refusal) -> None:
        if isinstance(outcome, Refusal):
            raise rate_refused(outcome)
        self._rate = outcome

    def _admitted(self, outcome: Handle | Refusal) -> None:
        """The limiter decided a request that waited for a grant (workers). One that
        ended meanwhile (its client left) gives its permit back unused."""
        if self._stage != Stage.ADMIT:
            limiter = self._adm.limiter if self._adm is not None else None
            if isinstance(outcome, Handle) and limiter is not None:
                limiter.settle(outcome, 0)
            return
        self._stage = Stage.PREPARE
        self._guarded(self._admitted_go, outcome)

    def _admitted_go(self, outcome: Handle | Refusal) -> None:
        self._take(outcome)
        self._plan()

    def _plan(self) -> None:
        """Routing (aliases, groups, balancing, replacement), then the first attempt."""
        req, rec, plane = self.req, self.record, self.plane
        model, dialect = rec.model_requested, self._dialect
        assert model is not None
        policy = plane.policy
        if policy is None:
            candidates = plane.plans.plan(
                model,
                dialect.name,
                plane.backends,
                plane.default_backend,
                plane.config.failover_routes,
                plane.breakers,
            )
        else:
            candidates, self._balancer = policy.plan(
                model,
                dialect.name,
                plane.backends,
                plane.default_backend,
                plane.config.failover_routes,
                plane.breakers,
                rec.session_id,
            )
            self._stats = policy.stats
            self._counted = None
        # The pools of this routing generation: a reload replaces the plane's mapping,
        # and a failover after it must still reach the backends planned here.
        self._pools = plane.pools
        replacer = plane.replacement
        if replacer is not None:
            self._candidates = candidates
            self._replacer = replacer
            self._decision: Decision | None = None
            backend, first_model = candidates[0]
            opt_out = opt_out_of(req.header(b"x-disable-replacement"))
            decision = replacer.decide(
                rec.session_id, first_model, backend.name, opt_out, dialect.name, self._decided
            )
            if decision is None:
                self._stage = Stage.ROUTE  # a worker asked the primary: _decided resumes
                return
            candidates = self._replace(decision, candidates)
        self._go(candidates)

    def _decided(self, decision: Decision) -> None:
        """The primary's decision for this request (workers): route it now. A request
        that ended meanwhile (its client left) is not sent anywhere."""
        if self._stage != Stage.ROUTE:
            return
        self._stage = Stage.PREPARE
        self._guarded(self._route_decided, decision)

    def _route_decided(self, decision: Decision) -> None:
        self._go(self._replace(decision, self._candidates))

    def _replace(
        self, decision: Decision, candidates: list[tuple[Backend, str]]
    ) -> list[tuple[Backend, str]]:
        """The candidates ``decision`` sends the request to: the plan as it was, or the
        replacement target followed by the target's own failover routes."""
        self._decision = decision
        if not decision.replaced:
            return candidates
        if self._stats is not None:
            self._balancer = None  # the target is not the pool's: affinity stays put
        plane, rec = self.plane, self.record
        source = f"{decision.original_backend}:{decision.original_model}"
        target = f"{decision.backend}:{decision.model}"
        rec.replacement = {"from": source, "to": target}
        routes = plane.config.failover_routes
        alternatives = routes.get(target) or routes.get(decision.model) or ()
        return plan(
            target,
            self._dialect.name,
            plane.backends,
            None,
            {target: alternatives},
            plane.breakers,
        )

    def _turn_ended(self, ok: bool | None = None) -> None:
        """Tell the policy how the decided request ended: a turn completes only on a
        2xx answered whole (a stream to its final event); errors and aborts consume none.

        A successful answer reports just before its last bytes are written (``ok``
        given), so with workers the primary hears of the turn before the client can
        send its next request, to whichever worker; everything else reports from
        ``_finish``, once."""
        replacer, decision = self._replacer, self._decision
        if replacer is None or decision is None:
            return
        self._decision = None
        rec = self.record
        if ok is None:
            ok = rec.outcome == "ok" and 200 <= rec.status < 300
        try:
            replacer.finished(rec.session_id, decision, ok)
        except Exception:
            log.exception("replacement finished() failed")

    def _go(self, candidates: list[tuple[Backend, str]]) -> None:
        self._candidates = candidates
        # One budget for the whole request: no attempt waits for a first byte past the
        # most patient candidate's first_byte_timeout_s; each attempt also keeps its own.
        if len(candidates) == 1:  # the usual plan: no generator to run
            patience = candidates[0][0].config.first_byte_timeout_s
        else:
            patience = max(b.config.first_byte_timeout_s for b, _ in candidates)
        self._deadline = time.monotonic() + patience
        self._last_error: UpstreamError | None = None
        self._retried_429 = False
        self._i = 0
        self._attempt()

    def _open_tap(self, capture: WireTap) -> None:
        """Wire capture is on: this exchange's tap, the client's request as read, and the
        client transport seen through the tap (each write a proxy→client event)."""
        req = self.req
        tap = capture.open(self.record.id, _text(req.header(b"x-session-id")))
        if tap is None:
            return
        self._tap = tap
        self.transport = tap.wrap(self.transport)
        target = req.path + b"?" + req.query if req.query else req.path
        version = b" HTTP/1.1\r\n" if req.http11 else b" HTTP/1.0\r\n"
        parts: list[bytes | bytearray] = [req.method, b" ", target, version]
        for name, value in req.headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"\r\n", req.body)
        tap.event(0, b"".join(parts), None)

    def _upstream_request(
        self,
        backend: Backend,
        model: str,
        body: RequestFields,
        kind: str,
        traceparent: bytes = b"",
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
            extra=_HOP + traceparent if traceparent else _HOP,
            headers=req.headers,
            skip=_NOT_FORWARDED_TRACED if traceparent else wire.NOT_FORWARDED,
            body_prefix=prefix,
        )
        return head, payload, inject

    # -- attempts -------------------------------------------------------------------------
    # Failover happens only before the first byte reaches the client. Each step below is
    # a plain call, made from the previous one or from an upstream event; the usual
    # request (an idle pooled connection, a head, a body) never leaves the callbacks.
    def _attempt(self) -> None:
        """Try candidate ``_i`` (again, after a 429's short Retry-After)."""
        rec = self.record
        backend, model = self._candidates[self._i]
        self._backend = backend
        rec.attempts += 1
        rec.backend, rec.backend_type, rec.model_used = backend.name, backend.type, model
        traceparent = b""
        tracing = self.plane.tracing
        if tracing is not None and rec.trace is not None:
            traceparent = tracing.attempt(rec.trace, backend, model, time.monotonic())
        head, payload, self._inject = self._upstream_request(
            backend, model, self._body, self._kind, traceparent
        )
        self._sending = (head, payload)
        self._track(backend.name, model)
        stats = self._stats
        if stats is not None:
            if self._counted is not None:
                stats.finished(self._counted)  # the previous attempt (failover, retry)
            stats.started(backend.name)
            self._counted = backend.name
        self._started(backend.name)
        self._fresh_retry = False
        self._connect()

    def _connect(self) -> None:
        backend = self._backend
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._attempt_failed(
                UpstreamError("timeout", "request deadline passed", sent_nothing=True)
            )
            return
        pool = self._pools[backend.name]
        conn = pool.take_idle()
        if conn is not None:
            self._send(conn, True)
            return
        self._stage = Stage.CONNECT
        wait = min(backend.config.connect_timeout_s, remaining)
        self._task = task = self.plane.loop.create_task(pool.acquire(wait))
        task.add_done_callback(self._acquired)

    def _acquired(self, task: asyncio.Task[tuple[UpstreamConnection, bool]]) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if self._stage != Stage.CONNECT:
            if exc is None:  # finished meanwhile: the connection goes back unused
                self._pools[self._backend.name].release(task.result()[0])
            return
        if isinstance(exc, UpstreamError):
            self._guarded(self._attempt_failed, exc)
        elif exc is not None:
            self._guarded(_reraise, exc)
        else:
            self._guarded(self._send, *task.result())

    def _send(self, conn: UpstreamConnection, reused: bool) -> None:
        self._conn, self._reused = conn, reused
        self._stage = Stage.HEAD
        resp = UpstreamResponse(self.plane.loop, self)
        self._resp = resp
        now = time.monotonic()
        self.record.upstream_sent_at = now
        cfg = self._backend.config
        head, payload = self._sending
        if self._tap is not None:
            self._tap.event(
                2, head + payload, {"be": self._backend.name, "mod": self.record.model_used}
            )
        conn.send(head, payload, resp)
        conn.watch(min(now + cfg.first_byte_timeout_s, self._deadline), cfg.idle_timeout_s)

    def _attempt_failed(self, err: UpstreamError) -> None:
        """Candidate ``_i`` gave no usable answer: the next one, or the error."""
        plane, backend = self.plane, self._backend
        self._report(backend.name, 0, err.kind)
        self._last_error = err
        counters = plane.counters.upstream_errors
        counters[err.kind] = counters.get(err.kind, 0) + 1
        self._i += 1
        if self._i < len(self._candidates):
            plane.counters.failovers += 1
            log.warning("failover: %s failed (%s), trying next", backend.name, err)
            self._attempt()
            return
        self.record.error_kind = err.kind
        if err.kind == "timeout":
            raise UpstreamError("timeout", f"backend timed out: {err}")
        raise UpstreamError(err.kind, f"backend unavailable: {err}")

    # -- upstream events (ResponseListener) ---------------------------------------------
    def response_head(self, resp: UpstreamResponse) -> None:
        if resp is not self._resp or self._stage != Stage.HEAD:
            return
        rec = self.record
        rec.backend_ttfb_at = resp.first_byte_at or time.monotonic()
        rec.status = resp.status
        if self._tap is not None:
            self._tap.event(3, _response_head(resp), {"be": self._backend.name, "sc": resp.status})
        if resp.status in FAILOVER_STATUSES:
            # Rare: decided after the parser's callback returns, where starting another
            # attempt (or closing this connection) cannot disturb the read in progress.
            self.plane.loop.call_soon(self._guarded, self._failover_status, resp)
            return
        try:
            self._head_ok(resp)
        except GatewayError as err:
            self._fail(err)
        except Exception:
            self._crashed()

    def response_end(self, resp: UpstreamResponse) -> None:
        if resp is not self._resp:
            return
        try:
            if self._stage == Stage.BODY:
                self._json_done(resp)
            elif self._stage == Stage.STREAM:
                self._stream_done(None)
        except GatewayError as err:
            self._fail(err)
        except Exception:
            self._crashed()

    def response_failed(self, resp: UpstreamResponse, error: UpstreamError) -> None:
        if resp is not self._resp or self._stage == Stage.DONE:
            return
        self.plane.loop.call_soon(self._guarded, self._upstream_failed, resp, error)

    def _upstream_failed(self, resp: UpstreamResponse, err: UpstreamError) -> None:
        if resp is not self._resp:
            return
        stage = self._stage
        if stage == Stage.HEAD:
            if err.kind == "timeout":
                self._drop_conn()
            else:
                self._conn = None
                if self._reused and err.sent_nothing and not self._fresh_retry:
                    self._fresh_retry = True  # the backend closed an idle pooled socket
                    self._connect()
                    return
            self._attempt_failed(err)
        elif stage == Stage.BODY:
            raise self._body_failed(err)
        elif stage == Stage.STREAM:
            self._stream_done(str(self._body_failed(err)))

    def _failover_status(self, resp: UpstreamResponse) -> None:
        if resp is not self._resp or self._stage != Stage.HEAD:
            return
        backend = self._backend
        retry_after = resp.header(b"retry-after") if resp.status == 429 else None
        is_last = self._i == len(self._candidates) - 1
        if not is_last:
            self._report(backend.name, resp.status, None, retry_after)
            self._drop_conn()
            self.plane.counters.failovers += 1
            log.warning("failover: %s answered %d, trying next", backend.name, resp.status)
            self._i += 1
            self._attempt()
            return
        if resp.status == 429 and not self._retried_429:
            wait = _retry_after(retry_after)
            if (
                wait is not None
                and wait <= MAX_RETRY_AFTER_S
                and time.monotonic() + wait < self._deadline
            ):
                self._report(backend.name, resp.status, None, retry_after)
                self._drop_conn()
                self._retried_429 = True
                self._stage = Stage.CONNECT
                self._timer = self.plane.loop.call_later(wait, self._retry)
                return
        self._head_ok(resp)

    def _retry(self) -> None:
        self._timer = None
        self._guarded(self._attempt)

    def _head_ok(self, resp: UpstreamResponse) -> None:
        """The answer to relay: a stream, or a body to read to its end."""
        backend = self._backend
        self._report(
            backend.name,
            resp.status,
            None,
            resp.header(b"retry-after") if resp.status == 429 else None,
        )
        ctype = self._ctype = resp.header(b"content-type") or b""
        if self._stats is not None and 200 <= resp.status < 300:
            self._served(resp, ctype)
        if resp.status == 200 and ctype.startswith(b"text/event-stream"):
            self._start_stream(resp)
            return
        self._stage = Stage.BODY
        resp.decided = True
        conn = self._conn
        if conn is not None and conn.flow is not None and conn.flow.read_paused:
            conn.resume_reading()  # held while undecided (pool.HOLD_UNDECIDED)
        if resp.finished:
            self._json_done(resp)
        elif resp.error is not None:
            raise self._body_failed(resp.error)

    def _served(self, resp: UpstreamResponse, ctype: bytes) -> None:
        """A 2xx head (routing policy on): a session that failed over sticks to the
        backend that answered, and its time to first byte (a JSON answer) feeds the
        latency average; a stream's is taken at its first event (``_first_event``)."""
        balancer, backend, policy = self._balancer, self._backend, self.plane.policy
        if policy is None:
            return  # reloaded away meanwhile: nothing reads these any more
        if balancer is not None and policy.affinity is not None:
            balancer.served(self.record.session_id, backend.name)
        if policy.timed and not ctype.startswith(b"text/event-stream"):
            assert self._stats is not None
            sent = self.record.upstream_sent_at
            self._stats.observed(backend.name, (resp.first_byte_at or time.monotonic()) - sent)

    def _first_event(
        self, resp: UpstreamResponse, inner: Callable[[bytes], None]
    ) -> Callable[[bytes], None]:
        """``inner`` with the stream's time to first event fed to the latency average
        once; then ``inner`` itself is put back, so later chunks pay nothing."""
        stats, name, sent = self._stats, self._backend.name, self.record.upstream_sent_at
        assert stats is not None
        seen = False

        def on_chunk(data: bytes) -> None:
            nonlocal seen
            if not seen:
                seen = True
                stats.observed(name, time.monotonic() - sent)
                if resp.on_chunk is on_chunk:
                    resp.on_chunk = inner
            inner(data)

        return on_chunk

    def _body_failed(self, err: UpstreamError) -> UpstreamError:
        """The backend failed after its head: what to tell the client (or end the
        stream with)."""
        backend = self._backend
        self._conn = None
        self.record.error_kind = err.kind
        if err.kind == "timeout":
            self._drop_conn()
            self._report(backend.name, 0, "timeout")
            return UpstreamError("timeout", f"backend {backend.name} stalled mid-response")
        # A body past the gateway's own limit is not the backend failing; anything else
        # mid-response is (a reset, a malformed body).
        self._report(backend.name, 0, "too_large" if err.kind == "too_large" else "reset")
        return UpstreamError(err.kind, f"backend {backend.name} failed mid-response: {err}")

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
        trace = self.record.trace
        if trace is not None:
            attempt_outcome(trace, status, kind, time.monotonic())
        for sink in self.plane.reporter.attempts:
            try:
                sink.attempt_finished(backend, status, kind, retry_after)
            except Exception:
                log.exception("attempt sink failed")

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the response -----------------------------------------------------------------
    def _json_done(self, resp: UpstreamResponse) -> None:
        backend, dialect = self._backend, self._dialect
        body = resp.body[0] if len(resp.body) == 1 else b"".join(resp.body)
        self._conn = None
        if self._tap is not None:
            self._tap.event(3, body, None)
        rec = self.record
        rec.bytes_rx = resp.bytes_rx
        rec.upstream_done_at = time.monotonic()
        extra = [b"x-fastproxy-backend: ", backend.name.encode(), b"\r\n"]
        if rec.replacement is not None:
            extra.append(replaced_from_header(rec.replacement["from"]))
        if self._rate is not None:
            assert self._adm is not None
            extra.append(self._adm.headers(self._rate))
        parsed: Any = None
        ok = 200 <= resp.status < 300 and b"json" in self._ctype
        if ok:
            usage, parsed = answer_usage(body, dialect.name)
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
        if self._replacer is not None:
            self._turn_ended(ok and rec.outcome == "ok")
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
            rec.tool_names = json_tool_names(answer_doc(body, parsed))
            rec.tool_call_count = len(rec.tool_names)
        self._finish(self.req.keep_alive)

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

    def _start_stream(self, resp: UpstreamResponse) -> None:
        transport, flow, backend = self.transport, self._flow, self._backend
        chunked = self.req.http11
        if self._tap is not None:
            self._tap.event(1, b"", {"ss": True, "be": backend.name})
        keep = chunked and self.req.keep_alive and not self.plane.draining
        replaced = self.record.replacement
        extra = replaced_from_header(replaced["from"]) if replaced is not None else b""
        if self._rate is not None:
            assert self._adm is not None
            extra += self._adm.headers(self._rate)
        transport.write(
            stream_head(self.plane.date.line, chunked, resp.headers, backend.name, keep, extra)
        )
        self.streaming_started = True
        self._stage = Stage.STREAM
        acct = StreamAccounting() if self.plane.accounting else None
        self._acct = acct
        conn = self._conn

        def overflow(message: str) -> None:
            resp.fail(UpstreamError("too_large", message))
            if conn is not None:
                conn.close()

        relay = SSERelay(
            transport,
            self._dialect,
            self._inject,
            acct,
            self._activity,
            chunked,
            self.plane.config.limits.max_sse_event_bytes,
            overflow,
            tap=self._tap,
        )
        self._relay = relay
        # While the client cannot take more, the backend is not read: the stream is held
        # back at its source, not buffered here.
        flow.follow(conn)
        policy = self.plane.policy
        timed = self._stats is not None and policy is not None and policy.timed
        resp.attach(self._first_event(resp, relay) if timed else relay)
        if conn is not None and not flow.write_paused:
            conn.resume_reading()  # held while undecided (pool.HOLD_UNDECIDED)
        if resp.finished:
            self._stream_done(None)
        elif resp.error is not None:
            self._stream_done(str(self._body_failed(resp.error)))

    def _stream_facts(self) -> None:
        """What the stream carried, into the record (also when it was cut short)."""
        relay, resp, rec = self._relay, self._resp, self.record
        if relay is None or resp is None:
            return
        self._relay = None
        self._flow.follow(None)
        rec.upstream_done_at = time.monotonic()
        rec.bytes_rx = resp.bytes_rx
        rec.bytes_tx = relay.bytes_tx
        rec.first_tx_at = relay.first_tx_at
        rec.usage = relay.usage
        acct = self._acct
        if acct is not None:
            rec.first_content_at = acct.first_content_at
            rec.btp_completion_est = acct.tokens
            rec.ptc_completion_est = acct.delivered_tokens(
                relay.bytes_tx, aborted=self.transport.is_closing()
            )
            rec.tool_names = acct.tool_names
            rec.tool_call_count = len(acct.tool_names)

    def _stream_done(self, cut: str | None) -> None:
        relay, transport, rec = self._relay, self.transport, self.record
        assert relay is not None
        self._stream_facts()
        self._conn = None
        chunked = self.req.http11
        if cut is None and not relay.terminal:
            cut = "backend ended the stream without its final event"
        if cut is None and relay.overflow:
            cut = "backend sent an oversized stream event"
        if cut is not None or self._tap is not None:
            relay.finish()  # a cut stream's rest is dropped (the capture still keeps it)
        if cut is not None:
            rec.outcome = "truncated"
            log.warning("stream from %s cut: %s", self._backend.name, cut)
            event = self._dialect.stream_error_event(cut, "stream_truncated")
            transport.write(wire.chunk(event) if chunked else event)
        if self._replacer is not None:
            self._turn_ended(cut is None and rec.outcome == "ok")
        if chunked:
            transport.write(wire.CHUNKED_END)
        self._finish(chunked and self.req.keep_alive and not self.plane.draining)


def _response_head(resp: UpstreamResponse) -> bytes:
    """A backend's response head as parsed (wire capture; the reason phrase is not kept)."""
    parts = [b"HTTP/1.1 %d\r\n" % resp.status]
    for name, value in resp.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _reraise(exc: BaseException) -> None:
    raise exc


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
