"""Metrics counted in two workers and added up in the primary render exactly as if one
process had counted every request."""

from __future__ import annotations

import math
import random

import orjson

from fastproxy.core.records import BackendUsage, ExchangeRecord
from fastproxy.core.seams import PlaneStats
from fastproxy.dataplane.plane import DataPlane
from fastproxy.monitor.metrics import MetricsCollector
from tests.support.fake_transport import make_config


def _records(n: int, seed: int) -> list[ExchangeRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec = ExchangeRecord(i, 1, 100.0)
        rec.frontend = rng.choice(["openai", "anthropic"])
        rec.backend = rng.choice(["a", "b", None])
        rec.model_used = rng.choice([f"m{k}" for k in range(8)] + [None])
        rec.status = rng.choice([200, 200, 429, 500, 0])
        rec.ended_at = 100.0 + rng.random() * 3
        rec.streaming = rng.random() < 0.5
        rec.first_tx_at = 100.0 + rng.random() if rng.random() < 0.8 else 0.0
        if rng.random() < 0.7:
            rec.usage = BackendUsage(prompt=rng.randint(0, 99), completion=rng.randint(0, 99))
            rec.usage.cost = rng.choice([None, 0.25, 0.5])
        out.append(rec)
    return out


def _series(text: bytes) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line and not line.startswith("#")
    }


def _sum(text: bytes, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith(name + "{")
    )


def test_merged_worker_deltas_render_like_one_process() -> None:
    # Workers count without a model-label bound (as worker.py makes them); the
    # primary's bound (10) is above the 8 models here, so labels match one process's.
    records = _records(2000, 7)
    one = MetricsCollector(max_models=10)
    for rec in records:
        one.on_exchange(rec)
    workers = [MetricsCollector(max_models=1 << 62), MetricsCollector(max_models=1 << 62)]
    primary = MetricsCollector(max_models=10)
    for i, rec in enumerate(records):
        workers[i % 2].on_exchange(rec)
        if i % 300 == 299:  # heartbeats in between, through JSON as on the channel
            for w in workers:
                primary.merge(orjson.loads(orjson.dumps(w.take_delta())))
    for w in workers:
        primary.merge(orjson.loads(orjson.dumps(w.take_delta())))
        assert w.take_delta()["requests"] == []  # a delta is taken once
    plane: PlaneStats = DataPlane(make_config(), None)  # type: ignore[arg-type]
    got, want = (
        _series(primary.render(plane, None, None, None)),
        _series(one.render(plane, None, None, None)),
    )
    assert got.keys() == want.keys()
    for name, value in want.items():
        # Sums of seconds and costs are added in another order: equal but for rounding.
        assert math.isclose(got[name], value, rel_tol=1e-9), name


def test_the_primary_bounds_model_labels_of_the_sum() -> None:
    records = _records(2000, 8)
    workers = [MetricsCollector(max_models=1 << 62), MetricsCollector(max_models=1 << 62)]
    primary = MetricsCollector(max_models=3)
    for i, rec in enumerate(records):
        workers[i % 2].on_exchange(rec)
    for w in workers:
        primary.merge(w.take_delta())
    assert len(primary.models) == 3  # 8 models seen, 3 labelled, the rest "other"
    plane: PlaneStats = DataPlane(make_config(), None)  # type: ignore[arg-type]
    text = primary.render(plane, None, None, None)
    assert _sum(text, "fastproxy_requests_total") == len(records)
    assert b'model="other"' in text
