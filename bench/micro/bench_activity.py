"""Micro-benchmarks of monitoring on the hot path: activity counting and the metrics observer.

Run:  .venv/bin/pytest bench/micro/bench_activity.py --benchmark-only -p no:cacheprovider \
          -o testpaths=bench

Groups (docs/activity.md and docs/admin-api.md quote the figures):
- activity-count: ``ActivityEntry.count(rx, tx)``, 100 calls per round, on the compiled and
  the pure CounterBlock; beside it the two designs it was chosen over (lifetime totals
  updated per call, 6 adds; and plain Python ints, which could not be shared between
  processes);
- relay-activity-*: ``SSERelay`` on one upstream chunk with tracking off (no entry) and on;
- activity-read: ``snapshot()`` and ``sweep()`` with 1,000 live entries (the reader side);
- metrics-observer: the per-request observer, hand-written vs prometheus_client.
"""

from __future__ import annotations

from types import ModuleType

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from fastproxy._speedups import _pure
from fastproxy.core.records import ExchangeRecord
from fastproxy.dataplane.dialects import openai
from fastproxy.dataplane.dialects.usage import BackendUsage
from fastproxy.dataplane.relay import SSERelay
from fastproxy.monitor.activity import ActivityTracker
from fastproxy.monitor.metrics import DURATION_BUCKETS, TTFT_BUCKETS, MetricsCollector

from .impls import IMPLS
from .impls import core as _core

CALLS = 100


def _module(name: str) -> ModuleType:
    assert name == "python" or _core is not None
    return _pure if name == "python" else _core  # type: ignore[return-value]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _module(str(request.param))


def _entry(mod: ModuleType) -> object:
    tracker = ActivityTracker(["openai.1"], counter_block=mod.CounterBlock)
    for i in range(300):  # a slot index above 256: no small-int shortcut in the figure
        tracker.open(i, "openai.1", None, None, True)
    return tracker.open(10_000, "openai.1", "s", "m", True)


def _calls(count: object) -> None:
    c = count
    for _ in range(CALLS):
        c(1400, 1350)  # type: ignore[operator]


@pytest.mark.benchmark(group="activity-count")
def test_count(benchmark, impl: ModuleType) -> None:
    entry = _entry(impl)
    benchmark(_calls, entry.count)  # type: ignore[attr-defined]
    benchmark.extra_info["calls_per_round"] = CALLS
    assert entry.bytes_rx > 0  # type: ignore[attr-defined]


class _SixAdds:
    """The rejected design: backend and global lifetime pairs updated on every chunk."""

    __slots__ = ("_b", "_bt", "_g", "_i", "_j", "_t", "_u", "_v")

    def __init__(self, mod: ModuleType) -> None:
        self._b, self._t, self._g = (
            mod.CounterBlock(4096),
            mod.CounterBlock(128),
            mod.CounterBlock(2),
        )
        self._i, self._j, self._u, self._v, self._bt = 1200, 1201, 40, 41, 0

    def count(self, rx: int, tx: int) -> None:
        b = self._b
        b.add(self._i, rx)
        b.add(self._j, tx)
        t = self._t
        t.add(self._u, rx)
        t.add(self._v, tx)
        g = self._g
        g.add(0, rx)
        g.add(1, tx)


class _PlainInts:
    """Baseline: Python attributes (no shared-memory layout possible)."""

    __slots__ = ("rx", "tx")

    def __init__(self) -> None:
        self.rx = self.tx = 0

    def count(self, rx: int, tx: int) -> None:
        self.rx += rx
        self.tx += tx


@pytest.mark.benchmark(group="activity-count")
def test_count_alternative_six_adds(benchmark, impl: ModuleType) -> None:
    benchmark(_calls, _SixAdds(impl).count)
    benchmark.extra_info["calls_per_round"] = CALLS


@pytest.mark.benchmark(group="activity-count")
def test_count_alternative_plain_ints(benchmark) -> None:
    benchmark(_calls, _PlainInts().count)
    benchmark.extra_info["calls_per_round"] = CALLS


