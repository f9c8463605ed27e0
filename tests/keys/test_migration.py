"""A usage database written before named keys (schema version 4) opens with this code:
its rows are kept and counted as they were, with key_name and team null, and the named
keys' requests written after it are attributed beside them. The old file is made here
with version 4's own CREATE statements, as that version left them in sqlite_master."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from fastproxy.core.records import BackendUsage, ExchangeRecord
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_capture import UsageCapture
from fastproxy.monitor.usage_projection import Projector
from fastproxy.storage import usage_schema
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.usage.test_store_queries import _reference, assert_like_reference, record

_ROLLUP = ", ".join(
    f"{c} {'REAL' if c in ('cost', 'min_ts', 'max_ts') or c.endswith('_sum') else 'INTEGER'}"
    + ("" if c.endswith(("_min", "_max")) else " NOT NULL")
    for c in usage_schema.SUMS
)
_COVER = "dim, http_status_code, ts, day_of_week, hour_of_day"
V4_DDL = [
    "CREATE TABLE usage_dims (dim INTEGER PRIMARY KEY, backend TEXT, backend_type TEXT, "
    "frontend_type TEXT, model_requested TEXT, model_used TEXT, proxy_user TEXT, api TEXT, "
    "outcome TEXT)",
    "CREATE TABLE usage_requests (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, "
    "dim INTEGER NOT NULL, http_status_code INTEGER NOT NULL, day_of_week INTEGER NOT NULL, "
    "hour_of_day INTEGER NOT NULL, session_id TEXT, streaming INTEGER NOT NULL, outcome TEXT, "
    "ctp_prompt_tokens INTEGER, ptb_prompt_tokens INTEGER, btp_completion_tokens INTEGER, "
    "ptc_completion_tokens INTEGER, br_prompt INTEGER, br_completion INTEGER, "
    "br_total INTEGER, cost REAL, tool_call_count INTEGER NOT NULL, ttft_ms REAL, "
    "total_duration_ms REAL, proxy_overhead_ms REAL, stream_tps REAL)",
    "CREATE TABLE usage_records (seq INTEGER PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE usage_hourly (hour INTEGER NOT NULL, dim INTEGER NOT NULL, "
    "http_status_code INTEGER NOT NULL, day_of_week INTEGER NOT NULL, "
    f"hour_of_day INTEGER NOT NULL, {_ROLLUP}, PRIMARY KEY (hour, dim, http_status_code)) "
    "WITHOUT ROWID",
    "CREATE TABLE usage_daily (day INTEGER NOT NULL, dim INTEGER NOT NULL, "
    "http_status_code INTEGER NOT NULL, day_of_week INTEGER NOT NULL, "
    f"{_ROLLUP}, PRIMARY KEY (day, dim, http_status_code)) WITHOUT ROWID",
    "CREATE INDEX usage_requests_ts ON usage_requests(ts, dim, http_status_code, "
    "day_of_week, hour_of_day)",
    f"CREATE INDEX usage_requests_session ON usage_requests(session_id, {_COVER}) "
    "WHERE session_id IS NOT NULL",
    *(
        f"CREATE INDEX usage_requests_{c} ON usage_requests({c}, {_COVER}) WHERE {c} IS NOT NULL"
        for c in ("ttft_ms", "total_duration_ms", "proxy_overhead_ms", "stream_tps")
    ),
    "CREATE VIEW usage AS SELECT strftime('%Y-%m-%dT%H:%M:%fZ', r.ts, 'unixepoch') AS "
    "timestamp, d.backend, d.backend_type, d.frontend_type, d.api, d.model_requested, "
    "d.model_used, d.proxy_user, r.* FROM usage_requests r JOIN usage_dims d ON d.dim = r.dim",
]
V4_REQUEST_COLUMNS = usage_schema.REQUEST_COLUMNS[:22]  # without key_name and team


def v4_file(path: Path, records: list[dict[str, Any]]) -> None:
    """Records as version 4 stored them: dims of eight strings, rows of 22 columns, the
    records as JSON, both rollups folded in SQL."""
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in V4_DDL:
        conn.execute(stmt)
    conn.execute("BEGIN")
    dims: dict[tuple[Any, ...], int] = {}
    for seq, rec in enumerate(records, 1):
        key, _hour, row, text = usage_schema.prepare(rec)
        dim = dims.get(key[:8])
        if dim is None:
            dim = dims[key[:8]] = conn.execute(
                "INSERT INTO usage_dims (backend, backend_type, frontend_type, model_requested, "
                "model_used, proxy_user, api, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                key[:8],
            ).lastrowid
        conn.execute(
            f"INSERT INTO usage_requests ({', '.join(V4_REQUEST_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in V4_REQUEST_COLUMNS)})",
            (seq, row[0], dim, *row[1:-2]),
        )
        conn.execute("INSERT INTO usage_records (seq, record) VALUES (?, ?)", (seq, text))
    conn.execute(usage_schema.ROLLUP_BATCH_HOURLY, (1, len(records) + 1))
    conn.execute(usage_schema.ROLLUP_BATCH_DAILY, (1, len(records) + 1))
    conn.execute("COMMIT")
    conn.execute("PRAGMA user_version = 4")
    conn.close()


def _named_capture(wall: float) -> UsageCapture:
    rec = ExchangeRecord(1, 1, 100.0)
    rec.wall_started_at = wall
    rec.frontend, rec.path = "openai", "/v1/chat/completions"
    rec.backend, rec.backend_type = "openai.1", "openai"
    rec.model_requested = rec.model_used = "gpt-4o"
    rec.status, rec.outcome, rec.attempts = 200, "ok", 1
    rec.ended_at = 100.5
    rec.usage = BackendUsage(prompt=10, completion=5, total=15, cost=0.25)
    rec.key_name, rec.team = "ci-bot", "platform"
    rec.request_body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    )
    return UsageCapture.take(rec, True)


def test_a_version_4_file_keeps_its_rows_and_takes_named_keys(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    old = []
    for i in range(24):
        r = record(
            timestamp=f"2025-12-0{1 + i % 3}T{i:02d}:15:00.000Z",
            backend="openai.1" if i % 2 else "anthropic.1",
            cost=0.5,
        )
        del r["key_name"], r["team"]  # version 4 knew neither
        old.append(r)
    v4_file(db, old)

    today = int(time.time() // 86400)
    store = UsageStore(db, flush_interval=0.05, max_queue=100, retention_days=0)
    store.start()
    projector = Projector(PriceTable({}))
    captures = [_named_capture(today * 86400.0 + 60 + i) for i in range(3)]  # all today
    for c in captures:
        store.submit(lambda c=c: projector.prepared(c))
    store.stop()

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == usage_schema.VERSION == 5
        assert conn.execute("SELECT COUNT(*) FROM usage_requests").fetchone()[0] == 27
        assert conn.execute(
            "SELECT key_name, team, COUNT(*) FROM usage_requests GROUP BY 1, 2 ORDER BY 1"
        ).fetchall() == [(None, None, 24), ("ci-bot", "platform", 3)]
        # The view shows the rows' new columns; the spend indexes exist and are used.
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM usage WHERE key_name = 'ci-bot' AND team = 'platform'"
            ).fetchone()[0]
            == 3
        )
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT TOTAL(cost) FROM usage_requests "
                "WHERE key_name = ? AND ts >= ?",
                ("ci-bot", 0),
            )
        )
        assert "usage_requests_key" in plan and "COVERING" in plan

    exported = [r for page in store.export_pages(parse_filters({})) for r in page]
    assert len(exported) == 27
    assert [r["id"] for r in exported[:24]] == [
        r["id"] for r in sorted(old, key=lambda r: r["timestamp"])
    ]
    assert all(r["key_name"] is None and r["team"] is None for r in exported[:24])
    assert {(r["key_name"], r["team"]) for r in exported[24:]} == {("ci-bot", "platform")}
    for q in (
        {},
        {"backend": ["openai.1"]},
        {"key": ["ci-bot"]},
        {"team": ["platform"]},
        {"start_date": ["2025-12-02T05:30:00Z"], "end_date": ["2025-12-03"]},
    ):
        f = parse_filters(q)
        assert_like_reference(store.stats(f), _reference(exported, f), q)
    everything = store.stats(parse_filters({}))
    assert {k: v["request_count"] for k, v in everything["by_key"].items()} == {
        "(none)": 24,
        "ci-bot": 3,
    }
    assert everything["total_cost"] == 24 * 0.5 + 3 * 0.25
    keys, teams = store.spend(today - 40, today)
    assert keys == {"ci-bot": {"day": (3, 0.75), "month": (3, 0.75)}}
    assert teams == {"platform": {"day": (3, 0.75), "month": (3, 0.75)}}
