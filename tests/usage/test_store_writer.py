"""The writer side of UsageStore: the one thread, the bounded queue, batches, thunks,
flush on stop, retention, schema migration, and that it stores nothing it was not given."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastproxy.storage import usage_schema, usage_store
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.support.waiting import wait_until
from tests.usage.test_store_queries import (
    _random_records,
    _reference,
    assert_like_reference,
    record,
)


def make(path: Path, **kw: Any) -> UsageStore:
    opts: dict[str, Any] = {"flush_interval": 0.05, "max_queue": 10_000, "retention_days": 0}
    opts.update(kw)
    s = UsageStore(path, **opts)
    s.start()
    return s


def rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM usage_requests").fetchone()[0]


def test_status_shape(tmp_path: Path) -> None:
    s = make(tmp_path / "u.db")
    assert s.status() == {
        "usage_db": "ok",
        "queue_depth": 0,
        "dropped_records": 0,
        "write_errors": 0,
        "path": str(tmp_path / "u.db"),
    }
    s.stop()


def test_1000_queued_records_all_written_on_stop(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = make(db, flush_interval=3600.0)  # nothing flushes on its own during the test
    for _ in range(1000):
        assert s.submit(record())
    s.stop()
    assert rows(db) == 1000 and s.status()["queue_depth"] == 0


def test_thunks_run_on_the_writer_thread_and_failures_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def thunk() -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return record()

    s = make(tmp_path / "u.db")
    with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
        assert s.submit(thunk)
        assert s.submit(lambda: 1 / 0)  # broken thunks: counted, never kill the writer
        assert s.submit(lambda: 1 / 0)
        assert s.submit({"id": "x"})  # not a record (no timestamp)
        assert s.submit(record())
        s.stop()
    assert seen == ["fastproxy-usage-writer"]
    assert rows(tmp_path / "u.db") == 2 and s.record_errors == 3
    lines = [r for r in caplog.records if "could not be built" in r.getMessage()]
    assert len(lines) == 1  # once per kind


def test_items_for_the_builder_are_built_on_the_writer_thread(tmp_path: Path) -> None:
    """What the usage service queues: plain objects turned into records by ``build`` on
    the writer thread. A builder that raises (here: an item it cannot read) is counted;
    dict records and thunks still take their own paths."""
    seen: list[str] = []

    def build(item: tuple[str, str]) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return record(model_used=item[1])

    s = make(tmp_path / "u.db", build=build)
    assert s.submit(("capture", "built-model"))
    assert s.submit(("broken",))  # IndexError inside build: counted, the writer goes on
    assert s.submit(record(model_used="plain-dict"))
    assert s.submit(lambda: record(model_used="from-thunk"))
    s.stop()
    assert seen == ["fastproxy-usage-writer"] * 2 and s.record_errors == 1
    with sqlite3.connect(f"file:{tmp_path / 'u.db'}?mode=ro", uri=True) as conn:
        models = sorted(r[0] for r in conn.execute("SELECT model_used FROM usage"))
    assert models == ["built-model", "from-thunk", "plain-dict"]


def hold_the_writer(s: UsageStore) -> threading.Event:
    """Queue an item that keeps the writer inside its first batch until the returned event
    is set; return once the writer is there."""
    inside, release = threading.Event(), threading.Event()

    def blocker() -> dict[str, Any]:
        inside.set()
        release.wait(10)
        return record()

    s.submit(blocker)
    wait_until(inside.is_set, what="the writer inside the first batch")
    return release


def test_batches_are_one_transaction_each(tmp_path: Path) -> None:
    s = make(tmp_path / "u.db", batch_size=5, flush_interval=0.05)
    release = hold_the_writer(s)
    for _ in range(12):
        assert s.submit(record())
    assert s.status()["queue_depth"] == 13  # 12 queued + 1 in the writer's hands
    release.set()
    s.stop()
    assert rows(tmp_path / "u.db") == 13
    assert s.batches_written == 4  # [blocker], 5, 5, 2


def test_the_writer_yields_the_core_only_while_it_keeps_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Yields let a woken event loop in mid-batch (the c=1 tail latency); with a backlog
    of a batch or more they would starve the writer at saturation, so there are none."""
    queued_at_yield: list[int] = []
    s = make(tmp_path / "u.db", batch_size=100, flush_interval=0.05)
    monkeypatch.setattr(usage_store, "_yield", lambda: queued_at_yield.append(len(s._items)))
    release = hold_the_writer(s)
    for _ in range(450):  # a backlog of four and a half batches
        assert s.submit(record())
    release.set()
    s.stop()
    assert rows(tmp_path / "u.db") == 451
    assert queued_at_yield, "no yield at all"
    assert max(queued_at_yield) < 100  # never while a batch or more was waiting


