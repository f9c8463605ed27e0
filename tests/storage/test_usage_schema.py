"""Schema versioning of the usage database (PRAGMA user_version), through the real store.

The store migrates in place when it opens a file. These tests write files by hand at
version 0 and at a version newer than the code, open them with UsageStore, and check two
things. A version-0 file that already holds someone else's table is brought up to date
around it. A file the code cannot migrate is left exactly as it was, and is never moved
aside as if it were corrupt. Both tests name no table of the layout, so they hold for any
schema version; the step-by-step migrations of older layouts are tested with the writer
(tests/usage).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import Projector
from fastproxy.monitor.usage_service import UsageCapture
from fastproxy.storage import usage_schema
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.support.waiting import wait_until
from tests.usage.test_prepare_values import _rec
from tests.usage.test_store_queries import record


def open_store(path: Path) -> UsageStore:
    s = UsageStore(path, flush_interval=0.05, max_queue=1000, retention_days=0)
    s.start()
    return s


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_version_0_file_is_migrated_in_place(tmp_path: Path) -> None:
    # A version-0 file that already holds something of the operator's: migration adds the
    # usage schema around it and touches nothing else.
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE operator_notes (note TEXT)")
        conn.execute("INSERT INTO operator_notes VALUES ('keep me')")
    assert user_version(db) == 0

    s = open_store(db)
    s.submit(record())
    s.stop()

    assert user_version(db) == usage_schema.VERSION
    assert count(db, "operator_notes") == 1  # the operator's table is untouched
    assert s.count(parse_filters({})) == 1  # the record went in and reads back
    assert s.status()["usage_db"] == "ok" and s.write_errors == 0
    assert list(tmp_path.glob("u.db.corrupt-*")) == []


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    # A file written by a newer fastproxy: this one must neither write into it nor
    # mistake it for garbage and move it aside.
    db = tmp_path / "u.db"
    s = open_store(db)
    s.submit(record())
    s.stop()
    newer = usage_schema.VERSION + 5
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    before = db.read_bytes()

    s = open_store(db)
    assert s.submit(record())  # traffic is never refused because of the schema
    wait_until(lambda: s.status()["write_errors"] >= 1, what="the refusal to be counted")
    assert s.status()["usage_db"] == "degraded"
    s.stop(timeout=5)

    assert user_version(db) == newer
    assert db.read_bytes() == before  # not one byte written, the queued record included
    assert list(tmp_path.glob("u.db.corrupt-*")) == []


def test_a_version_2_file_takes_compact_records_beside_its_own(tmp_path: Path) -> None:
    # Version 3 only adds the compact array form of a stored record. A version-2 file (the
    # same tables, records as JSON objects) is brought to 3 with no change of its rows,
    # and its old records read back beside the new compact ones, oldest first.
    db = tmp_path / "u.db"
    s = open_store(db)
    old = record(timestamp="2025-11-30T10:00:00.000Z")
    s.submit(old)
    s.stop()
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT record FROM usage_records").fetchone()
        assert text.startswith("{")  # a dict from elsewhere is stored as an object
        conn.execute("PRAGMA user_version = 2")

    projector = Projector(PriceTable({}))
    capture = UsageCapture.take(_rec(True, None, 1_764_500_000.25), True)
    s = open_store(db)
    s.submit(lambda: projector.prepared(capture))
    s.stop()

    assert user_version(db) == usage_schema.VERSION == 3
    with sqlite3.connect(db) as conn:
        texts = [r[0] for r in conn.execute("SELECT record FROM usage_records ORDER BY seq")]
    assert texts[0].startswith("{") and texts[1].startswith("[1,")
    pages = [r for page in s.export_pages(parse_filters({})) for r in page]
    assert pages[0] == old
    new = pages[1]
    assert tuple(new) == usage_schema.RECORD_KEYS
    assert new["timestamp"] == "2025-11-30T10:53:20.250Z" and new["streaming"] is True
    assert new["backend_reported_usage"] is None and new["proxy_user"] == "alice"
    assert new["ctp_prompt_tokens"] and new["session_id"]
