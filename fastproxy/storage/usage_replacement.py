"""The usage store's side of replacement effectiveness: one grouped read of a window.

``/v1/replacement/metrics`` compares replaced requests with the originals their rules
matched, over the same window (since the metrics' last reset). The replacement mark is
only in the stored record (``usage_records``), not in the narrow rows, so each row's mark
is read from its record through a correlated subquery: one primary-key lookup and one
``json_extract`` per row of the window, in SQLite's C code. Rows are grouped by (backend,
model used, mark), a handful of groups; which rule each group belongs to is decided by
the caller with the policy's own matching (admin/replacement_views.py), so SQL and the
policy cannot disagree on what a pattern means.

Runs in a worker thread (the view uses asyncio.to_thread), never on the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import NamedTuple

import orjson

from .usage_queries import open_reader
from .usage_schema import RECORD_KEYS

# The mark's place in a compact record: [RECORD_FORMAT, *values in RECORD_KEYS order].
_AT = 1 + RECORD_KEYS.index("replacement")
# Outcomes that count as the backend failing the request (a client that left, or a
# request refused for its own fault, says nothing about the model that served it).
ERROR_OUTCOMES = ("backend_error", "truncated", "timeout")

_SQL = f"""
SELECT d.backend, d.model_used,
       (SELECT CASE WHEN substr(x.record, 1, 1) = '['
                    THEN json_extract(x.record, '$[{_AT}]')
                    ELSE json_extract(x.record, '$.replacement') END
          FROM usage_records x WHERE x.seq = r.seq) AS mark,
       COUNT(*),
       SUM(r.outcome IN ({", ".join("?" for _ in ERROR_OUTCOMES)})),
       TOTAL(r.total_duration_ms), COUNT(r.total_duration_ms),
       TOTAL(r.ttft_ms), COUNT(r.ttft_ms),
       TOTAL(r.cost), COUNT(r.cost)
  FROM usage_requests r JOIN usage_dims d ON d.dim = r.dim
 WHERE r.ts >= ? AND d.backend IS NOT NULL
 GROUP BY 1, 2, 3
"""


class Group(NamedTuple):
    """Requests of one (backend, model used, replacement mark) in the window."""

    backend: str
    model: str | None
    source: str | None  # the mark's "from" (backend:model), None for an original
    target: str | None  # the mark's "to"
    requests: int
    errors: int
    duration_sum: float
    duration_n: int
    ttft_sum: float
    ttft_n: int
    cost_sum: float
    cost_n: int


# The same on PostgreSQL (pg_store.py): its JSON operators in place of json_extract (a
# missing or null mark is SQL NULL, as json_extract gives), a boolean counted as 0/1.
# Its text goes to the server as written: pg_reader's rewriting is for the SQLite text.
_PG_SQL = f"""
SELECT d.backend, d.model_used,
       (SELECT nullif(CASE WHEN left(x.record, 1) = '['
                           THEN (x.record::jsonb -> {_AT})::text
                           ELSE (x.record::jsonb -> 'replacement')::text END, 'null')
          FROM usage_records x WHERE x.seq = r.seq) AS mark,
       count(*),
       sum((r.outcome IN ({", ".join("%s" for _ in ERROR_OUTCOMES)}))::int),
       coalesce(sum(r.total_duration_ms), 0)::float8, count(r.total_duration_ms),
       coalesce(sum(r.ttft_ms), 0)::float8, count(r.ttft_ms),
       coalesce(sum(r.cost), 0)::float8, count(r.cost)
  FROM usage_requests r JOIN usage_dims d ON d.dim = r.dim
 WHERE r.ts >= %s AND d.backend IS NOT NULL
 GROUP BY 1, 2, 3
"""


def replacement_groups(path: Path, since: float, dsn: str | None = None) -> list[Group]:
    """Every group of requests recorded at or after ``since`` (epoch seconds), from the
    SQLite file at ``path`` or the PostgreSQL store at ``dsn``."""
    if dsn is not None:
        from .pg_reader import PgReadConn  # psycopg is an optional extra

        pg = PgReadConn(dsn)
        try:
            rows = pg.execute_native(_PG_SQL, (*ERROR_OUTCOMES, since)).fetchall()
        finally:
            pg.close()
        return [_group(row) for row in rows]
    with contextlib.closing(open_reader(path)) as conn:
        rows = conn.execute(_SQL, (*ERROR_OUTCOMES, since)).fetchall()
    return [_group(row) for row in rows]


def _group(row: tuple[object, ...]) -> Group:
    backend, model, mark, *sums = row
    source = target = None
    if isinstance(mark, str):
        try:
            doc = orjson.loads(mark)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            source = doc.get("from") if isinstance(doc.get("from"), str) else None
            target = doc.get("to") if isinstance(doc.get("to"), str) else None
    n, errors, dsum, dn, tsum, tn, csum, cn = sums
    return Group(
        str(backend),
        model if isinstance(model, str) else None,
        source,
        target,
        int(n),  # type: ignore[call-overload]
        int(errors or 0),  # type: ignore[call-overload]
        float(dsum),  # type: ignore[arg-type]
        int(dn),  # type: ignore[call-overload]
        float(tsum),  # type: ignore[arg-type]
        int(tn),  # type: ignore[call-overload]
        float(csum),  # type: ignore[arg-type]
        int(cn),  # type: ignore[call-overload]
    )


__all__ = ["ERROR_OUTCOMES", "Group", "replacement_groups", "sqlite3"]
