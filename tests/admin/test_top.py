"""``fastproxy top`` / scripts/inspect_activity.py: the table, the messages, the exit codes."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from fastproxy.cli_top import ActivityView, human_bytes, human_duration
from tests.support.waiting import wait_until

from .conftest import Admin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "inspect_activity.py"


def conn(
    cid: int, session: str, model: str, rx: int, tx: int, dur: float, kind: str = "streaming"
) -> dict[str, Any]:
    return {
        "connection_id": cid,
        "session_id": session,
        "connection_type": kind,
        "started_at": 1767225600.0,
        "started_at_iso": "2026-01-01T00:00:00.000Z",
        "duration_seconds": dur,
        "last_activity_at": 1767225601.0,
        "last_activity_at_iso": "2026-01-01T00:00:01.000Z",
        "model": model,
        "bytes_rx": rx,
        "bytes_tx": tx,
    }


def doc(conns_a: list[dict[str, Any]], conns_b: list[dict[str, Any]]) -> dict[str, Any]:
    all_c = conns_a + conns_b

    def act(cs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "active_connections": len(cs),
            "connections": cs,
            "total_bytes_rx": sum(c["bytes_rx"] for c in cs),
            "total_bytes_tx": sum(c["bytes_tx"] for c in cs),
            "lifetime_bytes_rx": 0,
            "lifetime_bytes_tx": 0,
        }

    return {
        "timestamp": 1767225602.0,
        "timestamp_iso": "2026-01-01T00:00:02.000Z",
        "activity_tracking_enabled": True,
        "instances": [
            {"name": "openai.1", "activity": act(conns_a)},
            {"name": "anthropic", "activity": act(conns_b)},
        ],
        "global_activity": {
            "total_active_connections": len(all_c),
            "total_bytes_rx": sum(c["bytes_rx"] for c in all_c),
            "total_bytes_tx": sum(c["bytes_tx"] for c in all_c),
        },
    }


def render(view: ActivityView, d: dict[str, Any], now: float) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(view.render(d, now=now))
    return console.export_text()


def test_table_rows_sorted_by_activity_with_totals_and_rates() -> None:
    view = ActivityView()
    first = doc(
        [conn(1, "abc123def456ghi789", "gpt-4", 15360, 14848, 12.3)],
        [conn(2, "xyz789", "claude-3-sonnet", 100, 100, 5.7)],
    )
    text = render(view, first, now=100.0)
    for header in ("Backend", "Session", "Type", "Model", "Duration", "RX", "TX", "RX/s", "TX/s"):
        assert header in text
    assert "Active Connections: 2 | Total RX: 15.1 KB | Total TX: 14.6 KB" in text
    assert "abc123def4..." in text and "abc123def456ghi789" not in text
    assert text.index("gpt-4") < text.index("claude-3-sonnet")  # busier first
    assert "12.3s" in text and "15.0 KB" in text and "Total" in text
    # Two seconds later the Anthropic stream moved 20 KB, the other nothing: it leads.
    second = doc(
        [conn(1, "abc123def456ghi789", "gpt-4", 15360, 14848, 14.3)],
        [conn(2, "xyz789", "claude-3-sonnet", 20580, 20580, 7.7)],
    )
    text = render(view, second, now=102.0)
    assert text.index("claude-3-sonnet") < text.index("gpt-4")
    assert "10.0 KB/s" in text and "0 B/s" in text


def test_empty_table_and_humanised_units() -> None:
    text = render(ActivityView(), doc([], []), now=1.0)
    assert "No active connections." in text
    assert (human_bytes(0), human_bytes(1536), human_bytes(3 * 1024**3)) == (
        "0 B",
        "1.5 KB",
        "3.0 GB",
    )
    assert (human_duration(5.25), human_duration(125), human_duration(7300)) == (
        "5.2s",
        "2m05s",
        "2h01m",
    )


def run_script(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_script_snapshot_raw_and_messages(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"enable_activity_tracking": True})
    done = threading.Event()

    def stream() -> None:
        try:
            httpx.post(
                admin.gw.url + "/v1/chat/completions",
                timeout=60,
                json={
                    "model": "top-model",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={
                    "x-session-id": "top-session",
                    "x-mock-tokens": "40",
                    "x-mock-interval-ms": "100",
                },
            )
        finally:
            done.set()

    t = threading.Thread(target=stream)
    t.start()
    try:
        wait_until(lambda: admin.plane.activity.active_connections == 1, what="a live stream")
        out = run_script(admin.url)
        assert out.returncode == 0, out.stderr
        assert "top-model" in out.stdout and "top-session" in out.stdout
        assert "Active Connections: 1" in out.stdout
        raw = run_script("--raw", admin.url)
        assert raw.returncode == 0
        assert json.loads(raw.stdout)["activity_tracking_enabled"] is True
    finally:
        t.join(30)


def test_script_tracking_off_and_unreachable(admin: Admin) -> None:
    out = run_script(admin.url)
    assert out.returncode == 3
    assert "Activity tracking is off" in out.stderr and "--enable-activity-tracking" in out.stderr
    out = run_script("http://127.0.0.1:9", "--timeout", "2")
    assert out.returncode == 1
    assert "cannot reach the gateway" in out.stderr


def test_top_watch_exits_cleanly_on_ctrl_c(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"enable_activity_tracking": True})
    master, slave = pty.openpty()  # a real terminal, so rich renders live updates
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "top", admin.url, "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120", "LINES": "40"},
        cwd=ROOT,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"Refreshing every 0.2s" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 65536)
        assert b"Refreshing every 0.2s" in seen, seen[-2000:]
        assert b"Connection Activity" in seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
