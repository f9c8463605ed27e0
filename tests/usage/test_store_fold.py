"""The recorder's store: rollups folded by the compiled `fold_rollups` (and its pure
twin), whole-batch statements, no yields. On real SQLite files: its rollups equal the SQL
fold's, and every stats figure equals the plain-Python reference."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fastproxy.storage import usage_queries
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_schema import prepare
from fastproxy.storage.usage_store import UsageStore
from tests.speedups.helpers import IMPLS, impl_module

from .test_store_queries import _random_query, _random_records, _reference, assert_like_reference


@pytest.fixture(params=IMPLS)
def fold_impl(request: pytest.FixtureRequest) -> ModuleType:
    return impl_module(request.param)


def _write(path: Path, recs: list[dict[str, Any]], **kw: Any) -> UsageStore:
    s = UsageStore(path, flush_interval=0.05, max_queue=len(recs) + 1, retention_days=0, **kw)
    s.start()
    for r in recs:
        assert s.submit(r)
    s.stop()
    assert s.rows_written == len(recs) and s.record_errors == 0
    return s


def _rollups(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
            for t in ("usage_hourly", "usage_daily")
        }


def test_the_folded_rollups_equal_the_sql_ones(fold_impl: ModuleType, tmp_path: Path) -> None:
    recs = _random_records(random.Random(7), 2500)
    _write(tmp_path / "sql.db", recs)
    _write(tmp_path / "fold.db", recs, fold=fold_impl.fold_rollups, courtesy="none", batch_size=700)
    sql, fold = _rollups(tmp_path / "sql.db"), _rollups(tmp_path / "fold.db")
    for table, want in sql.items():
        got = fold[table]
        assert len(got) == len(want) > 50
        for g, w in zip(got, want, strict=True):
            for a, b in zip(g, w, strict=True):
                # Float sums in another order may differ in the last bits; all else exact.
                assert a == (b if b is None or type(b) is int else pytest.approx(b, rel=1e-12))


@pytest.mark.parametrize("ratio", [1, 10**9], ids=["fetch-and-sort", "index-walk"])
def test_stats_from_folded_rollups_equal_a_plain_reference(
    fold_impl: ModuleType, tmp_path: Path, ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20251205)
    recs = _random_records(rng, 1500)
    store = _write(tmp_path / "u.db", recs, fold=fold_impl.fold_rollups, courtesy="none")
    monkeypatch.setattr(usage_queries, "NARROW_RATIO", ratio)
    for _ in range(40):
        q = _random_query(rng)
        f = parse_filters(q)
        assert_like_reference(store.stats(f), _reference(recs, f), q)


def test_a_batch_the_fold_refuses_is_written_item_by_item(
    fold_impl: ModuleType, tmp_path: Path
) -> None:
    """Two prompt counts that fit in 64 bits alone and not summed: the batch's fold raises
    OverflowError, the batch is written item by item, and no record is lost."""
    recs = [prepare(r) for r in _random_records(random.Random(3), 40)]
    key, hour, row, text = recs[17]
    recs[17] = recs[18] = (key, hour, (*row[:7], 2**62, *row[8:]), text)  # one group
    db = tmp_path / "u.db"
    s = UsageStore(
        db, flush_interval=0.05, max_queue=100, retention_days=0, fold=fold_impl.fold_rollups
    )
    s.start()
    for p in recs:
        assert s.submit(lambda p=p: p)
    s.stop()
    assert s.rows_written == 40 and s.record_errors == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT SUM(n) FROM usage_hourly").fetchone()[0] == 40
        assert conn.execute("SELECT MAX(ctp) FROM usage_hourly").fetchone()[0] >= 2**62
