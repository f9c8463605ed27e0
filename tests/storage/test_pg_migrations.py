"""The PostgreSQL store's versioned migrations: applied once when several writers start
on an empty database at the same moment, and a database a newer fastproxy migrated is
left alone (degraded, records kept in the spool)."""

from __future__ import annotations

import threading
from pathlib import Path

from fastproxy.storage.pg_reader import connect
from fastproxy.storage.pg_schema import MIGRATIONS, VERSION
from fastproxy.storage.pg_store import SchemaTooNew, migrate
from tests.storage.pg_server import PgServer, pg_usage_store
from tests.usage.test_store_queries import record


def test_concurrent_migrations_apply_each_step_once(pg_server: PgServer) -> None:
    dsn = pg_server.new_db()
    n = 6
    barrier = threading.Barrier(n)
    had: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with connect(dsn) as conn:
                barrier.wait(10)
                had.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(had) == [0] + [VERSION] * (n - 1)  # one applied them, the rest found them
    rows = pg_server.query(dsn, "SELECT version, name FROM schema_migrations ORDER BY 1")
    assert rows == [(v, name) for v, name, _ in MIGRATIONS]


def test_a_newer_schema_is_left_alone(pg_server: PgServer, tmp_path: Path) -> None:
    dsn = pg_server.new_db()
    with connect(dsn) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, 'later')", (VERSION + 1,)
        )
        try:
            migrate(conn)
            raise AssertionError("a newer schema was migrated")
        except SchemaTooNew:
            pass
    s = pg_usage_store(dsn, tmp_path / "spool")
    s.start()
    assert s.submit(record())
    s.stop()
    st = s.status()
    assert st["usage_db"] == "degraded"
    assert pg_server.query(dsn, "SELECT count(*) FROM usage_requests") == [(0,)]
    assert list((tmp_path / "spool").glob("*.spool"))  # kept for a fastproxy that can write it
