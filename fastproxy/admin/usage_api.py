"""/v1/usage/stats, /v1/usage/recent, /v1/usage/export (CONTRACT.md §5).

Every query runs in a worker thread (asyncio.to_thread) with its own read connection,
so a slow query never stalls the relay. Exports stream page by page.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from ..storage.usage_queries import FilterError, Filters, parse_filters, parse_int
from .routes import AdminRequest, AdminResponse, Router, error_response, json_response

PATHS = ("/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export")
_CONTENT_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson",
                  "csv": "text/csv; charset=utf-8"}


def register_usage_routes(router: Router, store: Any) -> None:
    async def stats(req: AdminRequest) -> AdminResponse:
        try:
            f = parse_filters(req.query)
        except FilterError as err:
            return error_response(400, str(err))
        return json_response(await asyncio.to_thread(store.stats, f))

    async def recent(req: AdminRequest) -> AdminResponse:
        try:
            f = parse_filters(req.query, frozenset({"limit", "offset"}))
            limit = _bounded(req, "limit", 50, 1, 1000)
            offset = _bounded(req, "offset", 0, 0, 10**12)
        except FilterError as err:
            return error_response(400, str(err))
        return json_response(await asyncio.to_thread(store.recent, f, limit, offset))

    async def export(req: AdminRequest) -> AdminResponse:
        try:
            f = parse_filters(req.query, frozenset({"format"}))
            fmt = (req.arg("format") or "json").lower()
            if fmt not in _CONTENT_TYPES:
                raise FilterError("format", f"{fmt!r} is not one of json, ndjson, csv")
        except FilterError as err:
            return error_response(400, str(err))
        total = await asyncio.to_thread(store.count, f)
        return AdminResponse(status=200, content_type=_CONTENT_TYPES[fmt],
                             stream=_export(store, f, fmt, total))

    router.add("GET", "/v1/usage/stats", stats)
    router.add("GET", "/v1/usage/recent", recent)
    router.add("GET", "/v1/usage/export", export)


def register_disabled_usage_routes(router: Router) -> None:
    async def disabled(req: AdminRequest) -> AdminResponse:
        return error_response(503, "usage tracking is disabled (usage_tracking.enabled=false)")

    for path in PATHS:
        router.add("GET", path, disabled)


def _bounded(req: AdminRequest, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.arg(name)
    return default if raw is None else parse_int(name, raw, lo, hi)


async def _export(store: Any, f: Filters, fmt: str, total: int) -> AsyncIterator[bytes]:
    pages = store.export_pages(f)
    first = True
    if fmt == "json":
        yield (b'{"version":1,"exported_at":' + orjson.dumps(_now()) + b',"record_count":'
               + str(total).encode() + b',"filters":' + orjson.dumps(f.echo) + b',"records":[')
    while True:
        page = await asyncio.to_thread(next, pages, None)
        if page is None:
            break
        if fmt == "ndjson":
            yield b"".join(orjson.dumps(r) + b"\n" for r in page)
        elif fmt == "csv":
            yield _csv(page, header=first)
        else:
            body = b",".join(orjson.dumps(r) for r in page)
            yield (b"" if first else b",") + body
        first = False
    if fmt == "json":
        yield b"]}"


def _csv(page: list[dict[str, Any]], header: bool) -> bytes:
    out = io.StringIO()
    fields = list(page[0]) if page else []
    writer = csv.writer(out)
    if header:
        writer.writerow(fields)
    for record in page:
        writer.writerow([
            orjson.dumps(v).decode() if isinstance(v, dict | list) else ("" if v is None else v)
            for v in (record.get(k) for k in fields)
        ])
    return out.getvalue().encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
