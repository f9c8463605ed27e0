"""Micro-benchmarks of one usage record, stage by stage (docs/BENCHMARKS.md quotes them).

Run:  .venv/bin/pytest bench/micro/bench_usage.py --benchmark-only -p no:cacheprovider \
          -o testpaths=bench

A record costs CPU in four places; the first runs on the event loop, the rest in the
usage recorder process (its writer thread), which the load harness pins to the other
core:
- usage-capture: the loop's hand-off, ``_speedups.pack_exchange`` of the finished
  ExchangeRecord and its body into the recorder channel's buffer (what
  ``UsageService.on_exchange`` does per request);
- usage-project: ``Projector.prepared``, what the writer runs per record: parse the
  request body again, count the prompt (the estimator, or quicktok for OpenAI models when
  the extra is installed), session digest, the four token points, timings, cost, the
  record values, and at once its row and compact JSON text (``prepare_values``);
- usage-prepare: the general ``usage_schema.prepare`` (a record dict from anywhere,
  every value checked) beside ``prepare_values``, the projector's own path;
- usage-insert: ``UsageStore._insert`` of a 500-record batch (the writer's batch size)
  into a fresh WAL database, rows + JSON + dims + both rollups, one transaction; the
  figure is per batch, divide by 500 for one record.
The request is the load harness's a64 body and the mock's answer with its usage.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from fastproxy._speedups import pack_exchange
from fastproxy.core.records import ExchangeRecord
from fastproxy.dataplane.dialects.usage import BackendUsage
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import ExactCounter, Projector
from fastproxy.monitor.usage_service import UsageCapture
from fastproxy.storage.usage_schema import load_record, prepare, prepare_values
from fastproxy.storage.usage_store import UsageStore

BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hello world!"}]}'
BATCH = 500


def _record(i: int) -> ExchangeRecord:
    r = ExchangeRecord(i, 1, time.monotonic())
    r.frontend, r.path = "openai", "/v1/chat/completions"
    r.backend, r.backend_type = "openai.1", "openai"
    r.model_requested = r.model_used = "gpt-4o"
    r.status, r.attempts = 200, 1
    r.upstream_sent_at = r.started_at + 0.00002
    r.backend_ttfb_at = r.started_at + 0.0002
    r.upstream_done_at = r.started_at + 0.0003
    r.ended_at = r.started_at + 0.0004
    r.request_body = BODY
    r.user_agent = "wrk/4.1.0"
    r.usage = BackendUsage(prompt=7, completion=16, total=23, cached=0, reasoning=0)
    r.btp_completion_est = r.ptc_completion_est = 17
    return r


@pytest.mark.benchmark(group="usage-capture")
def test_capture(benchmark) -> None:
    rec = _record(1)
    out = bytearray()

    def hand_off() -> None:
        pack_exchange(rec, rec.request_body, out)
        out.clear()  # the channel's flush, once per loop iteration, empties it

    benchmark(hand_off)


COUNTERS = [
    pytest.param("estimate", id="estimate"),
    pytest.param(
        "exact",
        id="exact",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("quicktok") is None,
            reason="quicktok-v1 (the exact-tokens extra) is not installed",
        ),
    ),
]


@pytest.mark.benchmark(group="usage-project")
@pytest.mark.parametrize("counter", COUNTERS)
def test_project(benchmark, counter: str) -> None:
    projector = Projector(PriceTable({}), ExactCounter.load() if counter == "exact" else None)
    rec = _record(1)

    def run() -> Any:
        return projector.prepared(UsageCapture.take(rec, True))

    out = load_record(benchmark(run)[3])
    assert out["ctp_prompt_tokens"] and out["cost"] is not None


@pytest.mark.benchmark(group="usage-prepare")
def test_prepare_general(benchmark) -> None:
    record = Projector(PriceTable({})).record(UsageCapture.take(_record(1), True))
    benchmark(prepare, record)


@pytest.mark.benchmark(group="usage-prepare")
def test_prepare_values(benchmark) -> None:
    rec = _record(1)
    ms = int(rec.wall_started_at * 1000)
    values = Projector(PriceTable({})).values(UsageCapture.take(rec, True), ms)
    assert prepare_values(values, ms)[:3] == prepare(load_record(prepare_values(values, ms)[3]))[:3]
    benchmark(prepare_values, values, ms)


@pytest.mark.benchmark(group="usage-insert")
def test_insert_batch(benchmark, tmp_path: Path) -> None:
    projector = Projector(PriceTable({}))
    rows = [projector.prepared(UsageCapture.take(_record(i), True)) for i in range(BATCH)]
    store = UsageStore(
        tmp_path / "usage.db", flush_interval=1.0, max_queue=100_000, retention_days=0
    )
    store._open()
    conn = store._conn
    assert conn is not None
    benchmark.pedantic(store._insert, args=(conn, rows), rounds=40, warmup_rounds=2)
    benchmark.extra_info["records_per_round"] = BATCH
    conn.close()
