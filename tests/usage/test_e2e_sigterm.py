"""SIGTERM with records still queued: `fastproxy run` writes every one before it exits.

The store writes as soon as it can, so to be sure records are still queued when the
signal arrives the test holds an exclusive lock on the database: every write fails and
stays queued for a retry. The lock is released once the gateway logs that it is stopping;
the store's final flush must then write them all.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import yaml

from tests.conftest import backend_for
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

N = 1000


def _rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM usage").fetchone()[0])


def test_sigterm_flushes_every_queued_record(mock_llm, tmp_path: Path) -> None:
    db = tmp_path / "state" / "usage.db"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "admin": {"port": 0},
                "state_dir": str(tmp_path / "state"),
                "backends": {"openai.1": backend_for(mock_llm, "openai")},
                "usage_tracking": {"persistence_path": str(db), "flush_interval_seconds": 60},
            }
        )
    )
    proc = GatewayProcess(["--config", str(config)])
    lock: sqlite3.Connection | None = None
    try:
        port = proc.wait_ready()
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(N):
                r = client.post(
                    "/v1/chat/completions",
                    headers={"x-mock-tokens": "2"},
                    json={
                        "model": "gpt-4o",
                        "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"request {i}"}],
                    },
                )
                assert r.status_code == 200

            def queued() -> int:
                return int(client.get("/internal/health").json()["storage"]["queue_depth"])

            wait_until(lambda: queued() == N, what=f"{N} records queued")
        assert _rows(db) == 0  # all N are still in the gateway's memory
        proc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in proc.output(), what="the gateway stopping")
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        code = proc.wait()
    finally:
        if lock is not None:
            lock.close()
        proc.stop()
    assert code == 0, proc.output()
    assert _rows(db) == N
