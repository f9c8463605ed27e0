"""pytest-benchmark: the /v1/usage queries on a generated database (1,000,000 records).

    .venv/bin/python -m pytest bench/usage_db/bench_queries.py --benchmark-only \\
        -o python_files='bench_*.py' -o testpaths=bench -p no:cacheprovider

``FASTPROXY_BENCH_USAGE_ROWS`` changes the size. The file is the one ``python -m
bench.usage_db`` writes (bench/usage_db/results/usage-v<schema>-<rows>.db, ignored by
git): generated once (about 100 s for 1M on a 2-vCPU VM), then reused. Each call goes
through the store's read side with a fresh read connection, as the views call it.
The target (docs/usage-storage.md): every stats case under 1 s at 1M records.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.usage_db.generate import days_ago, generate
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_schema import VERSION
from fastproxy.storage.usage_store import UsageStore

ROWS = int(os.environ.get("FASTPROXY_BENCH_USAGE_ROWS", "1000000"))

STATS = {
    "none": {},
    "backend_type": {"backend_type": ["openai"]},
    "model": {"model": ["gpt-4o"]},
    "proxy_user": {"proxy_user": ["alice"]},
    "http_status_code": {"http_status_code": ["429"]},
    "hour_of_day": {"hour_of_day": ["14"]},
    "30_days_mid_day_edges": {
        "start_date": [days_ago(30) + "T09:30:00Z"],
        "end_date": [days_ago(0) + "T17:45:00Z"],
    },
    "one_week": {"start_date": [days_ago(14)], "end_date": [days_ago(8)]},
    "session_id": {"session_id": ["sess-00042"]},
}


@pytest.fixture(scope="module")
def store() -> UsageStore:
    path = Path(__file__).parent / "results" / f"usage-v{VERSION}-{ROWS}.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(path, ROWS)
    return UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)


def _bench(benchmark: Any, fn: Callable[[], Any]) -> Any:
    return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("case", list(STATS))
def test_stats(benchmark: Any, store: UsageStore, case: str) -> None:
    benchmark.group = "usage-stats"
    f = parse_filters(STATS[case])
    assert _bench(benchmark, lambda: store.stats(f))["request_count"] > 0


def test_recent(benchmark: Any, store: UsageStore) -> None:
    benchmark.group = "usage-recent-export"
    f = parse_filters({})
    assert len(_bench(benchmark, lambda: store.recent(f, 50, 0))["records"]) == 50


def test_export_first_page(benchmark: Any, store: UsageStore) -> None:
    benchmark.group = "usage-recent-export"
    f = parse_filters({})
    assert len(_bench(benchmark, lambda: next(store.export_pages(f, 1000)))) == 1000
