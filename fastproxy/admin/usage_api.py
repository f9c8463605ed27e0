"""/v1/usage/stats, /v1/usage/recent, /v1/usage/export over the usage store.

Every query runs in a worker thread (asyncio.to_thread) with its own read connection,
so a slow query never stalls the relay. An export opens one read snapshot, then fetches
and encodes each page in a thread and yields its bytes: memory holds one page at most,
and a client that stops reading stops the fetching (the stream is pulled, not pushed).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import sqlite3
import threading
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import orjson

from ..storage.usage_export import ExportCursor
from ..storage.usage_queries import FilterError, parse_filters, parse_int
from ..storage.usage_schema import RECORD_KEYS
from ..storage.usage_store import UsageStore
from .routes import AdminRequest, AdminResponse, error_response, json_response
from .views import Views

log = logging.getLogger("fastproxy.admin")

FORMATS = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
DISABLED = "usage tracking is disabled (usage_tracking.enabled=false)"
PAGE_SIZE = 1000
# CSV columns: the record fields of the usage contract (docs/usage-tracking.md), in its order (the order records are
# stored in), then the fields added since (``api``), last so no column moves. Nested
# values (backend_reported_usage, tool_names, replacement) are JSON text in their cell.
CSV_FIELDS = RECORD_KEYS


def _store(views: Views) -> UsageStore:
    store = views.store
    assert store is not None  # the route table answers 503 before a handler runs
    return store


# A bad parameter raises FilterError (a RequestRejected): the route table answers it
# 400 with its message, the same for every handler.
async def stats(views: Views, req: AdminRequest) -> AdminResponse:
    f = parse_filters(req.query)
    return await _answer(_store(views).stats, f)


async def recent(views: Views, req: AdminRequest) -> AdminResponse:
    f = parse_filters(req.query, frozenset({"limit", "offset"}))
    limit = _int_arg(req, "limit", 50, 1, 1000)
    offset = _int_arg(req, "offset", 0, 0, 2**62)
    return await _answer(_store(views).recent, f, limit, offset)


async def export(views: Views, req: AdminRequest) -> AdminResponse:
    f = parse_filters(req.query, frozenset({"format"}))
    fmt = (req.arg("format") or "json").lower()
    if fmt not in FORMATS:
        raise FilterError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        cursor = await asyncio.to_thread(_store(views).open_export, f, PAGE_SIZE)
    except sqlite3.Error as exc:
        return _unavailable(exc)
    name = f"usage-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.{fmt}"
    return AdminResponse(
        status=200,
        content_type=FORMATS[fmt],
        headers=[("Content-Disposition", f'attachment; filename="{name}"')],
        stream=_ExportStream(cursor, fmt),
    )


async def _answer(fn: Any, *args: Any) -> AdminResponse:
    try:
        return json_response(await asyncio.to_thread(fn, *args))
    except sqlite3.Error as exc:
        return _unavailable(exc)


def _unavailable(exc: sqlite3.Error) -> AdminResponse:
    # The file is missing, locked for longer than the busy timeout, or damaged: the
    # writer reports it in /internal/health; the query says so instead of a 500.
    log.warning("usage query failed: %s", exc)
    return error_response(503, f"usage database unavailable: {exc}")


def _int_arg(req: AdminRequest, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.arg(name)
    return default if raw is None or raw == "" else parse_int(name, raw, lo, hi)


class _ExportStream:
    """The export body: each piece fetched and encoded in a worker thread.

    A class rather than an async generator because ``aclose()`` must release the read
    snapshot even when iteration never started (a HEAD request, a client gone before the
    first chunk): an unstarted generator skips its ``finally``, and a read transaction
    left open would keep the WAL from being checkpointed. The lock serialises the worker
    threads, so a close after a cancelled fetch waits for that fetch to return."""

    def __init__(self, cursor: ExportCursor, fmt: str) -> None:
        self._cursor = cursor
        self._chunks = encode_export(cursor, fmt)
        self._lock = threading.Lock()
        self._closed = False

    def __aiter__(self) -> _ExportStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            piece = await asyncio.to_thread(self._next)
        except BaseException:
            await self.aclose()
            raise
        if piece is None:
            await self.aclose()
            raise StopAsyncIteration
        return piece

    def _next(self) -> bytes | None:
        with self._lock:
            return None if self._closed else next(self._chunks, None)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._chunks.close()
            self._cursor.close()


def encode_export(cursor: ExportCursor, fmt: str) -> Generator[bytes, None, None]:
    """The export document, one chunk per page (blocking: run it in a thread)."""
    if fmt == "json":
        yield (
            b'{"version":1,"exported_at":'
            + orjson.dumps(now_iso())
            + b',"record_count":'
            + str(cursor.record_count).encode()
            + b',"filters":'
            + orjson.dumps(cursor.filters.echo)
            + b',"records":['
        )
        first = True
        for page in cursor.pages():
            yield (b"" if first else b",") + b",".join(orjson.dumps(r) for r in page)
            first = False
        yield b"]}\n"
    elif fmt == "ndjson":
        for page in cursor.pages():
            yield b"".join(orjson.dumps(r) + b"\n" for r in page)
    else:
        yield _csv_rows([list(CSV_FIELDS)])
        for page in cursor.pages():
            yield _csv_rows([_csv_cell(r.get(k)) for k in CSV_FIELDS] for r in page)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    return v


def _csv_rows(rows: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


__all__ = [
    "CSV_FIELDS",
    "FORMATS",
    "encode_export",
    "export",
    "recent",
    "stats",
]
