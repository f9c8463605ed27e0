"""Usage queries: the read connection, stats and counts (recent and export pages are in
usage_export.py). Functions over one read connection.

They run in a worker thread (the views use asyncio.to_thread), never on the event loop.
Each function reads inside one read transaction, so the rollup, the rows and the counts
it combines come from the same snapshot while the writer commits beside it.

How stats stays under a second on a million rows (docs/usage-storage.md has figures):
- Counts and sums come from ``usage_hourly`` for the whole hours of the range, and from
  rows only for the partial hours at its two edges.
- A nearest-rank percentile (rank = ceil(p * n)) of a broad selection is one walk of
  that timing column's covering index with OFFSET, from the nearer end: no sort, no
  table access, and p95/p99 walk only the top 5 % / 1 %.
- A narrow selection (a session, a short range, a rare model) is cheaper to fetch and
  sort in Python: its rows are found through the time or session index.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .usage_filters import (
    FILTER_PARAMS,
    LEGS,
    FilterError,
    Filters,
    common_terms,
    dim_query,
    parse_filters,
    parse_int,
    raw_terms,
    time_terms,
    where,
)
from .usage_kinds import NO_STATUS
from .usage_schema import ROLLUP_SUMS_SQL, SUMS_SQL, TIMINGS, VERSION

__all__ = [
    "FILTER_PARAMS",
    "LEGS",
    "FilterError",
    "Filters",
    "Snapshot",
    "count",
    "count_in",
    "open_reader",
    "parse_filters",
    "parse_int",
    "selected_dims",
    "spend",
    "stats",
]

# A selection matching fewer than 1/NARROW_RATIO of all rows is fetched and sorted in
# Python; a broader one is walked in the covering indexes (measured: bench/usage_db).
NARROW_RATIO = 12
PERCENTILES = (50, 95, 99)
NONE_KEY = "(none)"  # by_* / outcome_counts key for records without that value
# The unit each timing column's summary names in its keys (min_ms, ..., or min_tps, ...).
UNITS = {"ttft_ms": "ms", "total_duration_ms": "ms", "proxy_overhead_ms": "ms", "stream_tps": "tps"}

# One aggregate row per (dim, status), the sums of usage_schema.SUMS in that order.
_RAW_AGG = f"dim, http_status_code, {SUMS_SQL}"
_ROLLUP_AGG = f"dim, http_status_code, {ROLLUP_SUMS_SQL}"
N, CTP, PTB, BTP, PTC, BRP, BRC, BRT, COST, COST_N, TOOLS, MIN_TS, MAX_TS = range(13)
TIMING_AT = {c: 13 + 4 * i for i, c in enumerate(TIMINGS)}  # count, sum, min, max
_MINS = {MIN_TS} | {TIMING_AT[c] + 2 for c in TIMINGS}
_MAXS = {MAX_TS} | {TIMING_AT[c] + 3 for c in TIMINGS}
_INF = float("inf")
_ROLLUPS = {"hour": "usage_hourly", "day": "usage_daily"}

Groups = dict[tuple[int, int], list[Any]]
_NO_NAMES: tuple[None, ...] = (None,) * 6


# Read connections map the file: a stats call opens a fresh connection, and mapping spares
# copying every page into that connection's cache. Safe because the file never shrinks
# under a reader (no VACUUM, no auto_vacuum; a bad file is renamed, never truncated).
_READ_MMAP = 1 << 30


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for one query or one export (any thread, one at a time)."""
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None, check_same_thread=False
    )
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != VERSION:
            raise sqlite3.DatabaseError(
                f"{path} has usage schema version {version}; this fastproxy reads {VERSION} "
                "(the gateway migrates the file when it starts)"
            )
        conn.execute(f"PRAGMA mmap_size={_READ_MMAP}")
        conn.execute("PRAGMA query_only=1")
    except BaseException:
        conn.close()
        raise
    return conn


