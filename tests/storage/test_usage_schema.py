"""Schema versioning of the usage database (PRAGMA user_version), through the real store.

The store migrates in place when it opens a file. These tests write files by hand at
version 0 and at a version newer than the code, open them with UsageStore, and check two
things. A version-0 file that already holds someone else's table is brought up to date
around it. A file the code cannot migrate is left exactly as it was, and is never moved
aside as if it were corrupt. Those two name no table of the layout, so they hold for any
schema version. Files of versions 2 and 3 are written as those versions wrote them
(`old_file`) and must come out at the current version with every figure intact; version
1 is tested with the writer (tests/usage).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import Projector
from fastproxy.monitor.usage_service import UsageCapture
from fastproxy.storage import usage_schema
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.support.waiting import wait_until
from tests.usage.test_prepare_values import _rec
from tests.usage.test_store_queries import _reference, assert_like_reference, record


def open_store(path: Path) -> UsageStore:
    s = UsageStore(path, flush_interval=0.05, max_queue=1000, retention_days=0)
    s.start()
    return s


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_version_0_file_is_migrated_in_place(tmp_path: Path) -> None:
    # A version-0 file that already holds something of the operator's: migration adds the
    # usage schema around it and touches nothing else.
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE operator_notes (note TEXT)")
        conn.execute("INSERT INTO operator_notes VALUES ('keep me')")
    assert user_version(db) == 0

    s = open_store(db)
    s.submit(record())
    s.stop()

    assert user_version(db) == usage_schema.VERSION
    assert count(db, "operator_notes") == 1  # the operator's table is untouched
    assert s.count(parse_filters({})) == 1  # the record went in and reads back
    assert s.status()["usage_db"] == "ok" and s.write_errors == 0
    assert list(tmp_path.glob("u.db.corrupt-*")) == []


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    # A file written by a newer fastproxy: this one must neither write into it nor
    # mistake it for garbage and move it aside.
    db = tmp_path / "u.db"
    s = open_store(db)
    s.submit(record())
    s.stop()
    newer = usage_schema.VERSION + 5
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    before = db.read_bytes()

    s = open_store(db)
    assert s.submit(record())  # traffic is never refused because of the schema
    wait_until(lambda: s.status()["write_errors"] >= 1, what="the refusal to be counted")
    assert s.status()["usage_db"] == "degraded"
    s.stop(timeout=5)

    assert user_version(db) == newer
    assert db.read_bytes() == before  # not one byte written, the queued record included
    assert list(tmp_path.glob("u.db.corrupt-*")) == []


def old_file(path: Path, version: int, items: list[dict[str, Any] | tuple[Any, ...]]) -> None:
    """A usage database as versions 2 and 3 wrote it: version 2's tables (the layout the
    later migrations start from, kept as ``usage_schema._DDL_V2``), dims of six strings,
    both rollups folded by the writer's own statements, and each record as those versions
    stored it: a dict as a JSON object, a projector's values (version 3 only) as a compact
    format-1 array, which had no ``api``, ``key_name`` or ``team``. (Version 4 files are
    written from their own CREATE statements: tests/keys/test_migration.py.)"""
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in usage_schema._DDL_V2:
        conn.execute(stmt)
    conn.execute("BEGIN")
    dims: dict[tuple[Any, ...], int] = {}
    for seq, item in enumerate(items, 1):
        if isinstance(item, dict):
            rec, text = item, orjson.dumps(item).decode()
        else:
            assert version == 3 and item[-3:] == (None,) * 3  # no api before version 4
            rec = usage_schema.record_from_values(item)
            text = orjson.dumps([1, *item[:-3]]).decode()
        key, _hour, row, _ = usage_schema.prepare(rec)
        dim = dims.get(key[:6])
        if dim is None:
            dim = dims[key[:6]] = conn.execute(
                "INSERT INTO usage_dims (backend, backend_type, frontend_type, model_requested, "
                "model_used, proxy_user) VALUES (?, ?, ?, ?, ?, ?)",
                key[:6],
            ).lastrowid
        conn.execute(
            f"INSERT INTO usage_requests ({', '.join(usage_schema._REQUEST_COLUMNS_V2)}) "
            f"VALUES ({', '.join('?' for _ in usage_schema._REQUEST_COLUMNS_V2)})",
            (seq, row[0], dim, *row[1:-2]),
        )
        conn.execute(usage_schema.INSERT_RECORD, (seq, text))
    conn.execute(usage_schema.ROLLUP_BATCH_HOURLY, (1, len(items) + 1))
    conn.execute(usage_schema.ROLLUP_BATCH_DAILY, (1, len(items) + 1))
    conn.execute("COMMIT")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_a_version_2_file_takes_compact_records_beside_its_own(tmp_path: Path) -> None:
    # Version 3 added the compact array form of a stored record, version 4 the dims'
    # api and outcome. A version-2 file (records as JSON objects) is brought to the
    # current version, and its old records read back beside the new compact ones, oldest
    # first, with the fields added since then null.
    db = tmp_path / "u.db"
    old = record(timestamp="2025-11-30T10:00:00.000Z")
    for added in ("api", "key_name", "team"):  # version 2 knew no API kind, no named keys
        del old[added]
    old_file(db, 2, [old])

    projector = Projector(PriceTable({}))
    capture = UsageCapture.take(_rec(True, None, 1_764_500_000.25), True)
    s = open_store(db)
    s.submit(lambda: projector.prepared(capture))
    s.stop()

    assert user_version(db) == usage_schema.VERSION == 5
    with sqlite3.connect(db) as conn:
        texts = [r[0] for r in conn.execute("SELECT record FROM usage_records ORDER BY seq")]
    assert texts[0].startswith("{") and texts[1].startswith("[3,")
    pages = [r for page in s.export_pages(parse_filters({})) for r in page]
    assert pages[0] == {**old, "api": None, "key_name": None, "team": None}
    new = pages[1]
    assert tuple(new) == usage_schema.RECORD_KEYS
    assert new["timestamp"] == "2025-11-30T10:53:20.250Z" and new["streaming"] is True
    assert new["backend_reported_usage"] is None and new["proxy_user"] == "alice"
    assert new["ctp_prompt_tokens"] and new["session_id"] and new["api"] == "chat"


def _values(outcome: str, status: int, wall: float) -> tuple[Any, ...]:
    """What a version-3 gateway's projector made of a request: the values without api
    (nor key_name and team, which came later)."""
    rec = _rec(True, None, wall)
    rec.outcome, rec.status = outcome, status
    values = Projector(PriceTable({})).values(UsageCapture.take(rec, True), int(wall * 1000))
    return (*values[:-3], None, None, None)


def test_a_version_3_file_gets_api_and_outcome_dims(tmp_path: Path) -> None:
    """Version 4 files every row's outcome in its dim. A version-3 dim holds rows of
    several outcomes: its most frequent stays with it, the others move to new dims, and
    the rollups are computed again. Stats, filters and exports then agree with the rows,
    and the old records read back with ``api`` null."""
    db = tmp_path / "u.db"
    t0 = 1_764_590_400.0  # 2025-12-01T12:00:00Z
    dicts = []
    for i in range(30):
        outcome, status = (
            ("client_aborted", None)
            if i % 10 == 3
            else ("truncated", 200)
            if i % 10 == 7
            else ("ok", 200)
        )
        r = record(
            timestamp=f"2025-12-01T1{i % 10}:{i:02d}:00.000Z",
            outcome=outcome,
            http_status_code=status,
            total_duration_ms=float(i + 1),
        )
        for added in ("api", "key_name", "team"):
            del r[added]
        dicts.append(r)
    compact = [_values("client_aborted", 0, t0 + i) for i in range(4)]
    compact += [_values("ok", 200, t0 + 10 + i) for i in range(6)]
    old_file(db, 3, [*dicts, *compact])

    s = open_store(db)
    s.submit(
        lambda: Projector(PriceTable({})).prepared(
            UsageCapture.take(_rec(False, None, t0 + 3600), True)
        )
    )
    s.stop()

    assert user_version(db) == usage_schema.VERSION
    with sqlite3.connect(db) as conn:
        # Every row's dim carries the row's own outcome; no old dim has an API kind.
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM usage_requests r JOIN usage_dims d "
                "USING (dim) WHERE r.outcome IS NOT d.outcome"
            ).fetchone()[0]
            == 0
        )
        assert conn.execute(
            "SELECT api, COUNT(*) FROM usage GROUP BY api ORDER BY api"
        ).fetchall() == [(None, 40), ("chat", 1)]
    exported = [r for page in s.export_pages(parse_filters({})) for r in page]
    assert len(exported) == 41 and all(tuple(r) == usage_schema.RECORD_KEYS for r in exported)
    assert [r["api"] for r in exported].count(None) == 40
    old_compact = [r for r in exported if r["user_agent"] is None and r["api"] is None]
    assert len(old_compact) == 10
    assert sum(r["http_status_code"] is None for r in old_compact) == 4
    for q in (
        {},
        {"outcome": ["client_aborted"]},
        {"outcome": ["truncated"]},
        {"http_status_code": ["none"]},
        {"api": ["chat"]},
        {"outcome": ["ok"], "start_date": ["2025-12-01T12:30:00Z"]},
    ):
        f = parse_filters(q)
        assert_like_reference(s.stats(f), _reference(exported, f), q)
    stats = s.stats(parse_filters({}))
    assert stats["outcome_counts"] == {"client_aborted": 7, "ok": 31, "truncated": 3}
    assert stats["status_code_counts"] == {"200": 34, "none": 7}
    assert set(stats["by_api"]) == {"(none)", "chat"}
