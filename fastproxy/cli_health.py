"""``fastproxy health``: the /internal/health document as a table, once or live.

It reads the running gateway's monitoring API over HTTP (never the process's memory),
so it works against any gateway the operator can reach, including over an SSH tunnel.

Exit codes: 0 all healthy, 3 the gateway reports "degraded" (so ``fastproxy health ||
page-someone`` works in scripts), 1 the API could not be read, 2 bad arguments.
With ``--watch`` it refreshes until Ctrl-C and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

PATH = "/internal/health"
EXIT_DEGRADED = 3
_STYLE = {"ok": "green", "healthy": "green", "closed": "green", "unhealthy": "bold red",
          "open": "bold red", "failing": "red", "half_open": "yellow", "misconfigured": "yellow",
          "rate_limited": "yellow", "degraded": "bold yellow", "unavailable": "dim",
          "disabled": "dim", "pending": "dim"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health", help="show backend health and circuit breakers (reads /internal/health)",
        description="Show endpoint health and circuit-breaker state from a running gateway.")
    p.add_argument("--url", metavar="URL",
                   help="gateway base URL or full health URL (default: the admin listener "
                        "http://127.0.0.1:8001, then the data port http://127.0.0.1:8000; "
                        "FASTPROXY_ADMIN_PORT / FASTPROXY_PORT are honoured)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between refreshes with --watch (default 2)")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="HTTP timeout in seconds (default 5)")


def candidate_urls(url: str | None, env: dict[str, str]) -> list[str]:
    if url:
        url = url.rstrip("/")
        return [url if url.endswith(PATH) else url + PATH]
    admin = f"http://{env.get('FASTPROXY_ADMIN_HOST', '127.0.0.1')}:{env.get('FASTPROXY_ADMIN_PORT', '8001')}"
    data = f"http://{env.get('FASTPROXY_HOST', '127.0.0.1')}:{env.get('FASTPROXY_PORT', '8000')}"
    return [admin + PATH, data + PATH]


def fetch(urls: list[str], timeout: float) -> tuple[str, dict[str, Any]]:
    """The first URL that answers with a health document; raises OSError otherwise."""
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            continue
        except (OSError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
            continue
        if isinstance(doc, dict) and "endpoint_health" in doc:
            return url, doc
        errors.append(f"{url}: not a health document")
    raise OSError("; ".join(errors))


def _styled(value: Any) -> Text:
    text = "-" if value is None else str(value)
    return Text(text, style=_STYLE.get(text, ""))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(url: str, doc: dict[str, Any]) -> Group:
    eh = doc.get("endpoint_health", {})
    summary = eh.get("summary", {})
    head = Text.assemble(
        ("fastproxy health  ", "bold"), _styled(doc.get("status")),
        f"   endpoints {summary.get('healthy_endpoints', 0)}/{summary.get('total_endpoints', 0)}"
        f" healthy   probing {'on' if eh.get('enabled') else 'off'}   {url}")
    endpoints = Table(title="Endpoints", title_justify="left", expand=True)
    for col in ("API URL", "Health", "Ping", "Ping ms", "HTTP", "Status", "HTTP ms",
                "Fails (ping/http)", "Last error", "Backends"):
        endpoints.add_column(col, overflow="fold")
    for ep in eh.get("endpoints", []):
        endpoints.add_row(
            ep.get("api_url"), _styled(ep.get("condition") or
                                       ("healthy" if ep.get("is_healthy") else "unhealthy")),
            _styled(ep.get("ping_status")), _ms(ep.get("last_ping_latency_ms")),
            _styled(ep.get("http_status")), str(ep.get("last_http_status_code") or "-"),
            _ms(ep.get("last_http_latency_ms")),
            f"{ep.get('consecutive_ping_failures', 0)}/{ep.get('consecutive_http_failures', 0)}",
            ep.get("last_http_error") or ep.get("last_ping_error") or "",
            ", ".join(ep.get("backends_using_url", [])))
    backends = Table(title="Circuit breakers", title_justify="left", expand=True)
    for col in ("Backend", "Type", "Circuit", "Failures", "Open until", "Endpoint"):
        backends.add_column(col, overflow="fold")
    for b in eh.get("backends", []):
        backends.add_row(b.get("name"), b.get("backend_type") or "-",
                         _styled(b.get("circuit_state")), str(b.get("consecutive_failures", 0)),
                         b.get("open_until") or "-",
                         _styled("healthy" if b.get("is_endpoint_healthy") else "unhealthy"))
    storage = doc.get("storage") or {}
    foot = Text.assemble(
        "storage: usage_db ", _styled(storage.get("usage_db")),
        f"  queue {storage.get('queue_depth', 0)}  dropped {storage.get('dropped_records', 0)}"
        f"  write errors {storage.get('write_errors', 0)}")
    return Group(head, endpoints, backends, foot)


def run(ns: argparse.Namespace) -> int:
    console = Console()
    urls = candidate_urls(ns.url, dict(os.environ))
    if ns.interval <= 0 or ns.timeout <= 0:
        console.print("fastproxy health: --interval and --timeout must be > 0", style="red")
        return 2
    if not ns.watch:
        try:
            url, doc = fetch(urls, ns.timeout)
        except OSError as exc:
            console.print(f"fastproxy health: cannot read the health API: {exc}", style="red")
            return 1
        if ns.json:
            print(json.dumps(doc, indent=2))
        else:
            console.print(render(url, doc))
        return 0 if doc.get("status") == "ok" else EXIT_DEGRADED
    from rich.live import Live

    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                try:
                    url, doc = fetch(urls, ns.timeout)
                    live.update(render(url, doc), refresh=True)
                except OSError as exc:
                    live.update(Text(f"cannot read the health API: {exc}", style="red"),
                                refresh=True)
                time.sleep(ns.interval)
    except KeyboardInterrupt:
        return 0
