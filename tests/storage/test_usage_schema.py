"""Schema versioning of the usage database (PRAGMA user_version), through the real store.

The store migrates in place when it opens a file. These tests write older (and newer)
files by hand, open them with UsageStore and check three things: what was migrated, that
existing rows survive, and that a file the code cannot migrate is left alone, never moved
aside as corrupt or half-migrated.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from fastproxy.storage import usage_schema
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.usage.test_store_queries import record

V1_INDEXES = {"usage_ts", "usage_backend_type", "usage_backend", "usage_model_requested",
              "usage_model_used", "usage_session", "usage_status"}


def open_store(path: Path) -> UsageStore:
    s = UsageStore(path, flush_interval=0.05, max_queue=1000, retention_days=0)
    s.start()
    return s


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def names(path: Path, kind: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(usage)")]


def count(path: Path, table: str = "usage") -> int:
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

    assert user_version(db) == usage_schema.VERSION == 1
    assert {"usage", "usage_record", "operator_notes"} <= names(db, "table")
    assert names(db, "index") >= V1_INDEXES
    assert count(db) == 1 and count(db, "usage_record") == 1
    assert count(db, "operator_notes") == 1
    assert s.status()["usage_db"] == "ok" and s.write_errors == 0
    assert list(tmp_path.glob("u.db.corrupt-*")) == []


def test_a_later_version_step_is_applied_in_place_and_keeps_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "u.db"
    s = open_store(db)
    for _ in range(3):
        s.submit(record())
    s.stop()
    assert user_version(db) == 1

    # What a future v2 looks like: one more entry in MIGRATIONS, VERSION bumped.
    monkeypatch.setattr(usage_schema, "VERSION", 2)
    monkeypatch.setitem(usage_schema.MIGRATIONS, 2,
                        "ALTER TABLE usage ADD COLUMN region TEXT;"
                        "CREATE INDEX usage_region ON usage(region);")
    s = open_store(db)
    s.submit(record())
    s.stop()

    assert user_version(db) == 2
    assert "region" in columns(db) and "usage_region" in names(db, "index")
    assert count(db) == 4 and count(db, "usage_record") == 4  # old rows kept, new one written
    assert s.count(parse_filters({})) == 4  # the read side works on the migrated file
    assert s.status()["usage_db"] == "ok"


def test_a_failing_step_leaves_the_file_at_its_old_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "u.db"
    s = open_store(db)
    s.submit(record())
    s.stop()

    monkeypatch.setattr(usage_schema, "VERSION", 2)
    # The first statement succeeds, the second fails: the step must not half-apply.
    monkeypatch.setitem(usage_schema.MIGRATIONS, 2,
                        "ALTER TABLE usage ADD COLUMN region TEXT;"
                        "CREATE INDEX broken ON no_such_table(x);")
    with caplog.at_level(logging.ERROR, logger="fastproxy.storage"):
        s = open_store(db)
        queued = record()
        assert s.submit(queued)  # traffic is never refused because of the schema
        status = s.status()
        s.stop()

    assert status["usage_db"] == "degraded" and s.write_errors >= 1
    assert user_version(db) == 1
    assert "region" not in columns(db)  # the successful first statement was rolled back
    assert count(db) == 1
    assert list(tmp_path.glob("u.db.corrupt-*")) == []  # a schema problem is not corruption
    assert sum("usage database" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    # A file written by a newer fastproxy: this one must neither write into it nor
    # mistake it for garbage and move it aside.
    db = tmp_path / "u.db"
    s = open_store(db)
    s.submit(record())
    s.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    before = db.read_bytes()

    s = open_store(db)
    s.submit(record())
    status = s.status()
    s.stop()

    assert status["usage_db"] == "degraded" and status["write_errors"] >= 1
    assert user_version(db) == 7 and count(db) == 1
    assert db.read_bytes() == before
    assert list(tmp_path.glob("u.db.corrupt-*")) == []
