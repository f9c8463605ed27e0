"""/recent and /export pages: newest-first pages and oldest-first keyset exports.

Both walk the time index (whose entries carry every filter column but the session, so
only matching rows are read) or, for one session, the session index; the records come
back as they were submitted, by seq (`usage_schema.load_record`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from .usage_filters import Filters, raw_terms, where
from .usage_queries import Snapshot, count_in, selected_dims
from .usage_schema import load_record


def _records(conn: sqlite3.Connection, seqs: list[int]) -> list[dict[str, Any]]:
    """The stored records for ``seqs``, in that order."""
    if not seqs:
        return []
    found = dict(
        conn.execute(
            f"SELECT seq, record FROM usage_records WHERE seq IN ({','.join(map(str, seqs))})"
        )
    )
    return [load_record(found[s]) for s in seqs if s in found]


def _order_index(f: Filters) -> str:
    # A session's rows are few: find them by session, then sort. Anything else walks
    # the time index, whose entries carry every other filter column.
    return "usage_requests_session" if f.session_id is not None else "usage_requests_ts"


def recent(conn: sqlite3.Connection, f: Filters, limit: int, offset: int) -> dict[str, Any]:
    with Snapshot(conn):
        dims = selected_dims(conn, f)
        total = count_in(conn, f, dims)
        seqs: list[int] = []
        if total > offset:
            terms, args = raw_terms(f, dims)
            seqs = [
                r[0]
                for r in conn.execute(
                    f"SELECT seq FROM usage_requests INDEXED BY {_order_index(f)}{where(terms)} "
                    "ORDER BY ts DESC, seq DESC LIMIT ? OFFSET ?",
                    [*args, limit, offset],
                )
            ]
        records = _records(conn, seqs)
    return {"records": records, "total": total, "limit": limit, "offset": offset}


class ExportCursor:
    """Oldest first, by keyset pages over one snapshot (never more than one page held).

    ``record_count`` is counted in the same read transaction the pages come from, so it
    always equals the number of records the pages yield."""

    def __init__(self, conn: sqlite3.Connection, f: Filters, page_size: int) -> None:
        self._conn, self.filters, self.page_size = conn, f, page_size
        self._open = True
        try:
            conn.execute("BEGIN")
            self._dims = selected_dims(conn, f)
            self.record_count = count_in(conn, f, self._dims)
        except BaseException:
            self.close()
            raise

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        f = self.filters
        if self._dims == [] or not self.record_count:
            return
        terms, args = raw_terms(f, self._dims)
        sql = (
            f"SELECT seq, ts FROM usage_requests INDEXED BY {_order_index(f)} "
            f"WHERE {' AND '.join([*terms, 'ts >= ?', '(ts > ? OR seq > ?)'])} "
            "ORDER BY ts, seq LIMIT ?"
        )
        last_ts, last_seq = float("-inf"), 0
        while True:
            rows = self._conn.execute(
                sql, [*args, last_ts, last_ts, last_seq, self.page_size]
            ).fetchall()
            if not rows:
                return
            last_seq, last_ts = rows[-1]
            yield _records(self._conn, [r[0] for r in rows])
            if len(rows) < self.page_size:
                return

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                pass
            self._conn.close()

    def __enter__(self) -> ExportCursor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
