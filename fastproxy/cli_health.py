"""``fastproxy health``: the /internal/health document as a table, once or live.

It reads the running gateway's monitoring API over HTTP (never the process's memory),
so it works against any gateway the operator can reach, including over an SSH tunnel.
Where the gateway is, ``--json``, ``--timeout`` and the exit codes are the same for every
command that talks to a gateway (fastproxy/cli_common.py, docs/cli.md):

0 all healthy; 3 the gateway reports "degraded" (so ``fastproxy health || page-someone``
works in scripts); 1 no usable answer (nothing listens, a timeout, an HTTP error, not a
health document); 2 bad arguments or config. ``--watch`` refreshes until Ctrl-C (exit 0)
and keeps trying while the gateway restarts, but gives up at once (exit 1) when the first
read fails: a wrong URL should not look like a gateway that is down for a moment.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .cli_common import (
    EXIT_NO_ANSWER,
    EXIT_NOT_OK,
    EXIT_OK,
    CliError,
    add_gateway_arguments,
    endpoint,
    fail,
    gateway_url,
    get_json,
    positive_float,
    print_json,
    watch,
)

PATH = "/internal/health"
EXIT_DEGRADED = EXIT_NOT_OK
_STYLE = {
    "ok": "green",
    "healthy": "green",
    "closed": "green",
    "unhealthy": "bold red",
    "open": "bold red",
    "failing": "red",
    "half_open": "yellow",
    "misconfigured": "yellow",
    "rate_limited": "yellow",
    "degraded": "bold yellow",
    "unavailable": "dim",
    "disabled": "dim",
    "pending": "dim",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health",
        help="show backend health and circuit breakers (reads /internal/health)",
        description="Show endpoint health and circuit-breaker state from a running gateway.",
        epilog="Exit codes: 0 ok, 1 no usable answer (e.g. nothing listens at the URL), "
        "2 bad arguments or config, 3 degraded. See docs/cli.md.",
    )
    add_gateway_arguments(p, positional_url=False)
    p.add_argument(
        "--watch",
        action="store_true",
        help="refresh until Ctrl-C (with --json: one document per line)",
    )
    p.add_argument(
        "--interval",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="seconds between refreshes with --watch (default 2)",
    )
    p.set_defaults(prog=p.prog)


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """The health document at ``url``; CliError when there is none."""
    doc = get_json(url, timeout)
    if not (isinstance(doc, dict) and "endpoint_health" in doc):
        raise CliError(
            f"{url} did not answer a health document; is this a fastproxy gateway?", EXIT_NO_ANSWER
        )
    return doc


def exit_code(doc: dict[str, Any]) -> int:
    return EXIT_OK if doc.get("status") == "ok" else EXIT_DEGRADED


def _styled(value: Any) -> Text:
    text = "-" if value is None else str(value)
    return Text(text, style=_STYLE.get(text, ""))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(url: str, doc: dict[str, Any]) -> Group:
    eh = doc.get("endpoint_health", {})
    summary = eh.get("summary", {})
    head = Text.assemble(
        ("fastproxy health  ", "bold"),
        _styled(doc.get("status")),
        f"   endpoints {summary.get('healthy_endpoints', 0)}/{summary.get('total_endpoints', 0)}"
        f" healthy   probing {'on' if eh.get('enabled') else 'off'}   {url}",
    )
    endpoints = Table(title="Endpoints", title_justify="left", expand=True)
    for col in (
        "API URL",
        "Health",
        "Ping",
        "Ping ms",
        "HTTP",
        "Status",
        "HTTP ms",
        "Fails (ping/http)",
        "Last error",
        "Backends",
    ):
        endpoints.add_column(col, overflow="fold")
    for ep in eh.get("endpoints", []):
        endpoints.add_row(
            ep.get("api_url"),
            _styled(ep.get("condition") or ("healthy" if ep.get("is_healthy") else "unhealthy")),
            _styled(ep.get("ping_status")),
            _ms(ep.get("last_ping_latency_ms")),
            _styled(ep.get("http_status")),
            str(ep.get("last_http_status_code") or "-"),
            _ms(ep.get("last_http_latency_ms")),
            f"{ep.get('consecutive_ping_failures', 0)}/{ep.get('consecutive_http_failures', 0)}",
            ep.get("last_http_error") or ep.get("last_ping_error") or "",
            ", ".join(ep.get("backends_using_url", [])),
        )
    backends = Table(title="Circuit breakers", title_justify="left", expand=True)
    for col in ("Backend", "Type", "Circuit", "Failures", "Open until", "Endpoint"):
        backends.add_column(col, overflow="fold")
    for b in eh.get("backends", []):
        backends.add_row(
            b.get("name"),
            b.get("backend_type") or "-",
            _styled(b.get("circuit_state")),
            str(b.get("consecutive_failures", 0)),
            b.get("open_until") or "-",
            _styled("healthy" if b.get("is_endpoint_healthy") else "unhealthy"),
        )
    storage = doc.get("storage") or {}
    foot = Text.assemble(
        "storage: usage_db ",
        _styled(storage.get("usage_db")),
        f"  queue {storage.get('queue_depth', 0)}  dropped {storage.get('dropped_records', 0)}"
        f"  write errors {storage.get('write_errors', 0)}",
    )
    return Group(head, endpoints, backends, foot)


def run(ns: argparse.Namespace) -> int:
    prog = getattr(ns, "prog", "fastproxy health")
    try:
        url = endpoint(gateway_url(ns), PATH)
        doc = fetch(url, ns.timeout)
    except CliError as err:
        return fail(prog, err)
    if not ns.watch:
        if ns.json:
            print_json(doc)
        else:
            Console().print(render(url, doc))
        return exit_code(doc)
    return watch(prog, doc, lambda: fetch(url, ns.timeout), ns, lambda: _watch_table(url, doc, ns))


def _watch_table(url: str, first: dict[str, Any], ns: argparse.Namespace) -> None:
    from rich.live import Live

    shown: RenderableType = render(url, first)
    with Live(console=Console(), auto_refresh=False, screen=False) as live:
        while True:
            live.update(shown, refresh=True)
            time.sleep(ns.interval)
            try:
                shown = render(url, fetch(url, ns.timeout))
            except CliError as err:  # keep trying: the gateway may be restarting
                shown = Text(str(err), style="red")