class Snapshot:
    """One read transaction: every query inside sees the same committed state."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more


def selected_dims(conn: sqlite3.Connection, f: Filters) -> list[int] | None:
    q = dim_query(f)
    return None if q is None else [r[0] for r in conn.execute(q[0], q[1])]


def _merge(groups: Groups, rows: Iterator[tuple[Any, ...]]) -> None:
    for dim, code, *vals in rows:
        acc = groups.get((dim, code))
        if acc is None:
            groups[(dim, code)] = vals
            continue
        for i, v in enumerate(vals):
            if v is None:
                continue
            if i in _MINS:
                acc[i] = v if acc[i] is None else min(acc[i], v)
            elif i in _MAXS:
                acc[i] = v if acc[i] is None else max(acc[i], v)
            else:
                acc[i] += v


def _segments(f: Filters) -> list[tuple[str, float, float, bool]]:
    """Split the date range into (source, lo, hi, hi_exclusive) pieces: whole days from
    usage_daily, whole hours around them from usage_hourly, the partial hours at the two
    edges from the rows. An hour_of_day filter skips the daily level (a day row mixes
    hours). Open sides are infinite."""
    s, e = f.start, f.end
    h1 = -_INF if s is None else math.ceil(s / 3600) * 3600.0
    h2 = _INF if e is None else math.floor(e / 3600) * 3600.0
    if h1 >= h2:  # no whole hour inside: the rows alone
        assert s is not None and e is not None
        return [("raw", s, e, f.end_exclusive)]
    out = []
    if s is not None and s < h1:
        out.append(("raw", s, h1, True))
    if e is not None and (h2 < e or not f.end_exclusive):
        out.append(("raw", h2, e, f.end_exclusive))
    d1 = -_INF if s is None else math.ceil(s / 86400) * 86400.0
    d2 = _INF if e is None else math.floor(e / 86400) * 86400.0
    if f.hour_of_day is not None or d1 >= d2:
        return [*out, ("hour", h1, h2, True)]
    if h1 < d1:
        out.append(("hour", h1, d1, True))
    if d2 < h2:
        out.append(("hour", d2, h2, True))
    return [*out, ("day", d1, d2, True)]


def _aggregate(
    conn: sqlite3.Connection, f: Filters, dims: list[int] | None, only_count: bool = False
) -> Groups:
    """Counts and sums per (dim, status) over the selection; with ``only_count``, just
    the count, as groups[(0, 0)][N] (what /recent and /export need)."""
    groups: Groups = {}
    if dims == []:
        return groups
    raw_agg = "0, 0, COUNT(*)" if only_count else _RAW_AGG
    roll_agg = "0, 0, SUM(n)" if only_count else _ROLLUP_AGG
    group_by = "" if only_count else " GROUP BY dim, http_status_code"
    if f.session_id is not None:  # sessions are not in the rollups; they are selective
        terms, args = raw_terms(f, dims)
        _merge(
            groups,
            conn.execute(
                f"SELECT {raw_agg} FROM usage_requests INDEXED BY usage_requests_session"
                f"{where(terms)}{group_by}",
                args,
            ),
        )
        return groups
    for source, lo, hi, hi_exclusive in _segments(f):
        terms, args = common_terms(f, dims)
        if source == "raw":
            t_terms, t_args = time_terms(lo, hi, hi_exclusive)
            sql = (
                f"SELECT {raw_agg} FROM usage_requests INDEXED BY usage_requests_ts"
                f"{where(terms + t_terms)}{group_by}"
            )
            args += t_args
        else:
            unit = 3600 if source == "hour" else 86400
            for bound, op in ((lo, ">="), (hi, "<")):
                if math.isfinite(bound):
                    terms.append(f"{source} {op} ?")
                    args.append(int(bound // unit))
            sql = f"SELECT {roll_agg} FROM {_ROLLUPS[source]}{where(terms)}{group_by}"
        _merge(groups, (r for r in conn.execute(sql, args) if r[2]))
    return groups


def _total_rows(conn: sqlite3.Connection) -> int:
    # Two subqueries: SQLite answers a lone MIN or MAX of the key from the b-tree's end,
    # but scans the whole table for both in one SELECT.
    lo, hi = conn.execute(
        "SELECT (SELECT MIN(seq) FROM usage_requests), (SELECT MAX(seq) FROM usage_requests)"
    ).fetchone()
    return 0 if lo is None else hi - lo + 1


def _summary(
    col: str, n: int, vmin: float, vmax: float, total: float, ranks: dict[int, float]
) -> dict[str, Any]:
    u = UNITS[col]  # every key names the unit of its value
    return {
        "count": n,
        f"min_{u}": round(vmin, 3),
        f"max_{u}": round(vmax, 3),
        f"avg_{u}": round(total / n, 3),
        **{f"p{p}_{u}": round(ranks[p], 3) for p in PERCENTILES},
    }


def _rank(p: int, n: int) -> int:
    """Nearest rank, 1-based: ceil(p/100 * n) in integers (no float rounding)."""
    return max(1, (p * n + 99) // 100)


def _walk(
    conn: sqlite3.Connection, col: str, terms: list[str], args: list[Any], n: int
) -> dict[int, float] | None:
    """Percentiles by walking the column's covering index from the nearer end."""
    base = (
        f"SELECT {col} FROM usage_requests INDEXED BY usage_requests_{col} "
        f"WHERE {col} IS NOT NULL{''.join(' AND ' + t for t in terms)} ORDER BY {col}"
    )
    out: dict[int, float] = {}
    for p in PERCENTILES:
        r = _rank(p, n)
        if r - 1 <= n - r:
            row = conn.execute(base + " LIMIT 1 OFFSET ?", [*args, r - 1]).fetchone()
        else:
            row = conn.execute(base + " DESC LIMIT 1 OFFSET ?", [*args, n - r]).fetchone()
        if row is None:  # the rollup and the rows disagree: let the caller fetch instead
            return None
        out[p] = row[0]
    return out


