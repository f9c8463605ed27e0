"""``fastproxy top`` and ``scripts/inspect_activity.py``: live connection activity.

Reads ``GET /v1/diagnostics`` from a running gateway (its admin listener by default) and
shows one row per live exchange: Backend, Session, Type, Model, Duration, RX, TX and
their rates, busiest first, with totals, drawn with ``rich``.

Where the gateway is, ``--json``, ``--timeout`` and the exit codes are the same for every
command that talks to a gateway (fastproxy/cli_common.py, docs/cli.md): 0 shown (or
Ctrl-C in watch mode), 1 no usable answer (nothing listens, a timeout, an HTTP error),
2 bad arguments or config, 3 activity tracking is off on that gateway (nothing to show;
the message says how to turn it on). Watch mode keeps trying while the gateway restarts,
but gives up at once (exit 1) when the first read fails.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .cli_common import (
    DEFAULT_URL,
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
    say,
    watch,
)

PATH = "/v1/diagnostics"
EXIT_TRACKING_OFF = EXIT_NOT_OK
TRACKING_OFF = (
    "Activity tracking is off on this gateway. Start it with "
    "--enable-activity-tracking, ENABLE_ACTIVITY_TRACKING=1 or "
    "`enable_activity_tracking: true` in the config file."
)
EPILOG = (
    "Exit codes: 0 ok, 1 no usable answer (e.g. nothing listens at the URL), "
    "2 bad arguments or config, 3 activity tracking off. See docs/cli.md."
)

__all__ = ["DEFAULT_URL", "ActivityView", "add_arguments", "add_parser", "fetch", "run"]


def add_arguments(parser: argparse.ArgumentParser, *, watch_default: bool) -> None:
    add_gateway_arguments(parser, positional_url=True)
    if watch_default:
        parser.add_argument(
            "--once", dest="watch", action="store_false", help="print one snapshot and exit"
        )
    else:
        parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.set_defaults(watch=watch_default, prog=parser.prog)
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default 1.0)",
    )
    # --raw was the flag before every command got --json; old scripts keep working.
    parser.add_argument(
        "--raw",
        dest="json",
        action="store_true",
        help="the same as --json (the older spelling, still accepted)",
    )


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "top",
        help="live table of active connections (needs activity tracking)",
        description="Live activity of a running gateway, from GET /v1/diagnostics.",
        epilog=EPILOG,
    )
    add_arguments(p, watch_default=True)


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """The diagnostics document at ``url``; CliError when there is none."""
    doc = get_json(url, timeout)
    if not (isinstance(doc, dict) and "activity_tracking_enabled" in doc):
        raise CliError(
            f"{url} did not answer a diagnostics document; is this a fastproxy gateway?",
            EXIT_NO_ANSWER,
        )
    return doc


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

    def render(
        self, doc: dict[str, Any], now: float | None = None, footer: str | None = None
    ) -> RenderableType:
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
                rows.append((tx_rate + rx_rate, rx + tx, inst["name"], c, rx, tx, rx_rate, tx_rate))
        self._prev = seen
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)  # busiest first

        table = Table(title="Active Connections", expand=False)
        for col, justify in (
            ("Backend", "left"),
            ("Session", "left"),
            ("Type", "left"),
            ("Model", "left"),
            ("Duration", "right"),
            ("RX", "right"),
            ("TX", "right"),
            ("RX/s", "right"),
            ("TX/s", "right"),
        ):
            # no_wrap: a narrow terminal truncates a cell instead of doubling the rows.
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        sum_rx = sum_tx = 0
        sum_rxr = sum_txr = 0.0
        for _, _, backend, c, rx, tx, rxr, txr in rows:
            session = c.get("session_id") or "-"
            if len(session) > 13:
                session = session[:10] + "..."
            table.add_row(
                backend,
                session,
                c.get("connection_type", "?"),
                c.get("model") or "-",
                human_duration(float(c.get("duration_seconds") or 0)),
                human_bytes(rx),
                human_bytes(tx),
                human_rate(rxr),
                human_rate(txr),
            )
            sum_rx += rx
            sum_tx += tx
            sum_rxr += rxr
            sum_txr += txr
        if rows:
            table.add_section()
            table.add_row(
                Text("Total", style="bold"),
                "",
                "",
                "",
                "",
                human_bytes(sum_rx),
                human_bytes(sum_tx),
                human_rate(sum_rxr),
                human_rate(sum_txr),
            )
        g = doc.get("global_activity") or {}
        updated = datetime.now().strftime("%H:%M:%S")
        summary = (
            f"Active Connections: {g.get('total_active_connections', len(rows))} | "
            f"Total RX: {human_bytes(g.get('total_bytes_rx', sum_rx))} | "
            f"Total TX: {human_bytes(g.get('total_bytes_tx', sum_tx))} | "
            f"Updated: {updated}"
        )
        parts: list[RenderableType] = [Panel(summary, title="Connection Activity", expand=False)]
        parts.append(table if rows else Text("No active connections.", style="dim"))
        if footer:
            parts.append(Text(footer, style="dim"))
        return Group(*parts)


def run(ns: argparse.Namespace) -> int:
    prog = getattr(ns, "prog", "fastproxy top")
    try:
        url = endpoint(gateway_url(ns), PATH)
        doc = fetch(url, ns.timeout)
    except CliError as err:
        return fail(prog, err)
    tracking = bool(doc.get("activity_tracking_enabled"))
    if not ns.watch:
        # The exit code says the same whatever the output format: 3 when tracking is off.
        if ns.json:
            print_json(doc)
        elif tracking:
            Console().print(ActivityView().render(doc))
        if not tracking:
            say(prog, TRACKING_OFF)
            return EXIT_TRACKING_OFF
        return EXIT_OK
    return watch(prog, doc, lambda: fetch(url, ns.timeout), ns, lambda: _watch_table(url, doc, ns))


def _watch_table(url: str, first: dict[str, Any], ns: argparse.Namespace) -> None:
    view = ActivityView()
    footer = f"Refreshing every {ns.interval:g}s... (Ctrl+C to stop)"

    def shown(doc: dict[str, Any]) -> RenderableType:
        if doc.get("activity_tracking_enabled"):
            return view.render(doc, footer=footer)
        return Group(Text(TRACKING_OFF, style="yellow"), Text(footer, style="dim"))

    current = shown(first)
    with Live(console=Console(), auto_refresh=False, transient=False) as live:
        while True:
            live.update(current, refresh=True)
            time.sleep(ns.interval)
            try:
                current = shown(fetch(url, ns.timeout))
            except CliError as err:  # keep trying: the gateway may be restarting
                current = Group(Text(f"error: {err}", style="red"), Text(footer, style="dim"))
