"""The recorder process under `fastproxy run`: it outlives a SIGKILLed gateway until it has
written everything it was handed, and a killed recorder is replaced while traffic flows.

Real parts only: the gateway as a subprocess with a temp config, the mock LLM as its
backend, httpx as the client, the usage database read with sqlite3. Every wait polls
with a deadline (tests.support.waiting).
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import backend_for
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until


def _rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM usage_requests").fetchone()[0])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start(mock: Any, tmp_path: Path) -> tuple[GatewayProcess, Path, int]:
    db = tmp_path / "state" / "usage.db"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "admin": {"port": 0},
                "state_dir": str(tmp_path / "state"),
                "backends": {
                    "openai.1": backend_for(mock, "openai"),
                    "anthropic.1": backend_for(mock, "anthropic"),
                },
                "default_backend": "openai.1",
                "usage_tracking": {"persistence_path": str(db), "flush_interval_seconds": 0.05},
            }
        )
    )
    proc = GatewayProcess(["--config", str(config)])
    return proc, db, proc.wait_ready()


def _send(client: httpx.Client, i: int) -> None:
    if i % 3 == 2:
        r = client.post(
            "/v1/messages",
            headers={"x-mock-tokens": "3", "anthropic-version": "2023-06-01"},
            json={
                "model": "anthropic.1:claude-x",
                "max_tokens": 16,
                "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": f"question {i} " + "words " * 50}],
            },
        )
    else:
        r = client.post(
            "/v1/chat/completions",
            headers={"x-mock-tokens": "3"},
            json={
                "model": "gpt-4o",
                "stream": i % 2 == 0,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": f"request {i} " + "text " * 100},
                ],
            },
        )
    assert r.status_code == 200, r.text


def _storage(client: httpx.Client) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/internal/health").json()["storage"]
    return doc


def _recorder_after(client: httpx.Client, db: Path, n: int) -> int:
    """Send ``n`` requests, wait for their ``n`` rows, return the recorder's pid."""
    for i in range(n):
        _send(client, i)
    wait_until(lambda: db.exists() and _rows(db) == n, what=f"the first {n} written")
    pid = _storage(client)["recorder_pid"]
    assert isinstance(pid, int)
    return pid


def test_sigkill_of_the_gateway_loses_nothing_handed_over(mock_llm: Any, tmp_path: Path) -> None:
    """The database is locked while N requests are answered, so every record is still
    unwritten in the recorder when the gateway is SIGKILLed. The recorder outlives it,
    reads its channel to EOF, writes all N once the lock goes, and exits."""
    n = 300
    proc, db, port = _start(mock_llm, tmp_path)
    lock: sqlite3.Connection | None = None
    try:
        wait_until(db.exists, what="the recorder created the database")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(n):
                _send(client, i)
            # Handed over: everything answered is in the recorder's hands (none in the
            # gateway's buffer), none written.
            st = wait_until(
                lambda: (s := _storage(client))["queue_depth"] == n and s,
                what=f"{n} records handed to the recorder",
            )
        recorder = st["recorder_pid"]
        assert isinstance(recorder, int) and _alive(recorder)
        assert st["pending_body_bytes"] == 0 and st["dropped_records"] == 0
        assert _rows(db) == 0
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        assert _alive(recorder), "the recorder must outlive its gateway"
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        wait_until(lambda: not _alive(recorder), timeout=30, what="the recorder finished")
        assert _rows(db) == n
    finally:
        if lock is not None:
            lock.close()
        proc.stop()


def test_a_killed_recorder_is_replaced_and_traffic_flows(mock_llm: Any, tmp_path: Path) -> None:
    proc, db, port = _start(mock_llm, tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            first = _recorder_after(client, db, 20)
            os.kill(first, signal.SIGKILL)
            # Traffic never notices: requests during the gap are answered as usual.
            for i in range(20, 60):
                _send(client, i)
            st = wait_until(
                lambda: (
                    (s := _storage(client))["recorder_pid"] not in (None, first)
                    and s["usage_db"] == "ok"
                    and s
                ),
                what="a new recorder",
            )
            assert st["recorder_restarts"] == 1
            before = _rows(db)
            for i in range(60, 100):
                _send(client, i)
            # Everything after the restart is written. Of the gap, records handed to the
            # dying recorder's socket before its death was seen are lost, and counted
            # (``records_lost`` is an upper bound: the last report may predate a batch);
            # the rest waited in the gateway for the new recorder.
            wait_until(lambda: _rows(db) >= before + 40, what="the last 40 records written")
            st = wait_until(
                lambda: (s := _storage(client))["queue_depth"] == 0 and s, what="all handed over"
            )
            rows = _rows(db)
            assert rows >= 60 and rows + st["records_lost"] >= 100, (rows, st)
            assert st["dropped_records"] == st["records_lost"]
        assert "usage recorder" in proc.output() and "ended" in proc.output()
    finally:
        proc.stop()


def _autogroup(pid: int) -> tuple[str, int] | None:
    """(group, nice), or None where the process is in no autogroup: a kernel without
    them, autogroups switched off, or a cgroup of its own (most containers), where
    Linux leaves the file empty."""
    try:
        fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    except OSError:
        return None
    if len(fields) != 3:
        return None
    return fields[0], int(fields[2])


def test_the_recorder_runs_in_a_session_of_its_own_at_the_lowest_weight(
    mock_llm: Any, tmp_path: Path
) -> None:
    """Linux shares a core between sessions before it looks inside them: the recorder
    leaves the gateway's session and weighs as little as it can while it keeps up, so its
    bursts do not hold up the processes it shares a core with (docs/usage-storage.md)."""
    proc, db, port = _start(mock_llm, tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            recorder = _recorder_after(client, db, 6)
        gateway = proc.pid
        assert os.getsid(recorder) == recorder != os.getsid(gateway)
        mine = _autogroup(gateway)
        if mine is None:
            return  # no autogroup to weigh: the session is all there is
        theirs = _autogroup(recorder)
        assert theirs is not None and theirs[0] != mine[0]
        assert theirs[1] == 19
    finally:
        proc.stop()