def _fetch(
    conn: sqlite3.Connection, f: Filters, dims: list[int] | None
) -> tuple[int, dict[str, dict[str, Any] | None]]:
    """Distinct sessions and the four summaries from the selected rows themselves."""
    terms, args = raw_terms(f, dims)
    index = "usage_requests_session" if f.session_id is not None else "usage_requests_ts"
    rows = conn.execute(
        f"SELECT session_id, {', '.join(TIMINGS)} FROM usage_requests "
        f"INDEXED BY {index}{where(terms)}",
        args,
    ).fetchall()
    sessions = len({r[0] for r in rows} - {None})
    out: dict[str, dict[str, Any] | None] = {}
    for i, col in enumerate(TIMINGS, start=1):
        values = sorted(r[i] for r in rows if r[i] is not None)
        n = len(values)
        out[col] = (
            None
            if not n
            else _summary(
                col,
                n,
                values[0],
                values[-1],
                sum(values),
                {p: values[_rank(p, n) - 1] for p in PERCENTILES},
            )
        )
    return sessions, out


def _sessions(conn: sqlite3.Connection, terms: list[str], args: list[Any]) -> int:
    # The session index is in session order: GROUP BY needs no temporary b-tree.
    return conn.execute(
        "SELECT COUNT(*) FROM (SELECT session_id FROM usage_requests INDEXED BY "
        "usage_requests_session WHERE session_id IS NOT NULL"
        f"{''.join(' AND ' + t for t in terms)} GROUP BY session_id)",
        args,
    ).fetchone()[0]


def _group(
    acc: dict[str, Any], vals: list[Any], prompt: int | None, completion: int | None, code: int
) -> None:
    p = vals[prompt] if prompt is not None else 0
    c = vals[completion] if completion is not None else 0
    acc["request_count"] += vals[N]
    acc["total_prompt_tokens"] += p
    acc["total_completion_tokens"] += c
    acc["total_tokens"] += p + c
    acc["backend_reported_total_tokens"] += vals[BRT]
    acc["total_cost"] += vals[COST]
    acc["cost_record_count"] += vals[COST_N]
    acc["total_tool_calls"] += vals[TOOLS]
    if code >= 400 or code == 0:
        acc["error_count"] += vals[N]
    at = TIMING_AT["total_duration_ms"]
    acc["_dur_n"] += vals[at]
    acc["_dur_sum"] += vals[at + 1]


