"""``fastproxy usage stats|export``: the usage database, read directly and read-only.

By default it needs no running gateway (reports after a stop, on a copied file, in cron
jobs) and never writes: the file is opened with ``mode=ro``, beside a live writer thanks
to WAL. The database is ``--db PATH``, else ``usage_tracking.persistence_path`` from the
config (``--config FILE`` or the usual lookup), resolved like the gateway resolves it.
``--url URL`` reads the same figures from a running gateway instead (``/v1/usage/stats``,
``/v1/usage/export``), for a gateway on another machine or a database this user cannot
read; ``--timeout`` and the exit codes are then those of every command that talks to a
gateway (fastproxy/cli_common.py, docs/cli.md).

Exit codes: 0 done; 1 the database could not be read, or no usable answer from the
gateway (nothing listens, a timeout, an HTTP error); 2 bad arguments, config, or no
database; 3 usage tracking is disabled on that gateway.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from .cli_common import (
    EXIT_NO_ANSWER,
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_timeout_argument,
    add_url_argument,
    endpoint,
    fail,
    get_json,
    normalise_url,
    open_url,
    unreachable,
)
from .storage.usage_queries import FILTER_PARAMS, FilterError, parse_filters

PROG = "fastproxy usage"

_FILTER_HELP = {
    "backend_type": "openai or anthropic",
    "backend": "backend name, e.g. openai.1",
    "model": "model requested or used",
    "frontend_type": "client dialect: openai or anthropic",
    "leg": "token point to count: CTP, PTB, BTP or PTC",
    "session_id": "one session",
    "proxy_user": "x-proxy-user value",
    "http_status_code": "e.g. 429, or none (no status reached the client)",
    "start_date": "ISO-8601, inclusive (naive = UTC)",
    "end_date": "ISO-8601, inclusive; a date alone means the whole day",
    "day_of_week": "0=Monday..6 (UTC)",
    "hour_of_day": "0..23 (UTC)",
    "api": "endpoint: chat, responses, embeddings, completions, messages or count_tokens",
    "outcome": "ok, rejected, backend_error, timeout, truncated, client_aborted, "
    "client_stalled or gateway_shutdown",
    "key": "a named client key's name (auth.keys)",
    "team": "a named client key's team",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "usage",
        help="usage statistics and exports (reads the usage DB, or a gateway with --url)",
        description=__doc__.split("\n\n")[0],
    )
    verbs = p.add_subparsers(dest="usage_verb", metavar="{stats,export}", required=True)
    for name, text in (
        ("stats", "aggregated statistics: a table, or --json"),
        ("export", "export records as csv, ndjson or json"),
    ):
        v = verbs.add_parser(name, help=text, description=text)
        src = v.add_mutually_exclusive_group()
        src.add_argument("--db", metavar="PATH", help="usage database file")
        src.add_argument(
            "--config",
            metavar="FILE",
            help="config file naming usage_tracking.persistence_path, or a PostgreSQL "
            "store (usage_tracking.store, its DSN)",
        )
        add_url_argument(src, instead_of="the database file")
        add_timeout_argument(v)
        for param in FILTER_PARAMS:
            v.add_argument(
                "--" + param.replace("_", "-"),
                dest="f_" + param,
                metavar="VALUE",
                # A filter added to the store is a flag at once, even before
                # it has a line of help here.
                help=_FILTER_HELP.get(param, f"the {param} filter of /v1/usage"),
            )
        if name == "stats":
            v.add_argument(
                "--json",
                action="store_true",
                help="print the stats JSON document instead of a table",
            )
        else:
            v.add_argument("--format", choices=("csv", "ndjson", "json"), default="json")
            v.add_argument(
                "--out", metavar="FILE", required=True, help="file to write ('-' = stdout)"
            )


def _db_source(ns: argparse.Namespace) -> tuple[Path, str | None]:
    """The SQLite file, or (with usage_tracking.store: postgresql) the DSN to read."""
    if ns.db:
        return Path(ns.db), None
    import os

    from .config import load_config, resolve_state_path

    cfg = load_config(config_file=ns.config).config  # ConfigError: exit 2 in cli.main
    usage = cfg.usage_tracking
    path = resolve_state_path(cfg, usage.persistence_path)
    if usage.store != "postgresql":
        return path, None
    env_name = usage.postgresql_dsn_env
    return path, os.environ.get(env_name, "") if env_name else usage.postgresql_dsn


def run(ns: argparse.Namespace) -> int:
    query = {k[2:]: v for k, v in vars(ns).items() if k.startswith("f_") and v is not None}
    try:
        # Checked here in both modes, so a bad filter is exit 2 naming the flag, the same
        # with --url as with --db.
        filters = parse_filters({k: [v] for k, v in query.items()})
    except FilterError as err:
        print(
            f"{PROG}: --{err.param.replace('_', '-')}: {str(err).split(': ', 1)[1]}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if getattr(ns, "url", None):
        try:
            return _from_gateway(ns, normalise_url(ns.url), query)
        except CliError as err:
            return fail(PROG, err)
    path, dsn = _db_source(ns)
    if dsn is not None:
        from .storage.pg_schema import describe

        return _read(ns, filters, path, describe(dsn), dsn)
    if not path.is_file():
        print(
            f"{PROG}: no usage database at {path} (give --db PATH, or check "
            "usage_tracking.persistence_path in the config)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return _read(ns, filters, path, str(path), None)


def _read(ns: argparse.Namespace, filters: Any, path: Path, source: str, dsn: str | None) -> int:
    from .storage.usage_store import UsageStore

    # Read side only: no start(), so no writer thread and nothing is written. With a DSN
    # the reads go to PostgreSQL (the same queries, storage/pg_reader.py).
    store = UsageStore(path, flush_interval=1.0, max_queue=1, retention_days=0, dsn=dsn)
    try:
        if ns.usage_verb == "stats":
            _show_stats(ns, source, store.stats(filters))
            return EXIT_OK
        return _export(store, filters, ns.format, ns.out)
    except CliError as err:
        return fail(PROG, err)
    except sqlite3.Error as exc:
        print(f"{PROG}: cannot read {source}: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER


def _show_stats(ns: argparse.Namespace, source: str, stats: dict[str, Any]) -> None:
    if ns.json:
        sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(source, stats)


def _from_gateway(ns: argparse.Namespace, base: str, query: dict[str, str]) -> int:
    try:
        if ns.usage_verb == "stats":
            url = endpoint(base, "/v1/usage/stats", query)
            stats = get_json(url, ns.timeout)
            if not (isinstance(stats, dict) and "request_count" in stats):
                raise CliError(
                    f"{url} did not answer usage statistics; is this a fastproxy gateway?",
                    EXIT_NO_ANSWER,
                )
            _show_stats(ns, base, stats)
            return EXIT_OK
        return _export_from_gateway(
            endpoint(base, "/v1/usage/export", {**query, "format": ns.format}), ns
        )
    except CliError as err:
        from .admin.usage_api import DISABLED

        if err.status == 503 and err.detail == DISABLED:
            # The gateway answered, and has nothing to give: the same code as health's
            # "degraded" and top's "tracking off".
            raise CliError(
                f"usage tracking is disabled on the gateway at {base} "
                "(usage_tracking.enabled=false)",
                EXIT_NOT_OK,
            ) from None
        raise


def _export_from_gateway(url: str, ns: argparse.Namespace) -> int:
    written = 0
    with open_url(url, ns.timeout) as resp:
        fh = _open_out(ns.out)
        try:
            while True:
                try:
                    piece = resp.read(65536)
                except (OSError, ValueError) as exc:  # the gateway stopped mid-export
                    where = "" if ns.out == "-" else f"; {ns.out} is incomplete"
                    raise CliError(unreachable(url, exc) + where, EXIT_NO_ANSWER) from None
                if not piece:
                    break
                fh.write(piece)
                written += len(piece)
        finally:
            if fh is not sys.stdout.buffer:
                fh.close()
    print(f"exported {written:,} bytes to {ns.out} ({ns.format}, from {url})", file=sys.stderr)
    return EXIT_OK


def _open_out(out: str) -> Any:
    if out == "-":
        return sys.stdout.buffer
    try:
        return open(out, "wb")  # closed by the caller, which may write stdout instead
    except OSError as exc:
        raise CliError(f"--out: cannot write {out}: {exc.strerror}", EXIT_USAGE) from None


def _export(store: Any, filters: Any, fmt: str, out: str) -> int:
    from .admin.usage_api import encode_export

    with store.open_export(filters) as cursor:
        fh = _open_out(out)
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
    u = "tps" if "p50_tps" in s else "ms"  # stream_tps_stats' keys name its unit
    return (
        f"p50 {s[f'p50_{u}']:,} · p95 {s[f'p95_{u}']:,} · p99 {s[f'p99_{u}']:,} {unit}  "
        f"(avg {s[f'avg_{u}']:,}, n={s['count']:,})"
    )


def _print_table(source: str, s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    f = s["filters"]
    title = f"usage: {source}" + (
        "  [" + ", ".join(f"{k}={v}" for k, v in f.items()) + "]" if f else ""
    )
    top = Table(title=title, show_header=False, title_justify="left")
    top.add_column(style="bold")
    top.add_column(justify="left")
    rows = [
        ("requests", f"{s['request_count']:,}"),
        ("sessions", f"{s['unique_sessions']:,}"),
        ("prompt tokens", f"{s['total_prompt_tokens']:,}"),
        ("completion tokens", f"{s['total_completion_tokens']:,}"),
        ("total tokens", f"{s['total_tokens']:,}"),
        ("backend-reported tokens", f"{s['backend_reported_total_tokens']:,}"),
        ("cost (USD)", f"{s['total_cost']:,.4f}  ({s['cost_record_count']:,} priced)"),
        ("tool calls", f"{s['total_tool_calls']:,}"),
        (
            "status codes",
            "  ".join(f"{k}: {v:,}" for k, v in s["status_code_counts"].items()) or "-",
        ),
        (
            "outcomes",
            "  ".join(f"{k}: {v:,}" for k, v in s.get("outcome_counts", {}).items()) or "-",
        ),
        ("TTFT", _ms(s["ttft_stats"])),
        ("duration", _ms(s["duration_stats"])),
        ("proxy overhead", _ms(s["proxy_overhead_stats"])),
        ("stream tokens/s", _ms(s["stream_tps_stats"], "tok/s")),
    ]
    for k, v in rows:
        top.add_row(k, v)
    console.print(top)
    for key, label in (
        ("by_backend", "backend"),
        ("by_model", "model"),
        ("by_api", "api"),
        ("by_key", "key"),
        ("by_team", "team"),
    ):
        if key not in s:
            continue  # by_api, by_key, by_team: a gateway older than this CLI
        t = Table(title=f"by {label}", title_justify="left")
        for col in (label, "requests", "tokens", "cost (USD)", "errors", "avg ms"):
            t.add_column(col, justify="left" if col == label else "right")
        for name, g in s[key].items():
            avg = g["avg_duration_ms"]
            t.add_row(
                name,
                f"{g['request_count']:,}",
                f"{g['total_tokens']:,}",
                f"{g['total_cost']:,.4f}",
                f"{g['error_count']:,}",
                "-" if avg is None else f"{avg:,}",
            )
        console.print(t)
