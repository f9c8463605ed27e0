"""UsageStore.submit_many (the recorder's hand-over of a socket read): queued up to
max_queue, the rest dropped and counted; a full batch wakes the writer at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fastproxy.storage import recorder
from fastproxy.storage.usage_store import UsageStore
from tests.support.waiting import wait_until
from tests.usage.test_store_queries import record


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM usage_requests").fetchone()[0])


def test_a_full_batch_is_written_without_waiting_for_the_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = UsageStore(db, flush_interval=60.0, max_queue=1000, retention_days=0, batch_size=10)
    s.start()
    try:
        assert s.submit_many([record() for _ in range(4)]) == 4
        assert s.submit_many([record() for _ in range(7)]) == 7  # crosses 10: a wake-up
        wait_until(lambda: s.rows_written >= 10, timeout=10, what="the full batch written")
    finally:
        s.stop()
    assert _rows(db) == 11 and s.status()["dropped_records"] == 0


def test_beyond_max_queue_items_are_dropped_and_counted(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    s = UsageStore(db, flush_interval=60.0, max_queue=5, retention_days=0, batch_size=100)
    s.start()
    try:
        assert s.submit_many([record() for _ in range(3)]) == 3
        assert s.submit_many([record() for _ in range(4)]) == 2
        assert s.submit_many([record()]) == 0
        assert s.status()["dropped_records"] == 3 and s.queued() == 5
    finally:
        s.stop()
    assert _rows(db) == 5
    assert s.submit_many([record()]) == 0  # stopped: nothing is taken
    assert s.status()["dropped_records"] == 4


def test_the_recorders_batch_fits_its_queue() -> None:
    assert recorder.batch_size(100_000) == recorder.BATCH
    assert recorder.batch_size(700) == 700  # a full queue is a full batch: the writer wakes


def test_a_queue_smaller_than_a_batch_still_wakes_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    size = recorder.batch_size(8)
    s = UsageStore(db, flush_interval=60.0, max_queue=8, retention_days=0, batch_size=size)
    s.start()
    try:
        assert s.submit_many([record() for _ in range(8)]) == 8
        wait_until(lambda: s.rows_written == 8, timeout=10, what="a full queue written")
    finally:
        s.stop()
