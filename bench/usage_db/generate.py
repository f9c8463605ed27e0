"""A realistic usage database of N records, written through the store's own write path.

Records look like the gateway's: four backends with their own models, 70 % streams,
20,000 sessions, a daily traffic curve over 90 days in time order, a few proxy users, a
status mix with 429s and 5xx, tool calls, costs. Deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastproxy.storage.usage_schema import prepare
from fastproxy.storage.usage_store import UsageStore

START = datetime(2025, 9, 1, tzinfo=UTC)
DAYS = 90
# backend -> (backend_type, [(model requested, model that answered)])
BACKENDS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "openai.1": (
        "openai",
        [
            ("gpt-4o", "gpt-4o-2024-08-06"),
            ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
            ("gpt-4.1", "gpt-4.1-2025-04-14"),
            ("o4-mini", "o4-mini-2025-04-16"),
        ],
    ),
    "openai.2": (
        "openai",
        [("gpt-4o", "gpt-4o-2024-08-06"), ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")],
    ),
    "anthropic.1": (
        "anthropic",
        [
            ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
            ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),
        ],
    ),
    "local.1": ("openai", [("llama-3-70b", "llama-3-70b"), ("qwen-2.5", "qwen-2.5")]),
}
WEIGHTS = {"openai.1": 45, "openai.2": 15, "anthropic.1": 30, "local.1": 10}
USERS = [None] * 14 + ["alice", "bob", "ci", "batch", "eval", "ops"]
STATUSES = [200] * 930 + [429] * 30 + [500] * 12 + [502] * 3 + [400] * 15 + [0] * 10


def _times(rng: random.Random, n: int) -> list[float]:
    """n sorted timestamps over DAYS days, busier in working hours (UTC)."""
    t0 = START.timestamp()
    out = []
    while len(out) < n:
        t = rng.uniform(0, DAYS * 86400)
        hour = (t % 86400) / 3600
        if rng.random() < 0.35 + 0.65 * math.exp(-((hour - 14) ** 2) / 18):
            out.append(t0 + t)
    out.sort()
    return out


def records(n: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    names = list(WEIGHTS)
    weights = [WEIGHTS[b] for b in names]
    for ts in _times(rng, n):
        backend = rng.choices(names, weights)[0]
        btype, models = BACKENDS[backend]
        requested, used = rng.choice(models)
        stream = rng.random() < 0.7
        status = rng.choice(STATUSES)
        ok = status == 200
        prompt = int(rng.lognormvariate(6.5, 1.1)) + 10
        completion = int(rng.lognormvariate(5.2, 0.9)) + 1 if ok else 0
        duration = rng.lognormvariate(7.2, 0.8) if ok else rng.uniform(5, 300)
        ttft = min(duration, rng.lognormvariate(5.8, 0.6)) if stream and ok else None
        tools = rng.choice([0] * 8 + [1, 2]) if ok else 0
        yield {
            "id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "timestamp": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            + "Z",
            "session_id": f"sess-{rng.randint(1, 20000):05d}",
            "turn_number": rng.randint(1, 30),
            "frontend_type": btype if rng.random() < 0.85 else rng.choice(["openai", "anthropic"]),
            "backend": backend,
            "backend_type": btype,
            "model_requested": requested,
            "model_used": used if ok else None,
            "streaming": stream,
            "http_status_code": status or None,
            "outcome": "ok" if ok else ("client_aborted" if status == 0 else "backend_error"),
            "attempts": 1,
            "tool_call_count": tools,
            "tool_names": [rng.choice(["search", "read_file", "bash"]) for _ in range(tools)],
            "ctp_prompt_tokens": prompt,
            "ptb_prompt_tokens": prompt + rng.randint(0, 3),
            "btp_completion_tokens": completion or None,
            "ptc_completion_tokens": completion or None,
            "backend_reported_usage": {
                "prompt": prompt,
                "completion": completion,
                "total": prompt + completion,
                "cached": 0,
                "cache_write": None,
                "reasoning": None,
                "cost": None,
            }
            if ok
            else None,
            "usage_source": "backend" if ok else "estimated",
            "ttft_ms": round(ttft, 3) if ttft is not None else None,
            "backend_ttfb_ms": round(rng.uniform(50, 900), 3),
            "total_duration_ms": round(duration, 3),
            "proxy_overhead_ms": round(rng.lognormvariate(-1.5, 0.7), 3),
            "stream_tps": round(completion / (duration / 1000), 3) if stream and ok else None,
            "cost": round((prompt * 2.5 + completion * 10) / 1e6, 8) if ok else None,
            "cost_source": "price_table" if ok else None,
            "replacement": None,
            "proxy_user": rng.choice(USERS),
            "user_agent": rng.choice(
                ["openai-python/1.54.0", "anthropic-python/0.39.0", "curl/8.5"]
            ),
        }


def generate(path: Path, n: int, seed: int = 1, batch: int = 5000) -> None:
    """Write n records with the store's own write path (dims, rows, JSON, both rollups,
    one transaction per batch), then planner statistics as the live store keeps them."""
    store = UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)
    store._open()  # the writer's internals, called directly: no thread, no queue
    conn = store._conn
    assert conn is not None, store.status()
    conn.execute("PRAGMA synchronous=OFF")  # a benchmark fixture, not data to keep
    pending = []
    for r in records(n, seed):
        pending.append(prepare(r))
        if len(pending) == batch:
            store._insert(conn, pending)
            pending = []
    if pending:
        store._insert(conn, pending)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def table_sizes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        try:
            return dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        except sqlite3.Error:
            return {}


def days_ago(d: int) -> str:
    return (START + timedelta(days=DAYS - d)).strftime("%Y-%m-%d")
