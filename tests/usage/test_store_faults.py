"""The usage store under faults: callers (submit) are never affected, nothing is lost that
can be kept, and the operator sees what happened (status() and one log line per kind).

Tests run as root, where chmod stops nothing: a read-only file is made with ``chattr +i``
(or a read-only bind mount), a full disk with a small tmpfs (or RLIMIT_FSIZE in a child
process, with SIGXFSZ ignored so the write fails instead of killing it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from tests.usage.test_store_queries import record
from tests.usage.test_store_writer import make, rows


def _errors(caplog: pytest.LogCaptureFixture, kind: str) -> int:
    return sum(
        f"({kind})" in r.getMessage()
        for r in caplog.records
        if r.name == "fastproxy.storage" and r.levelno == logging.ERROR
    )


@pytest.mark.parametrize("how", ["garbage-file", "database-overwritten"])
def test_garbage_file_at_start_moved_aside_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    db = tmp_path / "u.db"
    if how == "database-overwritten":  # a real database whose first pages were clobbered
        s = make(db)
        s.submit(record())
        s.stop()
        with open(db, "r+b") as fh:
            fh.write(b"this is not a sqlite database at all\n" * 100)
    else:
        db.write_bytes(b"this is not a sqlite database at all\n" * 100)
    with caplog.at_level(logging.WARNING, logger="fastproxy.storage"):
        s = make(db)
        assert s.submit(record())
        s.stop()
    assert rows(db) == 1 and s.status()["usage_db"] == "ok"
    aside = list(tmp_path.glob("u.db.corrupt-[0-9]*[0-9]Z"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "moved aside" in warnings[0].getMessage()


@pytest.mark.parametrize("how", ["replaced-by-garbage", "deleted"])
def test_file_replaced_while_running_next_records_land(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Writing on through the old handle would put records in an unlinked inode, lost
    without an error: the writer notices the file changed and reopens it."""
    db = tmp_path / "u.db"
    s = make(db)
    s.submit(record())
    wait_until(lambda: s.rows_written == 1)
    with caplog.at_level(logging.WARNING, logger="fastproxy.storage"):
        if how == "replaced-by-garbage":
            (tmp_path / "tmp").write_bytes(b"GARBAGE " * 4096)
            (tmp_path / "tmp").rename(db)  # a new inode under the old name
        else:
            for side in tmp_path.glob("u.db*"):
                side.unlink()
        for _ in range(3):
            assert s.submit(record())
        wait_until(lambda: s.rows_written == 4, what="the next records written")
    s.stop()
    assert rows(db) == 3  # a fresh file with the records that came after
    messages = [r.getMessage() for r in caplog.records]
    assert any("replaced or removed" in m for m in messages)
    if how == "replaced-by-garbage":
        assert len(list(tmp_path.glob("u.db.corrupt-*"))) == 1
        assert any("moved aside" in m for m in messages)


def test_locked_database_counted_then_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "u.db"
    s = make(db)
    s.submit(record())
    wait_until(lambda: s.rows_written == 1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
        for _ in range(5):
            assert s.submit(record())
        wait_until(lambda: s.status()["write_errors"] >= 3, what="repeated locked errors")
        st = s.status()
        assert st["usage_db"] == "degraded" and st["queue_depth"] == 5
        holder.execute("ROLLBACK")
        holder.close()
        wait_until(lambda: s.rows_written == 6, what="the retried records written")
    assert s.status()["usage_db"] == "ok" and s.status()["queue_depth"] == 0
    assert _errors(caplog, "locked") == 1  # logged once, however many rounds failed
    s.stop()
    assert rows(db) == 6


def test_stop_waits_out_a_lock_and_writes_everything(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = make(db, flush_interval=3600.0)
    s.submit(record())
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    for _ in range(300):
        s.submit(record())

    def release_once_stop_has_failed() -> None:
        wait_until(lambda: s.write_errors >= 2, timeout=20)
        holder.execute("ROLLBACK")
        holder.close()

    t = threading.Thread(target=release_once_stop_has_failed)
    t.start()
    s.stop(timeout=30)
    t.join()
    assert rows(db) == 301 and s.status()["dropped_records"] == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs is not permitted here (see the RLIMIT_FSIZE test)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_counted_kept_and_written_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = small_disk / "u.db"
    s = make(db, max_queue=100_000)
    s.submit(record())
    wait_until(lambda: s.rows_written == 1)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # take every free byte left
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
        accepted = sum(s.submit(record(user_agent="x" * 2000)) for _ in range(100))
        assert accepted == 100  # callers never see the disk
        wait_until(lambda: s.status()["write_errors"] >= 1, what="a disk-full error")
        st = s.status()
        assert st["usage_db"] == "degraded" and st["queue_depth"] == 100
        filler.unlink()
        wait_until(lambda: s.rows_written == 101, what="the kept records written")
    assert _errors(caplog, "disk_full") == 1
    s.stop()
    assert rows(db) == 101 and s.status()["dropped_records"] == 0


_FSIZE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from fastproxy.storage.usage_store import UsageStore
    from tests.support.waiting import wait_until
    from tests.usage.test_store_queries import record
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us at the limit
    s = UsageStore(sys.argv[1], flush_interval=0.05, max_queue=10_000, retention_days=0)
    s.start()
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    accepted = sum(s.submit(record(user_agent="x" * 2000)) for _ in range(300))
    wait_until(lambda: s.status()["write_errors"] >= 1, timeout=30)
    print(json.dumps({"accepted": accepted, **s.status(), "written": s.rows_written}))
    s.stop(timeout=2)
""")


def test_file_size_limit_counted_in_a_child_process(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(tmp_path / "u.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout.strip().splitlines()[-1])
    assert st["accepted"] == 300 and st["usage_db"] == "degraded"
    assert st["write_errors"] >= 1 and st["written"] + st["queue_depth"] == 300


def _read_only(db: Path, tmp_path: Path) -> tuple[Path, list[list[str]]]:
    """The database made unwritable for root: chattr +i on the file, else a read-only
    bind mount of its directory. Returns the path to open and the undo commands."""
    if (
        shutil.which("chattr")
        and subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode == 0
    ):
        return db, [["chattr", "-i", str(db)]]
    ro = tmp_path / "ro"
    ro.mkdir()
    if (
        subprocess.run(["mount", "--bind", str(db.parent), str(ro)], capture_output=True).returncode
        == 0
        and subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True
        ).returncode
        == 0
    ):
        return ro / db.name, [["umount", "-l", str(ro)]]
    subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    pytest.skip("neither chattr +i nor a read-only bind mount is permitted here")


def test_read_only_file_is_counted_and_traffic_unaffected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "u.db"
    s = make(db)
    s.submit(record())
    s.stop()  # closes cleanly: no -wal/-shm left beside the file
    path, undo = _read_only(db, tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
            s2 = make(path)
            assert all(s2.submit(record()) for _ in range(20))
            wait_until(lambda: s2.status()["write_errors"] >= 2, what="read-only errors")
            st = s2.status()
            assert st["usage_db"] == "degraded" and st["queue_depth"] == 20
            s2.stop(timeout=5)
        assert _errors(caplog, "read_only") == 1
        assert any(
            "20 records could not be written before shutdown" in r.getMessage()
            for r in caplog.records
        )
        assert s2.status()["dropped_records"] == 20  # counted when stop gave up
    finally:
        for cmd in undo:
            subprocess.run(cmd, check=False)
    assert rows(db) == 1