def _new_group() -> dict[str, Any]:
    return {
        "request_count": 0,
        "total_prompt_tokens": 0,
        "total_completion_tokens": 0,
        "total_tokens": 0,
        "backend_reported_total_tokens": 0,
        "total_cost": 0.0,
        "cost_record_count": 0,
        "total_tool_calls": 0,
        "error_count": 0,
        "_dur_n": 0,
        "_dur_sum": 0.0,
    }


def _finish(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(groups):
        g = groups[name]
        dur_n, dur_sum = g.pop("_dur_n"), g.pop("_dur_sum")
        g["total_cost"] = round(g["total_cost"], 10)
        g["avg_duration_ms"] = round(dur_sum / dur_n, 3) if dur_n else None
        out[name] = g
    return out


def stats(conn: sqlite3.Connection, f: Filters) -> dict[str, Any]:
    # The leg projects one token point; the other side is 0. Default: what crossed the
    # backend boundary (prompt sent to it, completion it produced).
    prompt, completion = {
        None: (PTB, BTP),
        "CTP": (CTP, None),
        "PTB": (PTB, None),
        "BTP": (None, BTP),
        "PTC": (None, PTC),
    }[f.leg]
    with Snapshot(conn):
        dims = selected_dims(conn, f)
        groups = _aggregate(conn, f, dims)
        # One group row (the value type of Groups): counts, sums, then min/max slots
        # that stay None until a value arrives, all read by position.
        total: list[Any] = [0] * 11 + [None, None] + [0, 0.0, None, None] * len(TIMINGS)
        _merge({(0, 0): total}, ((0, 0, *v) for v in groups.values()))
        n = total[N]
        timing: dict[str, dict[str, Any] | None] = dict.fromkeys(TIMINGS)
        sessions = 0
        if n and (f.session_id is not None or n * NARROW_RATIO <= _total_rows(conn)):
            sessions, timing = _fetch(conn, f, dims)
        elif n:
            terms, args = raw_terms(f, dims)
            sessions = _sessions(conn, terms, args)
            for col in TIMINGS:
                at = TIMING_AT[col]
                cn = total[at]
                if not cn:
                    continue
                ranks = _walk(conn, col, terms, args, cn)
                if ranks is None:
                    _, fetched = _fetch(conn, f, dims)
                    timing[col] = fetched[col]
                else:
                    timing[col] = _summary(
                        col, cn, total[at + 2], total[at + 3], total[at + 1], ranks
                    )
        names = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT dim, backend, COALESCE(model_used, model_requested), api, outcome, "
                "key_name, team FROM usage_dims"
            )
        }
    by_backend: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    by_api: dict[str, dict[str, Any]] = {}
    by_key: dict[str, dict[str, Any]] = {}
    by_team: dict[str, dict[str, Any]] = {}
    codes: dict[int, int] = {}
    outcomes: dict[str, int] = {}
    for (dim, code), vals in groups.items():
        backend, model, api, outcome, key_name, team = names.get(dim, _NO_NAMES)
        # Requests made with the plain api_keys list (or without auth) have no key name
        # or team: they are grouped under "(none)" like any other absent value.
        for table, key in (
            (by_backend, backend),
            (by_model, model),
            (by_api, api),
            (by_key, key_name),
            (by_team, team),
        ):
            name = NONE_KEY if key is None else str(key)
            _group(table.setdefault(name, _new_group()), vals, prompt, completion, code)
        codes[code] = codes.get(code, 0) + vals[N]
        name = NONE_KEY if outcome is None else str(outcome)
        outcomes[name] = outcomes.get(name, 0) + vals[N]
    # Status 0 is stored for a request that got no status: it is reported as "none",
    # after the real codes, never as a code "0".
    status_counts = {str(c): codes[c] for c in sorted(codes) if c}
    if 0 in codes:
        status_counts[NO_STATUS] = codes[0]
    p_tok = total[prompt] if prompt is not None else 0
    c_tok = total[completion] if completion is not None else 0
    dur_s = total[TIMING_AT["total_duration_ms"] + 1] / 1000.0
    # Throughput counts the completion as produced (or as relayed, under leg=PTC), even
    # when the leg projects the prompt side.
    tps_tokens = total[PTC] if f.leg == "PTC" else total[BTP]
    return {
        "request_count": n,
        "unique_sessions": sessions,
        "total_prompt_tokens": p_tok,
        "total_completion_tokens": c_tok,
        "total_tokens": p_tok + c_tok,
        "backend_reported_prompt_tokens": total[BRP],
        "backend_reported_completion_tokens": total[BRC],
        "backend_reported_total_tokens": total[BRT],
        "total_cost": round(total[COST], 10),
        "cost_record_count": total[COST_N],
        "total_tool_calls": total[TOOLS],
        "status_code_counts": status_counts,
        "outcome_counts": {k: outcomes[k] for k in sorted(outcomes)},
        "completion_tokens_per_second": round(tps_tokens / dur_s, 3) if dur_s > 0 else None,
        "time_window_seconds": round(total[MAX_TS] - total[MIN_TS], 3) if n else None,
        "ttft_stats": timing["ttft_ms"],
        "duration_stats": timing["total_duration_ms"],
        "proxy_overhead_stats": timing["proxy_overhead_ms"],
        # Tokens per second: its keys end in _tps where the others' end in _ms.
        "stream_tps_stats": timing["stream_tps"],
        "by_backend": _finish(by_backend),
        "by_model": _finish(by_model),
        "by_api": _finish(by_api),
        "by_key": _finish(by_key),
        "by_team": _finish(by_team),
        "filters": f.echo,
    }


