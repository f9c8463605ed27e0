"""Usage queries: filters, stats, recent, export. Pure functions over a read connection.

They run in a worker thread (the views use asyncio.to_thread), never on the event loop.
Aggregates are SQL; percentiles are nearest-rank over the sorted non-null values of one
column (rank = ceil(p * n)).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


class FilterError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


_TEXT = ("backend_type", "backend", "frontend_type", "session_id", "proxy_user")
_FEW_VALUES = frozenset({"backend_type", "backend", "frontend_type"})
LEGS = ("CTP", "PTB", "BTP", "PTC")
FILTER_PARAMS = frozenset(
    (*_TEXT, "model", "leg", "http_status_code", "start_date", "end_date", "day_of_week",
     "hour_of_day")
)


@dataclass(slots=True)
class Filters:
    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    echo: dict[str, Any] = field(default_factory=dict)
    leg: str | None = None

    def clause(self) -> str:
        return (" WHERE " + " AND ".join(self.where)) if self.where else ""


def _date(param: str, value: str, end: bool) -> float:
    try:
        if len(value) == 10:  # a plain date: the whole day for end_date
            day = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return (day + timedelta(days=1)).timestamp() - 1e-6 if end else day.timestamp()
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(param, f"{value!r} is not an ISO-8601 date or date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive = UTC, as documented
    return dt.timestamp()


def parse_int(param: str, value: str, lo: int, hi: int) -> int:
    """An integer query value in lo..hi, or a FilterError naming the parameter."""
    try:
        n = int(value)
    except ValueError:
        raise FilterError(param, f"{value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise FilterError(param, f"{n} is out of range {lo}..{hi}")
    return n


def parse_filters(query: Mapping[str, list[str]], allowed_extra: frozenset[str] = frozenset()) -> Filters:
    f = Filters()
    for param in query:
        if param not in FILTER_PARAMS and param not in allowed_extra:
            raise FilterError(param, "unknown parameter")
    for param in _TEXT:
        if param in query:
            # Columns with a handful of values (backend type, backend, dialect) match a
            # large share of rows: a sequential scan beats an index lookup per row, and
            # the unary + keeps SQLite's planner from choosing the index.
            column = f"+{param}" if param in _FEW_VALUES else param
            f.where.append(f"{column} = ?")
            f.args.append(query[param][-1])
            f.echo[param] = query[param][-1]
    if "model" in query:
        model = query["model"][-1]
        f.where.append("(model_requested = ? OR model_used = ?)")
        f.args += [model, model]
        f.echo["model"] = model
    if "leg" in query:
        leg = query["leg"][-1].upper()
        if leg not in LEGS:
            raise FilterError("leg", f"{query['leg'][-1]!r} is not one of {', '.join(LEGS)}")
        f.leg = f.echo["leg"] = leg
    if "http_status_code" in query:
        code = parse_int("http_status_code", query["http_status_code"][-1], 100, 599)
        f.where.append("+http_status_code = ?")
        f.args.append(code)
        f.echo["http_status_code"] = code
    for param, column, hi in (("day_of_week", "day_of_week", 6), ("hour_of_day", "hour_of_day", 23)):
        if param in query:
            n = parse_int(param, query[param][-1], 0, hi)
            f.where.append(f"{column} = ?")
            f.args.append(n)
            f.echo[param] = n
    start = end = None
    if "start_date" in query:
        start = _date("start_date", query["start_date"][-1], end=False)
        f.where.append("ts >= ?")
        f.args.append(start)
        f.echo["start_date"] = query["start_date"][-1]
    if "end_date" in query:
        end = _date("end_date", query["end_date"][-1], end=True)
        f.where.append("ts <= ?")
        f.args.append(end)
        f.echo["end_date"] = query["end_date"][-1]
    if start is not None and end is not None and end < start:
        raise FilterError("end_date", "is before start_date")
    return f


def _points(leg: str | None) -> tuple[str, str]:
    """SQL for (prompt, completion) under a leg projection. Default: the tokens that
    crossed the backend boundary (PTB prompt, BTP completion); a leg selects one point
    and zeroes the other side, so no record is ever counted twice."""
    return {
        None: ("ptb_prompt_tokens", "btp_completion_tokens"),
        "CTP": ("ctp_prompt_tokens", "0"),
        "PTB": ("ptb_prompt_tokens", "0"),
        "BTP": ("0", "btp_completion_tokens"),
        "PTC": ("0", "ptc_completion_tokens"),
    }[leg]


_TIMING_COLUMNS = ("ttft_ms", "total_duration_ms", "proxy_overhead_ms", "stream_tps")


def _timing_stats(conn: sqlite3.Connection, f: Filters) -> dict[str, dict[str, Any] | None]:
    """Nearest-rank summaries of the four timing columns: a narrow scan per column and a
    C-level list sort (SQL ORDER BY per column measured slower)."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in _TIMING_COLUMNS:
        where = f.clause() + (" AND " if f.where else " WHERE ") + f"{name} IS NOT NULL"
        values = [r[0] for r in conn.execute(f"SELECT {name} FROM usage{where}", f.args)]
        out[name] = _summary(values)
    return out


