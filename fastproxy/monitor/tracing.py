"""OpenTelemetry traces of API requests: spans built from finished records and exported
over OTLP/HTTP, all off the event loop (docs/tracing.md).

On the loop the request cycle only takes ids and times (dataplane/tracecontext.py) and
``on_exchange`` appends the finished record of a sampled request to a bounded deque: no
span, attribute or protobuf is made there, and nothing waits. A builder thread takes the
records every ``BUILD_INTERVAL_S`` (or sooner when many are waiting), makes one SERVER
span per request and one CLIENT span per upstream attempt with the official SDK's
`ReadableSpan` (explicit ids and times: the ids were already sent upstream in
``traceparent``, so the spans must carry exactly those), and hands them to a
`BatchSpanProcessor` whose own thread exports them with the `OTLPSpanExporter`
(HTTP/protobuf).

Bounds: at most ``tracing.max_queue`` records wait for the builder, and at most as many
spans wait in the processor; past either, spans are dropped and counted (``dropped``),
never queued without bound and never waited for. A collector that is down therefore
costs dropped spans and one warning a minute, not memory or latency.

Nothing here touches the SDK's global tracer provider: the processor and exporter are
this service's own. The OpenTelemetry packages are imported by ``start()`` only, so a
gateway with tracing off never imports them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from .._version import __version__
from ..config.schema import TracingConfig, otel_pairs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from ..core.records import ExchangeRecord

log = logging.getLogger("fastproxy.tracing")

BUILD_INTERVAL_S = 0.05
# Records waiting past this wake the builder at once rather than at its next interval.
WAKE_AT = 256
DROP_LOG_INTERVAL_S = 60.0
STOP_WAIT_S = 5.0

# The API path's GenAI operation (gen_ai.operation.name); a Responses call is a chat turn.
_OPERATIONS = (
    ("/messages/count_tokens", "count_tokens"),
    ("/chat/completions", "chat"),
    ("/messages", "chat"),
    ("/responses", "chat"),
    ("/embeddings", "embeddings"),
    ("/completions", "text_completion"),
)
# Outcomes that are the gateway or a backend failing, whatever status the client saw.
_FAILED = frozenset({"backend_error", "timeout", "truncated", "gateway_shutdown"})


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def operation(path: str) -> str:
    for suffix, name in _OPERATIONS:
        if path.endswith(suffix):
            return name
    return "chat"


class TracingService:
    """The exchange sink that turns sampled requests into exported spans (one per
    process: with workers, each worker exports its own)."""

    def __init__(self, config: TracingConfig, instance: str | None = None) -> None:
        self.config = config
        self._instance = instance
        self._queue: deque[ExchangeRecord] = deque()
        self._limit = config.max_queue
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._processor: Any = None
        self._exporter: _Counting | None = None
        self._handed = 0  # spans given to the processor (builder thread only)
        # Counted on the loop (builder behind) and on the builder (exporter behind).
        self.dropped_on_loop = 0
        self.dropped_on_export = 0
        self.built = 0

    @property
    def dropped(self) -> int:
        return self.dropped_on_loop + self.dropped_on_export

    @property
    def exported(self) -> int:
        """Spans handed to the exporter so far (sent, or being sent)."""
        return self._exporter.taken if self._exporter is not None else 0

    # -- the loop's side ----------------------------------------------------------------
    def on_exchange(self, record: ExchangeRecord) -> None:
        trace = record.trace
        if trace is None or not trace.sampled:
            return
        queue = self._queue
        if len(queue) >= self._limit:
            self.dropped_on_loop += 1
            return
        queue.append(record)
        if len(queue) == WAKE_AT:
            self._wake.set()

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.version import __version__ as sdk_version

        cfg = self.config
        attributes: dict[str, str | int] = {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
            "service.version": __version__,
            "process.pid": os.getpid(),
        }
        if self._instance is not None:
            attributes["service.instance.id"] = self._instance
        attributes.update(otel_pairs(cfg.resource_attributes))
        attributes["service.name"] = cfg.service_name
        resource = Resource(attributes)
        exporter = self._exporter = _Counting(
            OTLPSpanExporter(endpoint=cfg.traces_url, headers=otel_pairs(cfg.headers))
        )
        # The schedule delay, batch size and export timeout are the SDK's own OTEL_BSP_*.
        # Duck-typed: the processor calls export() and shutdown() only.
        self._processor = BatchSpanProcessor(
            cast("SpanExporter", exporter),
            max_queue_size=self._limit,
            max_export_batch_size=min(self._limit, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)),
        )
        builder = _Builder(resource)
        self._thread = threading.Thread(
            target=self._run, args=(builder,), name="fastproxy-tracing", daemon=True
        )
        self._thread.start()
        log.info("tracing: exporting spans to %s (%s)", cfg.traces_url, cfg.sampler)

    async def stop(self) -> None:
        """Export what is left, within ``STOP_WAIT_S``: a collector that is down must not
        hold the gateway's stop (the threads are daemons; what is left is dropped)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join, STOP_WAIT_S)
        if self.dropped:
            log.warning("tracing: %d requests' spans were dropped in all", self.dropped)

    # -- the builder thread -------------------------------------------------------------------
    def _run(self, builder: _Builder) -> None:
        queue, processor, exporter = self._queue, self._processor, self._exporter
        assert exporter is not None
        logged_at, logged = 0.0, 0
        while True:
            self._wake.wait(BUILD_INTERVAL_S)
            self._wake.clear()
            while queue:
                record = queue.popleft()
                try:
                    spans = builder.spans(record)
                except Exception:
                    log.exception("tracing: could not build the spans of a request")
                    continue
                # The processor's queue is never let overflow (it would drop silently):
                # past the bound this request's spans are dropped here, and counted.
                if self._handed - exporter.taken + len(spans) > self._limit:
                    self.dropped_on_export += 1
                    continue
                self._handed += len(spans)
                self.built += 1
                for span in spans:
                    processor.on_end(span)
            now = time.monotonic()
            if self.dropped != logged and now - logged_at >= DROP_LOG_INTERVAL_S:
                log.warning(
                    "tracing: %d requests' spans dropped so far (the exporter is behind "
                    "or the collector at %s is unreachable)",
                    self.dropped,
                    self.config.traces_url,
                )
                logged_at, logged = now, self.dropped
            if self._stopping and not queue:
                break
        try:
            processor.shutdown()  # exports what it holds, then closes the exporter
        except Exception:
            log.exception("tracing: exporter shutdown failed")