# (requests, cost) of one key or team over one period.
Spend = tuple[int, float]


def spend(
    conn: sqlite3.Connection, month_day: int, today: int
) -> tuple[dict[str, dict[str, Spend]], dict[str, dict[str, Spend]]]:
    """Requests and cost of every named key and every team for the UTC month that began
    on day ``month_day`` and for the day ``today`` (days since the epoch): ({name: {"day":
    (n, cost), "month": (n, cost)}}, the same by team). Both periods are whole UTC days,
    so the daily rollup answers alone, a few rows per key and day whatever the traffic,
    with the same sums stats gives for ``key=``/``team=`` over the same dates."""
    keys: dict[str, dict[str, Spend]] = {}
    teams: dict[str, dict[str, Spend]] = {}
    zero: Spend = (0, 0.0)
    with Snapshot(conn):
        rows = conn.execute(
            "SELECT d.key_name, d.team, r.day >= ?, SUM(r.n), TOTAL(r.cost) "
            "FROM usage_daily r JOIN usage_dims d ON d.dim = r.dim "
            "WHERE r.day >= ? AND (d.key_name IS NOT NULL OR d.team IS NOT NULL) "
            "GROUP BY 1, 2, 3",
            (today, month_day),
        ).fetchall()
    for key_name, team, is_today, n, cost in rows:
        for table, name in ((keys, key_name), (teams, team)):
            if name is None:
                continue
            acc = table.setdefault(name, {"day": zero, "month": zero})
            for period in ("month", "day") if is_today else ("month",):
                had_n, had_cost = acc[period]
                acc[period] = (had_n + n, had_cost + cost)
    return keys, teams


def count_in(conn: sqlite3.Connection, f: Filters, dims: list[int] | None) -> int:
    """The number of selected records (inside the caller's snapshot)."""
    return sum(v[N] for v in _aggregate(conn, f, dims, only_count=True).values())


def count(conn: sqlite3.Connection, f: Filters) -> int:
    with Snapshot(conn):
        return count_in(conn, f, selected_dims(conn, f))
