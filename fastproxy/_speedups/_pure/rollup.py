"""Usage rollups of a batch of request rows, folded in one call (the usage writer's).

``fold_rollups(rows)`` takes the rows of one write batch as they are inserted into
``usage_requests`` (tuples in ``usage_schema.REQUEST_COLUMNS`` order: seq, ts, dim,
http_status_code, day_of_week, hour_of_day, session_id, streaming, outcome, the seven
token counts, cost, tool_call_count, the four timings, key_name, team; the last two are
not read) and returns ``(hourly, daily)``:
one tuple per group, groups in order of first appearance, ready to be upserted into
``usage_hourly`` / ``usage_daily``:

    hourly: (hour, dim, status, day_of_week, hour_of_day, *sums)
    daily:  (day, dim, status, day_of_week, *sums)

``hour``/``day`` are ``int(ts / 3600)`` / ``int(ts / 86400)`` (truncation toward zero,
as SQL's ``CAST(ts / 3600 AS INTEGER)``); day_of_week and hour_of_day are the group's
first row's. ``sums`` are ``usage_schema.SUMS``: the row count; the seven token sums
(None skipped; 0 when none); the cost's sum (a float, 0.0 when none) and count; the tool
calls' sum; the first and last ts; per timing its count, sum (0.0 when none), min and max
(None when none). Every float sum adds the rows in their order, so both implementations
give the same bits. Errors: a row that is not a 24-tuple is a ValueError, as is a ts
that is not finite; a value of the wrong type a TypeError; an integer or a sum outside
64 bits (or a ts whose hour is) an OverflowError.
"""

from __future__ import annotations

import math
from typing import Any

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_TS, _DIM, _STATUS, _DOW, _HOD = 1, 2, 3, 4, 5
_CTP, _COST, _TOOLS, _TIMING, _SIZE = 9, 16, 17, 18, 24


def _real(v: Any) -> float:
    if type(v) is float:
        return v
    if isinstance(v, int):
        return float(v)
    raise TypeError(f"a rollup value must be a number, not {type(v).__name__}")


def _int(v: Any) -> int:
    if isinstance(v, int):
        if not _I64_MIN <= v <= _I64_MAX:
            raise OverflowError("a rollup value does not fit in 64 bits")
        return int(v)
    raise TypeError(f"a rollup value must be an int, not {type(v).__name__}")


def _add(a: int, b: int) -> int:
    out = a + b
    if not _I64_MIN <= out <= _I64_MAX:
        raise OverflowError("a rollup sum does not fit in 64 bits")
    return out


def _unit(ts: float, unit_s: float) -> int:
    q = ts / unit_s
    if not math.isfinite(q):
        raise ValueError("a rollup row's ts is not a finite number")
    if not -9.2e18 < q < 9.2e18:
        raise OverflowError("a rollup row's ts is out of range")
    return int(q)


def _fold(rows: list[tuple[Any, ...]], unit_s: float, hourly: bool) -> list[tuple[Any, ...]]:
    groups: dict[tuple[int, int, int], list[Any]] = {}
    for row in rows:
        if type(row) is not tuple or len(row) != _SIZE:
            raise ValueError("a rollup row is a tuple of the request columns")
        ts = _real(row[_TS])
        unit = _unit(ts, unit_s)
        dim = _int(row[_DIM])
        status = _int(row[_STATUS])
        key = (unit, dim, status)
        g = groups.get(key)
        if g is None:
            # head, n, 7 sums, cost, cost_n, tools, min_ts, max_ts, then 4 x [n, sum, min, max]
            head: tuple[int, ...] = (unit, dim, status, _int(row[_DOW]))
            if hourly:
                head += (_int(row[_HOD]),)
            g = [head, 0, [0] * 7, 0.0, 0, 0, ts, ts, [[0, 0.0, None, None] for _ in range(4)]]
            groups[key] = g
        g[1] += 1
        if ts < g[6]:
            g[6] = ts
        if ts > g[7]:
            g[7] = ts
        sums = g[2]
        for k in range(7):
            v = row[_CTP + k]
            if v is not None:
                sums[k] = _add(sums[k], _int(v))
        v = row[_COST]
        if v is not None:
            g[3] += _real(v)
            g[4] += 1
        g[5] = _add(g[5], _int(row[_TOOLS]))
        for k, t in enumerate(g[8]):
            v = row[_TIMING + k]
            if v is None:
                continue
            x = _real(v)
            if t[0] == 0:
                t[2] = t[3] = x
            else:
                if x < t[2]:
                    t[2] = x
                if x > t[3]:
                    t[3] = x
            t[0] += 1
            t[1] += x
    return [
        (*g[0], g[1], *g[2], g[3], g[4], g[5], g[6], g[7], *(x for t in g[8] for x in t))
        for g in groups.values()
    ]


def fold_rollups(
    rows: list[tuple[Any, ...]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(hourly, daily) rollup rows of a batch of request rows (see the module's text)."""
    return _fold(rows, 3600.0, True), _fold(rows, 86400.0, False)
