"""Prometheus metrics: one call per finished request, text rendered per scrape.

Rules this module keeps (docs/admin-api.md lists every metric):

* **Per request, only arithmetic.** ``on_exchange`` (an `ExchangeSink`) does a few dict
  increments and one ``bisect`` per histogram; everything that is state (in-flight, pools,
  breakers, the usage queue, activity bytes) is read from the data plane's `PlaneStats`
  and the services when /metrics is scraped.
* **Hand-written exposition (format 0.0.4)**, not prometheus_client: its ``labels()`` and
  ``observe()`` take locks and build label objects per call, about 6x the cost of this
  per-request call (measured in docs/admin-api.md), and it would be a runtime dependency.
* **Names** follow OpenTelemetry ``gen_ai.*`` where one exists, with the ``fastproxy_``
  prefix and base units (seconds, bytes, USD); buckets are the OTel-recommended ones.
* **Bounded labels.** Never keys, sessions or addresses. Model names come from clients,
  so the first ``max_models`` distinct names get their own label value and the rest
  are folded into ``"other"``.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.seams import PlaneStats, StorageStatus
from .activity import ActivityTracker
from .health import HealthService

if TYPE_CHECKING:
    from ..core.records import ExchangeRecord

log = logging.getLogger("fastproxy.monitor")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 50
MAX_MODEL_LABEL_LEN = 128
OTHER = "other"
# OpenTelemetry semantic conventions, recommended explicit bucket boundaries.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
CIRCUIT_STATES = ("closed", "open", "half_open")


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


def _add(
    hists: dict[Any, Histogram],
    key: Any,
    bounds: tuple[float, ...],
    counts: list[int],
    total: float,
    count: int,
) -> None:
    hist = hists.get(key)
    if hist is None:
        hist = hists[key] = Histogram(bounds)
    hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
    hist.sum += total
    hist.count += count


# The label of each status class, made once: an f-string per request is ~100 ns.
_STATUS_CLASS = tuple(f"{n}xx" for n in range(10))


class MetricsCollector:
    """Counters fed by ``observe(record)``; ``render()`` adds the live gauges."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self.max_models = max_models
        self.models: set[str] = set()
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost: dict[str, float] = {}

    # -- per request (the `ExchangeSink` seam) -------------------------------------------
    def on_exchange(self, rec: ExchangeRecord) -> None:
        backend = rec.backend or "none"
        name = rec.model_used or rec.model_requested
        model = name if name in self.models else self._model(name)
        status = rec.status
        key = (
            rec.frontend,
            backend,
            model,
            _STATUS_CLASS[status // 100] if 0 < status < 1000 else "none",
        )
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hkey = (rec.frontend, backend)
        hist = self.durations.get(hkey)
        if hist is None:
            hist = self.durations[hkey] = Histogram(DURATION_BUCKETS)
        hist.observe(max(0.0, rec.ended_at - rec.started_at))
        if rec.streaming:
            first = rec.first_content_at or rec.first_tx_at
            if first:
                t = self.ttft.get(backend)
                if t is None:
                    t = self.ttft[backend] = Histogram(TTFT_BUCKETS)
                t.observe(max(0.0, first - rec.started_at))
        usage = rec.usage
        if usage is not None:
            tokens = self.tokens
            if usage.prompt:
                k = (backend, "input")
                tokens[k] = tokens.get(k, 0) + usage.prompt
            if usage.completion:
                k = (backend, "output")
                tokens[k] = tokens.get(k, 0) + usage.completion
            if usage.cost:
                self.cost[backend] = self.cost.get(backend, 0.0) + usage.cost

    def _model(self, name: str | None) -> str:
        if not name:
            return "none"
        models = self.models
        if name in models:
            return name
        if len(models) >= self.max_models or len(name) > MAX_MODEL_LABEL_LEN:
            return OTHER
        models.add(name)
        return name

    # -- multi-process mode: each worker counts, the primary adds up ---------------------
    def take_delta(self) -> dict[str, Any]:
        """What was counted since the last call, JSON-able, and start again from empty
        (a worker's side, sent with each heartbeat)."""
        doc = {
            "requests": [[*k, n] for k, n in self.requests.items()],
            "durations": [[*k, h.counts, h.sum, h.count] for k, h in self.durations.items()],
            "ttft": [[k, h.counts, h.sum, h.count] for k, h in self.ttft.items()],
            "tokens": [[*k, n] for k, n in self.tokens.items()],
            "cost": [[k, v] for k, v in self.cost.items()],
        }
        self.requests, self.durations, self.ttft, self.tokens, self.cost = {}, {}, {}, {}, {}
        return doc

    def merge(self, doc: dict[str, Any]) -> None:
        """Add a worker's `take_delta` (the primary's side): the model label bound
        applies to the sum, as it does to one process's counts."""
        requests = self.requests
        for fe, be, model, sc, n in doc["requests"]:
            if model not in ("none", OTHER):
                model = self._model(model)
            key = (fe, be, model, sc)
            requests[key] = requests.get(key, 0) + n
        for fe, be, counts, total, count in doc["durations"]:
            _add(self.durations, (fe, be), DURATION_BUCKETS, counts, total, count)
        for be, counts, total, count in doc["ttft"]:
            _add(self.ttft, be, TTFT_BUCKETS, counts, total, count)
        tokens = self.tokens
        for be, kind, n in doc["tokens"]:
            tokens[(be, kind)] = tokens.get((be, kind), 0) + n
        cost = self.cost
        for be, v in doc["cost"]:
            cost[be] = cost.get(be, 0.0) + v

    # -- per scrape ----------------------------------------------------------------------
    def render(
        self,
        plane: PlaneStats,
        activity: ActivityTracker | None,
        health: HealthService | None,
        storage: StorageStatus | None,
    ) -> bytes:
        """The exposition, from what this collector counted plus the live state the
        caller hands in (read at scrape time; nothing here holds on to it)."""
        out: list[str] = []
        c = plane.counters
        m = _Writer(out)
        m.family("fastproxy_build_info", "gauge", "Version and hot-path implementation.")
        from .._speedups import IMPLEMENTATION

        m.sample(
            "fastproxy_build_info", (("version", __version__), ("speedups", IMPLEMENTATION)), 1
        )
        m.family(
            "fastproxy_requests_total",
            "counter",
            "LLM API requests finished, by frontend dialect, backend, model and status class.",
        )
        for (fe, be, model, sc), n in sorted(self.requests.items()):
            m.sample(
                "fastproxy_requests_total",
                (("frontend", fe), ("backend", be), ("model", model), ("status_class", sc)),
                n,
            )
        m.histograms(
            "fastproxy_gen_ai_client_operation_duration_seconds",
            "Request duration, received to last byte relayed (gen_ai.client.operation.duration).",
            [
                ((("frontend", fe), ("backend", be)), h)
                for (fe, be), h in sorted(self.durations.items())
            ],
        )
        m.histograms(
            "fastproxy_gen_ai_server_time_to_first_token_seconds",
            "Streams: request received to first content byte relayed "
            "(gen_ai.server.time_to_first_token).",
            [((("backend", be),), h) for be, h in sorted(self.ttft.items())],
        )
        m.family(
            "fastproxy_gen_ai_client_token_usage_total",
            "counter",
            "Tokens reported by backends, by type (gen_ai.client.token.usage).",
        )
        for (be, kind), n in sorted(self.tokens.items()):
            m.sample(
                "fastproxy_gen_ai_client_token_usage_total",
                (("backend", be), ("token_type", kind)),
                n,
            )
        m.family("fastproxy_cost_usd_total", "counter", "Cost reported by backends, in USD.")
        for be, v in sorted(self.cost.items()):
            m.sample("fastproxy_cost_usd_total", (("backend", be),), v)

        requests, streams = plane.in_flight()
        m.gauge("fastproxy_requests_in_flight", "Requests being served now.", requests)
        m.gauge("fastproxy_streams_in_flight", "SSE responses being relayed now.", streams)
        m.gauge(
            "fastproxy_client_connections_open",
            "Open client connections on the data port.",
            plane.open_connections(),
        )
        m.counter(
            "fastproxy_client_connections_accepted_total",
            "Client connections accepted.",
            c.connections_total,
        )
        m.counter(
            "fastproxy_client_connections_rejected_total",
            "Client connections refused at limits.max_connections.",
            c.connections_rejected,
        )
        m.family(
            "fastproxy_upstream_errors_total",
            "counter",
            "Failed upstream attempts, by kind (connect, timeout, reset, tls, protocol).",
        )
        for kind, n in sorted(c.upstream_errors.items()):
            m.sample("fastproxy_upstream_errors_total", (("kind", kind),), n)
        m.counter(
            "fastproxy_client_aborts_total", "Requests the client abandoned.", c.client_aborts
        )
        m.counter(
            "fastproxy_client_stalls_total",
            "Clients dropped for reading nothing for timeouts.send_seconds.",
            c.client_stalls,
        )
        m.counter(
            "fastproxy_stream_truncations_total",
            "Streams cut by the backend or the gateway before their final event.",
            c.stream_truncations,
        )
        m.counter("fastproxy_failovers_total", "Moves to the next backend candidate.", c.failovers)
        m.family(
            "fastproxy_upstream_connections",
            "gauge",
            "Pooled upstream connections: open (all) and idle (waiting for reuse).",
        )
        for name, (open_, idle) in sorted(plane.pool_stats().items()):
            m.sample(
                "fastproxy_upstream_connections", (("backend", name), ("state", "open")), open_
            )
            m.sample("fastproxy_upstream_connections", (("backend", name), ("state", "idle")), idle)
        self._render_activity(m, activity)
        self._render_storage(m, storage)
        self._render_health(m, health, plane.backend_names())
        return "".join(out).encode("utf-8")

    def _render_activity(self, m: _Writer, tracker: ActivityTracker | None) -> None:
        if tracker is None:
            return
        g = tracker.global_snapshot()
        m.family(
            "fastproxy_activity_bytes_total",
            "counter",
            "Body bytes of LLM responses: rx from backends, tx to clients.",
        )
        m.sample("fastproxy_activity_bytes_total", (("direction", "rx"),), g.lifetime_bytes_rx)
        m.sample("fastproxy_activity_bytes_total", (("direction", "tx"),), g.lifetime_bytes_tx)
        m.gauge(
            "fastproxy_activity_connections", "Live activity entries.", g.total_active_connections
        )
        m.counter(
            "fastproxy_activity_swept_total",
            "Activity entries removed as stale (no bytes for stale_timeout_seconds).",
            tracker.swept_total,
        )

    def _render_storage(self, m: _Writer, storage: StorageStatus | None) -> None:
        status = storage.status() if storage is not None else None
        if not status:
            return
        m.gauge(
            "fastproxy_usage_queue_depth",
            "Usage records waiting for the writer thread.",
            status.get("queue_depth", 0),
        )
        m.counter(
            "fastproxy_usage_dropped_records_total",
            "Usage records dropped because the queue was full.",
            status.get("dropped_records", 0),
        )
        m.counter(
            "fastproxy_usage_write_errors_total",
            "Failed usage database writes.",
            status.get("write_errors", 0),
        )

    def _render_health(
        self, m: _Writer, health: HealthService | None, backends: Iterable[str]
    ) -> None:
        if health is None:
            return
        circuit = health.circuit_state
        endpoints = health.endpoint_of
        up: list[tuple[str, int]] = []
        states: list[tuple[str, str]] = []
        for name in sorted(backends):
            cs = str(circuit(name))
            ep = endpoints.get(name)
            healthy = ep.is_healthy if ep is not None else True
            up.append((name, int(healthy and cs != "open")))
            states.append((name, cs))
        m.family(
            "fastproxy_backend_up",
            "gauge",
            "1 when the backend's endpoint is healthy and its circuit is not open.",
        )
        for name, v in up:
            m.sample("fastproxy_backend_up", (("backend", name),), v)
        m.family(
            "fastproxy_circuit_state",
            "gauge",
            "Circuit breaker state per backend: 1 for the current state, 0 otherwise.",
        )
        for name, cs in states:
            for s in CIRCUIT_STATES:
                m.sample("fastproxy_circuit_state", (("backend", name), ("state", s)), int(cs == s))


class _Writer:
    """Text exposition format 0.0.4 into a list of strings."""

    __slots__ = ("out",)

    def __init__(self, out: list[str]) -> None:
        self.out = out

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float) -> None:
        body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        self.out.append(f"{name}{{{body}}} {_num(value)}\n" if body else f"{name} {_num(value)}\n")

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self.family(name, "gauge", help_text)
        self.sample(name, (), value)

    def counter(self, name: str, help_text: str, value: float) -> None:
        self.family(name, "counter", help_text)
        self.sample(name, (), value)

    def histograms(
        self,
        name: str,
        help_text: str,
        series: Iterable[tuple[tuple[tuple[str, str], ...], Histogram]],
    ) -> None:
        self.family(name, "histogram", help_text)
        for labels, h in series:
            running = 0
            for bound, n in zip(h.bounds, h.counts, strict=False):
                running += n
                self.sample(f"{name}_bucket", (*labels, ("le", _num(bound))), running)
            self.sample(f"{name}_bucket", (*labels, ("le", "+Inf")), h.count)
            self.sample(f"{name}_sum", labels, h.sum)
            self.sample(f"{name}_count", labels, h.count)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
