"""``fastproxy usage stats|export``: the usage database, read directly and read-only.

It needs no running gateway (reports after a stop, on a copied file, in cron jobs) and
never writes: the file is opened with ``mode=ro``, beside a live writer thanks to WAL.
The database is ``--db PATH``, else ``usage_tracking.persistence_path`` from the config
(``--config FILE`` or the usual lookup), resolved like the gateway resolves it.

Exit codes: 0 done, 1 the database could not be read, 2 bad arguments or no database.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from .storage.usage_queries import FILTER_PARAMS, FilterError, parse_filters

_FILTER_HELP = {
    "backend_type": "openai or anthropic", "backend": "backend name, e.g. openai.1",
    "model": "model requested or used", "frontend_type": "client dialect: openai or anthropic",
    "leg": "token point to count: CTP, PTB, BTP or PTC",
    "session_id": "one session", "proxy_user": "x-proxy-user value",
    "http_status_code": "e.g. 429", "start_date": "ISO-8601, inclusive (naive = UTC)",
    "end_date": "ISO-8601, inclusive; a date alone means the whole day",
    "day_of_week": "0=Monday..6 (UTC)", "hour_of_day": "0..23 (UTC)",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("usage", help="usage statistics and exports (reads the usage DB)",
                              description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="usage_verb", metavar="{stats,export}", required=True)
    for name, text in (("stats", "aggregated statistics: a table, or --json"),
                       ("export", "export records as csv, ndjson or json")):
        v = verbs.add_parser(name, help=text, description=text)
        src = v.add_mutually_exclusive_group()
        src.add_argument("--db", metavar="PATH", help="usage database file")
        src.add_argument("--config", metavar="FILE",
                         help="config file naming usage_tracking.persistence_path")
        for param in FILTER_PARAMS:
            v.add_argument("--" + param.replace("_", "-"), dest="f_" + param, metavar="VALUE",
                           help=_FILTER_HELP[param])
        if name == "stats":
            v.add_argument("--json", action="store_true", help="print the stats JSON document")
        else:
            v.add_argument("--format", choices=("csv", "ndjson", "json"), default="json")
            v.add_argument("--out", metavar="FILE", required=True, help="file to write ('-' = stdout)")


def _db_path(ns: argparse.Namespace) -> Path:
    if ns.db:
        return Path(ns.db)
    from .config import load_config, resolve_state_path

    cfg = load_config(config_file=ns.config).config  # ConfigError: exit 2 in cli.main
    return resolve_state_path(cfg, cfg.usage_tracking.persistence_path)


def run(ns: argparse.Namespace) -> int:
    query = {k[2:]: [v] for k, v in vars(ns).items() if k.startswith("f_") and v is not None}
    try:
        filters = parse_filters(query)
    except FilterError as err:
        print(f"fastproxy usage: --{err.param.replace('_', '-')}: {str(err).split(': ', 1)[1]}",
              file=sys.stderr)
        return 2
    path = _db_path(ns)
    if not path.is_file():
        print(f"fastproxy usage: no usage database at {path} (give --db PATH, or check "
              "usage_tracking.persistence_path in the config)", file=sys.stderr)
        return 2
    from .storage.usage_store import UsageStore

    # Read side only: no start(), so no writer thread and nothing is written.
    store = UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0)
    try:
        if ns.usage_verb == "stats":
            stats = store.stats(filters)
            if ns.json:
                sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                _print_table(path, stats)
            return 0
        return _export(store, filters, ns.format, ns.out)
    except sqlite3.Error as exc:
        print(f"fastproxy usage: cannot read {path}: {exc}", file=sys.stderr)
        return 1


def _export(store: Any, filters: Any, fmt: str, out: str) -> int:
    from .admin.usage_api import encode_export

    with store.open_export(filters) as cursor:
        fh = sys.stdout.buffer if out == "-" else open(out, "wb")  # noqa: SIM115
        try:
            for chunk in encode_export(cursor, fmt):
                fh.write(chunk)
        finally:
            if fh is not sys.stdout.buffer:
                fh.close()
        n = cursor.record_count
    print(f"exported {n:,} records to {out} ({fmt})", file=sys.stderr)
    return 0


def _ms(s: dict[str, Any] | None, unit: str = "ms") -> str:
    if s is None:
        return "-"
    return (f"p50 {s['p50_ms']:,} · p95 {s['p95_ms']:,} · p99 {s['p99_ms']:,} {unit}  "
            f"(avg {s['avg_ms']:,}, n={s['count']:,})")


def _print_table(path: Path, s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    f = s["filters"]
    title = f"usage: {path}" + ("  [" + ", ".join(f"{k}={v}" for k, v in f.items()) + "]"
                                if f else "")
    top = Table(title=title, show_header=False, title_justify="left")
    top.add_column(style="bold")
    top.add_column(justify="left")
    rows = [
        ("requests", f"{s['request_count']:,}"), ("sessions", f"{s['unique_sessions']:,}"),
        ("prompt tokens", f"{s['total_prompt_tokens']:,}"),
        ("completion tokens", f"{s['total_completion_tokens']:,}"),
        ("total tokens", f"{s['total_tokens']:,}"),
        ("backend-reported tokens", f"{s['backend_reported_total_tokens']:,}"),
        ("cost (USD)", f"{s['total_cost']:,.4f}  ({s['cost_record_count']:,} priced)"),
        ("tool calls", f"{s['total_tool_calls']:,}"),
        ("status codes", "  ".join(f"{k}: {v:,}" for k, v in s["status_code_counts"].items())
         or "-"),
        ("TTFT", _ms(s["ttft_stats"])), ("duration", _ms(s["duration_stats"])),
        ("proxy overhead", _ms(s["proxy_overhead_stats"])),
        ("stream tokens/s", _ms(s["stream_tps_stats"], "tok/s")),
    ]
    for k, v in rows:
        top.add_row(k, v)
    console.print(top)
    for key, label in (("by_backend", "backend"), ("by_model", "model")):
        t = Table(title=f"by {label}", title_justify="left")
        for col in (label, "requests", "tokens", "cost (USD)", "errors", "avg ms"):
            t.add_column(col, justify="left" if col == label else "right")
        for name, g in s[key].items():
            avg = g["avg_duration_ms"]
            t.add_row(name, f"{g['request_count']:,}", f"{g['total_tokens']:,}",
                      f"{g['total_cost']:,.4f}", f"{g['error_count']:,}",
                      "-" if avg is None else f"{avg:,}")
        console.print(t)
