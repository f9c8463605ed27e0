"""Usage tracking at saturation: does the recorder keep up, and what does the loop pay?

    .venv/bin/python -m bench.usage.saturation [--seconds 60] [--connections 64]

The gateway (usage tracking on) runs on CPU 0 behind the canned nginx backend of
bench/load (CPU 1); its usage recorder process is pinned to CPU 1 as the load harness
pins it; wrk (CPU 1) drives JSON chat requests at c=64 for ``--seconds``. Every 5 s the
gateway's ``/internal/health`` storage section is read: the records queued (gateway
buffer, socket, recorder), written, dropped and lost. Printed: that series, then requests
answered against rows written once the load stopped and the queue drained, and the CPU
per request of the event loop thread and per record of the recorder (from /proc).

A recorder that keeps up shows a flat ``queue_depth``; one that does not shows it at
its bound and ``dropped_records`` rising (the gateway never blocks on it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.load.backend import start_nginx_backend
from bench.load.processes import (
    _children,
    cpu_seconds,
    fastproxy_config,
    free_port,
    start_pinned_gateway,
    thread_cpu_seconds,
)
from bench.load.scenarios import JSON_BODY

_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def _storage(admin_port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{admin_port}/internal/health"
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.loads(resp.read())
    storage = doc.get("storage")
    return storage if isinstance(storage, dict) else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.usage.saturation")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args(argv)
    wrk, nginx = shutil.which("wrk"), shutil.which("nginx")
    if wrk is None or nginx is None:
        raise SystemExit("needs wrk and nginx (apt-get install wrk nginx)")
    work = Path(tempfile.mkdtemp(prefix="fastproxy-saturation-"))
    backend = start_nginx_backend(nginx, work, (1,))
    gateway = None
    try:
        cfg = fastproxy_config(backend.port, work, usage=True)
        port, admin_port = free_port(), free_port()
        cfg["port"] = port
        cfg["admin"] = {"port": admin_port}
        run = ["-m", "fastproxy", "run", "--config", "{config}"]
        gateway = start_pinned_gateway(work, cfg, run, (port, admin_port))
        recorders = _children(gateway.pid)
        (work / "post.lua").write_text(_LUA.format(body=JSON_BODY))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        loop0 = thread_cpu_seconds(gateway.pid).get(gateway.pid, 0.0)
        rec0 = sum(cpu_seconds(p) for p in recorders)
        wrk_args = [f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(work / "post.lua")]
        load = subprocess.Popen(
            ["taskset", "-c", "1", wrk, "-t1", *wrk_args, url],
            stdout=subprocess.PIPE,
            text=True,
        )
        print("t (s) | queue_depth | rows_written | dropped_records | records_lost")
        started = time.monotonic()
        while load.poll() is None:
            time.sleep(5)
            s = _storage(admin_port)
            print(
                f"{time.monotonic() - started:5.0f} | {s.get('queue_depth')} | "
                f"{s.get('rows_written')} | {s.get('dropped_records')} | {s.get('records_lost')}"
            )
        out = load.communicate()[0]
        loop_s = thread_cpu_seconds(gateway.pid).get(gateway.pid, 0.0) - loop0
        answered = int(out.split(" requests in")[0].split()[-1])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _storage(admin_port).get("queue_depth"):
            time.sleep(0.5)
        rec_s = sum(cpu_seconds(p) for p in recorders) - rec0
        s = _storage(admin_port)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        gateway = None
        rows = (
            sqlite3.connect(work / "usage.db")
            .execute("select count(*) from usage_requests")
            .fetchone()[0]
        )
        print(
            f"\nanswered {answered:,} ({answered / args.seconds:,.0f}/s); rows {rows:,}; "
            f"dropped {s.get('dropped_records')}; lost {s.get('records_lost')}\n"
            f"event loop thread {loop_s / answered * 1e6:.1f} µs/request; "
            f"recorder {rec_s / max(rows, 1) * 1e6:.1f} µs/record (its own core)"
        )
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
