"""`fastproxy usage stats|export`: read the usage database directly (read-only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from .storage.usage_queries import FILTER_PARAMS, FilterError, parse_filters
from .storage.usage_store import UsageStore


def add_parser(sub: Any) -> None:
    p = sub.add_parser("usage", help="usage statistics and exports from the usage database")
    verbs = p.add_subparsers(dest="usage_verb", metavar="VERB", required=True)
    for name, helptext in (("stats", "aggregated statistics (a table; --json for scripts)"),
                           ("export", "export records (csv, ndjson or json)")):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("--db", metavar="PATH", help="usage database (default: from the config)")
        v.add_argument("--config", metavar="FILE", help="YAML config file")
        for param in sorted(FILTER_PARAMS):
            v.add_argument("--" + param.replace("_", "-"), dest="f_" + param, metavar="VALUE")
        if name == "stats":
            v.add_argument("--json", action="store_true", help="print the stats JSON")
        else:
            v.add_argument("--format", choices=("csv", "ndjson", "json"), default="json")
            v.add_argument("--out", metavar="FILE", required=True)


def _db_path(ns: argparse.Namespace) -> Path:
    if ns.db:
        return Path(ns.db)
    from .config import load_config, resolve_state_path

    cfg = load_config(config_file=ns.config).config
    return resolve_state_path(cfg, cfg.usage_tracking.persistence_path)


def run(ns: argparse.Namespace) -> int:
    path = _db_path(ns)
    if not path.is_file():
        print(f"fastproxy: no usage database at {path} (see --db / usage_tracking.persistence_path)",
              file=sys.stderr)
        return 2
    query = {k[2:]: [v] for k, v in vars(ns).items() if k.startswith("f_") and v is not None}
    try:
        filters = parse_filters(query)
    except FilterError as err:
        print(f"fastproxy: --{err.param.replace('_', '-')}: {err}", file=sys.stderr)
        return 2
    store = UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)
    if ns.usage_verb == "stats":
        stats = store.stats(filters)
        if ns.json:
            sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _table(stats)
        return 0
    return _export(store, filters, ns.format, Path(ns.out))


def _table(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    top = Table(title="fastproxy usage", show_header=False)
    for key in ("request_count", "unique_sessions", "total_prompt_tokens",
                "total_completion_tokens", "total_tokens", "backend_reported_total_tokens",
                "total_cost", "total_tool_calls"):
        top.add_row(key, str(stats[key]))
    for key in ("ttft_stats", "duration_stats", "proxy_overhead_stats"):
        s = stats[key]
        top.add_row(key, "-" if s is None else f"p50 {s['p50_ms']} ms  p95 {s['p95_ms']} ms  "
                    f"p99 {s['p99_ms']} ms  (n={s['count']})")
    console.print(top)
    for group in ("by_backend", "by_model"):
        t = Table(title=group)
        for col in ("name", "requests", "tokens", "cost"):
            t.add_column(col)
        for name, g in stats[group].items():
            t.add_row(name, str(g["request_count"]), str(g["total_tokens"]), f"{g['total_cost']:.6f}")
        console.print(t)


def _export(store: UsageStore, filters: Any, fmt: str, out: Path) -> int:
    import asyncio

    from .admin.usage_api import _export as stream_export

    async def write() -> int:
        n = store.count(filters)
        with out.open("wb") as fh:
            async for piece in stream_export(store, filters, fmt, n):
                fh.write(piece)
        return n

    n = asyncio.run(write())
    print(f"exported {n} records to {out} ({fmt})")
    return 0