# ------------------------------------------------------------------ the relay, off vs on

_EVENT = (
    b'data: {"id":"chatcmpl-8fb97f0000000001","object":"chat.completion.chunk",'
    b'"created":1795418045,"model":"gpt-4o","system_fingerprint":"fp_mock",'
    b'"choices":[{"index":0,"delta":{"content":'
    + orjson.dumps(" horizon")
    + b'},"logprobs":null,"finish_reason":null}]}\n\n'
)
_BATCH = (_EVENT * 256)[: 32 * 1024]
_BATCH = _BATCH[: _BATCH.rindex(b"\n\n") + 2]


class _NullTransport:
    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.mark.parametrize("tracking", ["off", "on"])
@pytest.mark.parametrize("chunk", ["one-event", "32k"])
def test_relay(benchmark, tracking: str, chunk: str) -> None:
    benchmark.group = f"relay-activity-{chunk}"
    entry = _entry(_core or _pure) if tracking == "on" else None
    relay = SSERelay(_NullTransport(), openai, True, None, entry)  # type: ignore[arg-type]
    benchmark(relay, _EVENT if chunk == "one-event" else _BATCH)
    assert relay.events > 0


# ------------------------------------------------------------------ readers


def _loaded_tracker() -> ActivityTracker:
    tracker = ActivityTracker(["openai.1", "anthropic.1"])
    for i in range(1000):
        e = tracker.open(i, "openai.1" if i % 2 else "anthropic.1", f"s{i % 7}", "m", True)
        e.count(i, i)
    return tracker


@pytest.mark.benchmark(group="activity-read")
def test_snapshot_1000(benchmark) -> None:
    tracker = _loaded_tracker()
    snap = benchmark(tracker.snapshot)
    assert len(snap.connections) == 1000


@pytest.mark.benchmark(group="activity-read")
def test_sweep_1000_nothing_stale(benchmark) -> None:
    tracker = _loaded_tracker()
    assert benchmark(tracker.sweep) == 0


# ------------------------------------------------------------------ metrics observer


def _record() -> ExchangeRecord:
    rec = ExchangeRecord(1, 1, 0.0)
    rec.frontend, rec.backend, rec.model_used, rec.status = "openai", "openai.1", "gpt-4o", 200
    rec.ended_at, rec.streaming, rec.first_content_at = 0.8, True, 0.12
    rec.usage = BackendUsage(prompt=120, completion=300, cost=0.002)
    return rec


@pytest.mark.benchmark(group="metrics-observer")
def test_observer_handwritten(benchmark) -> None:
    m = MetricsCollector()
    benchmark(m.on_exchange, _record())


@pytest.mark.benchmark(group="metrics-observer")
def test_observer_prometheus_client(benchmark) -> None:
    reg = CollectorRegistry()
    requests = Counter(
        "fastproxy_requests", "", ["frontend", "backend", "model", "status_class"], registry=reg
    )
    duration = Histogram(
        "fastproxy_dur_seconds", "", ["frontend", "backend"], buckets=DURATION_BUCKETS, registry=reg
    )
    ttft = Histogram("fastproxy_ttft_seconds", "", ["backend"], buckets=TTFT_BUCKETS, registry=reg)
    tokens = Counter("fastproxy_tokens", "", ["backend", "token_type"], registry=reg)
    cost = Counter("fastproxy_cost_usd", "", ["backend"], registry=reg)

    def observe(rec: ExchangeRecord) -> None:
        be = rec.backend or "none"
        requests.labels(rec.frontend, be, rec.model_used, f"{rec.status // 100}xx").inc()
        duration.labels(rec.frontend, be).observe(rec.ended_at - rec.started_at)
        ttft.labels(be).observe(rec.first_content_at - rec.started_at)
        u = rec.usage
        assert u is not None
        tokens.labels(be, "input").inc(u.prompt or 0)
        tokens.labels(be, "output").inc(u.completion or 0)
        cost.labels(be).inc(u.cost or 0.0)

    benchmark(observe, _record())
