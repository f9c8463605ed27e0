"""fold_rollups (the usage writer's batch rollups) on both implementations: the same bits
from both, and the same figures as the SQL fold it replaces, on a real SQLite file."""

from __future__ import annotations

import math
import random
import sqlite3
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy.storage.usage_schema import (
    DAILY_KEYS,
    HOURLY_KEYS,
    INSERT_REQUEST,
    ROLLUP_BATCH_DAILY,
    ROLLUP_BATCH_HOURLY,
    SUMS,
    UPSERT_DAILY,
    UPSERT_HOURLY,
    migrate,
)

from .helpers import FUZZ, core, other_impl, pure

T0 = 1_790_000_000.0


def request_row(rng: random.Random, seq: int, span_s: float = 3 * 86400) -> tuple[Any, ...]:
    ts = T0 + rng.random() * span_s
    tm = time.gmtime(ts)

    def opt_int() -> int | None:
        return None if rng.random() < 0.3 else rng.randint(0, 5000)

    def opt_real() -> float | None:
        return None if rng.random() < 0.3 else round(rng.random() * 900, 3)

    return (
        seq,
        ts,
        rng.randint(1, 4),
        rng.choice((0, 200, 200, 429, 500)),
        tm.tm_wday,
        tm.tm_hour,
        None if rng.random() < 0.2 else f"s{rng.randint(0, 9)}",
        rng.randint(0, 1),
        rng.choice(("ok", "backend_error", None)),
        *(opt_int() for _ in range(7)),
        None if rng.random() < 0.4 else rng.random() / 100,
        rng.randint(0, 3),
        *(opt_real() for _ in range(4)),
        rng.choice((None, "ci-bot")),  # key_name and team: carried, never folded
        rng.choice((None, "platform")),
    )


def rows_of(n: int, seed: int = 1) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    return [request_row(rng, i + 1) for i in range(n)]