def test_the_recorders_writer_naps_between_short_slices_only_while_it_keeps_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder's writer ("nap") sleeps a moment after each short slice of work, so a
    process woken on its core in another session waits at most a slice; never while a
    batch or more is waiting, and the callback hears when it falls behind and catches up."""
    naps: list[tuple[int, float]] = []  # (queued at the nap, seconds of work before it)
    flips: list[bool] = []
    s = make(
        tmp_path / "u.db",
        batch_size=100,
        flush_interval=0.05,
        courtesy="nap",
        on_backlog=lambda behind: flips.append(behind) or True,
    )

    def nap(seconds: float) -> None:
        naps.append((len(s._items), time.monotonic() - s._slice_at))
        time.sleep(seconds)

    monkeypatch.setattr(usage_store, "_nap", nap)
    release = hold_the_writer(s)
    for _ in range(450):  # a backlog of four and a half batches
        assert s.submit(record())
    release.set()
    wait_until(lambda: rows(tmp_path / "u.db") == 451, what="all 451 rows")
    s.stop()
    assert naps, "no nap at all"
    assert max(q for q, _ in naps) < 100  # never while a batch or more was waiting
    # Each nap ends a slice just past NAP_SLICE_S (one record or one INSERT of NAP_ROWS
    # rows later), not a whole batch of work.
    assert min(w for _, w in naps) >= usage_store.NAP_SLICE_S
    assert flips[:2] == [True, False], flips  # behind while the backlog lasted, then not


def test_a_writer_courtesy_must_be_one_it_knows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="courtesy"):
        UsageStore(
            tmp_path / "u.db", flush_interval=1, max_queue=10, retention_days=0, courtesy="spin"
        )


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    release = threading.Event()
    s = make(tmp_path / "u.db", max_queue=10, batch_size=1)
    s.submit(lambda: release.wait(10) and record())  # the writer is busy with this one
    wait_until(lambda: s.status()["queue_depth"] == 1 and not s._items)
    t = time.perf_counter()
    results = [s.submit(record()) for _ in range(1000)]
    elapsed = time.perf_counter() - t
    assert results.count(True) == 10 and results.count(False) == 990
    assert elapsed < 0.5  # never waits for the writer (about 1 µs per call)
    assert s.status()["dropped_records"] == 990
    release.set()
    s.stop()
    assert rows(tmp_path / "u.db") == 11
    assert s.submit(record()) is False  # after stop: refused and counted, not queued
    assert s.status()["dropped_records"] == 991


def test_stored_record_is_exactly_the_submitted_dict(tmp_path: Path) -> None:
    """The store adds nothing: no caller data beyond the record reaches the file."""
    secret, phrase = "sk-PLANTED-3f9a1c", "ocelot-marmalade-prompt"
    rec = record(user_agent="client/1.0", tool_names=["lookup"])
    context = {"authorization": f"Bearer {secret}", "messages": [{"content": phrase}]}

    def thunk() -> dict[str, Any]:
        assert context  # the closure holds request data, as the service's thunks do
        return rec

    db = tmp_path / "u.db"
    s = make(db)
    s.submit(thunk)
    s.submit(record(session_id=None, proxy_user="bob"))
    wait_until(lambda: s.rows_written == 2)
    live = b"".join(p.read_bytes() for p in tmp_path.glob("u.db*"))  # file, -wal, -shm
    s.stop()
    closed = b"".join(p.read_bytes() for p in tmp_path.glob("u.db*"))
    for blob in (live, closed):
        assert secret.encode() not in blob and phrase.encode() not in blob
    with sqlite3.connect(db) as conn:
        stored = [orjson.loads(r[0]) for r in conn.execute("SELECT record FROM usage_records")]
    assert stored[0] == rec


def test_a_newer_schema_is_refused_not_overwritten(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {usage_schema.VERSION + 1}")
    s = make(db)
    assert s.submit(record())
    wait_until(lambda: s.status()["write_errors"] >= 1)
    assert s.status()["usage_db"] == "degraded"
    s.stop(timeout=3)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == usage_schema.VERSION + 1


# The first store (schema version 1): one wide table; the JSON was first a column of it,
# then a table of its own keyed by id. Written here by hand, as those versions wrote it.
_V1_WIDE = """
CREATE TABLE usage (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
  day_of_week INTEGER NOT NULL, hour_of_day INTEGER NOT NULL, session_id TEXT,
  frontend_type TEXT, backend TEXT, backend_type TEXT, model_requested TEXT, model_used TEXT,
  streaming INTEGER NOT NULL DEFAULT 0, http_status_code INTEGER, outcome TEXT,
  proxy_user TEXT, ctp_prompt_tokens INTEGER, ptb_prompt_tokens INTEGER,
  btp_completion_tokens INTEGER, ptc_completion_tokens INTEGER, br_prompt INTEGER,
  br_completion INTEGER, br_total INTEGER, cost REAL, tool_call_count INTEGER NOT NULL DEFAULT 0,
  ttft_ms REAL, total_duration_ms REAL, proxy_overhead_ms REAL, stream_tps REAL{record});
