"""Spend so far per named key and per team, from the usage database: what the budget book
is seeded with at start and on reload (docs/policy.md, "Budgets").

One indexed range sum per subject (``usage_requests_key`` / ``usage_requests_team``:
key or team, then ts and cost), on a read-only connection: the SQLite file's, or with
``usage_tracking.store: postgresql`` the PostgreSQL store's (the same SQL through its
dialect layer, storage/pg_reader.py). Blocking: the caller runs it off the event loop
(``asyncio.to_thread``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .usage_queries import open_reader

_SQL = {
    "key": "SELECT TOTAL(cost) FROM usage_requests WHERE key_name = ? AND ts >= ? AND ts < ?",
    "team": "SELECT TOTAL(cost) FROM usage_requests WHERE team = ? AND ts >= ? AND ts < ?",
}


def spent(
    path: Path, periods: Iterable[tuple[str, float, float]], dsn: str | None = None
) -> dict[str, float]:
    """``{subject: USD}`` for each ``(subject, start, end)``: the cost of the requests
    recorded in [start, end) (epoch seconds) for that key (``key:<name>``) or team
    (``team:<name>``), from the SQLite file at ``path``, or the PostgreSQL store at
    ``dsn`` when given. A SQLite file that does not exist yet has spent nothing; subjects
    of another kind are skipped. An unreadable store raises ``sqlite3.DatabaseError``."""
    wanted = list(periods)
    if not wanted or (dsn is None and not path.exists()):
        return {}
    out: dict[str, float] = {}
    if dsn is not None:
        from .pg_reader import pg_reader_conn  # psycopg is an optional extra

        conn = pg_reader_conn(dsn)
    else:
        conn = open_reader(path)
    try:
        for subject, start, end in wanted:
            kind, _, name = subject.partition(":")
            sql = _SQL.get(kind)
            if sql is None or not name:
                continue
            out[subject] = float(conn.execute(sql, (name, start, end)).fetchone()[0])
    finally:
        conn.close()
    return out


__all__ = ["spent"]
