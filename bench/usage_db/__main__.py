"""Generate a usage database of N rows and time the /v1/usage queries on it.

    python -m bench.usage_db --rows 1000000 [--db PATH]

Rows are realistic (4 backends, 8 models, 5,000 sessions, 90 days, streams with TTFT)
and inserted through the real schema; queries go through the real store's read side.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_schema import INSERT, INSERT_RECORD, migrate
from fastproxy.storage.usage_store import UsageStore, _to_row

BACKENDS = [("openai.1", "openai"), ("openai.2", "openai"), ("anthropic.1", "anthropic"),
            ("local.1", "openai")]
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o4-mini", "claude-sonnet-4-5", "claude-haiku-4-5",
          "llama-3-70b", "qwen-2.5"]


def generate(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    migrate(conn)
    start = datetime(2025, 9, 1, tzinfo=UTC)
    batch = []
    for _ in range(n):
        backend, btype = rng.choice(BACKENDS)
        stream = rng.random() < 0.7
        dur = rng.lognormvariate(7, 1)
        comp = rng.randint(1, 800)
        r = {
            "id": uuid.uuid4().hex,
            "timestamp": (start + timedelta(seconds=rng.uniform(0, 90 * 86400))).strftime(
                "%Y-%m-%dT%H:%M:%S.000Z"),
            "session_id": f"s{rng.randint(1, 5000)}", "frontend_type": btype, "backend": backend,
            "backend_type": btype, "model_requested": rng.choice(MODELS), "model_used": None,
            "streaming": stream, "http_status_code": rng.choice([200] * 30 + [429, 500, 400]),
            "outcome": "ok", "tool_call_count": rng.choice([0, 0, 0, 1]),
            "ctp_prompt_tokens": rng.randint(10, 4000), "ptb_prompt_tokens": rng.randint(10, 4000),
            "btp_completion_tokens": comp, "ptc_completion_tokens": comp,
            "backend_reported_usage": {"prompt": 100, "completion": comp, "total": 100 + comp},
            "ttft_ms": rng.uniform(100, 2000) if stream else None, "total_duration_ms": dur,
            "proxy_overhead_ms": rng.uniform(0.05, 2), "stream_tps": comp / (dur / 1000) if stream else None,
            "cost": rng.uniform(0, 0.05), "proxy_user": None,
        }
        batch.append(_to_row(r))
        if len(batch) == 20000:
            _insert(conn, batch)
            batch = []
    if batch:
        _insert(conn, batch)
    conn.execute("ANALYZE")  # as PRAGMA optimize does for a live store
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _insert(conn: sqlite3.Connection, batch: list[tuple]) -> None:
    conn.execute("BEGIN")
    conn.executemany(INSERT, [row[:-1] for row in batch])
    conn.executemany(INSERT_RECORD, [(row[0], row[-1]) for row in batch])
    conn.execute("COMMIT")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", default="bench/usage_db/results/usage-bench.db")
    ns = ap.parse_args()
    path = Path(ns.db)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        t = time.perf_counter()
        generate(path, ns.rows)
        print(f"generated {ns.rows} rows in {time.perf_counter() - t:.1f}s ({path})")
    store = UsageStore(path, flush_interval=1, max_queue=1, retention_days=0)
    cases = {
        "stats (no filter)": {},
        "stats backend_type=openai": {"backend_type": ["openai"]},
        "stats model=gpt-4o": {"model": ["gpt-4o"]},
        "stats one week": {"start_date": ["2025-10-01"], "end_date": ["2025-10-07"]},
    }
    for name, q in cases.items():
        f = parse_filters(q)
        t = time.perf_counter()
        s = store.stats(f)
        print(f"{name:32s} {time.perf_counter() - t:6.3f} s  ({s['request_count']} rows)")
    f = parse_filters({})
    t = time.perf_counter()
    store.recent(f, 50, 0)
    print(f"{'recent limit=50':32s} {time.perf_counter() - t:6.3f} s")
    t = time.perf_counter()
    next(store.export_pages(f, 1000))
    print(f"{'export first page (1000)':32s} {time.perf_counter() - t:6.3f} s")


if __name__ == "__main__":
    main()
