"""GET /metrics: parses as Prometheus text, moves exactly with traffic, bounded labels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastproxy.core.records import Counters, ExchangeRecord
from fastproxy.dataplane.dialects.usage import BackendUsage
from fastproxy.monitor.metrics import CONTENT_TYPE, DURATION_BUCKETS, MetricsCollector
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MSG = {
    "model": "claude-haiku-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def scrape(gw: RunningGateway) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{gw.gateway.admin_port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE
    return {f.name: f for f in text_string_to_metric_families(r.text)} | {"_text": r.text}


def total(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(
        s.value
        for s in fam.samples
        if (sample is None or s.name == sample)
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], mock_llm: Any) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            "default_backend": "openai.1",
            "enable_activity_tracking": True,
            "health_check": {"enabled": False},
            "usage_tracking": {"enabled": False},
        }
    )


def test_request_counter_moves_exactly(gw: RunningGateway) -> None:
    before = scrape(gw)
    req0 = total(before, "fastproxy_requests")
    url = gw.url
    with httpx.Client(timeout=30) as c:
        for _ in range(3):
            assert c.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
        for _ in range(2):
            assert (
                c.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}).status_code
                == 200
            )
        assert c.post(url + "/v1/messages", json=MSG).status_code == 200
        assert (
            c.post(
                url + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": "400"}
            ).status_code
            == 400
        )
        # Monitoring traffic is not LLM traffic and is not counted.
        c.get(url + "/v1/diagnostics")
        c.get(url + "/v1/models")
    fams = scrape(gw)
    assert total(fams, "fastproxy_requests") - req0 == 7
    assert total(fams, "fastproxy_requests", status_class="4xx") == 1
    assert (
        total(
            fams,
            "fastproxy_requests",
            frontend="anthropic",
            backend="anthropic.1",
            model="claude-haiku-4-5",
            status_class="2xx",
        )
        == 1
    )
    dur = "fastproxy_gen_ai_client_operation_duration_seconds"
    assert total(fams, dur, dur + "_count") == 7
    assert total(fams, dur, dur + "_bucket", le="+Inf") == 7
    ttft = "fastproxy_gen_ai_server_time_to_first_token_seconds"
    assert total(fams, ttft, ttft + "_count") == 2
    usage = "fastproxy_gen_ai_client_token_usage"
    assert total(fams, usage, token_type="input") > 0
    assert total(fams, usage, token_type="output") > 0
    assert total(fams, "fastproxy_activity_bytes", direction="tx") > 0
    assert total(fams, "fastproxy_upstream_connections", backend="openai.1", state="open") >= 1
    assert total(fams, "fastproxy_circuit_state", backend="openai.1", state="closed") == 1
    assert total(fams, "fastproxy_backend_up", backend="openai.1") == 1


def test_in_flight_gauges(gw: RunningGateway) -> None:
    done = threading.Event()

    def stream() -> None:
        try:
            httpx.post(
                gw.url + "/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={"x-mock-tokens": "8", "x-mock-interval-ms": "250"},
                timeout=30,
            )
        finally:
            done.set()

    t = threading.Thread(target=stream)
    t.start()
    try:
        fams = wait_until(
            lambda: (f := scrape(gw)) and total(f, "fastproxy_streams_in_flight") == 1 and f,
            what="the stream to show in flight",
        )
        assert total(fams, "fastproxy_requests_in_flight") == 1
        assert total(fams, "fastproxy_activity_connections") == 1
    finally:
        t.join(30)
    fams = scrape(gw)
    assert total(fams, "fastproxy_streams_in_flight") == 0


def test_no_secrets_sessions_or_addresses_in_labels(gw: RunningGateway) -> None:
    httpx.post(
        gw.url + "/v1/chat/completions",
        json=CHAT,
        headers={"x-session-id": "sess-very-private", "authorization": "Bearer sk-client-x"},
    )
    text = scrape(gw)["_text"]
    for secret in ("sess-very-private", "sk-client", "sk-backend", "127.0.0.1"):
        assert secret not in text


def test_failures_and_aborts_are_counted(gw: RunningGateway, mock_llm: Any) -> None:
    before = scrape(gw)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"x-mock-tokens": "50", "x-mock-fault": "reset_after:3"},
        timeout=30,
    )
    assert b"stream_truncated" in r.content
    fams = scrape(gw)
    assert (
        total(fams, "fastproxy_stream_truncations") - total(before, "fastproxy_stream_truncations")
    ) == 1


# -- the collector without sockets ------------------------------------------------------------
class FakePlane:
    """What render() reads of the data plane (the `PlaneStats` seam): an idle plane."""

    draining = False

    def __init__(self) -> None:
        self.counters = Counters()

    def open_connections(self) -> int:
        return 0

    def in_flight(self) -> tuple[int, int]:
        return 0, 0

    def backend_names(self) -> list[str]:
        return []

    def pool_stats(self) -> dict[str, tuple[int, int]]:
        return {}


class FakeStorage:
    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status


def render(m: MetricsCollector, plane: FakePlane | None = None, storage: Any = None) -> str:
    """The exposition with no activity tracker and no health service."""
    return m.render(plane or FakePlane(), None, None, storage).decode()


def record(
    model: str,
    status: int = 200,
    *,
    duration: float = 0.05,
    streaming: bool = False,
    ttft: float = 0.0,
    usage: BackendUsage | None = None,
) -> ExchangeRecord:
    rec = ExchangeRecord(1, 1, 0.0)  # started at 0: durations stay exact floats
    rec.frontend, rec.backend, rec.model_used, rec.status = "openai", "b1", model, status
    rec.ended_at = duration
    rec.streaming = streaming
    rec.first_content_at = ttft
    rec.usage = usage
    return rec


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_model_labels_are_folded_beyond_the_cap() -> None:
    m = MetricsCollector(max_models=3)
    for i in range(10):
        m.on_exchange(record(f"model-{i}"))
    m.on_exchange(record("x" * 500))
    m.on_exchange(record("model-1"))  # a known model keeps its label
    fams = parse(render(m))
    models = {s.labels["model"]: s.value for s in fams["fastproxy_requests"].samples}
    assert models == {"model-0": 1, "model-1": 2, "model-2": 1, "other": 8}


def test_label_values_are_escaped() -> None:
    m = MetricsCollector()
    weird = 'a"b\\c\nd'
    m.on_exchange(record(weird))
    fams = parse(render(m))
    (sample,) = fams["fastproxy_requests"].samples
    assert sample.labels["model"] == weird


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    m = MetricsCollector()
    for d in (0.01, 0.015, 100.0):  # 0.01 is exactly a bound: it belongs to le="0.01"
        m.on_exchange(record("m", duration=d, streaming=True, ttft=0.001))
    fams = parse(render(m))
    name = "fastproxy_gen_ai_client_operation_duration_seconds"
    buckets = {s.labels["le"]: s.value for s in fams[name].samples if s.name == name + "_bucket"}
    assert buckets["0.01"] == 1 and buckets["0.02"] == 2
    assert buckets[repr(DURATION_BUCKETS[-1])] == 2 and buckets["+Inf"] == 3
    assert total(fams, name, name + "_sum") == pytest.approx(100.025)
    ttft = "fastproxy_gen_ai_server_time_to_first_token_seconds"
    assert total(fams, ttft, ttft + "_bucket", le="0.001") == 3


def test_tokens_cost_storage_and_counters() -> None:
    plane = FakePlane()
    plane.counters.upstream_errors = {"connect": 2, "timeout": 1}
    plane.counters.failovers = 3
    storage = FakeStorage(
        {"usage_db": "ok", "queue_depth": 7, "dropped_records": 2, "write_errors": 0}
    )
    m = MetricsCollector()
    m.on_exchange(record("m", usage=BackendUsage(prompt=10, completion=5, cost=0.25)))
    m.on_exchange(record("m", usage=BackendUsage(prompt=1, completion=2, cost=0.5)))
    fams = parse(render(m, plane, storage))
    usage = "fastproxy_gen_ai_client_token_usage"
    assert total(fams, usage, token_type="input") == 11
    assert total(fams, usage, token_type="output") == 7
    assert total(fams, "fastproxy_cost_usd") == pytest.approx(0.75)
    assert total(fams, "fastproxy_upstream_errors", kind="connect") == 2
    assert total(fams, "fastproxy_failovers") == 3
    assert total(fams, "fastproxy_usage_queue_depth") == 7
    assert total(fams, "fastproxy_usage_dropped_records") == 2
    assert "fastproxy_activity_bytes" not in fams  # tracking off: no series at all


def test_exchange_sink_cost_is_small() -> None:
    """A guard, not a benchmark: the per-request sink (on_exchange) stays in the microseconds."""
    m = MetricsCollector()
    rec = record("m", streaming=True, ttft=0.01, usage=BackendUsage(prompt=3, completion=4))
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        m.on_exchange(rec)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 50e-6
