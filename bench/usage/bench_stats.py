"""pytest-benchmark: the /v1/usage queries on a generated usage database (default 1M rows).

Run (``python -m`` puts the checkout on sys.path for ``bench.usage_db``):

    .venv/bin/python -m pytest bench/usage/bench_stats.py --benchmark-only \\
        -o python_files='bench_*.py' -o testpaths=bench -p no:cacheprovider

The pytest-benchmark twin of ``python -m bench.usage_db``. It uses the same generator, the
same query cases (``CASES``) and the same database file
(``bench/usage_db/results/usage-v<schema>-<rows>.db``, ignored by git). Whichever runs
first pays for generating the file, and the other reuses it. ``FASTPROXY_BENCH_USAGE_ROWS``
sets the row count (default 1,000,000). Queries go through the store's read side, as the
views call them. The target is stats under 1 s on 1,000,000 rows (docs/usage-storage.md).
Each case runs 3 rounds: a stats call takes long enough that more rounds only cost time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.usage_db.__main__ import CASES
from bench.usage_db.generate import generate
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_schema import VERSION
from fastproxy.storage.usage_store import UsageStore

ROWS = int(os.environ.get("FASTPROXY_BENCH_USAGE_ROWS", "1000000"))
ROUNDS = 3
_RESULTS = Path(__file__).resolve().parents[1] / "usage_db" / "results"


@pytest.fixture(scope="module")
def store() -> UsageStore:
    path = _RESULTS / f"usage-v{VERSION}-{ROWS}.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        generate(partial, ROWS)
        partial.rename(path)  # a generation cut short is never mistaken for a full one
    # Read side only: start() is never called, so no writer thread touches the file.
    return UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)


def _pedantic(benchmark: Any, fn: Callable[[], Any]) -> Any:
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="usage-stats")
@pytest.mark.parametrize("case", list(CASES))
def test_stats(benchmark: Any, store: UsageStore, case: str) -> None:
    filters = parse_filters(CASES[case])
    out = _pedantic(benchmark, lambda: store.stats(filters))
    # Shown with --benchmark-json; a case matching nothing measures little (at small
    # FASTPROXY_BENCH_USAGE_ROWS, a single session may not exist).
    benchmark.extra_info["rows_matched"] = out["request_count"]
    if not CASES[case]:
        assert out["request_count"] == ROWS


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
