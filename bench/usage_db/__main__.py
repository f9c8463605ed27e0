"""Generate a usage database of N records and time the /v1/usage queries on it.

    .venv/bin/python -m bench.usage_db --rows 1000000 [--db PATH] [--repeat 5]

The database is written once (bench/usage_db/results/usage-<N>.db, reused when present)
through the store's own write path; each query then runs through the store's read side
exactly as the views call it (a fresh read connection per call). Printed: median and
worst of --repeat runs, and the machine's load average, which matters on a shared box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_schema import VERSION
from fastproxy.storage.usage_store import UsageStore

from .generate import days_ago, generate, table_sizes

CASES: dict[str, dict[str, list[str]]] = {
    "stats, no filter": {},
    "stats backend_type=openai": {"backend_type": ["openai"]},
    "stats model=gpt-4o": {"model": ["gpt-4o"]},
    "stats backend=local.1": {"backend": ["local.1"]},
    "stats proxy_user=alice": {"proxy_user": ["alice"]},
    "stats http_status_code=429": {"http_status_code": ["429"]},
    "stats hour_of_day=14": {"hour_of_day": ["14"]},
    "stats day_of_week=2": {"day_of_week": ["2"]},
    "stats last 30 days (mid-day edges)": {
        "start_date": [days_ago(30) + "T09:30:00Z"],
        "end_date": [days_ago(0) + "T17:45:00Z"],
    },
    "stats one week": {"start_date": [days_ago(14)], "end_date": [days_ago(8)]},
    "stats one day, backend_type=anthropic": {
        "start_date": [days_ago(3)],
        "end_date": [days_ago(3)],
        "backend_type": ["anthropic"],
    },
    "stats session_id": {"session_id": ["sess-00042"]},
    "stats leg=PTC, model+type+week": {
        "leg": ["PTC"],
        "model": ["gpt-4o"],
        "backend_type": ["openai"],
        "start_date": [days_ago(14)],
        "end_date": [days_ago(8)],
    },
}


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times), out


def _write_rate(path: Path, n: int) -> float:
    """Records per second through submit() -> stop() into a fresh file."""
    from .generate import records

    if path.exists():
        path.unlink()
    recs = list(records(n, seed=7))
    store = UsageStore(path, flush_interval=1.0, max_queue=n + 1, retention_days=0)
    store.start()
    t = time.perf_counter()
    for r in recs:
        store.submit(r)
    store.stop()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", help="database path (default: bench/usage_db/results/usage-N.db)")
    ap.add_argument("--repeat", type=int, default=5)
    ns = ap.parse_args()
    path = Path(ns.db or f"bench/usage_db/results/usage-v{VERSION}-{ns.rows}.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        t = time.perf_counter()
        generate(path, ns.rows)
        print(f"generated {ns.rows:,} records in {time.perf_counter() - t:.1f}s: {path}")
    sizes = table_sizes(path)
    print(
        f"file {path.stat().st_size / 1e6:.0f} MB; rows+indexes "
        f"{sum(v for k, v in sizes.items() if k != 'usage_records') / 1e6:.0f} MB, "
        f"JSON records {sizes.get('usage_records', 0) / 1e6:.0f} MB"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    store = UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)
    print(f"{'query':42s} {'median':>8s} {'worst':>8s}  rows")
    for name, q in CASES.items():
        f = parse_filters(q)
        med, worst, s = _time(lambda f=f: store.stats(f), ns.repeat)
        print(f"{name:42s} {med:8.3f} {worst:8.3f}  {s['request_count']:,}")
    f = parse_filters({})
    for name, fn in (
        ("recent limit=50", lambda: store.recent(f, 50, 0)),
        ("recent limit=1000 offset=10000", lambda: store.recent(f, 1000, 10_000)),
        (
            "recent model=claude-haiku-4-5 limit=50",
            lambda: store.recent(parse_filters({"model": ["claude-haiku-4-5"]}), 50, 0),
        ),
        ("export first page (1,000)", lambda: next(store.export_pages(f, 1000))),
    ):
        med, worst, _ = _time(fn, ns.repeat)
        print(f"{name:42s} {med:8.3f} {worst:8.3f}")
    t = time.perf_counter()
    n = sum(len(p) for p in store.export_pages(parse_filters({"start_date": [days_ago(7)]})))
    dt = time.perf_counter() - t
    print(f"{'export last 7 days, all pages':42s} {dt:8.3f}           {n:,} ({n / dt:,.0f}/s)")
    rate = _write_rate(path.with_name("write-rate.db"), 50_000)
    print(
        f"{'write: 50,000 submit() then stop()':42s} {50_000 / rate:8.3f}           "
        f"({rate:,.0f} records/s)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