CREATE INDEX usage_ts ON usage(ts);
CREATE INDEX usage_session ON usage(session_id);
"""
_V1_COLS = (
    "id",
    "ts",
    "day_of_week",
    "hour_of_day",
    "session_id",
    "frontend_type",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "streaming",
    "http_status_code",
    "outcome",
    "proxy_user",
    "ctp_prompt_tokens",
    "ptb_prompt_tokens",
    "btp_completion_tokens",
    "ptc_completion_tokens",
    "br_prompt",
    "br_completion",
    "br_total",
    "cost",
    "tool_call_count",
    "ttft_ms",
    "total_duration_ms",
    "proxy_overhead_ms",
    "stream_tps",
)


def _v1_db(path: Path, recs: list[dict[str, Any]], json_apart: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_V1_WIDE.format(record="" if json_apart else ", record TEXT NOT NULL"))
    if json_apart:
        conn.execute(
            "CREATE TABLE usage_record (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID"
        )
    for r in recs:
        dt = datetime.fromisoformat(r["timestamp"])
        br = r["backend_reported_usage"] or {}
        vals = [
            r["id"],
            dt.timestamp(),
            dt.weekday(),
            dt.hour,
            r["session_id"],
            r["frontend_type"],
            r["backend"],
            r["backend_type"],
            r["model_requested"],
            r["model_used"],
            int(r["streaming"]),
            r["http_status_code"],
            r["outcome"],
            r["proxy_user"],
            r["ctp_prompt_tokens"],
            r["ptb_prompt_tokens"],
            r["btp_completion_tokens"],
            r["ptc_completion_tokens"],
            br.get("prompt"),
            br.get("completion"),
            br.get("total"),
            r["cost"],
            r["tool_call_count"],
            r["ttft_ms"],
            r["total_duration_ms"],
            r["proxy_overhead_ms"],
            r["stream_tps"],
        ]
        cols = list(_V1_COLS)
        if json_apart:
            conn.execute("INSERT INTO usage_record VALUES (?, ?)", (r["id"], orjson.dumps(r)))
        else:
            cols.append("record")
            vals.append(orjson.dumps(r).decode())
        conn.execute(
            f"INSERT INTO usage ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", vals
        )
    conn.execute("PRAGMA user_version = 1")
    conn.close()


@pytest.mark.parametrize("json_apart", [False, True], ids=["json-column", "json-table"])
def test_version_1_file_is_migrated_in_place(tmp_path: Path, json_apart: bool) -> None:
    import random

    # Version 1 knew no API kind nor named keys: its records read back, and count, with
    # api, key_name and team null.
    recs = [
        {**r, "api": None, "key_name": None, "team": None}
        for r in _random_records(random.Random(7), 300)
    ]
    db = tmp_path / "u.db"
    _v1_db(db, recs, json_apart)
    s = make(db)
    new = record(timestamp="2025-11-05T12:00:00.000Z")
    s.submit(new)
    s.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == usage_schema.VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "usage_v1" not in tables and "usage_record" not in tables
    assert rows(db) == 301
    everything = [*recs, new]
    for q in (
        {},
        {"backend": ["openai.2"]},
        {"start_date": ["2025-11-03T05:30:00Z"], "end_date": ["2025-11-06"]},
        {"hour_of_day": ["4"]},
        {"outcome": ["client_aborted"]},
        {"http_status_code": ["none"]},
    ):
        f = parse_filters(q)
        assert_like_reference(s.stats(f), _reference(everything, f), q)
    oldest_first = sorted(everything, key=lambda r: r["timestamp"])
    exported = [r for page in s.export_pages(parse_filters({})) for r in page]
    assert [r["id"] for r in exported] == [r["id"] for r in oldest_first]
    assert exported[0] == oldest_first[0]


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_retention_removes_whole_old_days_and_keeps_rollups_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_store, "RETENTION_BATCH", 7)  # many small slices
    now = datetime.now(UTC)
    old = [
        record(
            timestamp=_iso(now - timedelta(days=40, hours=h * 1.7)), total_duration_ms=1000.0 + h
        )
        for h in range(40)
    ]
    keep = [
        record(timestamp=_iso(now - timedelta(days=d, minutes=7 * d)), total_duration_ms=float(d))
        for d in range(0, 25)
    ]
    db = tmp_path / "u.db"
    s = make(db)  # keep forever while loading
    for r in old + keep:
        s.submit(r)
    s.stop()
    assert rows(db) == 65
    s = make(db, retention_days=30)  # the first round prunes
    wait_until(lambda: rows(db) == 25, what="old rows removed")
    s.stop()
    for q in (
        {},
        {"hour_of_day": [str(now.hour)]},
        {"start_date": [_iso(now - timedelta(days=60))]},
    ):
        f = parse_filters(q)
        assert_like_reference(s.stats(f), _reference(keep, f), q)
    with sqlite3.connect(db) as conn:
        for table in ("usage_hourly", "usage_daily"):
            n, lo = conn.execute(f"SELECT SUM(n), MIN(min_ts) FROM {table}").fetchone()
            assert n == 25 and lo >= (now - timedelta(days=31)).timestamp()
        assert conn.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0] == 25


def test_a_later_step_runs_in_place_and_a_failing_one_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "u.db"
    s = make(db)
    for _ in range(3):
        s.submit(record())
    s.stop()
    nxt = usage_schema.VERSION + 1
    monkeypatch.setattr(usage_schema, "VERSION", nxt)
    monkeypatch.setitem(
        usage_schema.MIGRATIONS,
        nxt,
        "ALTER TABLE usage_requests ADD COLUMN region TEXT;\n"
        "CREATE INDEX broken ON no_such_table(x);\n",
    )
    with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
        s = make(db)
        assert s.submit(record())  # callers never see the schema
        wait_until(lambda: s.status()["write_errors"] >= 2)
        assert s.status()["usage_db"] == "degraded"
        s.stop(timeout=3)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == nxt - 1
        cols = [r[1] for r in conn.execute("PRAGMA table_info(usage_requests)")]
    assert "region" not in cols and rows(db) == 3  # the first statement was rolled back
    assert list(tmp_path.glob("u.db.corrupt-*")) == []  # a schema problem is not corruption
    assert sum("(open)" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setitem(
        usage_schema.MIGRATIONS,
        nxt,
        "ALTER TABLE usage_requests ADD COLUMN region TEXT;\n"
        "CREATE INDEX usage_requests_region ON usage_requests(region);\n",
    )
    s = make(db)
    s.submit(record())
    s.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == nxt
    assert rows(db) == 4 and s.status()["usage_db"] == "ok"


def test_queued_records_survive_an_exit_without_stop(tmp_path: Path) -> None:
    """An interpreter that ends without stop() still writes the queue (atexit)."""
    import subprocess
    import sys

    db = tmp_path / "u.db"
    code = (
        "import sys\n"
        "from fastproxy.storage.usage_store import UsageStore\n"
        "from tests.usage.test_store_queries import record\n"
        "s = UsageStore(sys.argv[1], flush_interval=3600.0, max_queue=5000, retention_days=0)\n"
        "s.start()\n"
        "assert all(s.submit(record()) for _ in range(2000))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert rows(db) == 2000


def test_a_record_that_cannot_be_inserted_does_not_block_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = usage_store.prepare

    def prepare(r: dict[str, Any]) -> Any:
        key, hour, row, text = real(r)
        if r["outcome"] == "poison":  # a value SQLite cannot bind: the batch fails on data
            row = (*row[:6], ["not", "bindable"], *row[7:])
        return key, hour, row, text

    monkeypatch.setattr(usage_store, "prepare", prepare)
    db = tmp_path / "u.db"
    s = make(db, flush_interval=3600.0)
    for i in range(10):
        s.submit(record(outcome="poison" if i == 4 else "ok"))
    s.stop()
    assert rows(db) == 9 and s.record_errors == 1
    assert s.status()["usage_db"] == "ok" and s.status()["write_errors"] == 0


def test_stray_values_are_stored_safely() -> None:
    key, _, row, _ = usage_schema.prepare(
        record(
            backend=7,
            http_status_code=200.0,
            ctp_prompt_tokens=2**62,
            ptb_prompt_tokens="12",
            btp_completion_tokens=3.0,
            cost=float("nan"),
            ttft_ms=float("inf"),
            streaming=True,
            backend_reported_usage=["not", "a", "dict"],
            tool_call_count=True,
        )
    )
    assert key[0] == "7" and row[1] == 200 and isinstance(row[1], int)
    assert row[7:11] == (None, None, 3, 5) and row[11:14] == (None, None, None)
    assert row[14] is None and row[15] == 0 and row[16] is None