def _summary(values: list[float]) -> dict[str, Any] | None:
    n = len(values)
    if not n:
        return None
    values.sort()

    def rank(p: float) -> float:
        return round(values[max(0, math.ceil(p * n) - 1)], 3)

    return {"count": n, "min_ms": round(values[0], 3), "max_ms": round(values[-1], 3),
            "avg_ms": round(sum(values) / n, 3), "p50_ms": rank(0.50), "p95_ms": rank(0.95),
            "p99_ms": rank(0.99)}


def _group(conn: sqlite3.Connection, key: str, f: Filters, prompt: str, completion: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Unary + keeps SQLite off the (backend, ts) index: for a GROUP BY over most rows a
    # plain scan is far cheaper than index order plus a table lookup per row.
    sql = (f"SELECT +{key} AS k, COUNT(*), COALESCE(SUM({prompt}),0), COALESCE(SUM({completion}),0), "
           f"SUM(cost), COUNT(cost) FROM usage{f.clause()} GROUP BY k ORDER BY k")
    for k, n, p, c, cost, cost_n in conn.execute(sql, f.args):
        out[str(k)] = {"request_count": n, "total_prompt_tokens": p,
                       "total_completion_tokens": c, "total_tokens": p + c,
                       "total_cost": round(cost or 0.0, 10), "cost_record_count": cost_n}
    return out


def stats(conn: sqlite3.Connection, f: Filters) -> dict[str, Any]:
    prompt, completion = _points(f.leg)
    row = conn.execute(
        f"SELECT COUNT(*), COUNT(DISTINCT session_id), COALESCE(SUM({prompt}),0), "
        f"COALESCE(SUM({completion}),0), COALESCE(SUM(br_prompt),0), COALESCE(SUM(br_completion),0), "
        f"COALESCE(SUM(br_total),0), SUM(cost), COUNT(cost), COALESCE(SUM(tool_call_count),0), "
        f"MIN(ts), MAX(ts), COALESCE(SUM(total_duration_ms),0) FROM usage{f.clause()}", f.args).fetchone()
    (n, sessions, p_tok, c_tok, brp, brc, brt, cost, cost_n, tools, t0, t1, dur) = row
    timing = _timing_stats(conn, f)
    codes = {str(code): cnt for code, cnt in conn.execute(
        f"SELECT http_status_code, COUNT(*) FROM usage{f.clause()} GROUP BY http_status_code",
        f.args)}
    return {
        "request_count": n,
        "unique_sessions": sessions,
        "total_prompt_tokens": p_tok,
        "total_completion_tokens": c_tok,
        "total_tokens": p_tok + c_tok,
        "backend_reported_prompt_tokens": brp,
        "backend_reported_completion_tokens": brc,
        "backend_reported_total_tokens": brt,
        "total_cost": round(cost or 0.0, 10),
        "cost_record_count": cost_n,
        "total_tool_calls": tools,
        "status_code_counts": codes,
        # Completion tokens per second of request time (sum of durations).
        "completion_tokens_per_second": round(c_tok / (dur / 1000.0), 3) if dur else None,
        "time_window_seconds": round(t1 - t0, 3) if n else None,
        "ttft_stats": timing["ttft_ms"],
        "duration_stats": timing["total_duration_ms"],
        "proxy_overhead_stats": timing["proxy_overhead_ms"],
        # Same keys as the others; the values are tokens per second, not ms.
        "stream_tps_stats": timing["stream_tps"],
        "by_backend": _group(conn, "backend", f, prompt, completion),
        "by_model": _group(conn, "COALESCE(model_used, model_requested)", f, prompt, completion),
        "filters": f.echo,
    }


def count(conn: sqlite3.Connection, f: Filters) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM usage{f.clause()}", f.args).fetchone()[0]


def recent(conn: sqlite3.Connection, f: Filters, limit: int, offset: int) -> dict[str, Any]:
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM usage{f.clause()} ORDER BY ts DESC, rowid DESC LIMIT ? OFFSET ?",
        [*f.args, limit, offset])]
    return {"records": _records(conn, ids), "total": count(conn, f),
            "limit": limit, "offset": offset}


def _records(conn: sqlite3.Connection, ids: list[str]) -> list[dict[str, Any]]:
    """The stored records for ``ids``, in that order."""
    if not ids:
        return []
    marks = ",".join("?" for _ in ids)
    found = dict(conn.execute(f"SELECT id, record FROM usage_record WHERE id IN ({marks})", ids))
    return [orjson.loads(found[i]) for i in ids if i in found]


def export_pages(conn: sqlite3.Connection, f: Filters, page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Oldest first, by keyset pages (never holds more than one page)."""
    last_ts, last_row = -math.inf, 0
    base = f.where[:]
    while True:
        where = [*base, "(ts > ? OR (ts = ? AND rowid > ?))"]
        rows = conn.execute(
            f"SELECT rowid, ts, id FROM usage WHERE {' AND '.join(where)} "
            f"ORDER BY ts, rowid LIMIT ?", [*f.args, last_ts, last_ts, last_row, page_size]
        ).fetchall()
        if not rows:
            return
        last_row, last_ts = rows[-1][0], rows[-1][1]
        yield _records(conn, [r[2] for r in rows])
        if len(rows) < page_size:
            return
