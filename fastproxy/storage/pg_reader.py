"""The PostgreSQL read side: one dialect layer under the SQLite store's query code.

usage_queries.py and usage_export.py hold the SQL and the Python that shapes the stats,
/recent and /export JSON. Rather than a second copy of them, a read connection here
takes their SQL and rewrites the few SQLite-only spellings:

- ``?`` placeholders become ``%s`` (and a literal ``%`` is doubled);
- ``INDEXED BY <index>`` goes: PostgreSQL's planner picks among the same indexes;
- ``TOTAL(x)`` (a float sum that is 0.0 over no rows) becomes ``coalesce(sum(x), 0)::float8``;
- a subquery in FROM gets the alias PostgreSQL 15 requires;
- ``BEGIN`` opens a REPEATABLE READ, READ ONLY transaction: one snapshot for every
  query inside, as SQLite's read transaction gives.

``sum()`` of a bigint column is ``numeric`` in PostgreSQL; it is read back as an int
(or a float when it has a fraction), the types SQLite gives, so the shaping code and the
JSON are the same. Floats are summed in another order than SQLite's, so a sum may differ
in its last bits; every float in the answer is rounded (3 decimals, cost 10) first.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, cast

import psycopg
from psycopg.adapt import Loader

from .pg_schema import VERSION, describe

__all__ = ["PgReadConn", "StoreReadError", "connect", "describe", "pg_reader_conn", "pg_sql"]

CONNECT_TIMEOUT_S = 5
_INDEXED = re.compile(r"\s+INDEXED BY \w+")
_TOTAL = re.compile(r"TOTAL\(([^()]*)\)")
_DERIVED = re.compile(r"(GROUP BY session_id\))")


def pg_sql(sql: str, bound: bool = True) -> str:
    """SQLite query text (as usage_queries.py writes it) in PostgreSQL's spelling;
    ``bound``: parameters come with it (without them psycopg leaves ``%`` as it is)."""
    if sql == "BEGIN":
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    sql = _INDEXED.sub("", sql)
    sql = _TOTAL.sub(r"coalesce(sum(\1), 0)::float8", sql)
    sql = _DERIVED.sub(r"\1 AS s", sql)
    return sql.replace("%", "%%").replace("?", "%s") if bound else sql


class StoreReadError(sqlite3.DatabaseError):
    """A read of the PostgreSQL store failed (unreachable, not migrated). A subclass of
    sqlite3's error so every reader (the views' 503, the CLI's exit 1, an export's
    close) handles it as it handles an unreadable SQLite file."""


class _Number(Loader):
    """``numeric`` (a sum of bigints) as int, or float when it has a fraction."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        return float(text) if b"." in text or b"e" in text.lower() else int(text)


def connect(dsn: str, *, application_name: str = "fastproxy") -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are opened explicitly) with the loader
    above. Raises psycopg.Error when the server cannot be reached."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=application_name,
    )
    conn.adapters.register_loader("numeric", _Number)
    return conn


class PgReadConn:
    """What the query modules need of a read connection (``execute``, ``close``), over
    PostgreSQL. One per query or export, like the SQLite store's read connections."""

    def __init__(self, dsn: str) -> None:
        try:
            self._conn = connect(dsn, application_name="fastproxy-usage-read")
        except psycopg.Error as exc:
            raise StoreReadError(_reason(exc)) from None
        try:
            row = self._conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except psycopg.Error as exc:
            self._conn.close()
            raise StoreReadError(_reason(exc)) from None
        version = row[0] if row is not None else None
        if version != VERSION:
            self._conn.close()
            raise StoreReadError(
                f"the usage database has PostgreSQL schema version {version}; this "
                f"fastproxy reads {VERSION} (the gateway migrates it when it starts)"
            )

    def execute(self, sql: str, args: Any = None) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(pg_sql(sql, args is not None), args)
        except psycopg.Error as exc:
            raise StoreReadError(_reason(exc)) from None

    def execute_native(self, sql: str, args: Any = None) -> psycopg.Cursor[Any]:
        """Run PostgreSQL's own SQL text (no rewriting)."""
        try:
            return self._conn.execute(sql, args)
        except psycopg.Error as exc:
            raise StoreReadError(_reason(exc)) from None

    def close(self) -> None:
        self._conn.close()


def pg_reader_conn(dsn: str) -> sqlite3.Connection:
    # The query modules are typed for sqlite3; PgReadConn has the part of it they use
    # (execute, close) and raises an sqlite3.DatabaseError subclass like they expect.
    return cast(sqlite3.Connection, PgReadConn(dsn))


def _reason(exc: BaseException) -> str:
    # The first line only: psycopg's messages name host and port, never the password.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
