"""OpenTelemetry traces of API requests: spans built from finished records and exported
over OTLP/HTTP by a process of their own (docs/tracing.md).

On the loop the request cycle only takes ids and times (dataplane/tracecontext.py), and
``on_exchange`` turns the finished record of a sampled request into a tuple of numbers
and names. Once per loop iteration the tuples are pickled into one frame and written to
a Unix socket (a non-blocking transport) read by the tracing exporter process
(``python -m fastproxy.monitor.tracing``), the way usage frames go to the usage
recorder. That process makes one SERVER span per request and one CLIENT span per
upstream attempt with the official SDK's `ReadableSpan` (explicit ids and times: the
ids were already sent upstream in ``traceparent``, so the spans must carry exactly
those) and hands them to a `BatchSpanProcessor`, whose thread exports them with the
`OTLPSpanExporter` (HTTP/protobuf). So building and encoding spans costs the event
loop's core nothing and never takes the loop's interpreter lock.

Why a process and not a thread: measured (bench/load d-a64, every request sampled), a
builder thread in the gateway's interpreter took the relay from about 13k to under 5k
requests/s: building two spans and encoding them costs about as much CPU as relaying
the request, and a thread spends it on the loop's core, under the loop's lock.

Bounds: about ``tracing.max_queue`` requests (``BYTES_PER_REQUEST`` each) may wait in
the channel, and at most ``tracing.max_queue`` spans in the processor; past either,
spans are dropped and counted (here ``dropped``; the exporter process logs its own),
never queued without bound and never waited for. A collector that is down therefore
costs dropped spans and one warning a minute, not memory or latency. An exporter process
that dies is not restarted: its spans are dropped (counted) and an error is logged.

Nothing here touches the SDK's global tracer provider: the processor and exporter are
the exporter process's own. The OpenTelemetry packages are imported in that process
only, so the gateway itself never imports them.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from .._version import __version__
from ..config.schema import TracingConfig, otel_pairs
from ..core.records import BackendUsage, ExchangeRecord, Trace, TraceAttempt

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("fastproxy.tracing")

CONFIG_ENV = "FASTPROXY_TRACING_CONFIG"
# A request's facts pickle to a few hundred bytes: the channel's bound, per request.
BYTES_PER_REQUEST = 1024
DROP_LOG_INTERVAL_S = 60.0
STOP_WAIT_S = 5.0
_LEN = struct.Struct("!I")

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
# What of a record the spans need (nothing else crosses to the exporter process).
_FIELDS = (
    "id",
    "wall_started_at",
    "started_at",
    "ended_at",
    "upstream_done_at",
    "first_content_at",
    "first_tx_at",
    "path",
    "method",
    "status",
    "outcome",
    "error_kind",
    "frontend",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "streaming",
    "attempts",
    "key_name",
    "team",
    "replacement",
)


# One C call for every field (a generator of getattr costs the loop about 1 µs more).
_read_fields = operator.attrgetter(*_FIELDS)


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


def facts(rec: ExchangeRecord) -> tuple[Any, ...]:
    """What the spans of ``rec`` are built from, as plain values (picklable, small)."""
    trace = rec.trace
    assert trace is not None
    usage = rec.usage
    return (
        _read_fields(rec),
        (trace.trace_id, trace.span_id, trace.parent_id),
        [
            (
                a.span_id,
                a.backend,
                a.kind,
                a.model,
                a.host,
                a.port,
                a.started_at,
                a.ended_at,
                a.status,
                a.error,
            )
            for a in trace.attempts
        ],
        usage.as_row() if usage is not None else None,
    )


def record_of(doc: tuple[Any, ...]) -> ExchangeRecord:
    """``facts`` read back into a record (in the exporter process)."""
    values, ids, attempts, usage = doc
    rec = ExchangeRecord(0, 0, 0.0)
    for name, value in zip(_FIELDS, values, strict=True):
        setattr(rec, name, value)
    trace = rec.trace = Trace(ids[0], ids[1], ids[2], True)
    for span_id, backend, kind, model, host, port, started, ended, status, error in attempts:
        attempt = TraceAttempt(span_id, backend, kind, model, host, port, started)
        attempt.ended_at, attempt.status, attempt.error = ended, status, error
        trace.attempts.append(attempt)
    if usage is not None:
        cache_write, cached, completion, cost, prompt, reasoning, total = usage
        rec.usage = BackendUsage(prompt, completion, total, cached, cache_write, reasoning, cost)
    return rec


class TracingService:
    """The exchange sink that hands sampled requests to the exporter process (one per
    gateway process: with workers, each worker has its own)."""

    def __init__(self, config: TracingConfig, instance: str | None = None) -> None:
        self.config = config
        self._instance = instance
        self._limit = config.max_queue * BYTES_PER_REQUEST
        self._batch: list[tuple[Any, ...]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = False
        self.dropped = 0  # requests whose spans never reached the exporter process
        self.handed = 0

    # -- the loop's side ----------------------------------------------------------------
    def on_exchange(self, record: ExchangeRecord) -> None:
        trace = record.trace
        if trace is None or not trace.sampled:
            return
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() > self._limit:
            self.dropped += 1
            return
        batch = self._batch
        if not batch:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        batch.append(facts(record))

    def _flush(self) -> None:
        """One frame per loop iteration: the records that finished in it."""
        batch, self._batch = self._batch, []
        transport = self._transport
        if not batch:
            return
        if transport is None or transport.is_closing():
            self.dropped += len(batch)
            return
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_LEN.pack(len(data)) + data)
        self.handed += len(batch)

    def _lost(self) -> None:
        self._transport = None
        if not self._closing:
            log.error("tracing: the exporter process ended; spans are dropped from now on")

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [sys.executable, "-m", "fastproxy.monitor.tracing", "--fd", str(theirs.fileno())]
        if self._instance is not None:
            args += ["--instance", self._instance]
        # In the environment, not the command line: export headers may hold a token.
        env = {**os.environ, CONFIG_ENV: msgspec.json.encode(self.config).decode()}
        try:
            # Off the loop: fork and exec of a large process take milliseconds.
            self._proc = await asyncio.to_thread(
                subprocess.Popen,
                args,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        transport, _ = await loop.create_unix_connection(lambda: _Channel(self), sock=ours)
        # Our own bound (``_limit``) governs; the transport never asks us to pause.
        transport.set_write_buffer_limits(high=(1 << 31) - 1)
        self._transport = transport
        log.info(
            "tracing: exporter process (pid %d) sends spans to %s (%s)",
            self._proc.pid,
            self.config.traces_url,
            self.config.sampler,
        )

    async def stop(self) -> None:
        """Hand over what is left and let the exporter process export it, within
        ``STOP_WAIT_S``: a collector that is down must not hold the gateway's stop."""
        self._flush()
        self._closing = True
        if self._transport is not None:
            self._transport.close()  # the exporter reads to EOF, exports, exits
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.to_thread(proc.wait, STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("tracing: the exporter did not finish within %.0fs", STOP_WAIT_S)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        if self.dropped:
            log.warning("tracing: %d requests' spans were dropped in all", self.dropped)


class _Channel(asyncio.Protocol):
    def __init__(self, service: TracingService) -> None:
        self._service = service

    def connection_lost(self, exc: Exception | None) -> None:
        self._service._lost()


# -- the exporter process ---------------------------------------------------------------
class _Exporter:
    """Reads frames of facts, builds the spans and hands them to the batch processor,
    never letting the processor's own queue overflow (it would drop silently)."""

    def __init__(self, config: TracingConfig, instance: str | None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.version import __version__ as sdk_version

        self.config = config
        attributes: dict[str, str | int] = {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
            "service.version": __version__,
            "process.pid": os.getppid(),  # the gateway (or worker) whose requests these are
        }
        if instance is not None:
            attributes["service.instance.id"] = instance
        attributes.update(otel_pairs(config.resource_attributes))
        attributes["service.name"] = config.service_name
        self._builder = _Builder(Resource(attributes))
        self._limit = config.max_queue
        exporter = self._exporter = _Counting(
            OTLPSpanExporter(endpoint=config.traces_url, headers=otel_pairs(config.headers))
        )
        # The schedule delay and export timeout are the SDK's own OTEL_BSP_* variables.
        # Duck-typed: the processor calls export() and shutdown() only.
        self._processor = BatchSpanProcessor(
            cast("SpanExporter", exporter),
            max_queue_size=self._limit,
            max_export_batch_size=min(self._limit, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)),
        )
        self._handed = 0
        self.dropped = 0
        self._logged_at = 0.0
        self._logged = 0

    def take(self, batch: list[tuple[Any, ...]]) -> None:
        processor, exporter = self._processor, self._exporter
        for doc in batch:
            try:
                spans = self._builder.spans(record_of(doc))
            except Exception:
                log.exception("tracing: could not build the spans of a request")
                continue
            if self._handed - exporter.taken + len(spans) > self._limit:
                self.dropped += 1
                continue
            self._handed += len(spans)
            for span in spans:
                processor.on_end(span)
        now = time.monotonic()
        if self.dropped != self._logged and now - self._logged_at >= DROP_LOG_INTERVAL_S:
            log.warning(
                "tracing: %d requests' spans dropped so far (the exporter is behind or the "
                "collector at %s is unreachable)",
                self.dropped,
                self.config.traces_url,
            )
            self._logged_at, self._logged = now, self.dropped

    def close(self) -> None:
        self._processor.shutdown()  # exports what it holds, then closes the exporter

    def serve(self, sock: socket.socket) -> None:
        buf = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= _LEN.size:
                (size,) = _LEN.unpack_from(buf)
                if len(buf) < _LEN.size + size:
                    break
                batch = pickle.loads(buf[_LEN.size : _LEN.size + size])
                del buf[: _LEN.size + size]
                self.take(batch)
        self.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m fastproxy.monitor.tracing")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--instance", default=None)
    ns = parser.parse_args(argv)
    configure_logging("WARNING")
    config = msgspec.json.decode(os.environ.pop(CONFIG_ENV, "{}"), type=TracingConfig)
    sock = socket.socket(fileno=ns.fd)
    exporter = _Exporter(config, ns.instance)
    try:
        exporter.serve(sock)
    finally:
        sock.close()
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
