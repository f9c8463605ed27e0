"""Budget seeding from the PostgreSQL usage store (``usage_tracking.store:
postgresql``): the same query as SQLite's through its dialect layer, on a throwaway
server (tests/storage/pg_server.py)."""

from __future__ import annotations

from pathlib import Path

from fastproxy.storage.pg_reader import connect
from fastproxy.storage.pg_store import migrate
from fastproxy.storage.usage_spend import spent
from tests.storage.pg_server import PgServer, pg_server

__all__ = ["pg_server"]


def test_spent_reads_the_postgresql_store(pg_server: PgServer, tmp_path: Path) -> None:
    dsn = pg_server.new_db()
    with connect(dsn) as conn:
        migrate(conn)
        for seq, (ts, name, team, cost) in enumerate(
            [
                (50.0, "alice", "ml", 1.0),
                (100.0, "alice", "ml", 0.25),
                (150.0, "bob", "ml", 0.5),
                (160.0, "alice", None, None),
                (200.0, "alice", "ml", 2.0),
            ]
        ):
            conn.execute(
                "INSERT INTO usage_requests (origin, oseq, ts, dim, http_status_code, "
                "day_of_week, hour_of_day, streaming, tool_call_count, key_name, team, cost) "
                "VALUES ('t', %s, %s, 1, 200, 0, 0, 0, 0, %s, %s, %s)",
                (seq, ts, name, team, cost),
            )
    got = spent(
        tmp_path / "unused.db",
        [("key:alice", 100.0, 200.0), ("team:ml", 100.0, 200.0), ("team:none", 0, 1)],
        dsn,
    )
    assert got == {"key:alice": 0.25, "team:ml": 0.75, "team:none": 0.0}
