"""SIGKILL the gateway mid-load: requests answered vs records written by the recorder.

    .venv/bin/python -m bench.usage.recorder_sigkill [--clients 16] [--seconds 4]

Starts the mock LLM (in this process) and ``fastproxy run`` (a subprocess) with usage
tracking on, drives chat requests (~1 KB prompts, half streams) from ``--clients``
threads for ``--seconds``, polls ``/internal/health`` once, SIGKILLs the gateway, waits
for the recorder to finish and exit, and prints: requests answered before the kill, what
the recorder had written and held at the poll, whether it outlived the gateway, and the
rows in the database. Records not yet handed over when the gateway died are the only
ones a SIGKILL may lose.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from fastproxy.mockllm import MockLLMServer


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _mock() -> str:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    mock = MockLLMServer(host="127.0.0.1", port=0)
    asyncio.run_coroutine_threadsafe(mock.start(), loop).result(10)
    return mock.url


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.usage.recorder_sigkill")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    ns = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recorder-sigkill-"))
    db = tmp / "usage.db"
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "admin": {"port": 0},
                "state_dir": str(tmp),
                "backends": {"openai.1": {"type": "openai", "api_url": _mock()}},
                "usage_tracking": {"persistence_path": str(db), "flush_interval_seconds": 0.05},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY")}
    gw = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert gw.stdout is not None
    port = 0
    for line in gw.stdout:
        m = re.search(r"data plane listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in gw.stdout or ()], daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    answered = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        nonlocal answered
        with httpx.Client(base_url=base, timeout=5) as c:
            i = 0
            while not stop.is_set():
                body = {
                    "model": "gpt-4o",
                    "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"c{k} r{i} " + "text " * 200}],
                }
                try:
                    r = c.post("/v1/chat/completions", headers={"x-mock-tokens": "3"}, json=body)
                except httpx.HTTPError:
                    return  # the gateway is gone
                if r.status_code == 200:
                    with lock:
                        answered += 1
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(ns.clients)]
    for t in threads:
        t.start()
    time.sleep(ns.seconds)
    st: dict[str, Any] = httpx.get(base + "/internal/health", timeout=5).json()["storage"]
    gw.send_signal(signal.SIGKILL)
    gw.wait(10)
    stop.set()
    for t in threads:
        t.join()
    recorder = int(st["recorder_pid"])
    outlived = _alive(recorder)
    deadline = time.monotonic() + 60
    while _alive(recorder) and time.monotonic() < deadline:
        time.sleep(0.01)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT count(*) FROM usage_requests").fetchone()[0]
    print(
        f"answered before the kill: {answered}; at the last poll the recorder had written "
        f"{st['rows_written']} and held {st['queue_depth']}; recorder outlived the gateway: "
        f"{outlived}; rows once it exited: {rows}; answered but not written: {answered - rows}"
    )


if __name__ == "__main__":
    main()
