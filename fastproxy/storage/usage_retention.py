"""Retention: whole UTC days older than the cutoff leave the usage database.

Runs on the writer thread, in slices: each transaction removes whole hours (about
``batch`` rows, or one busier hour), i.e. their rows, their JSON records and their hourly
rollup rows, and subtracts the same sums from the daily rollup. Between two slices the
rollups therefore still equal the rows, and the writer goes back to writing batches.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3

from .usage_schema import SUBTRACT_HOURS_FROM_DAILY


def prune(conn: sqlite3.Connection, cutoff: float, batch: int, max_slices: int) -> bool:
    """Delete records of the UTC days before ``cutoff`` (epoch seconds), at most
    ``max_slices`` transactions. True when more remain. sqlite3.Error propagates."""
    limit = math.floor(cutoff / 86400) * 86400.0  # whole days only
    for _ in range(max_slices):
        first = conn.execute("SELECT MIN(ts) FROM usage_requests").fetchone()[0]
        if first is None or first >= limit:
            conn.execute("PRAGMA optimize")  # planner statistics after large deletes
            return False
        nth = conn.execute(
            "SELECT ts FROM usage_requests WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
            (limit, batch - 1),
        ).fetchone()
        end = limit if nth is None else math.floor(nth[0] / 3600) * 3600.0
        end = max(end, math.floor(first / 3600) * 3600.0 + 3600.0)  # one busy hour
        end_hour = int(end // 3600)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "DELETE FROM usage_records WHERE seq IN "
                "(SELECT seq FROM usage_requests WHERE ts < ?)",
                (end,),
            )
            conn.execute("DELETE FROM usage_requests WHERE ts < ?", (end,))
            conn.execute(SUBTRACT_HOURS_FROM_DAILY, (end_hour,))
            conn.execute("DELETE FROM usage_daily WHERE n <= 0")
            conn.execute("DELETE FROM usage_hourly WHERE hour < ?", (end_hour,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return True
