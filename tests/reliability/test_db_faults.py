"""A usage database that cannot be written: locked, read-only, on a full disk, or at a
path that cannot exist. Traffic must not notice.

Through the real gateway, with usage tracking on: every request is answered as usual
(both dialects, JSON and streams, each in well under a second, on one keep-alive
connection that stays in sync), each reaches the backend exactly once, and the fault is
visible where an operator looks: `/internal/health` says `degraded`, with the storage
counters (`write_errors`, `queue_depth`, `dropped_records`). Where the fault can end,
the records kept in memory are written once it does.

The tests run as root, where chmod stops nothing: a read-only file is `chattr +i`, a full
disk a 2 MiB tmpfs filled up (each is skipped where the container does not allow it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.storage.usage_store import UsageStore
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

from .conftest import (
    PATHS,
    RawClient,
    assert_answers,
    assert_still_serves,
    backend_requests,
    payload,
    request,
)

# Generous for a loop that never waits on SQLite (answers take milliseconds), far below
# the writer's lock wait plus a retry round, which is what a blocked loop would show.
PER_REQUEST_S = 1.0


def tracked(
    gateway_factory: Callable[..., RunningGateway], mock: MockLLMServer, db: Path, **usage: Any
) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock, "openai"),
                "anthropic.1": backend_for(mock, "anthropic"),
            },
            "default_backend": "openai.1",
            "usage_tracking": {
                "persistence_path": str(db),
                "flush_interval_seconds": 0.05,
                **usage,
            },
        }
    )


def storage(gw: RunningGateway) -> dict[str, Any]:
    r = httpx.get(gw.url + "/internal/health", timeout=5)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return {**doc["storage"], "status": doc["status"]}


def rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM usage_requests").fetchone()[0])


def serve_traffic(gw: RunningGateway) -> int:
    """JSON and stream requests in both dialects on one keep-alive connection; each
    answered correctly and quickly. Returns how many were sent."""
    sent = 0
    with RawClient(gw.port) as client:
        for path in PATHS:
            for stream in (False, True):
                t0 = time.monotonic()
                client.send(
                    request(
                        path,
                        payload(path, stream=True) if stream else None,
                        extra=b"x-mock-tokens: 4\r\n",
                    )
                )
                resp = client.read()
                assert time.monotonic() - t0 < PER_REQUEST_S
                if stream:
                    assert resp.status == 200, resp.body
                    end = b"message_stop" if path.endswith("messages") else b"data: [DONE]"
                    assert end in resp.body, resp.body
                else:
                    assert_answers(resp, path, tokens=4)
                sent += 1
    return sent


def wait_degraded(gw: RunningGateway, queued: int) -> dict[str, Any]:
    st = wait_until(
        lambda: (s := storage(gw))["write_errors"] >= 1 and s["queue_depth"] == queued and s,
        what="the write failure counted",
    )
    assert st["usage_db"] == "degraded" and st["status"] == "degraded", st
    return st


def test_locked_database(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """Another connection holds BEGIN EXCLUSIVE on the usage database while requests
    flow: answered as usual, records kept in memory, all written once the lock goes."""
    db = tmp_path / "usage.db"
    gw = tracked(gateway_factory, mock_llm, db)
    assert_still_serves(gw)
    wait_until(lambda: db.exists() and rows(db) == 1, what="the first record written")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        sent = serve_traffic(gw)
        st = wait_degraded(gw, queued=sent)
        assert st["dropped_records"] == 0
    finally:
        holder.close()  # ends the transaction: the lock goes
    wait_until(lambda: rows(db) == 1 + sent, what="the kept records written")
    st = storage(gw)
    assert st["usage_db"] == "ok" and st["queue_depth"] == 0 and st["dropped_records"] == 0
    assert backend_requests(mock_llm) == 1 + sent, "storage faults never resend a request"
    assert_still_serves(gw)


def test_locked_database_with_a_full_queue(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """Locked as above, with room for 3 records in memory: the 4th record on is dropped
    and counted, never waited for; every request is still answered."""
    db = tmp_path / "usage.db"
    gw = tracked(gateway_factory, mock_llm, db, max_records_in_memory=3)
    assert_still_serves(gw)
    wait_until(lambda: db.exists() and rows(db) == 1, what="the first record written")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        sent = serve_traffic(gw)
        assert sent > 3
        st = wait_degraded(gw, queued=3)
        assert st["dropped_records"] == sent - 3
    finally:
        holder.close()
    wait_until(lambda: rows(db) == 1 + 3, what="the kept records written")
    assert backend_requests(mock_llm) == 1 + sent
    assert_still_serves(gw)


@pytest.mark.parametrize(
    "where", ["directory-immutable", "directory-missing-in-immutable", "parent-is-a-file"]
)
def test_unwritable_location(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    tmp_path: Path,
    where: str,
) -> None:
    """The database file cannot be created: its directory is immutable (chattr +i), or
    it is missing inside an immutable one, or its parent is a regular file. The gateway
    starts anyway and serves, with storage degraded and the failures counted."""
    if where == "parent-is-a-file":
        (tmp_path / "a-file").write_text("not a directory\n")
        db = tmp_path / "a-file" / "usage.db"
        locked_dir = None
    else:
        locked_dir = tmp_path / "state"
        locked_dir.mkdir()
        db = locked_dir / ("usage.db" if where == "directory-immutable" else "sub/usage.db")
    with _immutable(locked_dir) if locked_dir else contextlib.nullcontext():
        gw = tracked(gateway_factory, mock_llm, db)
        sent = serve_traffic(gw)
        wait_degraded(gw, queued=sent)
        assert not db.exists()
        assert backend_requests(mock_llm) == sent
        assert_still_serves(gw)


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0
    ):
        pytest.skip("chattr +i is not permitted here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_database(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """The database file exists but is immutable (chattr +i) when the gateway starts."""
    db = tmp_path / "usage.db"
    store = UsageStore(db, flush_interval=0.05, max_queue=10, retention_days=0)
    store.start()
    store.stop()  # a valid, empty database, closed cleanly (no -wal/-shm beside it)
    with _immutable(db):
        gw = tracked(gateway_factory, mock_llm, db)
        sent = serve_traffic(gw)
        wait_degraded(gw, queued=sent)
        assert rows(db) == 0
        assert backend_requests(mock_llm) == sent
        assert_still_serves(gw)


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
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:  # ENOSPC: every byte is taken
        pass
    finally:
        os.close(fd)
    return filler


def test_full_disk(
    small_disk: Path, gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    """The disk holding the database fills up: traffic goes on, records wait in memory
    and are written once space is freed."""
    db = small_disk / "usage.db"
    gw = tracked(gateway_factory, mock_llm, db)
    assert_still_serves(gw)
    wait_until(lambda: db.exists() and rows(db) == 1, what="the first record written")
    filler = _fill(small_disk)
    sent = serve_traffic(gw)
    wait_degraded(gw, queued=sent)
    filler.unlink()
    wait_until(lambda: rows(db) == 1 + sent, what="the kept records written")
    st = storage(gw)
    assert st["usage_db"] == "ok" and st["queue_depth"] == 0 and st["dropped_records"] == 0
    assert backend_requests(mock_llm) == 1 + sent
    assert_still_serves(gw)