class _Counting:
    """The OTLP exporter, counting the spans it is handed (so the builder knows how many
    still wait in the processor without reading the processor's internals)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.taken = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        return self._inner.export(spans)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _Builder:
    """Spans from one finished record (the builder thread's only work)."""

    def __init__(self, resource: Any) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._resource = resource
        self._scope = InstrumentationScope("fastproxy", __version__)

    def spans(self, rec: ExchangeRecord) -> list[ReadableSpan]:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace = rec.trace
        assert trace is not None
        flags = TraceFlags(TraceFlags.SAMPLED)
        wall, mono = rec.wall_started_at, rec.started_at

        def ns(t: float) -> int:
            # Monotonic times on the epoch of the record's wall-clock start.
            return int((wall + (t - mono)) * 1e9)

        op = operation(rec.path)
        request_model = rec.model_requested or ""
        me = SpanContext(trace.trace_id, trace.span_id, False, flags)
        parent = (
            SpanContext(trace.trace_id, trace.parent_id, True, flags) if trace.parent_id else None
        )
        attrs = _request_attributes(rec, op)
        events = []
        status = Status(StatusCode.UNSET)
        failed = rec.status >= 500 or rec.outcome in _FAILED
        if failed:
            attrs["error.type"] = _error_type(rec)
            status = Status(StatusCode.ERROR, attrs["error.type"])
        if rec.streaming:
            first = rec.first_content_at or rec.first_tx_at
            if first:
                ttft = first - rec.started_at
                attrs["fastproxy.ttft_ms"] = round(ttft * 1000.0, 3)
                attrs["gen_ai.response.time_to_first_chunk"] = ttft
                events.append(Event("gen_ai.first_token", None, ns(first)))
        spans = [
            ReadableSpan(
                f"{op} {request_model}".strip(),
                context=me,
                parent=parent,
                resource=self._resource,
                attributes=attrs,
                events=events,
                kind=SpanKind.SERVER,
                status=status,
                start_time=ns(rec.started_at),
                end_time=ns(rec.ended_at or rec.started_at),
                instrumentation_scope=self._scope,
            )
        ]
        last = len(trace.attempts) - 1
        for i, attempt in enumerate(trace.attempts):
            end = attempt.ended_at or rec.ended_at
            a: dict[str, Any] = {
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": attempt.kind,
                "gen_ai.system": attempt.kind,
                "gen_ai.request.model": attempt.model,
                "server.address": attempt.host,
                "server.port": attempt.port,
                "fastproxy.backend": attempt.backend,
                "fastproxy.attempt": i + 1,
            }
            a_status = Status(StatusCode.UNSET)
            if attempt.status:
                a["http.response.status_code"] = attempt.status
            if i == last and attempt.error is None and 200 <= attempt.status < 300:
                # The attempt that served: it lasts as long as its body, and its usage is
                # what the backend reported.
                end = max(end, rec.upstream_done_at)
                a["gen_ai.response.model"] = attempt.model
                _usage_attributes(rec, a)
            if attempt.error is not None or attempt.status >= 400:
                a["error.type"] = attempt.error or str(attempt.status)
                a_status = Status(StatusCode.ERROR, a["error.type"])
            spans.append(
                ReadableSpan(
                    f"{op} {attempt.model}",
                    context=SpanContext(trace.trace_id, attempt.span_id, False, flags),
                    parent=me,
                    resource=self._resource,
                    attributes=a,
                    kind=SpanKind.CLIENT,
                    status=a_status,
                    start_time=ns(attempt.started_at),
                    end_time=ns(max(end, attempt.started_at)),
                    instrumentation_scope=self._scope,
                )
            )
        return spans


def _request_attributes(rec: ExchangeRecord, op: str) -> dict[str, Any]:
    provider = rec.backend_type or rec.frontend
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.stream": rec.streaming,
        "http.request.method": rec.method,
        "url.path": rec.path,
        "http.response.status_code": rec.status,
        "fastproxy.request_id": rec.id,
        "fastproxy.outcome": rec.outcome,
        "fastproxy.attempts": rec.attempts,
        "fastproxy.frontend": rec.frontend,
    }
    if rec.model_requested is not None:
        attrs["gen_ai.request.model"] = rec.model_requested
    if rec.model_used is not None:
        attrs["gen_ai.response.model"] = rec.model_used
    if rec.backend is not None:
        attrs["fastproxy.backend"] = rec.backend
    # A named key's name and team are the operator's labels, as in the usage records; the
    # key itself, and any digest of it, never leave the gateway.
    if rec.key_name is not None:
        attrs["fastproxy.key"] = rec.key_name
    if rec.team is not None:
        attrs["fastproxy.team"] = rec.team
    if rec.replacement is not None:
        attrs["fastproxy.replaced_from"] = rec.replacement["from"]
    _usage_attributes(rec, attrs)
    return attrs


def _usage_attributes(rec: ExchangeRecord, attrs: dict[str, Any]) -> None:
    usage = rec.usage
    if usage is None:
        return
    pairs = (
        ("gen_ai.usage.input_tokens", usage.prompt),
        ("gen_ai.usage.output_tokens", usage.completion),
        ("gen_ai.usage.cache_read.input_tokens", usage.cached),
        ("gen_ai.usage.cache_creation.input_tokens", usage.cache_write),
        ("gen_ai.usage.reasoning.output_tokens", usage.reasoning),
    )
    attrs.update({name: value for name, value in pairs if value is not None})


def _error_type(rec: ExchangeRecord) -> str:
    if rec.outcome == "truncated":
        return "stream_truncated"
    if rec.error_kind is not None:
        return rec.error_kind
    if rec.outcome in ("timeout", "gateway_shutdown"):
        return rec.outcome
    return str(rec.status) if rec.status else rec.outcome