def exact(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Floats by their bits, so -0.0/0.0 and the last ulp count."""
    return [tuple(v.hex() if type(v) is float else v for v in r) for r in rows]


def test_both_implementations_give_the_same_bits(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    for seed in range(20):
        rows = rows_of(random.Random(seed).randint(0, 700), seed)
        mine, theirs = speedups_impl.fold_rollups(rows), other.fold_rollups(rows)
        assert exact(mine[0]) == exact(theirs[0]) and exact(mine[1]) == exact(theirs[1])


def test_groups_in_order_of_first_appearance_with_the_first_rows_hour_fields(
    speedups_impl: ModuleType,
) -> None:
    none4 = (None, None, None, None)
    a = (
        1,
        T0,
        2,
        200,
        3,
        5,
        None,
        0,
        "ok",
        10,
        None,
        5,
        None,
        None,
        None,
        None,
        0.5,
        1,
        7.0,
        *none4[1:],
        "ci-bot",
        "platform",
    )
    b = (2, T0 + 7200, 1, 200, 3, 7, None, 0, "ok", *([None] * 7), None, 0, *none4, None, None)
    c = (
        3,
        T0 + 1,
        2,
        200,
        3,
        5,
        None,
        0,
        "ok",
        2,
        4,
        None,
        None,
        None,
        None,
        None,
        0.25,
        2,
        3.0,
        *none4[1:],
        None,
        None,
    )
    hourly, daily = speedups_impl.fold_rollups([a, b, c])
    h0 = int(T0 / 3600)
    assert [r[:5] for r in hourly] == [(h0, 2, 200, 3, 5), (h0 + 2, 1, 200, 3, 7)]
    assert hourly[0][5:] == (
        2, 12, 4, 5, 0, 0, 0, 0, 0.75, 2, 3, T0, T0 + 1,
        2, 10.0, 3.0, 7.0, 0, 0.0, None, None, 0, 0.0, None, None, 0, 0.0, None, None,
    )  # fmt: skip
    assert hourly[1][5:18] == (1, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, T0 + 7200, T0 + 7200)
    assert [r[:4] for r in daily] == [(int(T0 / 86400), 2, 200, 3), (int(T0 / 86400), 1, 200, 3)]
    assert len(hourly[0]) == len(HOURLY_KEYS) + len(SUMS)
    assert len(daily[0]) == len(DAILY_KEYS) + len(SUMS)
    assert speedups_impl.fold_rollups([]) == ([], [])


def test_the_unit_truncates_toward_zero_like_the_sql_cast(speedups_impl: ModuleType) -> None:
    row = (1, -5400.0, 1, 0, 3, 22, None, 0, None, *([None] * 8), 0, *([None] * 6))
    hourly, daily = speedups_impl.fold_rollups([row])
    assert hourly[0][0] == -1 and daily[0][0] == 0  # int(-1.5), int(-0.0625)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({1: "x"}, TypeError),
        ({1: math.inf}, ValueError),
        ({1: math.nan}, ValueError),
        ({1: 1e300}, OverflowError),
        ({2: 1.0}, TypeError),
        ({9: 2**64}, OverflowError),
        ({17: "3"}, TypeError),
        ({18: "1.0"}, TypeError),
        ({16: [1.0]}, TypeError),
    ],
)
def test_bad_values_raise_the_same_errors(
    speedups_impl: ModuleType, change: dict[int, Any], error: type[Exception]
) -> None:
    row = list(rows_of(1)[0])
    for i, v in change.items():
        row[i] = v
    with pytest.raises(error):
        speedups_impl.fold_rollups([tuple(row)])


def test_a_sum_beyond_64_bits_raises(speedups_impl: ModuleType) -> None:
    row = list(rows_of(1)[0])
    row[9] = 2**62
    with pytest.raises(OverflowError):
        speedups_impl.fold_rollups([tuple(row)] * 2)


@pytest.mark.parametrize("bad", [(1, 2), [0] * 24, (0,) * 22, None])
def test_a_row_that_is_not_a_request_row_is_refused(speedups_impl: ModuleType, bad: Any) -> None:
    with pytest.raises(ValueError):
        speedups_impl.fold_rollups([bad])


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    return conn


def _table(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()


def _close(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for va, vb in zip(ra, rb, strict=True):
            if type(va) is float or type(vb) is float:
                # Sums of floats in another order may differ in the last bits.
                assert va == pytest.approx(vb, rel=1e-12, abs=1e-12)
            else:
                assert va == vb


def test_upserts_of_the_fold_equal_the_sql_fold_over_many_batches(
    speedups_impl: ModuleType, tmp_path: Path
) -> None:
    rows = rows_of(3000, seed=5)
    sql, fold = _db(tmp_path / "sql.db"), _db(tmp_path / "fold.db")
    for conn in (sql, fold):
        conn.executemany("INSERT INTO usage_dims (dim) VALUES (?)", [(d,) for d in range(1, 5)])
    for lo in range(0, len(rows), 437):
        batch = rows[lo : lo + 437]
        sql.executemany(INSERT_REQUEST, batch)
        sql.execute(ROLLUP_BATCH_HOURLY, (batch[0][0], batch[-1][0] + 1))
        sql.execute(ROLLUP_BATCH_DAILY, (batch[0][0], batch[-1][0] + 1))
        fold.executemany(INSERT_REQUEST, batch)
        hourly, daily = speedups_impl.fold_rollups(batch)
        fold.executemany(UPSERT_HOURLY, hourly)
        fold.executemany(UPSERT_DAILY, daily)
    for table in ("usage_hourly", "usage_daily"):
        _close(_table(fold, table), _table(sql, table))
        assert len(_table(fold, table)) > 20


rows_strategy = st.lists(
    st.tuples(
        st.floats(-1e11, 1e11, allow_nan=False),
        st.integers(-3, 3),
        st.sampled_from((0, 200, 404)),
        st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), min_size=7, max_size=7),
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-9, 9)),
        st.integers(0, 2**20),
        st.lists(st.one_of(st.none(), st.floats(-1e9, 1e9), st.just(-0.0)), min_size=4, max_size=4),
    ).map(
        lambda t: (0, t[0], t[1], t[2], 0, 0, None, 0, None, *t[3], t[4], t[5], *t[6], None, None)
    ),
    max_size=60,
)


@FUZZ
@given(rows=rows_strategy)
def test_both_implementations_agree_on_any_rows(rows: list[tuple[Any, ...]]) -> None:
    if core is None:
        pytest.skip("the compiled core is not built")
    assert [exact(x) for x in core.fold_rollups(rows)] == [
        exact(x) for x in pure.fold_rollups(rows)
    ]
