"""``fastproxy top`` and ``scripts/inspect_activity.py``: live connection activity.

Reads ``GET /v1/diagnostics`` from a running gateway (the admin port by default) and
shows one row per live exchange: Backend, Session, Type, Model, Duration, RX, TX and
their rates, busiest first, with totals. Plain ``urllib`` (the gateway's runtime has no
HTTP client dependency) and ``rich`` for the table.

Exit codes: 0 shown (or Ctrl-C in watch mode), 1 gateway unreachable or refusing,
3 activity tracking is off on that gateway (nothing to show; the message says how to
turn it on), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEFAULT_URL = "http://localhost:8001"
EXIT_UNREACHABLE = 1
EXIT_TRACKING_OFF = 3
TRACKING_OFF = ("Activity tracking is off on this gateway. Start it with "
                "--enable-activity-tracking, ENABLE_ACTIVITY_TRACKING=1 or "
                "`enable_activity_tracking: true` in the config file.")


class FetchError(Exception):
    """The gateway could not be read; the message is for the operator."""


def add_arguments(parser: argparse.ArgumentParser, *, watch_default: bool) -> None:
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help=f"gateway admin (or data) URL, default {DEFAULT_URL}")
    if watch_default:
        parser.add_argument("--once", dest="watch", action="store_false",
                            help="print one snapshot and exit")
    else:
        parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.set_defaults(watch=watch_default)
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                        help="seconds between refreshes (default 1.0)")
    parser.add_argument("--raw", action="store_true", help="print the JSON instead of a table")
    parser.add_argument("--timeout", type=_positive, default=5.0, metavar="S",
                        help="HTTP timeout per request (default 5)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "top", help="live table of active connections (needs activity tracking)",
        description="Live activity of a running gateway, from GET /v1/diagnostics.",
        epilog="Exit codes: 0 ok, 1 unreachable, 3 activity tracking off.")
    add_arguments(p, watch_default=True)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def fetch(url: str, timeout: float) -> dict[str, Any]:
    target = url.rstrip("/") + "/v1/diagnostics"
    # No proxies: diagnostics answer loopback peers only, and an http_proxy variable
    # would send a request for localhost somewhere else.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        raise FetchError(f"{target} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach the gateway at {target} ({reason}). Is it running, "
                         "and is this its admin port (admin.port, default 8001)?") from None
    except ValueError:
        raise FetchError(f"{target} did not answer JSON; is this a fastproxy gateway?") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("detail", exc.reason))
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


@dataclass(slots=True)
class _Sample:
    at: float
    rx: int
    tx: int


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_rate(n: float) -> str:
    return human_bytes(n) + "/s"


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class ActivityView:
    """Turns successive diagnostics documents into tables; keeps samples for rates."""

    __slots__ = ("_prev",)

    def __init__(self) -> None:
        self._prev: dict[Any, _Sample] = {}

    def render(self, doc: dict[str, Any], now: float | None = None,
               footer: str | None = None) -> RenderableType:
        now = time.monotonic() if now is None else now
        rows = []
        seen: dict[Any, _Sample] = {}
        for inst in doc.get("instances", []):
            for c in (inst.get("activity") or {}).get("connections", []):
                key = (inst["name"], c.get("connection_id"))
                rx, tx = int(c.get("bytes_rx", 0)), int(c.get("bytes_tx", 0))
                prev = self._prev.get(key)
                if prev is not None and now > prev.at:
                    span = now - prev.at
                    rx_rate, tx_rate = (rx - prev.rx) / span, (tx - prev.tx) / span
                else:  # first sight: the average since the request started
                    span = max(float(c.get("duration_seconds") or 0), 1e-3)
                    rx_rate, tx_rate = rx / span, tx / span
                seen[key] = _Sample(now, rx, tx)
                rows.append((tx_rate + rx_rate, rx + tx, inst["name"], c, rx, tx, rx_rate,
                             tx_rate))
        self._prev = seen
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)  # busiest first

        table = Table(title="Active Connections", expand=False)
        for col, justify in (("Backend", "left"), ("Session", "left"), ("Type", "left"),
                             ("Model", "left"), ("Duration", "right"), ("RX", "right"),
                             ("TX", "right"), ("RX/s", "right"), ("TX/s", "right")):
            # no_wrap: a narrow terminal truncates a cell instead of doubling the rows.
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        sum_rx = sum_tx = 0
        sum_rxr = sum_txr = 0.0
        for _, _, backend, c, rx, tx, rxr, txr in rows:
            session = c.get("session_id") or "-"
            if len(session) > 13:
                session = session[:10] + "..."
            table.add_row(backend, session, c.get("connection_type", "?"), c.get("model") or "-",
                          human_duration(float(c.get("duration_seconds") or 0)),
                          human_bytes(rx), human_bytes(tx), human_rate(rxr), human_rate(txr))
            sum_rx += rx
            sum_tx += tx
            sum_rxr += rxr
            sum_txr += txr
        if rows:
            table.add_section()
            table.add_row(Text("Total", style="bold"), "", "", "", "", human_bytes(sum_rx),
                          human_bytes(sum_tx), human_rate(sum_rxr), human_rate(sum_txr))
        g = doc.get("global_activity") or {}
        updated = datetime.now().strftime("%H:%M:%S")
        summary = (f"Active Connections: {g.get('total_active_connections', len(rows))} | "
                   f"Total RX: {human_bytes(g.get('total_bytes_rx', sum_rx))} | "
                   f"Total TX: {human_bytes(g.get('total_bytes_tx', sum_tx))} | "
                   f"Updated: {updated}")
        parts: list[RenderableType] = [Panel(summary, title="Connection Activity", expand=False)]
        parts.append(table if rows else Text("No active connections.", style="dim"))
        if footer:
            parts.append(Text(footer, style="dim"))
        return Group(*parts)


def run(ns: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    if not ns.watch:
        return _once(ns, console, err)
    return _watch(ns, console, err)


def _once(ns: argparse.Namespace, console: Console, err: Console) -> int:
    try:
        doc = fetch(ns.url, ns.timeout)
    except FetchError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_UNREACHABLE
    if ns.raw:
        console.print_json(data=doc)
        return 0
    if not doc.get("activity_tracking_enabled"):
        err.print(TRACKING_OFF, highlight=False, soft_wrap=True)
        return EXIT_TRACKING_OFF
    console.print(ActivityView().render(doc))
    return 0


def _watch(ns: argparse.Namespace, console: Console, err: Console) -> int:
    view = ActivityView()
    footer = f"Refreshing every {ns.interval:g}s... (Ctrl+C to stop)"
    try:
        if ns.raw:  # one JSON document per line, for piping into jq or a log
            while True:
                try:
                    print(json.dumps(fetch(ns.url, ns.timeout)), flush=True)
                except FetchError as exc:
                    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                time.sleep(ns.interval)
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                try:
                    doc = fetch(ns.url, ns.timeout)
                    shown: RenderableType = (
                        view.render(doc, footer=footer) if doc.get("activity_tracking_enabled")
                        else Group(Text(TRACKING_OFF, style="yellow"), Text(footer, style="dim")))
                except FetchError as exc:
                    # Keep trying: the gateway may be restarting.
                    shown = Group(Text(f"error: {exc}", style="red"), Text(footer, style="dim"))
                live.update(shown, refresh=True)
                time.sleep(ns.interval)
    except KeyboardInterrupt:
        return 0
