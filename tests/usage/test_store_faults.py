"""The usage store under faults: traffic (submit) is never affected, nothing is lost
when it can be kept, and the operator sees what happened (status + one log line)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy.storage.usage_store import UsageStore
from tests.support.waiting import wait_until
from tests.usage.test_store_queries import record


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]


def make(path: Path, **kw: object) -> UsageStore:
    opts = {"flush_interval": 0.05, "max_queue": 10_000, "retention_days": 0, **kw}
    s = UsageStore(path, **opts)  # type: ignore[arg-type]
    s.start()
    return s


def test_1000_queued_records_all_written_on_stop(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = make(db, flush_interval=60.0)  # nothing flushes on its own within the test
    for _ in range(1000):
        assert s.submit(record())
    s.stop()
    assert rows(db) == 1000


def test_thunks_run_on_the_writer_thread(tmp_path: Path) -> None:
    import threading

    seen: list[str] = []

    def thunk() -> dict:
        seen.append(threading.current_thread().name)
        return record()

    s = make(tmp_path / "u.db")
    s.submit(thunk)
    s.submit(lambda: 1 / 0)  # a broken thunk is counted, never kills the writer
    s.submit(record())
    s.stop()
    assert seen == ["fastproxy-usage-writer"]
    assert rows(tmp_path / "u.db") == 2 and s.thunk_errors == 1


def test_queue_overflow_drops_and_counts(tmp_path: Path) -> None:
    s = make(tmp_path / "u.db", max_queue=10, flush_interval=60.0)
    s._queue.put_nowait(lambda: __import__("time").sleep(0.5) or record())  # keep it busy
    results = [s.submit(record()) for _ in range(30)]
    assert results.count(False) >= 10
    assert s.status()["dropped_records"] == results.count(False)
    s.stop()


def test_garbage_file_moved_aside_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "u.db"
    db.write_bytes(b"this is not a sqlite database at all" * 100)
    with caplog.at_level(logging.WARNING, logger="fastproxy.storage"):
        s = make(db)
        s.submit(record())
        s.stop()
    assert rows(db) == 1
    aside = list(tmp_path.glob("u.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert any("moved aside" in r.getMessage() for r in caplog.records)


def test_locked_database_counted_then_recovers(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = make(db)
    s.submit(record())
    wait_until(lambda: s.rows_written == 1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    s.submit(record())
    wait_until(lambda: s.status()["write_errors"] >= 1, what="a locked-database error")
    assert s.status()["usage_db"] == "degraded" and s.status()["queue_depth"] >= 1
    holder.execute("ROLLBACK")
    holder.close()
    wait_until(lambda: s.rows_written == 2, what="the retried record written")
    assert s.status()["usage_db"] == "ok"
    s.stop()
    assert rows(db) == 2


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True
    ).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_counted_and_traffic_unaffected(tiny_tmpfs: Path) -> None:
    db = tiny_tmpfs / "u.db"
    s = make(db, max_queue=100_000)
    big = "x" * 4000
    accepted = sum(s.submit(record(user_agent=big)) for _ in range(200))  # ~800 KB > 96 KB
    assert accepted == 200  # submit never fails because of the disk
    wait_until(lambda: s.status()["write_errors"] >= 1, what="a disk-full error")
    st = s.status()
    assert st["usage_db"] == "degraded" and st["queue_depth"] > 0
    s.stop(timeout=10)


def test_read_only_file_is_counted(tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    db = tmp_path / "u.db"
    s = make(db)
    s.submit(record())
    s.stop()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not permitted here")
    try:
        s2 = make(db)
        assert s2.submit(record())
        wait_until(lambda: s2.status()["write_errors"] >= 1, what="a read-only error")
        assert s2.status()["usage_db"] == "degraded"
        s2.stop(timeout=5)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=False)
    assert rows(db) == 1


def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = make(db, retention_days=30)
    s.submit(record(timestamp="2020-01-01T00:00:00.000Z"))
    s.submit(record())  # 2025-12-01 is also older than 30 days from today
    from datetime import UTC, datetime

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    s.submit(record(timestamp=now))
    wait_until(lambda: s.rows_written == 3)
    s._last_retention = -1e9  # run the periodic job at the next round
    s.submit(record(timestamp=now))
    wait_until(lambda: rows(db) == 2, what="old rows removed")
    s.stop()
