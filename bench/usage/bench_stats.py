"""pytest-benchmark: the /v1/usage queries on a generated usage database (default 1M rows).

Run (``python -m`` puts the checkout on sys.path for ``bench.usage_db``):

    .venv/bin/python -m pytest bench/usage/bench_stats.py --benchmark-only \\
        -o python_files='bench_*.py' -o testpaths=bench -p no:cacheprovider

``FASTPROXY_BENCH_USAGE_ROWS`` sets the row count (default 1,000,000). The database is
generated once by ``bench.usage_db.generate``: the same rows as ``python -m bench.usage_db``,
written through the real schema. It is stored as ``bench/usage/results/usage-<rows>.db``
(ignored by git) and reused by later runs, so only the first run pays the few minutes of
generation. Queries go through the store's read side, as the views call them, with one
filter per case. The target is stats under 1 s on 1,000,000 rows (docs/usage-storage.md).
Each case runs 3 rounds: a single stats call is long enough that more rounds only cost time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.usage_db.__main__ import generate
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore

ROWS = int(os.environ.get("FASTPROXY_BENCH_USAGE_ROWS", "1000000"))
ROUNDS = 3

# One case per filter kind of CONTRACT §5, values that the generator produces.
STATS_CASES: dict[str, dict[str, list[str]]] = {
    "none": {},
    "backend_type": {"backend_type": ["openai"]},
    "backend": {"backend": ["anthropic.1"]},
    "model": {"model": ["gpt-4o"]},
    "frontend_type": {"frontend_type": ["anthropic"]},
    "session_id": {"session_id": ["s42"]},
    "http_status_code": {"http_status_code": ["429"]},
    "one_week": {"start_date": ["2025-10-01"], "end_date": ["2025-10-07"]},
    "day_of_week": {"day_of_week": ["2"]},
    "hour_of_day": {"hour_of_day": ["14"]},
    "leg_ctp": {"leg": ["CTP"]},
}


@pytest.fixture(scope="module")
def store() -> UsageStore:
    path = Path(__file__).parent / "results" / f"usage-{ROWS}.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        generate(partial, ROWS)
        partial.rename(path)  # a generation cut short is never mistaken for a full one
    # Read side only: start() is never called, so no writer thread touches the file.
    return UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)


def _pedantic(benchmark: Any, fn: Callable[[], Any]) -> Any:
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="usage-stats")
@pytest.mark.parametrize("case", list(STATS_CASES))
def test_stats(benchmark: Any, store: UsageStore, case: str) -> None:
    filters = parse_filters(STATS_CASES[case])
    out = _pedantic(benchmark, lambda: store.stats(filters))
    benchmark.extra_info["rows_matched"] = out["request_count"]
    assert out["request_count"] > 0  # a case that matches nothing measures nothing


@pytest.mark.benchmark(group="usage-recent")
def test_recent(benchmark: Any, store: UsageStore) -> None:
    filters = parse_filters({})
    out = _pedantic(benchmark, lambda: store.recent(filters, 50, 0))
    assert len(out["records"]) == 50


@pytest.mark.benchmark(group="usage-recent")
def test_recent_deep_page(benchmark: Any, store: UsageStore) -> None:
    filters = parse_filters({})
    out = _pedantic(benchmark, lambda: store.recent(filters, 1000, ROWS // 2))
    assert len(out["records"]) == 1000


@pytest.mark.benchmark(group="usage-export")
def test_export_first_page(benchmark: Any, store: UsageStore) -> None:
    filters = parse_filters({})
    page = _pedantic(benchmark, lambda: next(store.export_pages(filters, 1000)))
    assert len(page) == 1000
